"""The SaveEvent run against an in-memory API and fake agents: ordering, resume, deadline."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from lparkube.adapters.guest_agent import AgentError, AgentTarget
from lparkube.adapters.status_writer import JSON_PATCH
from lparkube.controllers import save_run
from lparkube.domain import saving
from lparkube.domain.clock import rfc3339

NS = "tenant"
SYSTEM = "lparkube-system"
UID = "uid-1"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(doc: dict, ops: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = op["path"].strip("/").split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            index = int(last)
            if op["op"] == "replace" and index >= len(node):
                raise ApiError(422)
            node[index] = op["value"]
        else:
            node[last] = op["value"]
    return doc


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class FakeKube:
    """Just the calls the SaveEvent run makes, over a dict of objects."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.status_patches: list[str] = []
        self.secret_reads = 0
        self.custom = self
        self.core = self
        self.api_client = SimpleNamespace(sanitize_for_serialization=lambda x: x)

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.001)  # the real one waits for a thread, and other tasks run
        return fn(*args, **kwargs)

    async def list(self, ref: Any, namespace: str | None = None, label_selector: str = "") -> list:
        return [
            copy.deepcopy(o)
            for (plural, ns, _), o in sorted(self.objects.items())
            if plural == ref.plural and (namespace is None or ns == namespace)
        ]

    async def get(self, ref: Any, namespace: str, name: str) -> dict | None:
        found = self.objects.get((ref.plural, namespace, name))
        return copy.deepcopy(found) if found else None

    async def create(self, ref: Any, namespace: str, body: dict) -> dict:
        self.objects[(ref.plural, namespace, body["metadata"]["name"])] = copy.deepcopy(body)
        return body

    async def patch(
        self, ref: Any, namespace: str, name: str, patch: dict, *, status: bool = False
    ) -> dict:
        key = (ref.plural, namespace, name)
        self.objects[key] = merge_patch(self.objects[key], patch)
        self.status_patches.append("merge")
        return self.objects[key]

    async def patch_status_encoded(
        self, ref: Any, namespace: str, name: str, payload: bytes, *, content_type: str
    ) -> None:
        key = (ref.plural, namespace, name)
        if content_type == JSON_PATCH:
            self.objects[key] = json_patch(self.objects[key], json.loads(payload))
            self.status_patches.append("json")
        else:
            self.objects[key] = merge_patch(self.objects[key], json.loads(payload))
            self.status_patches.append("merge")

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        self.secret_reads += 1  # saving must never read a Secret: keys are derived
        raise AssertionError("a Secret was read")

    def list_namespaced_secret(self, namespace: str, **kwargs: Any) -> Any:
        self.secret_reads += 1
        raise AssertionError("Secrets were listed")

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        assert kwargs["_preload_content"] is False
        return SimpleNamespace(data=b'{"items": []}')

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        assert kwargs["_preload_content"] is False
        return SimpleNamespace(data=b'{"items": []}')

    def save_event(self, name: str = "se", namespace: str = NS) -> dict:
        return self.objects[("saveevents", namespace, name)]


class FakeAgents:
    """Records every call; checks the partition was stored Instructed before it was sent."""

    def __init__(self, kube: FakeKube, modes: dict[str, str] | None = None, ns: str = NS) -> None:
        self.kube = kube
        self.ns = ns
        self.modes = modes or {}
        self.calls: list[tuple[str, dict]] = []

    async def save(
        self,
        target: AgentTarget,
        instruction: dict,
        *,
        timeout: float,
        on_progress: Callable[[dict], None] | None = None,
        first_wait: float | None = None,
    ) -> dict:
        assert first_wait is not None, "an instruction waits briefly, then polls"
        self.calls.append((target.partition, instruction))
        mode = self.modes.get(target.partition.split("/")[1], "ok")
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "slow":  # answers its instruction late, as an agent behind a slow link
            await asyncio.sleep(1.5)
        if mode == "refuse":
            raise AgentError("unreachable", "connection refused")
        if mode == "reject":
            raise AgentError("rejected", "bad-signature")
        if mode == "defect":
            raise TypeError("save() got an unexpected keyword argument")
        apps = [
            {"name": "db", "priority": 1, "order": 1, "method": "Signal", "outcome": "Saved"},
            {"name": "ui", "priority": 5, "order": 2, "method": "HTTP", "outcome": "Saved"},
        ]
        if mode == "app-timeout":
            apps[1]["outcome"] = "TimedOut"
        return {"id": instruction["id"], "state": "Completed", "applications": apps}


def add_partition(kube: FakeKube, name: str, *, node: str = "node-a", connected: bool = True):
    kube.objects[("partitions", NS, name)] = {
        "metadata": {"name": name, "namespace": NS},
        "spec": {},
        "status": {
            "nodeName": node,
            "agent": {"endpoint": "127.0.0.1:1", "keySecretName": f"{name}-key"},
            "conditions": [{"type": "AgentConnected", "status": "True" if connected else "False"}],
        },
    }


def add_save_event(kube: FakeKube, spec: dict, *, status: dict | None = None, ns: str = NS):
    created = datetime.now(UTC).replace(microsecond=0)
    body = {
        "apiVersion": "lparkube.io/v1alpha1",
        "kind": "SaveEvent",
        "metadata": {
            "name": "se",
            "namespace": ns,
            "uid": UID,
            "generation": 1,
            "creationTimestamp": rfc3339(created),
        },
        "spec": {"reason": "Thermal", **spec},
    }
    if status is not None:
        body["status"] = status
    kube.objects[("saveevents", ns, "se")] = body
    return body


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(
        save_run.kopf,
        "event",
        lambda body, *, type, reason, message: posted.append((reason, message)),
    )
    yield posted


def run(kube: FakeKube, agents: FakeAgents, ns: str = NS) -> dict:
    body = copy.deepcopy(kube.save_event(namespace=ns))
    logger = logging.getLogger("test")
    asyncio.run(save_run.SaveRun(kube, agents, body, SYSTEM, logger).execute())  # type: ignore[arg-type]
    return kube.save_event(namespace=ns)["status"]


def by_name(status: dict) -> dict[str, dict]:
    return {p["name"]: p for p in status["partitions"]}


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_all_targets_saved_and_recorded(events: list) -> None:
    kube = FakeKube()
    for name in ("a", "b", "c"):
        add_partition(kube, name)
    add_partition(kube, "off", connected=False)
    add_save_event(kube, {"targets": {"all": True}})
    agents = FakeAgents(kube, {"c": "app-timeout"})
    status = run(kube, agents)
    parts = by_name(status)
    assert parts["a"]["outcome"] == "Succeeded"
    assert [a["name"] for a in parts["a"]["applications"]] == ["db", "ui"]
    assert parts["c"]["outcome"] == "Failed"
    assert parts["c"]["applications"][1]["outcome"] == "TimedOut"
    assert parts["off"]["outcome"] == "Unreachable"
    assert sorted(p for p, _ in agents.calls) == ["tenant/a", "tenant/b", "tenant/c"]
    assert {i["id"] for _, i in agents.calls} == {UID}
    assert status["summary"] == {
        "partitions": 4,
        "pending": 0,
        "succeeded": 2,
        "failed": 2,
        "applications": 6,
        "applicationsSaved": 5,
        "applicationsFailed": 1,
    }
    assert condition(status, "Complete")["status"] == "True"
    assert condition(status, "Complete")["reason"] == "PartiallySucceeded"
    assert condition(status, "Succeeded")["status"] == "False"
    assert {"startTime", "deadlineTime", "completionTime"} <= set(status)
    reasons = [r for r, _ in events]
    assert reasons[0] == "Instructed" and reasons[-1] == "Completed"
    assert reasons.count("SaveFailed") == 2 and reasons.count("Saved") == 2


def test_targets_come_from_the_cache_without_a_list(events: list) -> None:
    kube = FakeKube()
    for name in ("a", "b"):
        add_partition(kube, name)
    add_save_event(kube, {"targets": {"all": True}})
    cache = [saving.target_fields(o) for (plural, _, _), o in kube.objects.items()
             if plural == "partitions"][:1]  # fmt: skip
    scopes: list[str | None] = []

    async def listed(*_: Any, **__: Any) -> list:
        raise AssertionError("listed the Partitions although a cache was given")

    kube.list = listed  # type: ignore[method-assign]
    agents = FakeAgents(kube)
    body = copy.deepcopy(kube.save_event())
    saver = save_run.SaveRun(kube, agents, body, SYSTEM, logging.getLogger("test"))  # type: ignore[arg-type]
    saver.cached = lambda scope: scopes.append(scope) or cache
    asyncio.run(saver.execute())
    assert scopes == [NS]
    assert [p for p, _ in agents.calls] == ["tenant/a"]
    assert by_name(kube.save_event()["status"])["a"]["outcome"] == "Succeeded"


def test_resume_reattaches_instructed_and_never_resends_finished(events: list) -> None:
    kube = FakeKube()
    for name in ("done", "inflight", "pending"):
        add_partition(kube, name)
    stored = {
        "startTime": "2026-01-01T00:00:00Z",
        "partitions": [
            {"namespace": NS, "name": "done", "outcome": "Succeeded", "applications": []},
            {"namespace": NS, "name": "inflight", "outcome": "Instructed"},
            {"namespace": NS, "name": "pending", "outcome": "Pending"},
        ],
    }
    add_save_event(kube, {"targets": {"all": True}}, status=stored)
    agents = FakeAgents(kube)
    status = run(kube, agents)
    assert sorted(p for p, _ in agents.calls) == ["tenant/inflight", "tenant/pending"]
    assert all(p["outcome"] == "Succeeded" for p in status["partitions"])
    assert condition(status, "Complete")["reason"] == "Succeeded"


def test_deadline_times_out_a_hanging_agent(events: list) -> None:
    kube = FakeKube()
    add_partition(kube, "fast")
    add_partition(kube, "slow")
    add_save_event(kube, {"targets": {"all": True}, "deadline": "2s", "applicationTimeout": "1s"})
    started = datetime.now(UTC)
    status = run(kube, FakeAgents(kube, {"slow": "hang"}))
    assert (datetime.now(UTC) - started) < timedelta(seconds=4)
    assert by_name(status)["slow"]["outcome"] == "TimedOut"
    assert by_name(status)["fast"]["outcome"] == "Succeeded"
    assert condition(status, "Complete")["reason"] == "DeadlineExceeded"


def test_a_timed_out_partition_says_what_its_last_attempt_failed_on(events: list) -> None:
    kube = FakeKube()
    add_partition(kube, "refusing")  # its agent stays connected, its endpoint refuses
    add_save_event(kube, {"targets": {"all": True}, "deadline": "2s"})
    status = run(kube, FakeAgents(kube, {"refusing": "refuse"}))
    refusing = by_name(status)["refusing"]
    assert refusing["outcome"] == "TimedOut"
    assert refusing["message"] == (
        "the deadline passed before it finished; last attempt: connection refused"
    )
    assert ("SaveFailed", f"{NS}/refusing: TimedOut: {refusing['message']}") in events


def test_agent_that_stops_answering_and_disconnects_is_unreachable(events: list) -> None:
    kube = FakeKube()
    add_partition(kube, "gone")
    add_save_event(kube, {"targets": {"all": True}, "deadline": "30s"})
    agents = FakeAgents(kube, {"gone": "refuse"})

    async def disconnect_later() -> None:
        await asyncio.sleep(0.3)
        conditions = kube.objects[("partitions", NS, "gone")]["status"]["conditions"]
        conditions[0]["status"] = "False"

    async def both() -> None:
        body = copy.deepcopy(kube.save_event())
        run_ = save_run.SaveRun(kube, agents, body, SYSTEM, logging.getLogger("t"))  # type: ignore[arg-type]
        await asyncio.gather(run_.execute(), disconnect_later())

    asyncio.run(both())
    status = kube.save_event()["status"]
    assert by_name(status)["gone"]["outcome"] == "Unreachable"
    assert len(agents.calls) >= 2  # retried while the Partition still said connected
    assert condition(status, "Complete")["reason"] == "Failed"


def test_rejected_instruction_fails_the_partition(events: list) -> None:
    kube = FakeKube()
    add_partition(kube, "p")
    add_save_event(kube, {"targets": {"partitions": ["p", "ghost"]}})
    status = run(kube, FakeAgents(kube, {"p": "reject"}))
    assert by_name(status)["p"]["outcome"] == "Failed"
    assert "rejected" in by_name(status)["p"]["message"]
    assert by_name(status)["ghost"]["outcome"] == "Failed"


def test_a_defect_fails_its_partition_at_once_instead_of_retrying(events: list) -> None:
    kube = FakeKube()
    for name in ("p", "q"):
        add_partition(kube, name)
    add_save_event(kube, {"targets": {"all": True}, "deadline": "10m"})
    agents = FakeAgents(kube, {"p": "defect"})
    status = run(kube, agents)
    assert by_name(status)["p"]["outcome"] == "Failed"
    assert "internal error: TypeError" in by_name(status)["p"]["message"]
    assert by_name(status)["q"]["outcome"] == "Succeeded"
    assert [p for p, _ in agents.calls].count("tenant/p") == 1


def test_all_namespaces_refused_outside_the_system_namespace(events: list) -> None:
    kube = FakeKube()
    add_partition(kube, "p")
    add_save_event(kube, {"targets": {"all": True, "allNamespaces": True}})
    agents = FakeAgents(kube)
    status = run(kube, agents)
    assert agents.calls == []
    assert condition(status, "Complete") | {"lastTransitionTime": ""} == {
        "type": "Complete",
        "status": "True",
        "reason": "Refused",
        "message": condition(status, "Complete")["message"],
        "observedGeneration": 1,
        "lastTransitionTime": "",
    }
    assert (condition(status, "Succeeded")["status"], status["observedGeneration"]) == ("False", 1)
    assert "completionTime" in status and "partitions" not in status
    assert saving.finished(status)


def test_more_targets_than_one_event_holds_are_refused(
    events: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saving, "MAX_TARGETS", 2)
    kube = FakeKube()
    for name in ("p1", "p2", "p3"):
        add_partition(kube, name)
    add_save_event(kube, {"targets": {"all": True}})
    agents = FakeAgents(kube)
    status = run(kube, agents)
    assert agents.calls == []
    assert condition(status, "Complete")["reason"] == "Refused"
    assert "3 partitions match" in condition(status, "Complete")["message"]
    assert "partitions" not in status


def test_a_selector_that_matches_nothing_completes_with_a_warning(events: list) -> None:
    kube = FakeKube()
    add_partition(kube, "p")
    add_save_event(kube, {"targets": {"selector": {"matchLabels": {"tier": "db"}}}})
    status = run(kube, FakeAgents(kube))
    message = (
        f"no Partition matched the targets (selector tier=db in namespace {NS}); "
        "nothing was instructed"
    )
    complete, succeeded = condition(status, "Complete"), condition(status, "Succeeded")
    assert (complete["status"], complete["reason"], complete["message"]) == (
        "True",
        "NoTargets",
        message,
    )
    assert (succeeded["status"], succeeded["reason"]) == ("True", "NoTargets")
    assert [reason for reason, _ in events] == ["NoTargets", "Completed"]
    assert events[0] == ("NoTargets", message)


def test_system_namespace_reaches_every_namespace(events: list) -> None:
    kube = FakeKube()
    add_partition(kube, "p")
    add_save_event(kube, {"targets": {"nodeName": "node-a", "allNamespaces": True}}, ns=SYSTEM)
    agents = FakeAgents(kube, ns=SYSTEM)
    status = run(kube, agents, ns=SYSTEM)
    assert [p["name"] for p in status["partitions"]] == ["p"]


def test_many_partitions_coalesce_status_writes(events: list) -> None:
    kube = FakeKube()
    for i in range(300):
        add_partition(kube, f"p{i:03}")
    add_save_event(kube, {"targets": {"all": True}})
    status = run(kube, FakeAgents(kube))
    assert status["summary"]["succeeded"] == 300
    assert len(kube.status_patches) <= 3  # the first (Instructed), maybe one more, the last
    assert kube.secret_reads == 0  # keys derived from the operator's identity, none read
    assert events[0][0] == "Instructed" and len(events) == 2  # summaries only


def test_results_and_status_wait_until_every_instruction_is_out(events: list) -> None:
    """A fast partition's result is recorded only once the slow one has its instruction, with
    the time it arrived; no status is written while instructions are still going out."""
    kube = FakeKube()
    for name in ("fast", "slow", *(f"p{i}" for i in range(8))):  # enough to list the keys
        add_partition(kube, name)
    add_save_event(kube, {"targets": {"all": True}})
    agents = FakeAgents(kube, {"slow": "slow"})
    answered: list[str] = []
    written_after: list[list[str]] = []
    save, patch = agents.save, kube.patch_status_encoded

    async def save_and_note(target: AgentTarget, *args: Any, **kwargs: Any) -> dict:
        result = await save(target, *args, **kwargs)
        answered.append(target.partition)
        return result

    async def patch_and_note(*args: Any, **kwargs: Any) -> None:
        written_after.append(list(answered))
        await patch(*args, **kwargs)

    agents.save = save_and_note  # type: ignore[method-assign]
    kube.patch_status_encoded = patch_and_note  # type: ignore[method-assign]
    began = datetime.now(UTC)
    status = run(kube, agents)
    assert written_after and all("tenant/slow" in seen for seen in written_after)
    fast, slow = by_name(status)["fast"], by_name(status)["slow"]
    assert fast["outcome"] == slow["outcome"] == "Succeeded"
    # the fast result keeps the second it arrived in (timestamps have whole seconds), not
    # the one it was recorded in, 1.5 s later
    assert saving.parse_time(fast["completionTime"]) < began + timedelta(seconds=0.5)
    assert kube.secret_reads == 0
