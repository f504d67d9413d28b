"""`python -m lparkube_agent` and the zipapp's entry point."""

import sys

from lparkube_agent.cli import main

sys.exit(main())
