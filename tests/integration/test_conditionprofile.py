"""ConditionProfile triggers on the real control plane: a node-problem-detector style condition
flip and a BMC-style sensor annotation make exactly one SaveEvent each."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client
from partition_helpers import wait_for
from saving_helpers import Fleet, event_records, results, save_events, wait_complete

from lparkube_devenv.controlplane import free_port

if TYPE_CHECKING:
    from conftest import OperatorProcess

pytestmark = pytest.mark.usefixtures("operator", "healthy_nodes")

STRATEGIC = "application/strategic-merge-patch+json"


@pytest.fixture
def profiles(api_client: client.ApiClient) -> Iterator[Callable[..., str]]:
    """``profiles(rules, **spec)``: create ConditionProfiles (cluster-scoped, so deleted
    explicitly afterwards)."""
    custom = client.CustomObjectsApi(api_client)
    made: list[str] = []

    def create(rules: list[dict], **spec: Any) -> str:
        name = f"test-{uuid.uuid4().hex[:8]}"
        body = {
            "apiVersion": "lparkube.io/v1alpha1",
            "kind": "ConditionProfile",
            "metadata": {"name": name},
            "spec": {"rules": rules, **spec},
        }
        custom.create_cluster_custom_object("lparkube.io", "v1alpha1", "conditionprofiles", body)
        made.append(name)
        return name

    yield create
    for name in made:
        custom.delete_cluster_custom_object("lparkube.io", "v1alpha1", "conditionprofiles", name)


def set_condition(core: client.CoreV1Api, node: str, type_: str, status: str) -> None:
    """What node-problem-detector does: one condition, merged by type into the Node status."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {
        "type": type_,
        "status": status,
        "reason": "CPUOverheated" if status == "True" else "CPUTemperatureNormal",
        "message": "test",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    core.patch_node_status(node, {"status": {"conditions": [condition]}}, _content_type=STRATEGIC)


def fired(api: client.ApiClient, operator: OperatorProcess, profile: str) -> list[dict]:
    selector = f"lparkube.io/condition-profile={profile}"
    return save_events(api, operator.lease_namespace, selector)


def test_a_condition_flip_saves_that_nodes_partitions_once(
    fleet: Fleet,
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    profiles: Callable[..., str],
) -> None:
    fleet.partition("hot-1", "node-a", [("db", 10, 0.3), ("web", 20, 0.0), ("cache", 20, 0.0)])
    fleet.partition("hot-2", "node-a", [("mail", 10, 0.2), ("ui", 30, 0.0)])
    fleet.partition("cool", "node-b", [("spare", 10, 0.0)])
    rule = {
        "name": "thermal",
        "reason": "Thermal",
        "nodeCondition": {"type": "ThermalPressure"},
        "cooldown": "10m",
        "deadline": "1m",
    }
    profile = profiles([rule])
    core = fleet.core
    try:
        set_condition(core, "node-a", "ThermalPressure", "True")
        (event,) = wait_for(lambda: fired(api_client, operator, profile), "a SaveEvent")
        name = event["metadata"]["name"]
        saved = wait_complete(api_client, operator.lease_namespace, name)
        assert saved["spec"]["reason"] == "Thermal"
        assert saved["spec"]["targets"] == {"nodeName": "node-a", "allNamespaces": True}
        assert saved["spec"]["trigger"] == {
            "type": "ConditionProfile",
            "profile": profile,
            "rule": "thermal",
            "nodeName": "node-a",
        }
        found = results(saved, namespace)
        assert set(found) == {"hot-1", "hot-2"}
        assert {p["outcome"] for p in found.values()} == {"Succeeded"}

        # Priority order, proven by what the apps wrote and when.
        hot1 = dict(fleet.written("hot-1"))
        assert set(hot1) == {"db", "web", "cache"}
        assert hot1["db"] < min(hot1["web"], hot1["cache"])
        hot2 = dict(fleet.written("hot-2"))
        assert hot2["mail"] < hot2["ui"]
        assert fleet.written("cool") == []

        # Off and on again within the cooldown: no second SaveEvent.
        set_condition(core, "node-a", "ThermalPressure", "False")
        time.sleep(1.0)
        set_condition(core, "node-a", "ThermalPressure", "True")
        time.sleep(3.0)
        assert len(fired(api_client, operator, profile)) == 1
        assert len(fleet.written("hot-1")) == 3

        stored = client.CustomObjectsApi(api_client).get_cluster_custom_object(
            "lparkube.io", "v1alpha1", "conditionprofiles", profile
        )["status"]
        assert stored["lastSaveEvent"] == f"{operator.lease_namespace}/{name}"
        (rule_state,) = stored["rules"]
        (node_state,) = rule_state["nodes"]
        assert node_state["node"] == "node-a"
        assert node_state["saveEvent"] == f"{operator.lease_namespace}/{name}"
        assert node_state["pendingSince"] > node_state["lastFiredTime"]  # a new episode
    finally:
        set_condition(core, "node-a", "ThermalPressure", "False")


def test_a_sensor_held_for_its_duration_saves_every_partition(
    fleet: Fleet,
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    profiles: Callable[..., str],
) -> None:
    fleet.partition("far", "node-c", [("ledger", 10, 0.0)])
    annotation = f"bmc.lparkube.io/battery-{uuid.uuid4().hex[:6]}"
    rule = {
        "name": "battery",
        "reason": "Power",
        "sensor": {"annotation": annotation, "operator": "LessThanOrEqual", "value": 2},
        "for": "2s",
        "scope": "Cluster",
    }
    profile = profiles([rule])
    core = fleet.core
    try:
        core.patch_node("node-b", {"metadata": {"annotations": {annotation: "40"}}})
        time.sleep(1.0)
        assert fired(api_client, operator, profile) == []
        low_since = time.time()
        core.patch_node("node-b", {"metadata": {"annotations": {annotation: "1.5"}}})
        (event,) = wait_for(lambda: fired(api_client, operator, profile), "a SaveEvent")
        created = datetime.fromisoformat(event["metadata"]["creationTimestamp"]).timestamp()
        assert created >= int(low_since) + 2 - 1  # held for `for` (second precision)
        assert event["spec"]["targets"] == {"all": True, "allNamespaces": True}
        assert event["spec"]["trigger"]["nodeName"] == "node-b"
        saved = wait_complete(api_client, operator.lease_namespace, event["metadata"]["name"])
        assert results(saved, namespace)["far"]["outcome"] == "Succeeded"
        assert [app for app, _ in fleet.written("far")] == ["ledger"]
    finally:
        core.patch_node("node-b", {"metadata": {"annotations": {annotation: None}}})


class EmptyPrometheus:
    """A Prometheus on ``port`` whose every query returns no series."""

    def __init__(self, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = {"status": "success", "data": {"resultType": "vector", "result": []}}
                payload = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_unreachable_prometheus_is_told_once_and_so_is_its_recovery(
    api_client: client.ApiClient, operator: OperatorProcess, profiles: Callable[..., str]
) -> None:
    port = free_port()
    rule = {"name": "battery", "reason": "Power", "prometheus": {"query": "battery < 3"}}
    url = f"http://127.0.0.1:{port}"
    profile = profiles([rule], prometheus={"url": url, "interval": "1s", "timeout": "1s"})
    custom = client.CustomObjectsApi(api_client)

    def ready(status: str) -> dict | None:
        body = custom.get_cluster_custom_object(
            "lparkube.io", "v1alpha1", "conditionprofiles", profile
        )
        found = [
            c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"
        ]
        return found[0] if found and found[0]["status"] == status else None

    def told(kind: str) -> list[tuple[str, str, str]]:
        return [
            e for e in event_records(api_client, None, profile, "ConditionProfile") if e[1] == kind
        ]

    def logged(text: str) -> int:
        return operator.log_tail(500_000).count(f"[{profile}] {text}")

    down = wait_for(lambda: ready("False"), "Ready=False")
    assert down["reason"] == "PrometheusUnreachable"
    assert down["message"] == f"battery: {url}/api/v1/query: connection refused"
    time.sleep(4.0)  # four more failing polls: still one Event, one log line
    warning = ("Warning", "PrometheusUnreachable", f"Prometheus queries fail: {down['message']}")
    assert told("PrometheusUnreachable") == [warning]
    assert logged("Prometheus queries fail") == 1

    prometheus = EmptyPrometheus(port)
    try:
        wait_for(lambda: ready("True"), "Ready=True once Prometheus answers")
        normal = ("Normal", "PrometheusReachable", "Prometheus answers the queries again")
        wait_for(lambda: told("PrometheusReachable") == [normal], "the PrometheusReachable event")
        assert logged("Prometheus answers the queries again") == 1
        assert len(told("PrometheusUnreachable")) == 1
    finally:
        prometheus.close()
