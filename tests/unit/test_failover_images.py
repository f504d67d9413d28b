"""Consistency images: the schedule, the steps of one image (write-ahead), what they create and
record, and the daemon's passes over an in-memory API server (killed between any two)."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from lparkube.adapters.kube import PARTITION, SAVE_EVENT, VIRTUAL_MACHINE_SNAPSHOT
from lparkube.api.v1alpha1 import failover as api
from lparkube.controllers import consistency_images as controller
from lparkube.domain import consistency_images as ci
from lparkube.domain.clock import rfc3339

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
PENDING = {"saveEvent": "web-ci-1", "snapshotName": "web-ci-1", "startedAt": rfc3339(NOW)}


def partition(
    *, running: bool = True, failover: dict | None = None, keep: int = 3
) -> dict[str, Any]:
    conditions = [
        {"type": t, "status": "True" if running else "False"} for t in ("VMReady", "AgentConnected")
    ]
    spec = {"enabled": True, "bootImage": {"pvcName": "clean"}}
    spec["consistencyImage"] = {"interval": "1m", "keep": keep}
    return {
        "metadata": {"name": "web", "namespace": "t", "uid": "p-1", "resourceVersion": "1"},
        "spec": {"failover": spec},
        "status": {"conditions": conditions, "vmName": "web", "failover": failover or {}},
    }


def save_event(outcome: str | None, apps: list | None = None, message: str = "") -> dict:
    status: dict[str, Any] = {}
    if outcome is not None:
        status["conditions"] = [{"type": "Complete", "status": "True", "reason": outcome}]
        entry = {"namespace": "t", "name": "web", "outcome": outcome, "message": message}
        status["partitions"] = [{**entry, "applications": apps or []}]
    return {"metadata": {"name": "web-ci-1"}, "status": status}


def snapshot(ready: bool = False, **status: Any) -> dict:
    return {"metadata": {"name": "web-ci-1"}, "status": {"readyToUse": ready, **status}}


def step(failover: dict | None = None, save=None, snap=None, now=NOW, **kw: Any) -> ci.Step:
    return ci.next_step(partition(failover=failover, **kw), save, snap, now)


def test_an_image_begins_when_due_with_the_vm_running_and_its_agent_connected() -> None:
    assert step().action == ci.START
    assert step(running=False).action == ci.IDLE
    later = {"nextConsistencyImageTime": rfc3339(NOW + timedelta(seconds=30))}
    assert step(later).action == ci.IDLE
    assert step(later, now=NOW + timedelta(seconds=30)).action == ci.START
    failing = {"current": {"phase": api.FENCING}}
    assert step(failing).action == ci.IDLE, "never while a failover is under way"


def test_the_image_under_way_goes_on_from_what_exists() -> None:
    pending = {"pendingImage": PENDING}
    assert step(pending).action == ci.SAVE, "recorded, not made yet: make its SaveEvent"
    assert step(pending, save_event(None)).action == ci.WAIT
    assert step(pending, save_event("Succeeded")).action == ci.SNAPSHOT
    assert step(pending, snap=snapshot()).action == ci.WAIT
    assert step(pending, snap=snapshot(ready=True)).action == ci.RECORD
    assert step(pending, running=False, snap=snapshot(ready=True)).action == ci.RECORD


def test_a_failed_save_skips_the_image_and_says_why() -> None:
    pending = {"pendingImage": PENDING}
    apps = [{"name": "db", "outcome": "Failed", "message": "exit status 3"}]
    failed = step(pending, save_event("Failed", apps))
    assert failed == ci.Step(ci.SKIP, "SaveEvent web-ci-1 Failed: db Failed (exit status 3)")
    unreachable = step(pending, save_event("Unreachable", message="no agent endpoint"))
    assert unreachable.message == "SaveEvent web-ci-1 Unreachable: no agent endpoint"
    no_targets = save_event("NoTargets")
    no_targets["status"]["partitions"] = []
    assert step(pending, no_targets).action == ci.SKIP, "a save that never reached it"


def test_an_image_is_given_up_on_by_a_failover_a_failed_snapshot_or_age() -> None:
    failing = {"pendingImage": PENDING, "current": {"phase": api.DETECTED}}
    assert step(failing, snap=snapshot()) == ci.Step(ci.SKIP, "a failover began")
    failed = snapshot(phase="Failed", error={"message": "source locked"})
    assert step({"pendingImage": PENDING}, snap=failed).message == (
        "VirtualMachineSnapshot web-ci-1: source locked"
    )
    old = step({"pendingImage": PENDING}, now=NOW + timedelta(minutes=16))
    assert old == ci.Step(ci.SKIP, "not done within 15m")


def test_what_an_image_creates_is_labelled_and_owned_by_the_partition() -> None:
    p = partition()
    pending = ci.new_pending(p, NOW)
    assert pending == {
        "saveEvent": "web-ci-20250301-120000",
        "snapshotName": "web-ci-20250301-120000",
        "startedAt": "2025-03-01T12:00:00Z",
    }
    save = ci.save_event_body(p, pending)
    assert save["spec"] == {
        "reason": "Backup",
        "message": "before a consistency image of Partition web",
        "targets": {"partitions": ["web"]},
    }
    labels = {api.PURPOSE_LABEL: "consistency-image", "lparkube.io/partition": "web"}
    owner = [
        {"apiVersion": "lparkube.io/v1alpha1", "kind": "Partition", "name": "web", "uid": "p-1"}
    ]
    assert save["metadata"] == {
        "name": pending["saveEvent"],
        "labels": labels,
        "ownerReferences": owner,
    }
    snap = ci.snapshot_body(p, pending, "web-vm")
    assert snap["metadata"]["labels"] == {**labels, "lparkube.io/save-event": pending["saveEvent"]}
    assert snap["metadata"]["ownerReferences"] == owner
    assert snap["spec"]["source"] == {
        "apiGroup": "kubevirt.io",
        "kind": "VirtualMachine",
        "name": "web-vm",
    }
    assert (
        ci.snapshot_selector(p)
        == "lparkube.io/failover=consistency-image,lparkube.io/partition=web"
    )


def test_the_entry_names_the_snapshot_its_save_and_its_consistency() -> None:
    ready = snapshot(
        True, creationTime="2025-03-01T12:00:05Z", indications=["Online", "GuestAgent"]
    )
    entry = ci.image_entry(PENDING, ready, NOW)
    assert entry == {
        "name": "web-ci-1",
        "time": "2025-03-01T12:00:05Z",
        "consistency": api.APPLICATION_CONSISTENT,
        "saveEvent": "web-ci-1",
    }
    assert "application-consistent" in ci.taken_message(entry)
    crash = ci.image_entry(PENDING, snapshot(True, indications=["NoGuestAgent"]), NOW)
    assert (crash["consistency"], crash["time"]) == (api.CRASH_CONSISTENT, rfc3339(NOW))
    assert "only crash-consistent" in ci.taken_message(crash)


def test_the_snapshots_kept_are_those_listed_under_way_or_being_restored() -> None:
    status = {
        "consistencyImages": [{"name": "a"}, {"name": "b"}],
        "pendingImage": {"snapshotName": "c"},
        "current": {"phase": api.RESTORING, "snapshotName": "z"},
    }
    assert ci.kept_snapshots(partition(failover=status)) == {"a", "b", "c", "z"}
    status["current"]["phase"] = api.DONE
    assert ci.kept_snapshots(partition(failover=status)) == {"a", "b", "c"}


# --- the daemon's passes over an in-memory API server ------------------------------------------


def merged(old: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(old, dict):
        return copy.deepcopy(patch)
    out = dict(old)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merged(old.get(key), value)
    return out


class FakeKube:
    """Partitions, SaveEvents and VirtualMachineSnapshots; status patches guarded by
    resourceVersion; ``created`` in order."""

    def __init__(self, part: dict) -> None:
        self.objects = {(PARTITION.plural, "web"): part}
        self.created: list[tuple[str, str]] = []
        self.deleted: list[str] = []

    async def get(self, ref: Any, namespace: str, name: str) -> dict | None:
        return copy.deepcopy(self.objects.get((ref.plural, name)))

    async def create(self, ref: Any, namespace: str, body: dict) -> dict:
        key = (ref.plural, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[key] = copy.deepcopy(body)
        self.created.append(key)
        return body

    async def patch(self, ref: Any, namespace: str, name: str, patch: dict, *, status: bool):
        stored = self.objects[(ref.plural, name)]
        rv = patch.get("metadata", {}).get("resourceVersion")
        if rv is not None and rv != stored["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        stored = merged(stored, {"status": patch["status"]})
        stored["metadata"]["resourceVersion"] = str(int(stored["metadata"]["resourceVersion"]) + 1)
        self.objects[(ref.plural, name)] = stored
        return copy.deepcopy(stored)

    async def list(self, ref: Any, namespace: str, label_selector: str = "") -> list[dict]:
        wanted = dict(kv.split("=") for kv in label_selector.split(","))
        return [
            copy.deepcopy(o)
            for (plural, _), o in self.objects.items()
            if plural == ref.plural and wanted.items() <= o["metadata"].get("labels", {}).items()
        ]

    async def delete_path(self, path: str) -> bool:
        name = path.rsplit("/", 1)[1]
        self.deleted.append(name)
        return self.objects.pop((VIRTUAL_MACHINE_SNAPSHOT.plural, name), None) is not None

    def status(self) -> dict:
        return self.objects[(PARTITION.plural, "web")]["status"]["failover"]

    def finish(self, plural: str, status: dict) -> None:
        """The SaveEvent's or the snapshot's controller: what it made is done."""
        for (kind, _), obj in self.objects.items():
            if kind == plural:
                obj["status"] = status


@pytest.fixture(autouse=True)
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(
        controller.kopf,
        "event",
        lambda body, *, type, reason, message: posted.append((type, reason)),
    )
    return posted


def passes(kube: FakeKube, count: int, now: datetime = NOW) -> None:
    """``count`` passes, each by an operator started anew (the one before killed after it)."""
    for _ in range(count):
        run = controller.ConsistencyImages(kube, "t", "web", now=lambda: now)  # type: ignore[arg-type]
        part = asyncio.run(kube.get(PARTITION, "t", "web"))
        asyncio.run(run.run_pass(part))


SAVED = save_event("Succeeded")["status"]
READY = {"readyToUse": True, "creationTime": rfc3339(NOW), "indications": ["GuestAgent"]}


def test_a_killed_operator_goes_on_with_the_same_image_and_takes_one(events) -> None:
    kube = FakeKube(partition(keep=1))
    passes(kube, 1)
    pending = kube.status()["pendingImage"]
    assert kube.created == [(SAVE_EVENT.plural, pending["saveEvent"])]
    assert kube.status()["nextConsistencyImageTime"] == rfc3339(NOW + timedelta(minutes=1))
    passes(kube, 2)
    assert len(kube.created) == 1, "the save under way: nothing new"
    kube.finish(SAVE_EVENT.plural, SAVED)
    passes(kube, 2)
    assert kube.created[1] == (VIRTUAL_MACHINE_SNAPSHOT.plural, pending["snapshotName"])
    assert len(kube.created) == 2
    kube.finish(VIRTUAL_MACHINE_SNAPSHOT.plural, READY)
    passes(kube, 2)
    status = kube.status()
    assert "pendingImage" not in status
    assert status["consistencyImages"] == [
        {"name": pending["snapshotName"], "time": rfc3339(NOW), "consistency": "Application",
         "saveEvent": pending["saveEvent"]}
    ]  # fmt: skip
    assert events == [("Normal", api.CONSISTENCY_IMAGE_TAKEN_EVENT)]
    assert len(kube.created) == 2, "not due again before the interval"

    later = NOW + timedelta(minutes=1, seconds=5)
    passes(kube, 1, later)
    kube.finish(SAVE_EVENT.plural, SAVED)
    passes(kube, 1, later)
    kube.objects[(VIRTUAL_MACHINE_SNAPSHOT.plural, kube.created[-1][1])]["status"] = READY
    passes(kube, 1, later)
    assert [i["name"] for i in kube.status()["consistencyImages"]] == [kube.created[-1][1]]
    assert kube.deleted == [pending["snapshotName"]], "keep 1: the older one pruned"


def test_a_failed_save_skips_without_a_snapshot(events) -> None:
    kube = FakeKube(partition())
    passes(kube, 1)
    kube.finish(SAVE_EVENT.plural, save_event("Failed")["status"])
    passes(kube, 3)
    assert [k for k, _ in kube.created] == [SAVE_EVENT.plural]
    status = kube.status()
    assert "pendingImage" not in status and "consistencyImages" not in status
    assert events == [("Warning", api.CONSISTENCY_IMAGE_SKIPPED_EVENT)]


def test_a_write_that_lost_a_race_is_decided_again() -> None:
    kube = FakeKube(partition())
    run = controller.ConsistencyImages(kube, "t", "web", now=lambda: NOW)  # type: ignore[arg-type]
    stale = asyncio.run(kube.get(PARTITION, "t", "web"))
    asyncio.run(
        kube.patch(
            PARTITION, "t", "web", {"status": {"failover": {"leaseExpiry": "x"}}}, status=True
        )
    )
    with pytest.raises(ApiException):
        asyncio.run(run.run_pass(stale))
    assert kube.created == [] and "pendingImage" not in kube.status()
    passes(kube, 1)
    assert kube.status()["leaseExpiry"] == "x", "another writer's key left as it was"
    assert kube.status()["pendingImage"]
