"""``python -m lparkube.kubectl_plugin``: the same as ``kubectl-lparkube``."""

import sys

from lparkube.kubectl_plugin.main import main

sys.exit(main())
