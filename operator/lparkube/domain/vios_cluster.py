"""A VIOSCluster's status as pure functions: its VIOS nodes, whether its pool can serve LUs, its
LU counts, and what is worth an Event when any of that changes.

The controller reads the pool, its StorageClass, the Nodes and the pool's LUs (labelled PVCs
and their claim Leases, as ``logical_units.LogicalUnit``s), calls ``pool_status`` and writes
the result once; ``notices`` compares the stored status with the new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lparkube.api.v1alpha1 import vioscluster as api
from lparkube.domain.conditions import FALSE, TRUE, Condition, find, merge
from lparkube.domain.logical_units import LogicalUnit, lu_counts
from lparkube.domain.saving import selector_matches

MAX_NAMED_NODES = 10  # an Event names at most this many nodes, then says how many more


@dataclass(frozen=True)
class PoolInput:
    """What the Ready decision reads: the pool's spec, its StorageClass (None: not found)
    and its VIOS nodes (``[{name, ready}]``)."""

    spec: Mapping[str, Any]
    storage_class: Mapping[str, Any] | None
    nodes: list[dict[str, Any]]

    @property
    def class_name(self) -> str:
        return (self.spec.get("storage") or {}).get("storageClassName") or ""


@dataclass(frozen=True)
class Notice:
    """An Event to post about the pool."""

    type: str  # Normal or Warning
    reason: str
    message: str


def node_ready(node: Mapping[str, Any]) -> bool:
    """The Node's Ready condition is True."""
    conditions = (node.get("status") or {}).get("conditions")
    ready = find(list(conditions or []), "Ready") or {}
    return ready.get("status") == TRUE


def vios_nodes(
    selector: Mapping[str, Any] | None, nodes: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The nodes the pool's nodeSelector matches (all without one), by name, with readiness."""
    found = [
        {"name": (n.get("metadata") or {}).get("name", ""), "ready": node_ready(n)}
        for n in nodes
        if selector_matches(selector, (n.get("metadata") or {}).get("labels"))
    ]
    return sorted(found, key=lambda n: n["name"])


# --- Ready: the first check that refuses --------------------------------------------------------


def storage_class_not_found(pool: PoolInput) -> Condition | None:
    if pool.storage_class is not None:
        return None
    return Condition(
        api.READY,
        FALSE,
        api.STORAGE_CLASS_NOT_FOUND,
        f"StorageClass {pool.class_name} does not exist; create it or name another in "
        "spec.storage.storageClassName",
    )


def expansion_not_allowed(pool: PoolInput) -> Condition | None:
    if (pool.storage_class or {}).get("allowVolumeExpansion") is True:
        return None
    return Condition(
        api.READY,
        FALSE,
        api.EXPANSION_NOT_ALLOWED,
        f"StorageClass {pool.class_name} does not allow volume expansion, which thin LUs need "
        "(they grow on demand); set allowVolumeExpansion: true on it or use another class",
    )


def no_ready_nodes(pool: PoolInput) -> Condition | None:
    if any(n["ready"] for n in pool.nodes):
        return None
    matched = f"{len(pool.nodes)} node(s) match, none is Ready" if pool.nodes else "none match"
    return Condition(
        api.READY,
        FALSE,
        api.NO_READY_NODES,
        f"no ready VIOS node: spec.nodeSelector selects the nodes that serve partition I/O and "
        f"{matched}",
    )


Check = Callable[[PoolInput], Condition | None]
READY_CHECKS: tuple[Check, ...] = (storage_class_not_found, expansion_not_allowed, no_ready_nodes)


def pool_ready(pool: PoolInput) -> Condition:
    """Ready: the first refusal of READY_CHECKS, else True."""
    for check in READY_CHECKS:
        refusal = check(pool)
        if refusal is not None:
            return refusal
    ready = sum(1 for n in pool.nodes if n["ready"])
    return Condition(
        api.READY,
        TRUE,
        api.POOL_READY,
        f"StorageClass {pool.class_name} expands; {ready} of {len(pool.nodes)} VIOS node(s) ready",
    )


def pool_status(
    pool: Mapping[str, Any],
    storage_class: Mapping[str, Any] | None,
    nodes: Iterable[Mapping[str, Any]],
    units: Iterable[LogicalUnit],
    *,
    lock_now: float,
    now: datetime,
) -> dict[str, Any]:
    """The whole status the controller writes. ``lock_now`` is the clock the units' lock
    expiries are on; ``now`` stamps condition transitions."""
    spec = pool.get("spec") or {}
    meta = pool.get("metadata") or {}
    generation = meta.get("generation", 0)
    members = vios_nodes(spec.get("nodeSelector"), nodes)
    ready = pool_ready(PoolInput(spec, storage_class, members))
    stored = (pool.get("status") or {}).get("conditions")
    return {
        "observedGeneration": generation,
        "conditions": merge(stored, [ready], generation, now),
        "nodes": members,
        "readyNodes": sum(1 for n in members if n["ready"]),
        "logicalUnits": lu_counts(units, lock_now),
    }


def is_ready(pool: Mapping[str, Any] | None) -> Condition | None:
    """The pool's stored Ready condition (None: not evaluated yet)."""
    found = find(((pool or {}).get("status") or {}).get("conditions"), api.READY)
    if found is None:
        return None
    return Condition(api.READY, found.get("status", ""), found.get("reason", ""), found["message"])


# --- what is worth an Event --------------------------------------------------------------------


def notices(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Notice]:
    """Events for a status change: nodes that joined or left the pool (not on the first
    status, when every node is new), and Ready turning False (Warning) or True again."""
    found: list[Notice] = []
    old_nodes = {n["name"] for n in (before or {}).get("nodes") or []}
    new_nodes = {n["name"] for n in after.get("nodes") or []}
    if before and before.get("nodes") is not None:
        if joined := sorted(new_nodes - old_nodes):
            found.append(Notice("Normal", api.NODE_JOINED, _nodes_text(joined, "joined")))
        if left := sorted(old_nodes - new_nodes):
            found.append(Notice("Normal", api.NODE_LEFT, _nodes_text(left, "left")))
    old = find((before or {}).get("conditions"), api.READY) or {}
    new = find(after.get("conditions"), api.READY) or {}
    if new.get("status") == FALSE and (old.get("status"), old.get("reason")) != (
        FALSE,
        new.get("reason"),
    ):
        found.append(Notice("Warning", api.POOL_NOT_READY, f"{new['reason']}: {new['message']}"))
    elif new.get("status") == TRUE and old.get("status") == FALSE:
        found.append(Notice("Normal", api.POOL_READY, new.get("message", "")))
    return found


def _nodes_text(names: list[str], verb: str) -> str:
    shown = ", ".join(names[:MAX_NAMED_NODES])
    more = len(names) - MAX_NAMED_NODES
    suffix = f" and {more} more" if more > 0 else ""
    noun = "node" if len(names) == 1 else "nodes"
    return f"VIOS {noun} {shown}{suffix} {verb} the pool"
