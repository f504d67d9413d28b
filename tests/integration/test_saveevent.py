"""SaveEvents on the real control plane with the real operator and real guest agents: hung
apps, stopped agents, an operator SIGKILL mid-save, pod save hooks, backup snapshots."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client
from partition_helpers import wait_for
from saving_helpers import (
    Fleet,
    condition,
    event_records,
    events,
    results,
    save_event,
    wait_complete,
)

from lparkube_devenv.controlplane import free_port

if TYPE_CHECKING:
    from conftest import OperatorProcess

pytestmark = pytest.mark.usefixtures("operator")


def test_hung_app_times_out_and_stopped_agents_fail_by_the_deadline(
    fleet: Fleet, api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    fleet.partition("slow", "node-a", [("first", 10, 0.0), ("hang", 20, 60.0), ("peer", 20, 0.2)])
    gone = fleet.partition("gone", "node-b", [("lost", 10, 0.0)])
    dies = fleet.partition("dies", "node-b", [("late", 10, 4.0)])
    gone.stop()
    fleet.parts.wait_condition("gone", "AgentConnected", "False", timeout=15)
    assert fleet.parts.condition("gone", "AgentConnected")["reason"] == "HeartbeatTimeout"
    # its VM still runs: the agent counts as lost, which the chart's alert fires on
    wait_for(lambda: metrics(operator).get("lparkube_agents_lost", 0) >= 1, "agents_lost")

    spec = {
        "reason": "Manual",
        "targets": {"partitions": ["slow", "gone", "dies", "ghost"]},
        "deadline": "25s",
        "applicationTimeout": "2s",
    }
    fleet.create_save_event("manual", spec)
    wait_for(
        lambda: (
            results(save_event(api_client, namespace, "manual"), namespace)["dies"]
            if "status" in save_event(api_client, namespace, "manual")
            else None
        ),
        "the save to start",
    )
    dies.kill()  # mid-save: its agent never answers again and its heartbeat stops
    saved = wait_complete(api_client, namespace, "manual", timeout=40)
    status = saved["status"]
    assert status["completionTime"] <= status["deadlineTime"]
    found = results(saved, namespace)

    slow = found["slow"]
    assert slow["outcome"] == "Failed"
    apps = [(a["name"], a["order"], a["outcome"], a["method"]) for a in slow["applications"]]
    assert apps == [
        ("first", 1, "Saved", "Command"),
        ("hang", 2, "TimedOut", "Command"),
        ("peer", 2, "Saved", "Command"),
    ]
    written = dict(fleet.written("slow"))
    assert set(written) == {"first", "peer"} and written["first"] < written["peer"]

    assert found["gone"]["outcome"] == "Unreachable"
    assert "AgentConnected" in found["gone"]["message"]
    assert fleet.written("gone") == []
    assert found["dies"]["outcome"] == "Unreachable"
    assert found["ghost"]["outcome"] == "Failed"

    assert status["summary"] == {
        "partitions": 4,
        "pending": 0,
        "succeeded": 0,
        "failed": 4,
        "applications": 3,
        "applicationsSaved": 2,
        "applicationsFailed": 1,
    }
    complete, succeeded = condition(saved, "Complete"), condition(saved, "Succeeded")
    assert (complete["reason"], succeeded["status"]) == ("Failed", "False")
    wanted = {"Instructed", "SaveFailed", "Completed"}
    wait_for(lambda: wanted <= set(events(api_client, namespace, "manual")), "events")


def test_operator_sigkill_mid_save_finishes_without_instructing_twice(
    fleet: Fleet, api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    fleet.partition("quick", "node-a", [("q", 10, 0.0)])
    for name in ("long-1", "long-2"):
        fleet.partition(name, "node-b", [(f"{name}-a", 10, 2.0), (f"{name}-b", 20, 2.0)])
    fleet.create_save_event(
        "crash", {"reason": "Power", "targets": {"all": True}, "deadline": "2m"}
    )

    def quick_done_long_running() -> bool:
        found = results(save_event(api_client, namespace, "crash"), namespace)
        return bool(found) and found["quick"]["outcome"] == "Succeeded"

    wait_for(quick_done_long_running, "the quick partition saved", timeout=20)
    assert fleet.written("long-1") == []  # still saving when the operator dies
    operator.kill()
    time.sleep(1.0)
    operator.start()

    saved = wait_complete(api_client, namespace, "crash", timeout=60)
    found = results(saved, namespace)
    assert {p["outcome"] for p in found.values()} == {"Succeeded"}
    # Every app saved exactly once: nothing was instructed twice, nothing was lost.
    for name, apps in (("quick", ["q"]), ("long-1", ["long-1-a", "long-1-b"])):
        assert Counter(app for app, _ in fleet.written(name)) == dict.fromkeys(apps, 1)
    assert Counter(app for app, _ in fleet.written("long-2")) == {"long-2-a": 1, "long-2-b": 1}
    # After the restart only the two unfinished partitions were sent anything.
    assert "Resuming: 2 partitions to re-attach, 1 finished" in operator.log_tail(200_000)


class HookServer:
    """A pod's save-hook endpoint on loopback, recording what it was sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, dict]] = []
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                calls.append((self.path, json.loads(self.rfile.read(length)), dict(self.headers)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hook_pod(core: client.CoreV1Api, namespace: str, name: str, node: str, hook: str) -> None:
    """A pod on ``node`` with a save hook; with no kubelet, its status is written directly."""
    body = {
        "metadata": {"name": name, "annotations": {"lparkube.io/save-hook": hook}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": False,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        },
    }
    wait_for(lambda: _create_pod(core, namespace, body), f"pod {name} created")
    core.patch_namespaced_pod_status(
        name, namespace, {"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}
    )


def _create_pod(core: client.CoreV1Api, namespace: str, body: dict) -> bool:
    try:
        core.create_namespaced_pod(namespace, body)
        return True
    except client.ApiException as error:  # the default ServiceAccount may not exist yet
        if error.status == 403:
            return False
        raise


def test_backup_takes_snapshots_after_saving_and_calls_pod_hooks(
    fleet: Fleet, api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    fleet.partition("db", "node-c", [("postgres", 10, 0.0)])
    server = HookServer()
    try:
        hook_pod(fleet.core, namespace, "hooked", "node-c", f"http://:{server.port}/save")
        hook_pod(fleet.core, namespace, "exec-hook", "node-c", "exec:/bin/sync")
        hook_pod(fleet.core, namespace, "elsewhere", "node-a", f"http://:{server.port}/other")
        spec = {
            "reason": "Backup",
            "targets": {"partitions": ["db"]},
            "snapshotAfterSave": True,
            "deadline": "1m",
        }
        created = fleet.create_save_event("nightly", spec)
        saved = wait_complete(api_client, namespace, "nightly", timeout=45)
    finally:
        server.close()
    status = saved["status"]
    assert results(saved, namespace)["db"]["outcome"] == "Succeeded"
    assert [app for app, _ in fleet.written("db")] == ["postgres"]
    assert status["snapshots"] == [
        {"namespace": namespace, "partition": "db", "name": "db-nightly", "readyToUse": True}
    ]
    snapshot = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "snapshot.kubevirt.io", "v1beta1", namespace, "virtualmachinesnapshots", "db-nightly"
    )
    assert snapshot["spec"]["source"] == {
        "apiGroup": "kubevirt.io",
        "kind": "VirtualMachine",
        "name": "db",
    }
    pods = {p["name"]: p for p in status["pods"]}
    assert set(pods) == {"hooked", "exec-hook"}
    assert (pods["hooked"]["outcome"], pods["hooked"]["nodeName"]) == ("Saved", "node-c")
    assert pods["exec-hook"]["outcome"] == "Failed"
    assert "pods/exec" in pods["exec-hook"]["message"]
    ((path, body, headers),) = server.calls
    uid = created["metadata"]["uid"]
    assert path == "/save" and body["id"] == uid and body["reason"] == "Backup"
    assert headers["X-Lparkube-Save-Id"] == uid
    # The misconfigured hook's pod did not save: the event says so.
    assert condition(saved, "Complete")["reason"] == "PartiallySucceeded"
    assert condition(saved, "Succeeded")["status"] == "False"

    # Once complete, nothing blocks its deletion, and the save is in the metrics.
    wait_for(
        lambda: not save_event(api_client, namespace, "nightly")["metadata"].get("finalizers"),
        "the finalizer removed",
    )
    scraped = metrics(operator)
    assert scraped['lparkube_saves_total{outcome="Succeeded",reason="Backup"}'] >= 1
    assert scraped['lparkube_save_events_total{reason="Backup",result="PartiallySucceeded"}'] >= 1
    assert scraped['lparkube_save_duration_seconds_count{reason="Backup"}'] >= 1
    assert scraped['lparkube_save_fanout_latency_seconds_count{reason="Backup"}'] >= 1
    assert scraped["lparkube_agents_connected"] >= 1


def metrics(operator: OperatorProcess) -> dict[str, float]:
    """The operator's /metrics as {name{labels}: value}."""
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def test_all_namespaces_is_refused_outside_the_system_namespace_and_complete(
    fleet: Fleet, api_client: client.ApiClient, namespace: str, kubectl
) -> None:
    spec = {"reason": "Manual", "targets": {"all": True, "allNamespaces": True}}
    fleet.create_save_event("wide", spec)
    # finished as a failed Job is: `kubectl wait --for=condition=Complete` returns
    kubectl("wait", "-n", namespace, "saveevent/wide", "--for=condition=Complete", "--timeout=30s")
    refused = save_event(api_client, namespace, "wide")
    complete, succeeded = condition(refused, "Complete"), condition(refused, "Succeeded")
    assert (complete["status"], complete["reason"]) == ("True", "Refused")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "Refused")
    assert "allNamespaces" in complete["message"]
    assert "partitions" not in refused["status"] and "completionTime" in refused["status"]
    wait_for(lambda: "Refused" in events(api_client, namespace, "wide"), "the Refused event")


def test_a_selector_that_matches_nothing_says_so(
    fleet: Fleet, api_client: client.ApiClient, namespace: str
) -> None:
    spec = {"reason": "Manual", "targets": {"selector": {"matchLabels": {"tier": "nowhere"}}}}
    fleet.create_save_event("nobody", spec)
    saved = wait_complete(api_client, namespace, "nobody")
    message = (
        f"no Partition matched the targets (selector tier=nowhere in namespace {namespace}); "
        "nothing was instructed"
    )
    complete, succeeded = condition(saved, "Complete"), condition(saved, "Succeeded")
    assert (complete["reason"], complete["message"]) == ("NoTargets", message)
    assert (succeeded["status"], succeeded["reason"]) == ("True", "NoTargets")
    assert saved["status"]["summary"]["partitions"] == 0
    wait_for(
        lambda: ("Warning", "NoTargets", message) in event_records(api_client, namespace, "nobody"),
        "the NoTargets warning",
    )


def test_a_timed_out_partition_names_the_refused_connection(
    fleet: Fleet, api_client: client.ApiClient, namespace: str
) -> None:
    # its agent listens elsewhere: it reports (connected), but its endpoint refuses
    fleet.partition("deaf", "node-a", [("ledger", 10, 0.0)], agent_port=free_port())
    endpoint = fleet.parts.status("deaf")["agent"]["endpoint"]
    spec = {
        "reason": "Manual",
        "targets": {"partitions": ["deaf"]},
        "deadline": "6s",
        "applicationTimeout": "2s",
    }
    fleet.create_save_event("deaf-save", spec)
    deaf = results(wait_complete(api_client, namespace, "deaf-save", timeout=30), namespace)["deaf"]
    assert deaf["outcome"] == "TimedOut"
    assert deaf["message"] == (
        "the deadline passed before it finished; last attempt: "
        f"{namespace}/deaf: cannot reach {endpoint}: connection refused"
    )
    warning = ("Warning", "SaveFailed", f"{namespace}/deaf: TimedOut: {deaf['message']}")
    wait_for(
        lambda: warning in event_records(api_client, namespace, "deaf-save"), "the SaveFailed event"
    )


def test_status_shows_the_applications_saved_while_a_partition_is_still_saving(
    fleet: Fleet, api_client: client.ApiClient, namespace: str
) -> None:
    fleet.partition("long", "node-a", [("quick", 10, 0.0), ("slow", 20, 8.0)])
    fleet.create_save_event("progress", {"reason": "Manual", "targets": {"partitions": ["long"]}})

    def progress() -> dict | None:
        found = results(save_event(api_client, namespace, "progress"), namespace)
        entry = found.get("long") if found else None
        return entry if entry and entry.get("applications") else None

    running = wait_for(progress, "partial results in status", timeout=15)
    assert running["outcome"] == "Instructed"
    assert [(a["name"], a["outcome"]) for a in running["applications"]] == [("quick", "Saved")]
    done = results(wait_complete(api_client, namespace, "progress", timeout=30), namespace)
    assert done["long"]["outcome"] == "Succeeded"
    assert [a["name"] for a in done["long"]["applications"]] == ["quick", "slow"]
