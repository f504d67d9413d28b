"""A Partition's paging LU (spec.paging): claimed from its VIOSCluster before the VM is made,
attached as disk lparkube-paging, shown as status.paging and PagingReady, released with the
Partition (or when spec.paging is removed).

A refusal (no pool, pool not Ready, LU too large) is PagingReady=False: a new VM waits for
the LU, an existing VM keeps the disk it has. Partitions waiting for their pool reconcile when
its status changes (the index and event handler below).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from lparkube.adapters.kube import PARTITION, Kube
from lparkube.adapters.logical_units import VIOS_CLUSTER, ClaimedLU, LogicalUnits, Storage
from lparkube.api.v1alpha1 import partition as partition_api
from lparkube.api.v1alpha1.vioscluster import PAGING
from lparkube.controllers.partition_scope import PartitionScope
from lparkube.domain import logical_units as lu
from lparkube.domain import paging
from lparkube.domain.conditions import FALSE, TRUE, Condition, find, merge
from lparkube.domain.saving import label_value

logger = logging.getLogger(__name__)
RESOURCE = (PARTITION.group, PARTITION.version, PARTITION.plural)


async def reconcile_paging(kube: Kube, scope: PartitionScope) -> None:
    """The paging phase: claim (or keep) the LU, or say why not; release it when unwanted."""
    stored = (scope.partition.get("status") or {}).get("paging") or {}
    if not paging.wanted(scope.spec):
        if stored:
            await release_lus(kube, scope.partition, purpose=PAGING)
        return
    pool_name = scope.spec.get("viosClusterName") or ""
    pool = await kube.get(VIOS_CLUSTER, None, pool_name)
    given = paging.PagingInput(
        namespace=scope.namespace,
        uid=scope.uid,
        spec=scope.spec,
        vm_spec=_vm_spec(scope),
        pool=pool,
    )
    refused = paging.paging_refusal(given)
    if refused is None and scope.adoption:
        refused = paging.refusal(
            partition_api.PAGING_NEEDS_TEMPLATE,
            "spec.paging attaches the LU to a VM lparkube creates (spec.vmTemplate); an "
            "adopted VM keeps its own disks",
        )
    if refused is not None:
        _keep_stored(scope, stored, refused)
        return
    assert pool is not None
    _, _, _, lock_seconds = paging.pool_settings(pool)
    claimed = await LogicalUnits(kube).allocate(
        paging.lu_request(given), scope.name, Storage.of(pool), lock_seconds
    )
    if isinstance(claimed, lu.LURefusal):
        _keep_stored(scope, stored, paging.refusal(claimed.reason, claimed.message))
        return
    _attach(scope, claimed)


def _vm_spec(scope: PartitionScope) -> dict[str, Any] | None:
    if scope.adoption:
        return (scope.vm or {}).get("spec")
    return (scope.spec.get("vmTemplate") or {}).get("spec")


def _keep_stored(scope: PartitionScope, stored: dict[str, Any], refused: Condition) -> None:
    """Refused now: a VM that has the LU keeps it; a VM not made yet waits."""
    scope.paging_condition = refused
    scope.paging_claim = stored.get("claimName") or paging.disk_claim((scope.vm or {}).get("spec"))
    scope.paging_size = lu.parse_size(stored.get("size"))
    scope.vm_held = scope.vm is None


def _attach(scope: PartitionScope, claimed: ClaimedLU) -> None:
    scope.paging_claim, scope.paging_size = claimed.name, claimed.size_bytes
    scope.paging_condition = paging.attached(claimed.name, claimed.size_bytes)


def paging_status(scope: PartitionScope, status: dict[str, Any], now: Any) -> dict[str, Any]:
    """The computed status with status.paging and PagingReady (removed without spec.paging)."""
    if not paging.wanted(scope.spec):
        conditions = [c for c in status["conditions"] if c["type"] != paging.PAGING_READY]
        return {**status, "conditions": conditions, "paging": None}
    if scope.paging_condition is None:  # not evaluated (an earlier phase stopped): keep
        return status
    generation = scope.partition["metadata"].get("generation", 0)
    conditions = merge(status["conditions"], [scope.paging_condition], generation, now)
    return {
        **status,
        "conditions": conditions,
        "paging": paging.status_paging(scope.paging_claim, scope.paging_size),
    }


def report_paging(scope: PartitionScope, before: dict[str, Any] | None) -> None:
    """An Event when PagingReady changes: Normal when the LU is attached, a Warning when it
    is refused (once per reason)."""
    wanted = scope.paging_condition
    if wanted is None:
        return
    old = find((before or {}).get("conditions"), paging.PAGING_READY) or {}
    if (old.get("status"), old.get("reason")) == (wanted.status, wanted.reason):
        return
    if wanted.status == TRUE:
        kopf.event(
            scope.partition,
            type="Normal",
            reason=partition_api.PAGING_READY,
            message=wanted.message,
        )
    elif wanted.status == FALSE:
        kopf.event(
            scope.partition,
            type="Warning",
            reason=partition_api.PAGING_NOT_READY,
            message=f"{wanted.reason}: {wanted.message}",
        )


async def release_lus(kube: Kube, partition: dict[str, Any], purpose: str | None = None) -> None:
    """Give back the Partition's LUs: unclaimed (the pool reuses them) or deleted."""
    meta = partition["metadata"]
    pools: dict[str, bool] = {}

    async def reuse_of(pool_label: str) -> bool:
        if pool_label not in pools:
            pools[pool_label] = await _pool_reuses(kube, pool_label)
        return pools[pool_label]

    done = await LogicalUnits(kube).release(
        meta["namespace"], meta["name"], meta["uid"], reuse_of, purpose=purpose
    )
    for name, action in done:
        logger.info("LU %s/%s of Partition %s: %s", meta["namespace"], name, meta["name"], action)


async def _pool_reuses(kube: Kube, pool_label: str) -> bool:
    """The pool's spec.reuse; a pool gone (or not found by its label) keeps its LUs."""
    for pool in await kube.list(VIOS_CLUSTER):
        if label_value(pool["metadata"]["name"]) == pool_label:
            return (pool.get("spec") or {}).get("reuse", True) is not False
    return True


# --- waking Partitions that wait for their pool ---------------------------------------------


@kopf.index(*RESOURCE)
def partition_by_pool(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict:
    """Which Partitions take LUs from which VIOSCluster."""
    pool = spec.get("viosClusterName")
    return {pool: (namespace, name)} if pool and spec.get("paging") is not None else {}


@kopf.on.event(VIOS_CLUSTER.group, VIOS_CLUSTER.version, VIOS_CLUSTER.plural)
async def vioscluster_changed(
    name: str, memo: Any, partition_by_pool: kopf.Index, **_: Any
) -> None:
    """A pool appeared, changed or became Ready: its waiting Partitions reconcile."""
    from lparkube.controllers.partition import reconcile_read  # noqa: PLC0415 (a cycle)

    for namespace, partition_name in list(partition_by_pool.get(name, ())):
        partition = await memo.kube.get(PARTITION, namespace, partition_name)
        if partition is None:
            continue
        stored = find((partition.get("status") or {}).get("conditions"), paging.PAGING_READY)
        if (stored or {}).get("status") != TRUE:
            await reconcile_read(memo, partition)
