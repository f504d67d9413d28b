"""The storage behind a Partition's disks: which disks are claim-backed, what backs them, what
changed since status recorded it (every kind, nothing on first sight), the condition, bounds."""

from __future__ import annotations

from typing import Any

import pytest

from lparkube.domain import backing_storage as bs
from lparkube.domain.conditions import FALSE, TRUE

GI = 2**30


def vm_spec(*volumes: dict[str, Any], disks: list[dict] | None = None) -> dict:
    names = [v["name"] for v in volumes]
    return {
        "template": {
            "spec": {
                "domain": {"devices": {"disks": disks or [{"name": n} for n in names]}},
                "volumes": list(volumes),
            }
        }
    }


def pvc_volume(name: str, claim: str) -> dict:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim}}


def claim(
    name: str, uid: str = "u1", volume: str = "pv-1", size: str = "1Gi", phase: str = "Bound"
) -> dict:
    status: dict[str, Any] = {"phase": phase}
    if phase == "Bound":
        status["capacity"] = {"storage": size}
    spec = {"volumeName": volume} if phase != "Pending" else {}
    return {"metadata": {"name": name, "uid": uid}, "spec": spec, "status": status}


def volume(name: str = "pv-1", phase: str = "Bound", claim_uid: str = "u1", **meta: Any) -> dict:
    return {
        "metadata": {"name": name, **meta},
        "spec": {"claimRef": {"uid": claim_uid}},
        "status": {"phase": phase},
    }


DATA = bs.ClaimedDisk("data", "data", "data-pvc")


def test_claim_backed_disks_are_found_with_their_serials() -> None:
    spec = vm_spec(
        {"name": "root", "containerDisk": {"image": "x"}},
        pvc_volume("data", "data-pvc"),
        {"name": "dv", "dataVolume": {"name": "imported"}},
        pvc_volume("orphan", "no-disk"),
        disks=[{"name": "root"}, {"name": "data", "serial": "DATA01"}, {"name": "dv"}],
    )
    assert bs.claimed_disks(spec) == [
        bs.ClaimedDisk("data", "DATA01", "data-pvc"),
        bs.ClaimedDisk("dv", "dv", "imported"),
    ]
    assert bs.claimed_disks(None) == []


def test_the_disks_are_bounded() -> None:
    many = [pvc_volume(f"d{i}", f"c{i}") for i in range(bs.MAX_DISKS + 5)]
    assert len(bs.claimed_disks(vm_spec(*many))) == bs.MAX_DISKS


@pytest.mark.parametrize(
    ("pvc", "pv", "phase"),
    [
        (claim("data-pvc"), volume(), "Bound"),
        (None, None, "Lost"),
        (claim("data-pvc", phase="Lost"), None, "Lost"),
        (claim("data-pvc"), None, "Lost"),
        (claim("data-pvc"), volume(phase="Failed"), "Lost"),
        (claim("data-pvc"), volume(phase="Released"), "Lost"),
        (claim("data-pvc"), volume(claim_uid="other"), "Lost"),
        (claim("data-pvc"), volume(deletionTimestamp="2024-01-01T00:00:00Z"), "Lost"),
        (claim("data-pvc", phase="Pending"), None, "Pending"),
    ],
)
def test_the_phase_of_a_backing(pvc: dict | None, pv: dict | None, phase: str) -> None:
    assert bs.backing(DATA, pvc, pv).phase == phase


def now(pvc: dict | None, pv: dict | None = None) -> list[bs.Backing]:
    return [bs.backing(DATA, pvc, pv if pv is not None else volume())]


def recorded(pvc: dict | None, pv: dict | None = None) -> list[dict]:
    return bs.disks_status(None, now(pvc, pv)) or []


def test_nothing_changes_on_first_sight_nor_when_nothing_changed() -> None:
    bound = now(claim("data-pvc"))
    assert bs.changes(None, bound) == []
    assert bs.changes([], bound) == []
    assert bs.changes(recorded(claim("data-pvc")), bound) == []
    lost = now(None)
    assert bs.changes(None, lost) == []  # first seen lost: nothing it was before


def test_resized() -> None:
    (change,) = bs.changes(recorded(claim("data-pvc")), now(claim("data-pvc", size="3Gi")))
    assert (change.disk, change.serial, change.change) == ("data", "data", "Resized")
    assert change.message == "disk data: claim data-pvc holds 3Gi (was 1Gi)"


@pytest.mark.parametrize(
    "replacement",
    [claim("data-pvc", uid="u2", volume="pv-2"), claim("data-pvc", volume="pv-2")],
)
def test_replaced_by_a_new_claim_or_volume(replacement: dict) -> None:
    pv = volume(replacement["spec"]["volumeName"], claim_uid=replacement["metadata"]["uid"])
    (change,) = bs.changes(recorded(claim("data-pvc")), now(replacement, pv))
    assert change.change == "Replaced"
    assert change.message == "disk data: claim data-pvc is now backed by volume pv-2 (was pv-1)"


def test_replaced_wins_over_resized_and_lost_over_both() -> None:
    bigger = claim("data-pvc", uid="u2", volume="pv-2", size="2Gi")
    (change,) = bs.changes(recorded(claim("data-pvc")), now(bigger, volume("pv-2", claim_uid="u2")))
    assert change.change == "Replaced"
    (lost,) = bs.changes(recorded(claim("data-pvc")), now(bigger, volume("pv-2", phase="Failed")))
    assert lost.change == "Lost"


@pytest.mark.parametrize(
    ("pvc", "pv", "message"),
    [
        (None, None, "disk data: claim data-pvc is gone"),
        (claim("data-pvc", phase="Lost"), None, "disk data: claim data-pvc lost its volume pv-1"),
        (claim("data-pvc"), None, "disk data: claim data-pvc lost its volume pv-1"),
        (
            claim("data-pvc"),
            volume(phase="Released"),
            "disk data: claim data-pvc lost its volume pv-1",
        ),
    ],
)
def test_lost_once(pvc: dict | None, pv: dict | None, message: str) -> None:
    gone = [bs.backing(DATA, pvc, pv)]
    (change,) = bs.changes(recorded(claim("data-pvc")), gone)
    assert (change.change, change.message) == ("Lost", message)
    assert bs.changes(bs.disks_status(None, gone), gone) == []  # once: lost stays lost


def test_a_lost_disk_that_comes_back_is_replaced_also_through_pending() -> None:
    lost = bs.disks_status(recorded(claim("data-pvc")), now(None))
    pending = now(claim("data-pvc", uid="u2", phase="Pending"))
    assert bs.changes(lost, pending) == []
    kept = bs.disks_status(lost, pending)
    assert kept is not None and kept[0]["phase"] == "Lost"  # the last backing it had
    back = now(claim("data-pvc", uid="u2", volume="pv-2"), volume("pv-2", claim_uid="u2"))
    assert [c.change for c in bs.changes(kept, back)] == ["Replaced"]


def test_a_claim_made_again_seen_pending_is_still_replaced() -> None:
    before = recorded(claim("data-pvc"))
    pending = now(claim("data-pvc", uid="u2", phase="Pending"))
    kept = bs.disks_status(before, pending)
    assert kept == before  # uid u1, pv-1 kept
    back = now(claim("data-pvc", uid="u2", volume="pv-2"), volume("pv-2", claim_uid="u2"))
    assert [c.change for c in bs.changes(kept, back)] == ["Replaced"]


def test_binding_a_claim_pending_since_first_sight_is_no_change() -> None:
    first = bs.disks_status(None, now(claim("data-pvc", phase="Pending")))
    assert first == [
        {
            "name": "data",
            "serial": "data",
            "claimName": "data-pvc",
            "claimUid": "u1",
            "phase": "Pending",
        }
    ]
    assert bs.changes(first, now(claim("data-pvc"))) == []


def test_the_recorded_status_and_its_bound() -> None:
    assert recorded(claim("data-pvc")) == [
        {
            "name": "data",
            "serial": "data",
            "claimName": "data-pvc",
            "claimUid": "u1",
            "volumeName": "pv-1",
            "capacityBytes": GI,
            "phase": "Bound",
        }
    ]
    assert bs.disks_status(None, []) is None
    many = [bs.backing(bs.ClaimedDisk(f"d{i}", f"d{i}", f"c{i}"), None, None) for i in range(70)]
    assert len(bs.disks_status(None, many) or []) == bs.MAX_DISKS


def test_storage_ready() -> None:
    assert bs.storage_ready([]) is None
    ready = bs.storage_ready(now(claim("data-pvc")))
    assert ready is not None
    assert (ready.status, ready.reason, ready.message) == (
        TRUE,
        "Bound",
        "disk data: claim data-pvc, 1Gi",
    )
    other = bs.backing(
        bs.ClaimedDisk("logs", "logs", "logs-pvc"), claim("logs-pvc", phase="Pending"), None
    )
    pending = bs.storage_ready([*now(claim("data-pvc")), other])
    assert pending is not None
    assert (pending.status, pending.reason) == (FALSE, "ClaimPending")
    assert pending.message == "disk logs: claim logs-pvc is not bound yet"
    lost = bs.storage_ready([*now(None), other])
    assert lost is not None
    assert (lost.status, lost.reason, lost.message) == (
        FALSE,
        "BackingLost",
        "disk data: claim data-pvc is gone",
    )


def test_a_change_gets_a_stable_id_and_a_new_one_keeps_undelivered_disks() -> None:
    base = recorded(claim("data-pvc"))
    grown = now(claim("data-pvc", size="2Gi"))
    found = bs.changes(base, grown)
    first = bs.pending_change(None, found, grown)
    assert first is not None
    assert first == bs.pending_change(None, found, grown)  # same inputs, same id
    assert first["id"].startswith("sc-") and len(first["id"]) <= 64
    assert first["disks"] == [{"serial": "data", "name": "data", "change": "Resized"}]
    assert first["delivered"] is False
    assert bs.pending_change(first, [], grown) is first  # nothing new: kept
    other = bs.ClaimedDisk("logs", "L1", "logs-pvc")
    logs_lost = [*grown, bs.backing(other, None, None)]
    lost = [bs.DiskChange("logs", "L1", "Lost", "gone")]
    second = bs.pending_change(first, lost, logs_lost)
    assert second is not None and second["id"] != first["id"]
    assert [d["name"] for d in second["disks"]] == ["data", "logs"]  # undelivered: kept
    done = bs.delivered(
        first, {"disks": [{"serial": "data", "device": "/dev/vdb", "rescanned": True}]}
    )
    assert done["delivered"] is True and done["message"] == "rescanned data"
    third = bs.pending_change(done, lost, logs_lost)
    assert third is not None and [d["name"] for d in third["disks"]] == ["logs"]


def test_delivery_needs_an_undelivered_change_and_a_connected_agent() -> None:
    change = {"id": "sc-1", "disks": [{"name": "data"}], "delivered": False}
    assert bs.should_deliver(change, True)
    assert not bs.should_deliver(change, False)
    assert not bs.should_deliver({**change, "delivered": True}, True)
    assert not bs.should_deliver(None, True)
    failed = bs.undelivered(change, "unreachable")
    assert failed["message"] == "unreachable" and failed["delivered"] is False
    done = bs.delivered(change, {"disks": [{"serial": "data", "device": "", "rescanned": False}]})
    assert done["message"] == "not found in the guest: data"


def test_every_change_has_its_event() -> None:
    assert bs.EVENTS == {
        "Replaced": ("BackingStorageReplaced", "Normal"),
        "Resized": ("BackingStorageResized", "Normal"),
        "Lost": ("BackingStorageLost", "Warning"),
    }
