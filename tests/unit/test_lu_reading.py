"""How a labelled PVC and its claim Lease read as an LU: committed claims hold without a lock,
a live Lease marks an LU being claimed (even before the PVC shows it), an uncommitted claim
whose Lease ran out is free."""

from __future__ import annotations

from datetime import UTC, datetime

from lparkube.adapters.logical_units import lease_expiry, lease_name, new_name, to_unit
from lparkube.domain.logical_units import CLAIMING, FREE, IN_USE

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
GI = 1 << 30


def pvc(claimed: str | None = None, committed: str | None = None, **meta) -> dict:
    labels = {"lparkube.io/vios-cluster": "thin", "lparkube.io/lu-purpose": "paging"}
    notes = {}
    if claimed:
        labels["lparkube.io/partition"] = "web"
        notes["lparkube.io/claimed-by"] = claimed
    if committed:
        notes["lparkube.io/claim-committed"] = committed
    return {
        "metadata": {"name": "lu", "namespace": "t", "labels": labels, "annotations": notes,
                     **meta},
        "spec": {"resources": {"requests": {"storage": "1Gi"}}},
    }  # fmt: skip


def lease(holder: str, renewed_ago: float, duration: int = 3) -> dict:
    renewed = datetime.fromtimestamp(NOW - renewed_ago, UTC)
    stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                     "renewTime": stamp, "acquireTime": stamp}}  # fmt: skip


def test_an_unclaimed_lu_is_free() -> None:
    unit = to_unit(pvc(), None, NOW, "thin")
    assert (unit.state(NOW), unit.requested_bytes, unit.pool, unit.purpose) == (
        FREE,
        GI,
        "thin",
        "paging",
    )


def test_a_committed_claim_holds_whatever_its_lease_says() -> None:
    unit = to_unit(pvc("a", "a"), lease("b", 1), NOW, "thin")
    assert (unit.claimed_by, unit.state(NOW)) == ("a", IN_USE)


def test_a_live_lease_marks_the_lu_being_claimed_by_its_holder() -> None:
    before_label = to_unit(pvc(), lease("b", 1), NOW, "thin")
    assert (before_label.claimed_by, before_label.state(NOW)) == ("b", CLAIMING)
    labelled = to_unit(pvc("b"), lease("b", 1), NOW, "thin")
    assert labelled.state(NOW) == CLAIMING


def test_an_uncommitted_claim_whose_lease_ran_out_is_free() -> None:
    assert to_unit(pvc("a"), lease("a", 10), NOW, "thin").state(NOW) == FREE
    assert to_unit(pvc("a"), None, NOW, "thin").state(NOW) == FREE
    assert to_unit(pvc(), lease("b", 10), NOW, "thin").state(NOW) == FREE


def test_a_pvc_being_deleted_is_never_free() -> None:
    unit = to_unit(pvc(deletionTimestamp="2026-01-01T00:00:00Z"), None, NOW, "thin")
    assert unit.state(NOW) == IN_USE


def test_lease_times_and_names() -> None:
    holder, expires = lease_expiry(lease("a", 1, duration=5))
    assert (holder, round(expires - NOW, 3)) == ("a", 4.0)
    assert lease_expiry({"spec": {}}) is None
    assert lease_name("x") == "lu-x"
    name = new_name("thin", "paging")
    assert name.startswith("thin-paging-") and len(name) == len("thin-paging-") + 8
    assert len(new_name("p" * 253, "hibernation")) <= 253 - len("lu-")
