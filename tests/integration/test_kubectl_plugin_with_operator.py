"""The kubectl plugin with the session's real operator and real guest agents: no test plays a
controller here, the plugin reads what the operator writes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from kubectl_plugin_helpers import run_plugin
from partition_helpers import Partitions
from remote_restart_helpers import get_restart, halt, leases_of, node_pool
from sleeper_helpers import Sleepers

from lparkube.api.v1alpha1 import remoterestart as rr
from lparkube.kubectl_plugin.restarts import NOT_STARTED

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


def test_restart_with_the_real_operator_prints_its_steps_and_exits_0_or_1(
    plugin,  # type: ignore[no-untyped-def]
    parts: Partitions,
    sleepers: Sleepers,
) -> None:
    """The session's operator runs the RemoteRestart of a stopped partition (a real agent over a
    fake guest tree): the plugin prints every step in order, then RestartSucceeded; a target
    that does not exist is RestartFailed with its cause and exit 1."""
    namespace, api_client = parts.namespace, parts.core.api_client
    with node_pool(parts.kubevirt) as nodes:
        nodes.add()
        sleepers.create("web-1", paging=False, kernel=False, node_selector=nodes.selector)
        source = halt(parts, "web-1")
        target = nodes.add()
        done = plugin("restart", "web-1", "--to", target, "-n", namespace, "--timeout", "60s")
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        prefix = f"{rr.REMOTE_RESTART.singular}.lparkube.io/"
        assert lines[0].startswith(f"{prefix}web-1-restart-") and lines[0].endswith(" created")
        assert lines[-1].startswith(f"RestartSucceeded: partition web-1 runs on node {target}")
        shown = [line.split()[0] for line in lines[1:-1] if line != NOT_STARTED]
        assert list(dict.fromkeys(shown)) == list(rr.STEPS), lines
        assert f"{rr.RESTORING_MEMORY} {rr.SKIPPED}" in lines
        assert parts.vmi("web-1")["status"]["nodeName"] == target != source
        name = lines[0].removeprefix(prefix).removesuffix(" created")
        token = get_restart(api_client, namespace, name)["metadata"]["uid"]
        assert leases_of(api_client, token) == []

        refused = plugin("restart", "web-1", "--to", "node-nowhere", "-n", namespace)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "Validating Failed node node-nowhere not found" in refused.stdout.splitlines()
        assert refused.stderr == (
            "error: RestartFailed: TargetNotFound: node node-nowhere not found\n"
        )
