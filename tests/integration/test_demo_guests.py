"""make run's demo guests: a real agent and app for a running Partition, and a save of it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client
from partition_helpers import Partitions, partition_manifest, wait_for
from saving_helpers import GROUP, VERSION, condition, results, wait_complete

from lparkube_agent.testing import lines
from lparkube_devenv.controlplane import free_port
from lparkube_devenv.guests import APP, DemoGuests
from lparkube_devenv.kubevirt import StandIn

pytestmark = pytest.mark.usefixtures("operator")
FOREGROUND = Path(__file__).with_name("demo_guests_foreground.py")


def test_demo_guests_boot_an_agent_and_app_that_a_save_event_reaches(
    api_client: client.ApiClient, kubevirt: StandIn, namespace: str, tmp_path: Path
) -> None:
    parts = Partitions(api_client, kubevirt, namespace)
    parts.create(partition_manifest("demo", "127.0.70.2", free_port()))
    parts.wait_condition("demo", "VMReady", "True")
    guests = DemoGuests(api_client, tmp_path / "guests", namespace=namespace)
    try:
        booted = wait_for(guests.boot_pending, "a demo guest for the running Partition")
        assert booted == [f"{namespace}/demo"]
        wait_for(
            lambda: (
                parts.condition("demo", "AgentConnected").get("status") == "True"
                and parts.status("demo")["agent"].get("applications") == 1
            ),
            "the demo agent connected with its app",
        )
        assert guests.boot_pending() == []  # one guest per Partition, not one per pass
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SaveEvent",
                "metadata": {"name": "demo-save"},
                "spec": {"reason": "Manual", "targets": {"partitions": ["demo"]}}}  # fmt: skip
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "saveevents", body
        )
        saved = wait_complete(api_client, namespace, "demo-save")
        assert condition(saved, "Complete")["reason"] == "Succeeded"
        assert results(saved, namespace)["demo"]["applications"][0]["name"] == APP
        saves = tmp_path / "guests" / namespace / "demo" / "saves"
        assert [name for name, _ in wait_for(lambda: lines(saves), "the app's save")] == [APP]
    finally:
        guests.stop()
    assert not guests.running


def processes_naming(path: Path) -> dict[int, str]:
    """The running processes whose command line names ``path``: pid -> command line."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # gone meanwhile
            words = cmdline.read_bytes().decode(errors="replace").split("\0")
            if any(str(path) in word for word in words):
                found[int(cmdline.parent.name)] = " ".join(words)
    return found


def test_ctrl_c_stops_the_demo_guests_quietly_and_removes_their_folders(
    api_client: client.ApiClient,
    kubeconfig: Path,
    kubevirt: StandIn,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    parts = Partitions(api_client, kubevirt, namespace)
    parts.create(partition_manifest("demo", "127.0.70.3", free_port()))
    parts.wait_condition("demo", "VMReady", "True")
    temp = tmp_path_factory.mktemp("tmp")  # the guests' TMPDIR, short for AF_UNIX paths
    root = temp.with_name(f"{temp.name}-guests")
    guests = subprocess.Popen(
        [sys.executable, str(FOREGROUND), str(kubeconfig), namespace, str(root)],
        env={**os.environ, "TMPDIR": str(temp)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: parts.status("demo").get("agent", {}).get("applications") == 1,
            "the demo agent connected with its app",
        )
        assert len(processes_naming(root).keys() - {guests.pid}) == 2, "an agent and an app run"
        assert list(temp.iterdir()), "the agent's socket is under TMPDIR"
        os.killpg(guests.pid, signal.SIGINT)  # what Ctrl-C in make run's terminal sends
        output, _ = guests.communicate(timeout=90)  # a liveness bound, not a speed goal
    finally:
        guests.kill()
    assert guests.returncode == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert list(temp.iterdir()) == [], "the guests' temporary folders are removed"
    assert processes_naming(root) == {}, "no agent or app is left running"
