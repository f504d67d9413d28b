"""ConditionProfile evaluation rounds against an in-memory API and a local Prometheus."""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from lparkube import controllers
from lparkube.controllers import conditionprofile, evacuation
from lparkube.controllers.conditionprofile import ProfileEvaluator

SYSTEM = "lparkube-system"
THERMAL = {"name": "thermal", "reason": "Thermal", "nodeCondition": {"type": "ThermalPressure"}}


class FakeKube:
    def __init__(self) -> None:
        self.created: list[tuple[str, dict]] = []
        self.status_writes: list[dict] = []
        self.objects: dict[tuple[str, str], dict] = {}
        self.partitions: list[dict] = []

    async def create(self, ref: Any, namespace: str, body: dict) -> dict:
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[key] = copy.deepcopy(body)
        self.created.append(key)
        return body

    async def patch(self, ref: Any, namespace: Any, name: str, patch: dict, *, status: bool):
        self.status_writes.append(copy.deepcopy(patch["status"]))
        return patch

    async def list(self, ref: Any, namespace: str | None = None) -> list[dict]:
        return copy.deepcopy(self.partitions)


@pytest.fixture(autouse=True)
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    posted: list[str] = []
    monkeypatch.setattr(
        conditionprofile.kopf, "event", lambda body, *, type, reason, message: posted.append(reason)
    )
    yield posted


def node(hot: bool) -> dict:
    status = "True" if hot else "False"
    return {
        "metadata": {"name": "n", "labels": {}},
        "spec": {},
        "status": {"conditions": [{"type": "ThermalPressure", "status": status}]},
    }


def profile(*rules: dict, status: dict | None = None, prom: str | None = None) -> dict:
    spec: dict = {"rules": list(rules)}
    if prom:
        spec["prometheus"] = {"url": prom, "interval": "30s", "timeout": "2s"}
    return {"metadata": {"name": "dc", "generation": 1}, "spec": spec, "status": status or {}}


async def rounds(kube: FakeKube, body: dict, *node_sets: dict) -> ProfileEvaluator:
    async with aiohttp.ClientSession() as session:
        evaluator = ProfileEvaluator(kube, session, body, SYSTEM, logging.getLogger("t"))  # type: ignore[arg-type]
        for nodes in node_sets:
            await evaluator.round(nodes)
        return evaluator


def test_a_flip_creates_one_save_event_and_persists_state() -> None:
    kube = FakeKube()
    body = profile(THERMAL)
    evaluator = asyncio.run(rounds(kube, body, {"n": node(True)}, {"n": node(True)}))
    assert len(kube.created) == 1
    namespace, name = kube.created[0]
    assert namespace == SYSTEM
    created = kube.objects[kube.created[0]]
    assert created["spec"]["targets"] == {"nodeName": "n", "allNamespaces": True}
    state = evaluator.status["rules"][0]["nodes"][0]
    assert state["saveEvent"] == f"{SYSTEM}/{name}"
    assert state["lastFiredTime"] == state["pendingSince"]
    assert evaluator.status["lastSaveEvent"] == f"{SYSTEM}/{name}"
    # pendingSince was written before the SaveEvent existed, lastFiredTime after.
    first, second = kube.status_writes[:2]
    assert "lastFiredTime" not in first["rules"][0]["nodes"][0]
    assert "lastFiredTime" in second["rules"][0]["nodes"][0]


def test_restart_with_persisted_state_does_not_fire_again() -> None:
    kube = FakeKube()
    evaluator = asyncio.run(rounds(kube, profile(THERMAL), {"n": node(True)}))
    again = FakeKube()
    asyncio.run(rounds(again, profile(THERMAL, status=evaluator.status), {"n": node(True)}))
    assert again.created == []


def test_crash_between_create_and_record_does_not_duplicate() -> None:
    kube = FakeKube()
    first = asyncio.run(rounds(kube, profile(THERMAL), {"n": node(True)}))
    # Pretend the operator died after creating the SaveEvent: only pendingSince was stored.
    stored = copy.deepcopy(kube.status_writes[0])
    second = asyncio.run(rounds(kube, profile(THERMAL, status=stored), {"n": node(True)}))
    assert len(kube.created) == 1
    assert second.status["lastSaveEvent"] == first.status["lastSaveEvent"]


def test_cool_node_fires_nothing() -> None:
    kube = FakeKube()
    asyncio.run(rounds(kube, profile(THERMAL), {"n": node(False)}))
    assert kube.created == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve_prometheus(
    result: list[dict], port: int, queries: list[str] | None = None
) -> web.AppRunner:
    """A Prometheus on ``port`` answering every query with ``result`` (and noting it)."""

    async def query(request: web.Request) -> web.Response:
        if queries is not None:
            queries.append(request.query["query"])
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def with_prometheus(result: list[dict], body: dict, kube: FakeKube) -> ProfileEvaluator:
    queries: list[str] = []
    port = free_port()
    runner = await serve_prometheus(result, port, queries)
    try:
        body["spec"]["prometheus"] = {"url": f"http://127.0.0.1:{port}", "timeout": "2s"}
        evaluator = await rounds(kube, body, {"n": node(False)})
    finally:
        await runner.cleanup()
    assert queries == ["node_battery_percent < 3"]
    return evaluator


PROM_RULE = {
    "name": "battery",
    "reason": "Power",
    "prometheus": {"query": "node_battery_percent < 3"},
}


def test_prometheus_rule_fires_for_the_named_node() -> None:
    kube = FakeKube()
    result = [{"metric": {"node": "n"}, "value": [0, "1"]}]
    evaluator = asyncio.run(with_prometheus(result, profile(PROM_RULE), kube))
    assert len(kube.created) == 1
    assert kube.objects[kube.created[0]]["spec"]["reason"] == "Power"
    ready = evaluator.status["conditions"][0]
    assert (ready["type"], ready["status"]) == ("Ready", "True")


def test_unreachable_prometheus_makes_ready_false() -> None:
    kube = FakeKube()
    body = profile(PROM_RULE, prom=f"http://127.0.0.1:{free_port()}")
    evaluator = asyncio.run(rounds(kube, body, {"n": node(False)}))
    ready = evaluator.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "PrometheusUnreachable")
    assert "connection refused" in ready["message"]
    assert kube.created == []


def test_unreachable_prometheus_is_told_once_and_so_is_its_recovery(
    events: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    body = profile(PROM_RULE, prom=f"http://127.0.0.1:{port}")
    body["spec"]["prometheus"]["interval"] = "0s"  # queried on every round
    kube = FakeKube()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            evaluator = ProfileEvaluator(kube, session, body, SYSTEM, logging.getLogger("t"))  # type: ignore[arg-type]
            for _ in range(3):
                await evaluator.round({"n": node(False)})
            runner = await serve_prometheus([], port)
            try:
                for _ in range(2):
                    await evaluator.round({"n": node(False)})
            finally:
                await runner.cleanup()

    with caplog.at_level(logging.INFO, logger="t"):
        asyncio.run(scenario())
    assert events == ["PrometheusUnreachable", "PrometheusReachable"]
    told = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "t"]
    assert [level for level, _ in told] == ["WARNING", "INFO"]
    assert told[0][1].startswith("Prometheus queries fail: battery: http://127.0.0.1:")
    assert told[0][1].endswith("connection refused")
    assert all(getattr(r, "k8s_skip", False) for r in caplog.records if r.name == "t")


def vmi() -> dict:
    return {
        "metadata": {"name": "web-1", "namespace": "t", "uid": "u"},
        "spec": {"evictionStrategy": "External"},
        "status": {"evacuationNodeName": "node-a"},
    }


def test_evacuation_creates_one_save_event(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    kube.partitions = [{"metadata": {"name": "web-1", "namespace": "t"}, "spec": {}}]
    monkeypatch.setattr(evacuation, "clients", lambda memo: (kube, None))
    monkeypatch.setattr(evacuation.kopf, "event", lambda *a, **k: None)
    logger = logging.getLogger("t")
    memo = kopf.Memo()
    controllers.operator_state(memo)

    async def twice() -> None:
        for _ in range(2):
            await evacuation.virtualmachineinstance_evacuate(body=vmi(), memo=memo, logger=logger)

    asyncio.run(twice())
    controllers.operator_state(memo)  # a restarted operator: what it made is forgotten...
    asyncio.run(twice())  # ...and it meets the existing SaveEvent
    assert len(kube.created) == 1
    (created,) = kube.objects.values()
    assert created["spec"]["reason"] == "Migration"
    assert created["spec"]["targets"] == {"partitions": ["web-1"]}
