"""The stand-in's polling loops survive failing passes (the API server restarting, say)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from lparkube_devenv.kubevirt.loop import PollingLoop
from lparkube_devenv.kubevirt.storage import ThinStorage
from lparkube_devenv.kubevirt.storage.driver import StorageSettings


class FailingLoop(PollingLoop):
    """Fails its first passes, then sets `recovered`."""

    name = "failing"

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.settings = SimpleNamespace(interval=0.0, busy_interval=0.0)
        self.failures, self.passes = failures, 0
        self.recovered = threading.Event()

    def tick(self) -> None:
        self.passes += 1
        if self.passes <= self.failures:
            raise ConnectionError("the API server is restarting")
        self.recovered.set()


def run_in_thread(loop: PollingLoop) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def test_a_failing_pass_is_logged_once_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = FailingLoop(failures=3)
    with caplog.at_level(logging.WARNING, logger="lparkube_devenv.kubevirt"):
        thread, stop = run_in_thread(loop)
        assert loop.recovered.wait(5)
        stop.set()
        thread.join(5)
    assert loop.passes >= 4
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["failing: tick: the API server is restarting"]  # rate-limited


def kubeconfig_of_a_server_that_is_down(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        """apiVersion: v1
kind: Config
clusters: [{name: down, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: nobody, user: {token: none}}]
contexts: [{name: down, context: {cluster: down, user: nobody}}]
current-context: down
"""
    )
    return path


def test_the_storage_driver_keeps_polling_while_the_api_server_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pass that fails must not end the driver's thread: every volume would stop binding."""
    settings = StorageSettings(interval=0.01, busy_interval=0.01)
    storage = ThinStorage(kubeconfig_of_a_server_that_is_down(tmp_path), tmp_path, settings)
    with caplog.at_level(logging.WARNING, logger="lparkube_devenv.kubevirt"):
        thread, stop = run_in_thread(storage)
        thread.join(0.5)
        alive = thread.is_alive()
        stop.set()
        storage.kick()
        thread.join(20)
    assert alive
    assert any(r.getMessage().startswith("thin storage: tick:") for r in caplog.records)
