"""Run make run's demo guests for one namespace in the foreground until Ctrl-C, as
``lparkube-dev up`` does: ``python demo_guests_foreground.py KUBECONFIG NAMESPACE ROOT``.

The agents and apps it starts share its process group, so a SIGINT to the group reaches them all,
as a Ctrl-C in the terminal of ``make run`` does.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from kubernetes import config

from lparkube_devenv.guests import DemoGuests


def main(kubeconfig: str, namespace: str, root: str) -> int:
    # Ctrl-C raises KeyboardInterrupt even when this process started with SIGINT ignored (a
    # shell's background job, e.g. the test run started with `&`), as in a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with config.new_client_from_config(config_file=kubeconfig) as api_client:
        guests = DemoGuests(api_client, Path(root), namespace=namespace).start()
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            return 0
        finally:
            guests.stop()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
