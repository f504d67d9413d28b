"""Consistency images (seed 002) as pure functions: when one begins, what the next step of the
one under way is, and what it creates and records.

An image is a SaveEvent for exactly this partition and then, only if it saved, a
VirtualMachineSnapshot of its VM. Both names are recorded (``status.failover.pendingImage``)
before either object is made, so a restarted operator goes on with the same image instead of
taking a second one; a step reads what exists (the SaveEvent, the snapshot) and decides again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lparkube.api.v1alpha1 import failover as api
from lparkube.domain import failover as fo
from lparkube.domain import saving
from lparkube.domain.clock import parse_time, rfc3339
from lparkube.domain.conditions import find, is_true
from lparkube.domain.partition import PARTITION_LABEL, owner_reference

PENDING_LIMIT = timedelta(minutes=15)  # a save's and a snapshot's own deadlines are 5m each

# What a pass does next.
IDLE = "Idle"  # not due, or the VM or its agent is not there
START = "Start"  # record a new pending image
SAVE = "Save"  # create its SaveEvent
SNAPSHOT = "Snapshot"  # the save succeeded: create the VirtualMachineSnapshot
WAIT = "Wait"  # the save or the snapshot is under way
RECORD = "Record"  # the snapshot is ready: list it, prune the oldest
SKIP = "Skip"  # the save failed (or the snapshot, or a failover began): no image this time


@dataclass(frozen=True)
class Step:
    action: str
    message: str = ""


def pending_image(partition: Mapping[str, Any]) -> Mapping[str, Any]:
    return fo.failover_status(partition).get("pendingImage") or {}


def may_start(partition: Mapping[str, Any], now: datetime) -> bool:
    """Due, none under way, and the VM runs with its agent connected."""
    conditions = (partition.get("status") or {}).get("conditions")
    running = is_true(conditions, "VMReady") and is_true(conditions, "AgentConnected")
    return running and not pending_image(partition) and fo.consistency_image_due(partition, now)


def next_step(
    partition: Mapping[str, Any],
    save_event: Mapping[str, Any] | None,
    snapshot: Mapping[str, Any] | None,
    now: datetime,
) -> Step:
    """The next step of the image under way (read: its SaveEvent and snapshot), or whether
    one begins."""
    pending = pending_image(partition)
    if not pending:
        return Step(START if may_start(partition, now) else IDLE)
    abandoned = _abandoned(partition, pending, now)
    if abandoned:
        return Step(SKIP, abandoned)
    if snapshot is not None:
        return _snapshot_step(snapshot, pending)
    if save_event is None:
        return Step(SAVE)
    saved, message = save_outcome(save_event, partition)
    if saved is None:
        return Step(WAIT)
    return Step(SNAPSHOT) if saved else Step(SKIP, message)


def _abandoned(partition: Mapping[str, Any], pending: Mapping[str, Any], now: datetime) -> str:
    """Why the image under way is given up on (a failover began, or it took too long)."""
    if fo.failing_over(partition):
        return "a failover began"
    started = parse_time(pending.get("startedAt"))
    if started is not None and now - started > PENDING_LIMIT:
        return f"not done within {int(PENDING_LIMIT.total_seconds()) // 60}m"
    return ""


def _snapshot_step(snapshot: Mapping[str, Any], pending: Mapping[str, Any]) -> Step:
    status = snapshot.get("status") or {}
    if status.get("phase") == "Failed":
        error = (status.get("error") or {}).get("message") or "failed"
        return Step(SKIP, f"VirtualMachineSnapshot {pending.get('snapshotName')}: {error}")
    return Step(RECORD if status.get("readyToUse") else WAIT)


def save_outcome(
    save_event: Mapping[str, Any], partition: Mapping[str, Any]
) -> tuple[bool | None, str]:
    """Whether the SaveEvent saved this partition (None: not complete yet), and why not."""
    status = save_event.get("status") or {}
    complete = find(status.get("conditions"), saving.COMPLETE) or {}
    if complete.get("status") != "True":
        return None, ""
    meta = partition["metadata"]
    entry = next(
        (
            p
            for p in status.get("partitions") or []
            if (p.get("namespace"), p.get("name")) == (meta["namespace"], meta["name"])
        ),
        {},
    )
    if entry.get("outcome") == saving.SUCCEEDED:
        return True, ""
    failed = [
        f"{a.get('name')} {a.get('outcome')}" + (f" ({a['message']})" if a.get("message") else "")
        for a in entry.get("applications") or []
        if a.get("outcome") in saving.APP_FAILURES
    ]
    why = "; ".join(failed) or entry.get("message") or complete.get("message") or "not saved"
    outcome = entry.get("outcome") or complete.get("reason")
    return False, f"SaveEvent {save_event['metadata']['name']} {outcome}: {why}"


def image_name(partition_name: str, now: datetime) -> str:
    """The name of an image's SaveEvent and of its snapshot: the partition and the time."""
    return f"{partition_name[:230]}-ci-{now.strftime('%Y%m%d-%H%M%S')}"


def new_pending(partition: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    name = image_name(partition["metadata"]["name"], now)
    return {"saveEvent": name, "snapshotName": name, "startedAt": rfc3339(now)}


def _labels(partition: Mapping[str, Any]) -> dict[str, str]:
    return {
        api.PURPOSE_LABEL: api.CONSISTENCY_IMAGE_PURPOSE,
        PARTITION_LABEL: saving.label_value(partition["metadata"]["name"]),
    }


def snapshot_selector(partition: Mapping[str, Any]) -> str:
    """The label selector of this partition's consistency-image snapshots."""
    return ",".join(f"{k}={v}" for k, v in _labels(partition).items())


def _metadata(partition: Mapping[str, Any], name: str) -> dict[str, Any]:
    owner = owner_reference(dict(partition), controller=False)
    return {"name": name, "labels": _labels(partition), "ownerReferences": [owner]}


def save_event_body(partition: Mapping[str, Any], pending: Mapping[str, Any]) -> dict[str, Any]:
    """A Backup SaveEvent for exactly this partition, owned by it."""
    name = partition["metadata"]["name"]
    return {
        "kind": "SaveEvent",
        "metadata": _metadata(partition, pending["saveEvent"]),
        "spec": {
            "reason": "Backup",
            "message": f"before a consistency image of Partition {name}",
            "targets": {"partitions": [name]},
        },
    }


def snapshot_body(
    partition: Mapping[str, Any], pending: Mapping[str, Any], vm_name: str
) -> dict[str, Any]:
    body = saving.snapshot_body(
        pending["snapshotName"], partition["metadata"]["name"], vm_name, pending["saveEvent"]
    )
    meta = _metadata(partition, pending["snapshotName"])
    body["metadata"] = {**meta, "labels": {**body["metadata"]["labels"], **meta["labels"]}}
    return body


def image_entry(
    pending: Mapping[str, Any], snapshot: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """The status.failover.consistencyImages entry of a ready snapshot."""
    ready = parse_time((snapshot.get("status") or {}).get("creationTime")) or now
    return {
        "name": pending["snapshotName"],
        "time": rfc3339(ready),
        "consistency": fo.consistency_of(snapshot),
        "saveEvent": pending["saveEvent"],
    }


def kept_snapshots(partition: Mapping[str, Any]) -> set[str]:
    """The snapshots not to delete: those listed, the one under way, and the one a failover
    under way restores."""
    status = fo.failover_status(partition)
    names = {i.get("name") for i in status.get("consistencyImages") or []}
    names.add(pending_image(partition).get("snapshotName"))
    if fo.failing_over(partition):
        names.add(fo.current_failure(partition).get("snapshotName"))
    return {n for n in names if n}


def taken_message(entry: Mapping[str, Any]) -> str:
    how = (
        "application-consistent (the guest agent froze the file systems)"
        if entry["consistency"] == api.APPLICATION_CONSISTENT
        else "only crash-consistent (no guest agent froze the file systems)"
    )
    return f"consistency image {entry['name']} after SaveEvent {entry['saveEvent']}: {how}"
