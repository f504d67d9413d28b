"""The storage behind a Partition's disks: what backs each disk now, what changed since the
Partition's status recorded it, and what the guest is told (pure; the controller reads).

A disk backed by a claim (a ``persistentVolumeClaim`` volume, or a ``dataVolume`` one: a
DataVolume's claim has the DataVolume's name) is backed by the claim's uid, its PersistentVolume
and its capacity. Compared with ``status.disks`` (what was recorded last), a disk is:

* ``Replaced`` when its claim's uid or its volume differs (the claim was deleted and made again
  under the same name, or bound to another volume), or it comes back after being lost;
* ``Resized`` when its capacity differs;
* ``Lost`` when its claim is gone or ``Lost``, or its volume is gone, ``Failed`` or
  ``Released`` (a volume not bound to this claim any more).

A disk seen for the first time changes nothing: there is nothing it was before. A disk whose
claim is only ``Pending`` is recorded without a volume, so binding it later is no change either.
The changes of one comparison are one change, with an id derived from what changed (and the
previous change's id), so the same change always gets the same id: the guest agent receives it
by id and acts on an id once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from lparkube.api.v1alpha1.partition import (
    BACKING_LOST,
    BACKING_LOST_EVENT,
    BACKING_REPLACED_EVENT,
    BACKING_RESIZED_EVENT,
    CLAIM_PENDING,
    MAX_DISKS,
    STORAGE_BOUND,
    STORAGE_READY,
)
from lparkube.domain.conditions import Condition
from lparkube.domain.logical_units import format_size, parse_size

REPLACED, RESIZED, LOST = "Replaced", "Resized", "Lost"
# The event of each change: (reason, type)
EVENTS = {
    REPLACED: (BACKING_REPLACED_EVENT, "Normal"),
    RESIZED: (BACKING_RESIZED_EVENT, "Normal"),
    LOST: (BACKING_LOST_EVENT, "Warning"),
}
# The phases a disk's backing is recorded with: the claim's own, or Lost for a volume gone.
BOUND, PENDING = "Bound", "Pending"
MAX_NAMES_SHOWN = 8  # disks named in one condition message or event
CHANGE_ID_PREFIX = "sc-"
LOST_VOLUME_PHASES = ("Failed", "Released")


@dataclass(frozen=True)
class ClaimedDisk:
    """A disk of the VM and the claim behind it, as the VM spec names them."""

    disk: str
    serial: str
    claim: str


@dataclass(frozen=True)
class Backing:
    """What backs one disk now (or what status recorded it was backed by)."""

    disk: str
    serial: str
    claim_name: str
    claim_uid: str
    volume_name: str
    capacity_bytes: int | None
    phase: str  # Bound, Pending or Lost

    def status(self) -> dict[str, Any]:
        """The disk's entry in status.disks (absent facts left out)."""
        entry: dict[str, Any] = {
            "name": self.disk,
            "serial": self.serial,
            "claimName": self.claim_name,
            "phase": self.phase,
        }
        if self.claim_uid:
            entry["claimUid"] = self.claim_uid
        if self.volume_name:
            entry["volumeName"] = self.volume_name
        if self.capacity_bytes is not None:
            entry["capacityBytes"] = self.capacity_bytes
        return entry

    @classmethod
    def recorded(cls, entry: dict[str, Any]) -> Backing:
        """A status.disks entry read back (missing fields empty)."""
        capacity = entry.get("capacityBytes")
        return cls(
            disk=str(entry.get("name") or ""),
            serial=str(entry.get("serial") or entry.get("name") or ""),
            claim_name=str(entry.get("claimName") or ""),
            claim_uid=str(entry.get("claimUid") or ""),
            volume_name=str(entry.get("volumeName") or ""),
            capacity_bytes=capacity if isinstance(capacity, int) else None,
            phase=str(entry.get("phase") or ""),
        )


@dataclass(frozen=True)
class DiskChange:
    """One disk's change, as the events say and the guest agent is told."""

    disk: str
    serial: str
    change: str  # Replaced, Resized or Lost
    message: str

    def instruction(self) -> dict[str, str]:
        return {"serial": self.serial, "name": self.disk, "change": self.change}


# --- what the VM's disks are backed by ------------------------------------------------------


def claimed_disks(vm_spec: dict[str, Any] | None) -> list[ClaimedDisk]:
    """The VM's disks whose volume is a claim (persistentVolumeClaim or dataVolume), in the
    order of its disks, at most MAX_DISKS. The serial is the disk's own, else its name (what
    the guest's /dev/disk/by-id shows; KubeVirt sets no default, the stand-in and lparkube's
    own disks use the name)."""
    template = ((vm_spec or {}).get("template") or {}).get("spec") or {}
    claims: dict[str, str] = {}
    for volume in template.get("volumes") or []:
        if not isinstance(volume, dict) or not volume.get("name"):
            continue
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName") or (
            volume.get("dataVolume") or {}
        ).get("name")
        if isinstance(claim, str) and claim:
            claims[volume["name"]] = claim
    devices = ((template.get("domain") or {}).get("devices") or {}).get("disks") or []
    found: list[ClaimedDisk] = []
    for disk in devices:
        name = disk.get("name") if isinstance(disk, dict) else None
        if name in claims and len(found) < MAX_DISKS:
            serial = disk.get("serial")
            found.append(ClaimedDisk(name, serial if isinstance(serial, str) and serial else name,
                                     claims[name]))  # fmt: skip
    return found


def backing(
    disk: ClaimedDisk, claim: dict[str, Any] | None, volume: dict[str, Any] | None
) -> Backing:
    """What backs ``disk`` now, from its claim and the claim's volume as read (None: gone)."""
    if claim is None:
        return Backing(disk.disk, disk.serial, disk.claim, "", "", None, LOST)
    meta, spec, status = (
        claim.get("metadata") or {},
        claim.get("spec") or {},
        claim.get("status") or {},
    )
    uid, volume_name = meta.get("uid") or "", spec.get("volumeName") or ""
    phase = status.get("phase") or PENDING
    capacity = parse_size((status.get("capacity") or {}).get("storage"))
    if phase == BOUND and (volume is None or _volume_lost(volume, meta)):
        phase = LOST
    if phase not in (BOUND, LOST):
        phase, volume_name, capacity = PENDING, "", None
    return Backing(disk.disk, disk.serial, disk.claim, uid, volume_name, capacity, phase)


def _volume_lost(volume: dict[str, Any], claim_meta: dict[str, Any]) -> bool:
    """The volume is being deleted, failed, released or bound to another claim."""
    status_phase = (volume.get("status") or {}).get("phase")
    ref = (volume.get("spec") or {}).get("claimRef") or {}
    other = ref.get("uid") and ref.get("uid") != claim_meta.get("uid")
    return bool(
        (volume.get("metadata") or {}).get("deletionTimestamp")
        or status_phase in LOST_VOLUME_PHASES
        or other
    )


# --- what changed --------------------------------------------------------------------------


def changes(recorded: list[dict[str, Any]] | None, now: list[Backing]) -> list[DiskChange]:
    """The disks whose backing changed since ``recorded`` (status.disks); none on first sight."""
    before = {b.disk: b for b in (Backing.recorded(e) for e in recorded or []) if b.disk}
    found = []
    for current in now:
        previous = before.get(current.disk)
        if previous is None:
            continue
        change = disk_change(previous, current)
        if change is not None:
            found.append(change)
    return found


def disk_change(previous: Backing, current: Backing) -> DiskChange | None:
    """The change of one disk's backing, or None; Lost before Replaced before Resized."""
    name, serial = current.disk, current.serial
    if current.phase == LOST:
        if previous.phase == LOST:
            return None
        why = _lost_reason(current)
        return DiskChange(name, serial, LOST, f"disk {name}: {why}")
    if current.phase != BOUND:
        return None  # pending: recorded without a volume, nothing to compare yet
    if (
        previous.phase == LOST
        or _differs(previous.claim_uid, current.claim_uid)
        or _differs(previous.volume_name, current.volume_name)
    ):
        was = f" (was {previous.volume_name})" if previous.volume_name else ""
        return DiskChange(
            name,
            serial,
            REPLACED,
            f"disk {name}: claim {current.claim_name} is now backed by volume "
            f"{current.volume_name}{was}",
        )
    if (
        previous.capacity_bytes is not None
        and current.capacity_bytes is not None
        and previous.capacity_bytes != current.capacity_bytes
    ):
        return DiskChange(
            name,
            serial,
            RESIZED,
            f"disk {name}: claim {current.claim_name} holds {_size(current.capacity_bytes)} "
            f"(was {_size(previous.capacity_bytes)})",
        )
    return None


def _differs(old: str, new: str) -> bool:
    return bool(old) and bool(new) and old != new


def _lost_reason(current: Backing) -> str:
    if not current.claim_uid:
        return f"claim {current.claim_name} is gone"
    if current.volume_name:
        return f"claim {current.claim_name} lost its volume {current.volume_name}"
    return f"claim {current.claim_name} is Lost"


def _size(size_bytes: int) -> str:
    return format_size(size_bytes)


def change_id(previous_id: str | None, found: list[DiskChange], now: list[Backing]) -> str:
    """The id of one change: the same inputs give the same id; a new change, a new one."""
    digest = hashlib.sha256(
        json.dumps(
            {
                "previous": previous_id or "",
                "changes": [c.instruction() for c in found],
                "backing": [b.status() for b in now],
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    return CHANGE_ID_PREFIX + digest[:24]


def pending_change(
    stored: dict[str, Any] | None, found: list[DiskChange], now: list[Backing]
) -> dict[str, Any] | None:
    """status.storageChange after this comparison: a new change replaces the stored one (an
    undelivered one's disks are kept, the newer change of a disk wins), else the stored one."""
    stored = stored or None
    if not found:
        return stored
    disks = {c.disk: c.instruction() for c in found}
    if stored and not stored.get("delivered"):
        kept = [d for d in stored.get("disks") or [] if d.get("name") not in disks]
        disks = {**{d["name"]: d for d in kept if d.get("name")}, **disks}
    listed = list(disks.values())[:MAX_DISKS]
    return {
        "id": change_id((stored or {}).get("id"), found, now),
        "disks": listed,
        "delivered": False,
        "message": "",
    }


def should_deliver(change: dict[str, Any] | None, agent_connected: bool) -> bool:
    """Tell the agent: a change not delivered yet, and an agent that reports."""
    return (
        bool(change)
        and not change.get("delivered")
        and agent_connected
        and bool(change.get("disks"))
    )


def delivered(change: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The change once the agent answered for it: what it rescanned, in few words."""
    results = [r for r in answer.get("disks") or [] if isinstance(r, dict)]
    done = [str(r.get("serial")) for r in results if r.get("rescanned")]
    read = [str(r.get("serial")) for r in results if r.get("device") and not r.get("rescanned")]
    missing = [str(r.get("serial")) for r in results if not r.get("device")]
    parts = []
    if done:
        parts.append("rescanned " + ", ".join(done[:MAX_NAMES_SHOWN]))
    if read:
        parts.append("size re-read for " + ", ".join(read[:MAX_NAMES_SHOWN]))
    if missing:
        parts.append("not found in the guest: " + ", ".join(missing[:MAX_NAMES_SHOWN]))
    return {**change, "delivered": True, "message": "; ".join(parts)[:1024]}


def undelivered(change: dict[str, Any], why: str) -> dict[str, Any]:
    """The change kept for the next attempt, with why the last one failed."""
    return {**change, "delivered": False, "message": why[:1024]}


# --- the condition ------------------------------------------------------------------------


def storage_ready(now: list[Backing]) -> Condition | None:
    """StorageReady over the claim-backed disks; None when the VM has none."""
    if not now:
        return None
    lost = [b for b in now if b.phase == LOST]
    if lost:
        return Condition.of(STORAGE_READY, False, BACKING_LOST, _listed(lost, _lost_reason))
    pending = [b for b in now if b.phase != BOUND]
    if pending:
        return Condition.of(
            STORAGE_READY,
            False,
            CLAIM_PENDING,
            _listed(pending, lambda b: f"claim {b.claim_name} is not bound yet"),
        )
    return Condition.of(
        STORAGE_READY,
        True,
        STORAGE_BOUND,
        _listed(now, lambda b: f"claim {b.claim_name}, {_size(b.capacity_bytes or 0)}"),
    )


def _listed(disks: list[Backing], say: Any) -> str:
    shown = [f"disk {b.disk}: {say(b)}" for b in disks[:MAX_NAMES_SHOWN]]
    more = len(disks) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def disks_status(
    recorded: list[dict[str, Any]] | None, now: list[Backing]
) -> list[dict[str, Any]] | None:
    """status.disks: the backing each disk last had. A disk whose claim is pending keeps what
    was recorded (its last volume, or Lost), so binding it is compared with that; one pending
    since first sight is recorded Pending. None (removed) when no disk is claim-backed."""
    before = {b.disk: b for b in (Backing.recorded(e) for e in recorded or []) if b.disk}
    kept = []
    for current in now[:MAX_DISKS]:
        previous = before.get(current.disk)
        if current.phase == PENDING and previous and previous.claim_name == current.claim_name:
            kept.append(previous)
        else:
            kept.append(current)
    return [b.status() for b in kept] or None
