"""A VIOSCluster's status as pure decisions: VIOS nodes from the selector, Ready's reasons in
order, LU counts, and the Events a change is worth."""

from __future__ import annotations

from datetime import UTC, datetime

from lparkube.api.v1alpha1 import vioscluster as api
from lparkube.domain import vios_cluster as rules
from lparkube.domain.logical_units import PAGING, LogicalUnit

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GI = 1 << 30
EXPANDS = {"allowVolumeExpansion": True}


def node(name: str, ready: bool = True, **labels: str) -> dict:
    status = "True" if ready else "False"
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": status}]},
    }


def pool(**spec) -> dict:
    return {
        "metadata": {"name": "thin", "generation": 2},
        "spec": {"storage": {"storageClassName": "fast"}, **spec},
    }


def status(pool_obj: dict, storage_class=EXPANDS, nodes=(), units=()) -> dict:
    return rules.pool_status(pool_obj, storage_class, nodes, units, lock_now=100.0, now=NOW)


def ready_of(found: dict) -> dict:
    (ready,) = found["conditions"]
    return ready


def test_the_selector_picks_the_vios_nodes_and_their_readiness() -> None:
    nodes = [node("b", vios="yes"), node("a", False, vios="yes"), node("c")]
    selector = {"matchLabels": {"vios": "yes"}}
    assert rules.vios_nodes(selector, nodes) == [
        {"name": "a", "ready": False},
        {"name": "b", "ready": True},
    ]
    assert [n["name"] for n in rules.vios_nodes(None, nodes)] == ["a", "b", "c"]
    no_conditions = {"metadata": {"name": "d"}}
    assert rules.vios_nodes(None, [no_conditions]) == [{"name": "d", "ready": False}]


def test_ready_with_an_expanding_class_and_a_ready_node() -> None:
    found = status(pool(), nodes=[node("a"), node("b", False)])
    ready = ready_of(found)
    assert (ready["status"], ready["reason"]) == ("True", api.POOL_READY)
    assert "1 of 2" in ready["message"]
    assert (found["readyNodes"], found["observedGeneration"]) == (1, 2)


def test_ready_reasons_in_order() -> None:
    missing = ready_of(status(pool(), storage_class=None, nodes=[]))
    assert (missing["status"], missing["reason"]) == ("False", api.STORAGE_CLASS_NOT_FOUND)
    assert "fast" in missing["message"]
    fixed = ready_of(status(pool(), storage_class={}, nodes=[node("a")]))
    assert fixed["reason"] == api.EXPANSION_NOT_ALLOWED
    assert "allowVolumeExpansion" in fixed["message"]
    nobody = ready_of(status(pool(), nodes=[node("a", False)]))
    assert nobody["reason"] == api.NO_READY_NODES
    assert "1 node(s) match, none is Ready" in nobody["message"]
    selected_none = pool(nodeSelector={"matchLabels": {"vios": "yes"}})
    assert "none match" in ready_of(status(selected_none, nodes=[node("a")]))["message"]


def test_lu_counts_go_into_status() -> None:
    units = [
        LogicalUnit("x", "t", "thin", PAGING, GI, claimed_by="p"),
        LogicalUnit("y", "t", "thin", PAGING, 2 * GI),
    ]
    counts = status(pool(), nodes=[node("a")], units=units)["logicalUnits"]
    assert (counts["total"], counts["inUse"], counts["free"]) == (2, 1, 1)
    assert counts["byPurpose"]["paging"]["requestedBytes"] == 3 * GI


def test_a_transition_time_stays_while_ready_holds() -> None:
    first = pool()
    first["status"] = status(first, nodes=[node("a")])
    later = rules.pool_status(
        first, EXPANDS, [node("a")], [], lock_now=0.0, now=NOW.replace(year=2027)
    )
    assert ready_of(later)["lastTransitionTime"] == ready_of(first["status"])["lastTransitionTime"]


def test_notices_for_nodes_joining_and_leaving_and_ready_turning() -> None:
    before = status(pool(), nodes=[node("a"), node("b")])
    after = status(pool(), nodes=[node("b"), node("c")])
    found = rules.notices(before, after)
    assert [(n.type, n.reason) for n in found] == [
        ("Normal", api.NODE_JOINED),
        ("Normal", api.NODE_LEFT),
    ]
    assert found[0].message == "VIOS node c joined the pool"
    broken = status(pool(), nodes=[node("b", False)])
    (warning, *_) = [n for n in rules.notices(after, broken) if n.type == "Warning"]
    assert warning.reason == api.POOL_NOT_READY and api.NO_READY_NODES in warning.message
    assert rules.notices(broken, broken) == []
    healed = rules.notices(broken, after)
    assert (api.POOL_READY, "Normal") in {(n.reason, n.type) for n in healed}


def test_the_first_status_names_no_nodes_and_many_are_summarised() -> None:
    first = status(pool(), nodes=[node(f"n{i:02}") for i in range(20)])
    assert rules.notices(None, first) == []
    grown = status(pool(), nodes=[node(f"n{i:02}") for i in range(40)])
    (joined,) = rules.notices(first, grown)
    assert joined.message.endswith("and 10 more joined the pool")
    assert "VIOS nodes n20, n21" in joined.message
