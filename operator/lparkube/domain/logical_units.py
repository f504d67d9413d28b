"""Thin logical units (LUs) of a VIOSCluster: which one a partition gets, as pure decisions.

Seed 001: hibernation data lives on LUs of the cluster's shared storage, reused, expanded or
created for a client and never shared across clients. Here an LU is a PVC of the tenant's own
namespace, labelled with its VIOSCluster (pool) and purpose (docs/api.md, "VIOSCluster"); a
partition's claim on it is a label plus a Lease the adapter renews. This module decides; an
adapter reads the labelled PVCs and Leases into `LogicalUnit`s and carries the decision out
(with the API server's resourceVersion preconditions, so two allocations cannot both take one
LU: the loser's write conflicts and it decides again).

The choice for a request, in order:

1. the LU this partition already holds for this purpose (allocating twice is allocating once);
2. refusals: a size the pool cannot hold;
3. with reuse on, the smallest free LU of the namespace, pool and purpose that holds the size;
4. with reuse on, the largest free one whose PVC is Bound, expanded to the size (the least
   growth: it is thin; the API server lets only a bound claim grow);
5. a new LU of `max(size, initial size)`.

"Free" is: unclaimed, or claimed under a lock that has expired (its holder died mid-way). A
freed LU keeps its data until it is reused or the pool's policy deletes it; an expired lock
never deletes anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from lparkube.api.v1alpha1.vioscluster import DUMP, HIBERNATION, LU_PURPOSES, PAGING

PURPOSES = LU_PURPOSES
__all__ = ["DUMP", "HIBERNATION", "PAGING", "PURPOSES"]

REUSE, EXPAND, CREATE = "Reuse", "Expand", "Create"
FREE, CLAIMING, IN_USE = "free", "claiming", "inUse"  # an LU's state
TOO_LARGE = "LUTooLarge"
UNKNOWN_PURPOSE = "UnknownPurpose"


@dataclass(frozen=True)
class LogicalUnit:
    """One LU as the adapter read it: its PVC and, when claimed, the claim's lock."""

    name: str  # the PVC's name
    namespace: str
    pool: str  # the VIOSCluster
    purpose: str
    requested_bytes: int  # the PVC's request (what it may grow from)
    claimed_by: str | None = None  # the claiming Partition's uid
    lock_expires: float | None = None  # when the claim's Lease runs out (monotonic or wall)
    deleting: bool = False
    bound: bool = True  # its PVC is Bound: only a bound PVC's request can grow

    def free(self, now: float) -> bool:
        """Nobody holds it: never claimed, or its holder's lock has run out."""
        if self.deleting:
            return False
        return self.claimed_by is None or (
            self.lock_expires is not None and self.lock_expires <= now
        )

    def state(self, now: float) -> str:
        """free; claiming (a claim under a live lock, not committed yet); or inUse (a
        committed claim, or an LU being deleted)."""
        if self.free(now):
            return FREE
        if self.lock_expires is not None and not self.deleting:
            return CLAIMING
        return IN_USE


@dataclass(frozen=True)
class LURequest:
    """What a partition needs: `size_bytes` for `purpose` from pool `pool`."""

    namespace: str
    pool: str
    purpose: str
    size_bytes: int
    partition_uid: str
    initial_bytes: int  # the pool's thin.initialSize
    max_bytes: int | None = None  # the pool's thin.maxSize
    reuse: bool = True


@dataclass(frozen=True)
class Allocation:
    """The decision: `action` on `unit` (Reuse, Expand to `size_bytes`), or Create."""

    action: str
    size_bytes: int
    unit: LogicalUnit | None = None


@dataclass(frozen=True)
class LURefusal:
    """Why no LU can be given: a condition reason and a message for users."""

    reason: str
    message: str


def allocate(
    request: LURequest, units: Iterable[LogicalUnit], now: float
) -> Allocation | LURefusal:
    """The LU decision for `request` among the pool's `units` (any namespace: filtered here)."""
    candidates = [u for u in units if _same_place(u, request)]
    held = next((u for u in candidates if u.claimed_by == request.partition_uid), None)
    if held is not None and not held.deleting:
        return _keep(held, request.size_bytes)
    refusal = refuse(request)
    if refusal is not None:
        return refusal
    free = [u for u in candidates if u.free(now)] if request.reuse else []
    fitting = [u for u in free if u.requested_bytes >= request.size_bytes]
    if fitting:
        return Allocation(REUSE, request.size_bytes, min(fitting, key=_size_then_name))
    growable = [u for u in free if u.bound]
    if growable:
        largest = max(growable, key=_size_then_name)
        return Allocation(EXPAND, request.size_bytes, largest)
    return Allocation(CREATE, max(request.size_bytes, request.initial_bytes))


def refuse(request: LURequest) -> LURefusal | None:
    """The first check that refuses the request, or None."""
    if request.purpose not in PURPOSES:
        return LURefusal(
            UNKNOWN_PURPOSE,
            f"an LU's purpose is one of {', '.join(PURPOSES)}, not {request.purpose!r}",
        )
    if request.max_bytes is not None and request.size_bytes > request.max_bytes:
        return LURefusal(
            TOO_LARGE,
            f"{request.purpose} needs {request.size_bytes} bytes, more than VIOSCluster "
            f"{request.pool}'s thin.maxSize ({request.max_bytes}); raise thin.maxSize",
        )
    return None


def lu_counts(units: Iterable[LogicalUnit], now: float) -> dict:
    """The VIOSCluster's `status.logicalUnits`: counts and bytes, never a list; the same per
    purpose under ``byPurpose``."""
    listed = list(units)
    counts = _counts(listed, now)
    counts["byPurpose"] = {p: _counts([u for u in listed if u.purpose == p], now) for p in PURPOSES}
    return counts


def _counts(units: list[LogicalUnit], now: float) -> dict[str, int]:
    states = [u.state(now) for u in units]
    return {
        "total": len(units),
        "inUse": states.count(IN_USE),
        "claiming": states.count(CLAIMING),
        "free": states.count(FREE),
        "requestedBytes": sum(u.requested_bytes for u in units),
        "usedBytes": sum(
            u.requested_bytes for u, s in zip(units, states, strict=True) if s != FREE
        ),
    }


def next_lock_expiry(units: Iterable[LogicalUnit], now: float) -> float | None:
    """When the next live claim lock runs out (the counts change then), or None."""
    return min(
        (u.lock_expires for u in units if u.state(now) == CLAIMING and u.lock_expires),
        default=None,
    )


# --- sizes -----------------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTPE]i|[kKMGTPE])?$")
_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def parse_size(text: str | int | None) -> int | None:
    """Bytes from a Kubernetes quantity (`1Gi`, `1280Mi`, `1.5G`, `1073741824`), rounded up to
    a whole byte; None when absent or not a size."""
    if text is None:
        return None
    if isinstance(text, int):
        return text
    match = _QUANTITY.match(str(text).strip())
    if not match:
        return None
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    scale = _BINARY.get(suffix) or _DECIMAL.get(suffix) or 1
    value = number * scale
    return int(value) + (1 if value != int(value) else 0)


def format_size(size_bytes: int) -> str:
    """The shortest exact binary quantity (`1280Mi`, `2Gi`), else plain bytes."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if size_bytes >= unit and size_bytes % unit == 0:
            return f"{size_bytes // unit}{suffix}"
    return str(size_bytes)


def _same_place(unit: LogicalUnit, request: LURequest) -> bool:
    """An LU never crosses a namespace or a pool, and serves one purpose."""
    return (unit.namespace, unit.pool, unit.purpose) == (
        request.namespace,
        request.pool,
        request.purpose,
    )


def _keep(unit: LogicalUnit, size: int) -> Allocation:
    if unit.requested_bytes >= size:
        return Allocation(REUSE, size, unit)
    return Allocation(EXPAND, size, unit)


def _size_then_name(unit: LogicalUnit) -> tuple[int, str]:
    return unit.requested_bytes, unit.name
