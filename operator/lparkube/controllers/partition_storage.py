"""The storage behind a Partition's disks: status.disks, StorageReady, an Event when a disk's
backing is replaced, resized or lost, and the guest agent told so that the guest rescans.

One concern, its own controller: it is woken by the claims and volumes that Partition VMs use
(an index of the VMs' claims, so a PVC or PV event finds its Partitions without listing
anything), by the VMs themselves, and, while a change is not delivered to the agent yet, by a
timer. Each pass reads the VM, its claims and their volumes, compares them with status.disks
(domain/backing_storage.py) and writes status.disks, status.storageChange and StorageReady in
one write with a resourceVersion precondition: of two passes that saw the same change only the
one whose write lands posts its Events. Passes of one Partition run one at a time, so an older
read never undoes a newer one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from lparkube.adapters.guest_agent import AgentError, AgentTarget
from lparkube.adapters.kube import PARTITION, VIRTUAL_MACHINE, KindNotServedError, Kube
from lparkube.domain import backing_storage as storage
from lparkube.domain import partition as domain
from lparkube.domain import partition_status as status_rules
from lparkube.domain.conditions import is_true, merge

logger = logging.getLogger(__name__)

RESOURCE = (PARTITION.group, PARTITION.version, PARTITION.plural)
KUBEVIRT_VMS = (VIRTUAL_MACHINE.group, VIRTUAL_MACHINE.version, VIRTUAL_MACHINE.plural)
RETRY_SECONDS = 5.0  # while a change is not delivered to the agent
DELIVERY_TIMEOUT = 10.0


# --- one pass ------------------------------------------------------------------------------


async def reconcile_storage(memo: Any, namespace: str, name: str) -> None:
    """Read, compare, write, post Events, deliver; one pass of a Partition at a time."""
    locks = memo.storage_locks
    lock = locks.get((namespace, name))
    if lock is None:
        lock = locks[(namespace, name)] = asyncio.Lock()
    async with lock:
        try:
            await _pass(memo.kube, memo.agents, namespace, name)
        except KindNotServedError:
            return  # no KubeVirt: no VM, no disks (the Partition's VMReady says so)
        except kopf.TemporaryError as error:
            logger.info("Storage of Partition %s/%s: %s", namespace, name, error)


async def _pass(kube: Kube, agents: Any, namespace: str, name: str) -> None:
    from lparkube.controllers.partition import write_status  # noqa: PLC0415 (a cycle)

    partition = await kube.get(PARTITION, namespace, name)
    if partition is None or partition["metadata"].get("deletionTimestamp"):
        return
    stored_vm = status_rules.stored_condition(partition.get("status"), status_rules.VM_READY)
    if stored_vm.reason == status_rules.VM_NAME_CONFLICT:
        return  # the VM is another Partition's: its disks are none of ours
    vm = await kube.get(
        VIRTUAL_MACHINE, namespace, domain.vm_name(name, partition.get("spec") or {})
    )
    if vm is None:
        return  # nothing backs anything yet; what was recorded stays
    now = await _backings(kube, namespace, storage.claimed_disks(vm.get("spec")))
    found: list[storage.DiskChange] = []

    def compute(current: dict[str, Any]) -> dict[str, Any]:
        found[:] = []
        status = current.get("status") or {}
        recorded = status.get("disks")
        found.extend(storage.changes(recorded, now))
        condition = storage.storage_ready(now)
        conditions = [
            c for c in status.get("conditions") or [] if c.get("type") != storage.STORAGE_READY
        ]
        if condition is not None:
            generation = current["metadata"].get("generation", 0)
            conditions = merge(status.get("conditions"), [condition], generation, _now())
        change = storage.pending_change(status.get("storageChange"), found, now) if now else None
        return {
            "disks": storage.disks_status(recorded, now),
            "storageChange": change,
            "conditions": conditions,
        }

    before, after = await write_status(kube, namespace, name, compute, partition)
    if after is None:
        return
    for change in found if after is not before else []:
        reason, type_ = storage.EVENTS[change.change]
        kopf.event(partition, type=type_, reason=reason, message=change.message)
    await _deliver(kube, agents, partition, after)


async def _backings(
    kube: Kube, namespace: str, disks: list[storage.ClaimedDisk]
) -> list[storage.Backing]:
    """What backs each disk: its claim and the claim's volume, each read once."""
    names = list(dict.fromkeys(d.claim for d in disks))
    claims = dict(
        zip(
            names, await asyncio.gather(*(kube.get_claim(namespace, n) for n in names)), strict=True
        )
    )
    volume_names = list(
        dict.fromkeys(
            v for c in claims.values() if c and (v := (c.get("spec") or {}).get("volumeName"))
        )
    )
    volumes = dict(
        zip(
            volume_names,
            await asyncio.gather(*(kube.get_volume(v) for v in volume_names)),
            strict=True,
        )
    )
    found = []
    for disk in disks:
        claim = claims.get(disk.claim)
        volume_name = ((claim or {}).get("spec") or {}).get("volumeName")
        found.append(
            storage.backing(disk, claim, volumes.get(volume_name) if volume_name else None)
        )
    return found


async def _deliver(
    kube: Kube, agents: Any, partition: dict[str, Any], status: dict[str, Any]
) -> None:
    """Tell the agent of an undelivered change (its answer, or why not, goes into status)."""
    from lparkube.controllers.partition import write_status  # noqa: PLC0415 (a cycle)

    change = status.get("storageChange")
    endpoint = (status.get("agent") or {}).get("endpoint")
    connected = is_true(status.get("conditions"), status_rules.AGENT_CONNECTED) and bool(endpoint)
    if agents is None or not storage.should_deliver(change, connected):
        return
    assert change is not None and endpoint
    meta = partition["metadata"]
    target = AgentTarget(meta["namespace"], meta["name"], meta["uid"], endpoint)
    body = {"id": change["id"], "disks": change["disks"]}
    try:
        answer = await agents.storage_changed(target, body, timeout=DELIVERY_TIMEOUT)
    except AgentError as error:
        logger.info(
            "Storage change %s of %s not delivered: %s", change["id"], target.partition, error
        )
        result = storage.undelivered(change, str(error))
    else:
        logger.info("Storage change %s delivered to %s", change["id"], target.partition)
        result = storage.delivered(change, answer)

    def compute(current: dict[str, Any]) -> dict[str, Any]:
        stored = (current.get("status") or {}).get("storageChange") or {}
        if stored.get("id") != change["id"] or stored.get("delivered"):
            return {}  # a newer change came meanwhile (it is delivered on its own)
        return {"storageChange": result}

    await write_status(kube, meta["namespace"], meta["name"], compute)


def _now() -> Any:
    from lparkube.controllers.partition import now  # noqa: PLC0415 (a cycle)

    return now()


# --- what wakes a pass ---------------------------------------------------------------------


@kopf.index(*KUBEVIRT_VMS)
def vm_by_claim(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict:
    """Which VMs use which claims, so a claim's or volume's event finds its VMs."""
    return {(namespace, d.claim): name for d in storage.claimed_disks(dict(spec))}


async def _wake(
    memo: Any, vm_by_claim: kopf.Index, partition_by_vm: kopf.Index, namespace: str, claim: str
) -> None:
    """Every Partition whose VM uses the claim (names copied first: kopf changes its indexes
    while this awaits)."""
    for vm in list(vm_by_claim.get((namespace, claim), ())):
        for name in list(partition_by_vm.get((namespace, vm), ())):
            await reconcile_storage(memo, namespace, name)


@kopf.on.event("v1", "persistentvolumeclaims")
async def claim_changed(
    namespace: str,
    name: str,
    memo: Any,
    vm_by_claim: kopf.Index,
    partition_by_vm: kopf.Index,
    **_: Any,
) -> None:
    """A claim made, resized, bound, lost or deleted."""
    await _wake(memo, vm_by_claim, partition_by_vm, namespace, name)


@kopf.on.event("v1", "persistentvolumes")
async def volume_changed(
    spec: kopf.Spec, memo: Any, vm_by_claim: kopf.Index, partition_by_vm: kopf.Index, **_: Any
) -> None:
    """A volume resized, released, failed or deleted: the claim it is bound to."""
    ref = spec.get("claimRef") or {}
    if ref.get("namespace") and ref.get("name"):
        await _wake(memo, vm_by_claim, partition_by_vm, ref["namespace"], ref["name"])


@kopf.on.event(*KUBEVIRT_VMS)
async def vm_storage_changed(
    namespace: str, name: str, memo: Any, partition_by_vm: kopf.Index, **_: Any
) -> None:
    """A VM made, or its disks changed."""
    for partition in list(partition_by_vm.get((namespace, name), ())):
        await reconcile_storage(memo, namespace, partition)


def _undelivered(status: kopf.Status, **_: Any) -> bool:
    change = status.get("storageChange") or {}
    return bool(change) and not change.get("delivered")


@kopf.timer(*RESOURCE, interval=RETRY_SECONDS, when=_undelivered)
async def partition_storage_retry(namespace: str, name: str, memo: Any, **_: Any) -> None:
    """A change the agent has not answered for: again, until it does."""
    await reconcile_storage(memo, namespace, name)
