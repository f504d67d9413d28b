"""The kubectl plugin with the session's real operator and real guest agents: no test plays a
controller here, the plugin reads what the operator writes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from kubectl_plugin_helpers import run_plugin

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def plugin(kubeconfig: Path) -> Callable[..., subprocess.CompletedProcess]:
    return lambda *args, timeout=60: run_plugin(kubeconfig, *args, timeout=timeout)


def test_save_with_the_real_operator_and_real_agents(fleet, plugin, namespace: str) -> None:
    """The session's operator runs the SaveEvents and real guest agents save real applications."""
    fleet.partition("web-1", "node-a", [("first", 10, 0.0), ("second", 20, 0.0)])
    gone = fleet.partition("gone", "node-b", [("lost", 10, 0.0)])
    done = plugin("save", "web-1", "-n", namespace, "--timeout", "60s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == (
        "saved 1/1: Succeeded: 1 of 1 partitions saved, 0 failed; 2 of 2 applications saved"
    )
    assert [app for app, _ in fleet.written("web-1")] == ["first", "second"]

    gone.stop()
    fleet.parts.wait_condition("gone", "AgentConnected", "False", timeout=15)
    failed = plugin("save", "web-1", "gone", "-n", namespace, "--timeout", "60s")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stderr.splitlines()
    assert lines[0].startswith("error: saved 1/2 (1 failed): PartiallySucceeded: 1 of 2")
    assert lines[1].startswith(f"  partition {namespace}/gone: Unreachable: ")
