"""Partition controller: the key Secret, the VM (created or adopted), and status from KubeVirt.

Every path converges on one idempotent ``reconcile``: create, resume after a restart, spec
updates, any change of the Partition's VM or VMI or of its namespace's NetworkPolicies, and
KubeVirt's CRD appearing. It reads the VM and VMI once into a scope, runs ordered phases over it
(claim, agent NetworkPolicy, Secret, VM) and writes status once. It never makes a second VM or
Secret and never replaces a key; status is recomputed from what it reads, so a restart or a
missed event costs nothing but a few reads. Heartbeat expiry runs in a per-Partition daemon.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lparkube import metrics
from lparkube.adapters.kube import (
    PARTITION,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    KindNotServedError,
    Kube,
    not_found,
)
from lparkube.controllers.partition_network import operator_pods, reconcile_agent_policy
from lparkube.controllers.partition_objects import (
    KeySecrets,
    ProblemError,
    check_claim,
    delete_owned_vm,
    ensure_adopted_vm,
    ensure_created_vm,
    normal,
    release_adopted_vm,
    vm_problem,
)
from lparkube.controllers.partition_paging import (
    paging_status,
    reconcile_paging,
    release_lus,
    report_paging,
)
from lparkube.controllers.partition_scope import PartitionScope
from lparkube.domain import partition as domain
from lparkube.domain import partition_status as status_rules
from lparkube.domain.agent_network import OperatorPods
from lparkube.domain.conditions import FALSE, TRUE, is_true
from lparkube.domain.key_delivery import DeliveryError

logger = logging.getLogger(__name__)

RESOURCE = (PARTITION.group, PARTITION.version, PARTITION.plural)
KUBEVIRT = (VIRTUAL_MACHINE.group, VIRTUAL_MACHINE.version)
STATUS_RETRIES = 5
IDLE_CHECK_SECONDS = 5.0
KUBEVIRT_CRDS = frozenset(
    f"{ref.plural}.{ref.group}" for ref in (VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE)
)
StatusFn = Callable[[dict[str, Any]], dict[str, Any]]


def now() -> datetime:
    return datetime.now(UTC)


# --- status writes ---------------------------------------------------------------------------


async def write_status(
    kube: Kube, namespace: str, name: str, compute: StatusFn, partition: dict | None = None
) -> tuple[dict | None, dict | None]:
    """Compute, patch with the read resourceVersion; on a conflict read and compute again.

    The gateway, the daemon and the handlers all write this status; the precondition keeps
    one from undoing another's condition list. ``partition``, when the caller has just read
    it, saves the first read. Returns (status before, status after).
    """
    for _ in range(STATUS_RETRIES):
        if partition is None:
            partition = await kube.get(PARTITION, namespace, name)
        if partition is None:
            return None, None
        before = partition.get("status") or {}
        patch = status_rules.status_patch(before, compute(partition))
        if not patch:
            return before, before
        body = {"metadata": {"resourceVersion": partition["metadata"]["resourceVersion"]}}
        try:
            written = await kube.patch(
                PARTITION, namespace, name, {**body, "status": patch}, status=True
            )
        except ApiException as error:
            if error.status == 409:
                partition = None
                continue
            if not_found(error):
                return None, None
            raise
        return before, written.get("status") or {}
    raise kopf.TemporaryError(f"status of {namespace}/{name} kept changing", delay=1)


# --- reconcile -------------------------------------------------------------------------------


async def load_scope(kube: Kube, partition: dict, secrets: KeySecrets) -> PartitionScope:
    """The Partition's VM and VMI, read once (at the same time)."""
    scope = PartitionScope(partition, secrets)
    try:
        scope.vm, scope.vmi = await asyncio.gather(
            kube.get(VIRTUAL_MACHINE, scope.namespace, scope.vm_name),
            kube.get(VIRTUAL_MACHINE_INSTANCE, scope.namespace, scope.vm_name),
        )
    except KindNotServedError as error:
        scope.problem = vm_problem(status_rules.KUBEVIRT_MISSING, kubevirt_missing(error))
    return scope


def kubevirt_missing(error: KindNotServedError) -> str:
    # The same words whichever of KubeVirt's two kinds was found missing first, so a
    # reconcile that meets the other one does not post a second Warning.
    ref = error.ref
    return (
        f"KubeVirt is not installed: this cluster does not serve {ref.group}/{ref.version} "
        "VirtualMachines and VirtualMachineInstances. Install KubeVirt; the Partition is "
        "reconciled as soon as it is"
    )


async def claim_vm(kube: Kube, scope: PartitionScope) -> None:
    """Before anything is made: an existing VM that is another Partition's is left alone."""
    if scope.vm is not None:
        await check_claim(kube, scope, scope.vm)


async def reconcile_secret(kube: Kube, scope: PartitionScope) -> None:
    assert scope.secrets is not None  # reconcile always brings them
    if await scope.secrets.ensure(kube, scope.partition, scope.agent):
        message = f"Generated the agent key in Secret {scope.agent.key_secret_name}"
        normal(scope.partition, reason="KeyCreated", message=message)


async def reconcile_vm(kube: Kube, scope: PartitionScope) -> None:
    if scope.adoption:
        await ensure_adopted_vm(kube, scope)
    else:
        await ensure_created_vm(kube, scope)


PHASES = (claim_vm, reconcile_agent_policy, reconcile_secret, reconcile_paging, reconcile_vm)


async def reconcile(
    kube: Kube, partition: dict, secrets: KeySecrets, operator: OperatorPods | None
) -> None:
    """Load, run the phases in order until one meets a problem, write status once."""
    scope = await load_scope(kube, partition, secrets)
    scope.operator_pods = operator
    for phase in PHASES:
        if scope.problem is not None:
            break
        try:
            await phase(kube, scope)
        except DeliveryError as exc:
            scope.problem = vm_problem(status_rules.KEY_DELIVERY_FAILED, str(exc))
        except ProblemError as exc:
            scope.problem = exc.condition
    before, _ = await write_status(
        kube, scope.namespace, scope.name, lambda current: scope_status(scope, current), partition
    )
    report_problem(scope, before)
    report_paging(scope, before)


def scope_status(scope: PartitionScope, current: dict) -> dict:
    """The status from the scope's reads, the problem (if any) as VMReady."""
    vm, vmi = scope.observed()
    status = status_rules.observed_status(current, vm, vmi, now())
    if scope.problem is not None:
        status["conditions"] = status_rules.conditions(
            current, scope.problem, status["agent"], now()
        )
    return paging_status(scope, status, now())


def report_problem(scope: PartitionScope, before: dict | None) -> None:
    """One Warning when the problem is new, not on every VM change. The handler itself
    succeeds: the condition says what to fix, and the change that fixes it (the Partition, its
    VM, KubeVirt's CRD) reconciles again, so a kopf retry would only repeat the Warning."""
    problem = scope.problem
    if problem is None:
        return
    stored = status_rules.stored_condition(before, status_rules.VM_READY)
    if (stored.reason, stored.message) != (problem.reason, problem.message):
        kopf.warn(scope.partition, reason=problem.reason, message=problem.message)


async def reconcile_one_at_a_time(memo: Any, partition: dict) -> None:
    """``reconcile``, never two of one Partition at once: its kopf handlers, VM, VMI and pool
    events each reconcile it, and two at once would both allocate its paging LU (two LUs
    created, one leaked)."""
    meta = partition["metadata"]
    locks = memo.reconcile_locks
    lock = locks.get((meta["namespace"], meta["name"]))
    if lock is None:
        lock = locks[(meta["namespace"], meta["name"])] = asyncio.Lock()
    async with lock:
        await reconcile(memo.kube, partition, memo.key_secrets, operator_pods(memo))


async def reconcile_by_name(memo: Any, namespace: str, name: str) -> None:
    """Reconcile after a VM or VMI change; best effort, the next change or resume retries."""
    partition = await memo.kube.get(PARTITION, namespace, name)
    if partition is not None:
        await reconcile_read(memo, partition)


async def reconcile_read(memo: Any, partition: dict) -> None:
    """Reconcile a Partition just read (unless it is being deleted), as best effort."""
    meta = partition["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if meta.get("deletionTimestamp"):
        return
    try:
        await reconcile_one_at_a_time(memo, partition)
    except kopf.TemporaryError:
        pass  # a lost race, won by another writer; the next change or resume looks again
    except ApiException as error:
        if error.status == 403 and "being terminated" in str(error.body):
            return  # the namespace is going away, and the Partition with it
        logger.warning("Cannot reconcile Partition %s/%s: %s", namespace, name, error.reason)


# --- kopf handlers ---------------------------------------------------------------------------


@kopf.index(*RESOURCE)
def partition_by_vm(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict:
    """Which Partition manages which VM, so VM and VMI events find their Partition."""
    return {(namespace, domain.vm_name(name, dict(spec))): name}


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@metrics.instrumented("partitions")
async def partition_create(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Also on resume: after a restart every Partition is checked, nothing is duplicated."""
    await reconcile_one_at_a_time(memo, _plain(body))


@kopf.on.update(*RESOURCE)
@metrics.instrumented("partitions")
async def partition_update(body: kopf.Body, memo: Any, **_: Any) -> None:
    await reconcile_one_at_a_time(memo, _plain(body))


@kopf.on.delete(*RESOURCE)
@metrics.instrumented("partitions")
async def partition_delete(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A created VM and the key Secret go with the Partition; an adopted VM stays, only our
    owner reference and key disk are removed."""
    partition = _plain(body)
    if domain.is_adoption(partition.get("spec") or {}):
        await release_adopted_vm(memo.kube, partition)
    else:
        await delete_owned_vm(memo.kube, partition)
    await release_lus(memo.kube, partition)  # the paging LU: free again, or deleted
    memo.key_secrets.forget(partition)  # the garbage collector deletes the Secret


@kopf.daemon(*RESOURCE, cancellation_timeout=1.0)
async def partition_heartbeat(
    body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Turn AgentConnected False once the last heartbeat is older than heartbeatTimeout.

    A daemon rather than a timer: it sleeps exactly until the current deadline (the body is
    live, so a new heartbeat moves it) and logs nothing while all is well.
    """
    while not stopped:
        await stopped.wait(await check_heartbeat(memo.kube, body))


async def check_heartbeat(kube: Kube, body: kopf.Body) -> float:
    """Expire the heartbeat if due; returns how long to sleep before looking again.

    Reads the live body without copying it: with many Partitions this runs often.
    """
    name = body.metadata.name
    timeout = domain.agent_spec(name, dict(body.spec)).heartbeat_timeout
    idle = max(0.5, min(IDLE_CHECK_SECONDS, timeout / 2))
    agent_status = body.status.get("agent")
    deadline = status_rules.heartbeat_deadline(agent_status, timeout)
    stored = status_rules.stored_condition(dict(body.status), status_rules.AGENT_CONNECTED)
    if deadline is None or stored.status != TRUE:
        return idle
    remaining = (deadline - now()).total_seconds()
    if remaining >= 0:
        return min(idle, remaining + 0.05)
    before, after = await write_status(
        kube, body.metadata.namespace, name, lambda p: status_rules.status_with_expiry(p, now())
    )
    if status_rules.transition(before, after, status_rules.AGENT_CONNECTED) == FALSE:
        message = f"No heartbeat from the guest agent for more than {timeout:g}s"
        kopf.warn(_plain(body), reason="AgentLost", message=message)
    return idle


@kopf.on.event(*KUBEVIRT, VIRTUAL_MACHINE_INSTANCE.plural)
async def vmi_changed(
    namespace: str, name: str, memo: Any, partition_by_vm: kopf.Index, **_: Any
) -> None:
    """Node and address changes flow into the Partition's status as they happen."""
    await reconcile_indexed(memo, partition_by_vm, namespace, name)


@kopf.on.event(*KUBEVIRT, VIRTUAL_MACHINE.plural)
async def vm_changed(
    namespace: str, name: str, memo: Any, partition_by_vm: kopf.Index, **_: Any
) -> None:
    """A VM that appears is adopted, one deleted under a live Partition is recreated, one
    handed back by its Partition may be adopted by another that names it."""
    await reconcile_indexed(memo, partition_by_vm, namespace, name)


def _is_kubevirt_crd(name: str, **_: Any) -> bool:
    return name in KUBEVIRT_CRDS


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=_is_kubevirt_crd)
async def kubevirt_crd_changed(
    type: str | None, status: kopf.Status, memo: Any, partition_by_vm: kopf.Index, **_: Any
) -> None:
    """KubeVirt installed while the operator runs: each time its VirtualMachine or
    VirtualMachineInstance CRD becomes Established, the Partitions that found KubeVirt missing
    reconcile (nothing else would wake them; the reconcile reads both kinds, so the later of
    the two is the one that finds KubeVirt whole)."""
    if type is None or not is_true(status.get("conditions"), "Established"):
        return  # the initial listing (every Partition resumes anyway), or not served yet
    waiting = [(ns, name) for (ns, _), names in list(partition_by_vm.items()) for name in names]
    for namespace, name in waiting:
        partition = await memo.kube.get(PARTITION, namespace, name)
        if partition is None:
            continue
        stored = status_rules.stored_condition(partition.get("status"), status_rules.VM_READY)
        if stored.reason == status_rules.KUBEVIRT_MISSING:
            await reconcile_read(memo, partition)


async def reconcile_indexed(memo: Any, index: kopf.Index, namespace: str, vm_name: str) -> None:
    """Every Partition that names the VM. The names are copied first: kopf changes its
    index while this awaits."""
    for partition in list(index.get((namespace, vm_name), ())):
        await reconcile_by_name(memo, namespace, partition)


def _plain(body: kopf.Body) -> dict:
    """A plain-dict snapshot of a kopf body (the domain takes plain dicts)."""
    return copy.deepcopy(dict(body))
