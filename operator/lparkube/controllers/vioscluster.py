"""VIOSCluster controller: each pool's status from its StorageClass, its nodes and its LUs.

One daemon per VIOSCluster evaluates the pool whenever a Node, a StorageClass or an LU PVC
changes (the watches below wake it; bursts are coalesced), when a claim's lock runs out (the
LU counts change then) and at least every IDLE_RECHECK. A round reads the StorageClass and
the pool's LU PVCs and Leases, computes the status (``domain.vios_cluster``), writes it once
when it changed and posts the Events its change is worth. Only this daemon writes the pool's
status, so it trusts its own copy. Partitions that wait for their pool (PagingReady=False)
reconcile when its status changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from lparkube.adapters.kube import Kube
from lparkube.adapters.logical_units import VIOS_CLUSTER, LogicalUnits, storage_class
from lparkube.api.resource import GROUP, VERSION
from lparkube.api.v1alpha1.vioscluster import VIOS_CLUSTER_LABEL
from lparkube.domain import vios_cluster as rules
from lparkube.domain.clock import utcnow
from lparkube.domain.logical_units import next_lock_expiry

DEBOUNCE = 0.2  # coalesce bursts of events into one round
IDLE_RECHECK = 30.0  # evaluate at least this often, whatever happens
LOG_ONLY = {"k8s_skip": True}  # kopf posts no Event for a record with this extra

logger = logging.getLogger(__name__)


@kopf.on.startup()
def vioscluster_state(memo: Any, **_: Any) -> None:
    """The wakers of the pools' daemons (pool name -> Event), shared by every memo copy."""
    memo.pool_wakers = {}


def wake_pools(memo: Any) -> None:
    for waker in list(getattr(memo, "pool_wakers", {}).values()):
        waker.set()


@kopf.on.event("v1", "nodes")
def vioscluster_node_changed(memo: Any, **_: Any) -> None:
    """A node joined, left or changed readiness: every pool looks again."""
    wake_pools(memo)


@kopf.on.event("storage.k8s.io", "v1", "storageclasses")
def vioscluster_storage_class_changed(memo: Any, **_: Any) -> None:
    wake_pools(memo)


@kopf.on.event("v1", "persistentvolumeclaims", labels={VIOS_CLUSTER_LABEL: kopf.PRESENT})
def vioscluster_lu_changed(memo: Any, **_: Any) -> None:
    """An LU was made, claimed, released, resized or deleted."""
    wake_pools(memo)


@kopf.daemon(GROUP, VERSION, VIOS_CLUSTER.plural, backoff=5.0, cancellation_timeout=5.0)
async def vioscluster_evaluate(
    body: kopf.Body,
    name: str,
    memo: Any,
    node_index: kopf.Index,
    logger: logging.Logger | kopf.ObjectLogger,
    **_: Any,
) -> None:
    """Evaluate one pool for as long as it exists (``node_index``: the Nodes, kept by the
    ConditionProfile controller's index)."""
    waker = memo.pool_wakers.setdefault(name, asyncio.Event())
    evaluator = PoolEvaluator(memo.kube, body, logger)
    try:
        while True:
            wake_in = await evaluator.round(_nodes(node_index))
            await _sleep(waker, wake_in)
    finally:
        memo.pool_wakers.pop(name, None)


def _nodes(index: kopf.Index) -> list[Mapping[str, Any]]:
    return [value for _, store in index.items() for value in store]


async def _sleep(waker: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(waker.wait(), timeout=max(0.0, delay))
        await asyncio.sleep(DEBOUNCE)
    except TimeoutError:
        pass
    waker.clear()


class PoolEvaluator:
    """One pool's rounds and the status it last wrote."""

    def __init__(
        self,
        kube: Kube,
        body: kopf.Body,
        logger: logging.Logger | kopf.ObjectLogger,
        clock: Any = time.time,
    ) -> None:
        self.kube, self.body, self.logger = kube, body, logger
        self.units = LogicalUnits(kube, clock=clock)
        self.clock = clock
        self.name = body["metadata"]["name"]
        self.status: dict[str, Any] = dict(body.get("status") or {})

    async def round(self, nodes: list[Mapping[str, Any]]) -> float:
        """Evaluate once and write; returns the seconds until the next round is due."""
        pool = {"metadata": dict(self.body["metadata"]), "spec": dict(self.body["spec"])}
        pool["status"] = self.status
        class_name = ((pool["spec"].get("storage") or {}).get("storageClassName")) or ""
        found, units = await asyncio.gather(
            storage_class(self.kube, class_name), self.units.pool_units(self.name)
        )
        lock_now = self.clock()
        wanted = rules.pool_status(pool, found, nodes, units, lock_now=lock_now, now=utcnow())
        await self._write(wanted)
        expiry = next_lock_expiry(units, lock_now)
        due = IDLE_RECHECK if expiry is None else min(IDLE_RECHECK, expiry - lock_now + 0.1)
        return due

    async def _write(self, wanted: dict[str, Any]) -> None:
        if wanted == self.status:
            return
        before = self.status
        await self.kube.patch(VIOS_CLUSTER, None, self.name, {"status": wanted}, status=True)
        self.status = wanted
        for notice in rules.notices(before, wanted):
            kopf.event(self.body, type=notice.type, reason=notice.reason, message=notice.message)
            level = logging.WARNING if notice.type == "Warning" else logging.INFO
            self.logger.log(level, "%s", notice.message, extra=LOG_ONLY)
