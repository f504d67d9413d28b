"""The polling loop the stand-in's controllers share (virt-controller's, the storage driver's).

Each pass reads what it needs and moves objects one step; the next pass comes soon after a
pass that wrote something (`wrote`), at once after `kick`, else after the idle interval. A pass
that fails (the API server restarting, say) is logged and retried, never fatal.
"""

from __future__ import annotations

import logging
import threading
import time


class PollingLoop:
    """Subclasses give `tick()`, a `settings` with `interval` and `busy_interval`, a `name`."""

    name = "loop"
    logger = logging.getLogger("lparkube_devenv.kubevirt")

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._wrote = False
        self._errors: dict[str, float] = {}

    def tick(self) -> None:
        raise NotImplementedError

    def kick(self) -> None:
        """Run the next pass now."""
        self._wake.set()

    def wrote(self) -> None:
        self._wrote = True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wrote = False
            try:
                self.tick()
            except Exception as error:  # the API server may be restarting; keep going
                self._report("tick", error)
            delay = self.settings.busy_interval if self._wrote else self.settings.interval
            self._wake.wait(delay)
            self._wake.clear()

    def _report(self, what: str, error: Exception) -> None:
        """Log an error, at most once every 10 s per place (the loop retries anyway)."""
        now = time.monotonic()
        if now - self._errors.get(what, 0.0) > 10.0:
            self._errors[what] = now
            self.logger.warning("%s: %s: %s", self.name, what, error)
