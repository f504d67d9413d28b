"""Partition controller: the key Secret, the VM (created or adopted), and status from KubeVirt.

Every path converges on one idempotent ``reconcile``: create, resume after a restart, spec
updates, and any change of the Partition's VM or VMI. It never makes a second VM or Secret
and never replaces a key; status is recomputed from what it reads, so a restart or a missed
event costs nothing but a few reads. Heartbeat expiry runs in a per-Partition daemon.
"""

from __future__ import annotations

import asyncio
import copy
import json
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
    Kube,
    not_found,
)
from lparkube.config import default_gateway_url
from lparkube.controllers import run_config
from lparkube.domain import partition as domain
from lparkube.domain.conditions import FALSE, Condition
from lparkube.domain.key_delivery import DeliveryError
from lparkube_agent import protocol

logger = logging.getLogger(__name__)

RESOURCE = (PARTITION.group, PARTITION.version, PARTITION.plural)
KUBEVIRT = (VIRTUAL_MACHINE.group, VIRTUAL_MACHINE.version)
STATUS_RETRIES = 5
IDLE_CHECK_SECONDS = 5.0
StatusFn = Callable[[dict[str, Any]], dict[str, Any]]


def now() -> datetime:
    return datetime.now(UTC)


def normal(partition: dict, *, reason: str, message: str) -> None:
    """A Normal event (kopf.info would drop it: posting.level is WARNING for log records)."""
    kopf.event(partition, type="Normal", reason=reason, message=message)


class ProblemError(Exception):
    """A state the user must fix; shown as VMReady=False with this reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.condition = Condition(domain.VM_READY, FALSE, reason, message)


# --- status writes ---------------------------------------------------------------------------


async def write_status(
    kube: Kube, namespace: str, name: str, compute: StatusFn
) -> tuple[dict | None, dict | None]:
    """Read, compute, patch with the read resourceVersion; retry on conflict.

    The gateway, the daemon and the handlers all write this status; the precondition keeps
    one from undoing another's condition list. Returns (status before, status after).
    """
    for _ in range(STATUS_RETRIES):
        partition = await kube.get(PARTITION, namespace, name)
        if partition is None:
            return None, None
        before = partition.get("status") or {}
        patch = domain.status_patch(before, compute(partition))
        if not patch:
            return before, before
        body = {"metadata": {"resourceVersion": partition["metadata"]["resourceVersion"]}}
        try:
            written = await kube.patch(
                PARTITION, namespace, name, {**body, "status": patch}, status=True
            )
        except ApiException as error:
            if error.status == 409:
                continue
            raise
        return before, written.get("status") or {}
    raise kopf.TemporaryError(f"status of {namespace}/{name} kept changing", delay=1)


def gateway_url(memo: Any) -> str:
    config = run_config(memo)
    if config is None:
        return default_gateway_url(None)
    return config.agent_gateway_url or default_gateway_url(config.lease.namespace)


# --- the key Secret --------------------------------------------------------------------------


async def ensure_secret(kube: Kube, partition: dict, agent: domain.AgentSpec, url: str) -> bool:
    """Create the key Secret, or complete an existing one; never replace its key.

    Returns True when this call created it.
    """
    namespace = partition["metadata"]["namespace"]
    secret = await _read_secret(kube, namespace, agent.key_secret_name)
    if secret is None:
        data = domain.secret_data(partition, agent, protocol.new_key(), url)
        body = domain.key_secret(partition, agent, data)
        try:
            await kube.call(kube.core.create_namespaced_secret, namespace, body)
            return True
        except ApiException as error:
            if error.status != 409:
                raise
        secret = await _read_secret(kube, namespace, agent.key_secret_name)
        if secret is None:
            raise kopf.TemporaryError("the key Secret vanished while being created", delay=1)
    key = domain.secret_key(secret)
    if key is None or len(key) < protocol.MIN_KEY_BYTES:
        raise ProblemError(
            "KeyInvalid",
            f"Secret {agent.key_secret_name} has no usable data.key (base64 of at least "
            f"{protocol.MIN_KEY_BYTES} random bytes); fix or delete it",
        )
    missing = domain.missing_secret_data(
        secret.get("data"), domain.secret_data(partition, agent, key, url)
    )
    if missing:
        await kube.call(
            kube.core.patch_namespaced_secret,
            agent.key_secret_name,
            namespace,
            {"data": missing},
        )
    return False


async def _read_secret(kube: Kube, namespace: str, name: str) -> dict | None:
    try:
        secret = await kube.call(kube.core.read_namespaced_secret, name, namespace)
    except ApiException as error:
        if not_found(error):
            return None
        raise
    return kube.api_client.sanitize_for_serialization(secret)


# --- the VirtualMachine ----------------------------------------------------------------------


async def ensure_created_vm(kube: Kube, partition: dict, agent: domain.AgentSpec) -> dict:
    """The Partition's own VM, created from the template when missing."""
    meta = partition["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    vm = await kube.get(VIRTUAL_MACHINE, namespace, name)
    if vm is None:
        body = domain.vm_from_template(partition, agent)
        try:
            vm = await kube.create(VIRTUAL_MACHINE, namespace, body)
            normal(partition, reason="VMCreated", message=f"Created VirtualMachine {name}")
            return vm
        except ApiException as error:
            if error.status == 422:
                raise ProblemError("InvalidTemplate", _api_message(error)) from error
            if error.status != 409:
                raise
        vm = await kube.get(VIRTUAL_MACHINE, namespace, name)
        if vm is None:
            raise kopf.TemporaryError("the VM vanished while being created", delay=1)
    if not domain.controlled_by(vm, meta["uid"]):
        raise ProblemError(
            "VMNameConflict",
            f"VirtualMachine {name} exists and is not this Partition's; delete or rename it, "
            "or adopt it with spec.vmName instead of spec.vmTemplate",
        )
    return vm


async def ensure_adopted_vm(kube: Kube, partition: dict, agent: domain.AgentSpec) -> dict | None:
    """Add the Partition as a (non-controller) owner and the key disk; None if no such VM."""
    meta = partition["metadata"]
    name = domain.vm_name(meta["name"], partition["spec"])
    vm = await kube.get(VIRTUAL_MACHINE, meta["namespace"], name)
    if vm is None:
        return None
    try:
        patch = domain.adoption_patch(vm, partition, agent)
    except DeliveryError as exc:
        raise ProblemError("KeyDeliveryFailed", str(exc)) from exc
    if patch is None:
        return vm
    try:
        vm = await kube.patch(VIRTUAL_MACHINE, meta["namespace"], name, patch)
    except ApiException as error:
        if error.status == 409:
            raise kopf.TemporaryError("the VM changed while being adopted", delay=1) from error
        raise
    note = " (the key disk reaches the guest at its next restart)" if "spec" in patch else ""
    normal(partition, reason="VMAdopted", message=f"Adopted VirtualMachine {name}{note}")
    return vm


async def release_adopted_vm(kube: Kube, partition: dict) -> None:
    """Hand an adopted VM back: our owner reference and key disk removed, the VM kept."""
    meta = partition["metadata"]
    name = domain.vm_name(meta["name"], partition["spec"])
    vm = await kube.get(VIRTUAL_MACHINE, meta["namespace"], name)
    patch = domain.release_patch(vm, meta["uid"]) if vm else None
    if patch is None:
        return
    try:
        await kube.patch(VIRTUAL_MACHINE, meta["namespace"], name, patch)
    except ApiException as error:
        if error.status == 409:
            raise kopf.TemporaryError("the VM changed while being released", delay=1) from error
        if not not_found(error):
            raise
    normal(partition, reason="VMReleased", message=f"Released VirtualMachine {name}")


async def delete_owned_vm(kube: Kube, partition: dict) -> None:
    """Delete the VM this Partition controls now, rather than when the garbage collector next
    notices (the owner reference stays as the backstop)."""
    meta = partition["metadata"]
    vm = await kube.get(VIRTUAL_MACHINE, meta["namespace"], meta["name"])
    if vm is not None and domain.controlled_by(vm, meta["uid"]):
        ref, delete = VIRTUAL_MACHINE, kube.custom.delete_namespaced_custom_object
        args = (ref.group, ref.version, meta["namespace"], ref.plural, meta["name"])
        await _delete(kube, delete, *args, uid=vm["metadata"]["uid"])


async def delete_owned_secret(kube: Kube, partition: dict) -> None:
    """Delete the key Secret if this Partition made it (a user's own Secret stays)."""
    meta = partition["metadata"]
    name = domain.agent_spec(meta["name"], partition.get("spec") or {}).key_secret_name
    secret = await _read_secret(kube, meta["namespace"], name)
    if secret is not None and domain.controlled_by(secret, meta["uid"]):
        delete, uid = kube.core.delete_namespaced_secret, secret["metadata"]["uid"]
        await _delete(kube, delete, name, meta["namespace"], uid=uid)


async def _delete(kube: Kube, fn: Callable[..., Any], *args: Any, uid: str) -> None:
    body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
    try:
        await kube.call(fn, *args, body=body)
    except ApiException as error:
        if error.status not in (404, 409):  # gone already, or replaced by another object
            raise


def _api_message(error: ApiException) -> str:
    try:
        return json.loads(error.body or "{}").get("message") or str(error.reason)
    except ValueError:
        return str(error.reason)


# --- reconcile -------------------------------------------------------------------------------


async def reconcile(kube: Kube, partition: dict, url: str) -> None:
    """Secret, VM, status: each step idempotent, status written even when a step fails."""
    meta, spec = partition["metadata"], partition.get("spec") or {}
    agent = domain.agent_spec(meta["name"], spec)
    problem: ProblemError | None = None
    try:
        if await ensure_secret(kube, partition, agent, url):
            message = f"Generated the agent key in Secret {agent.key_secret_name}"
            normal(partition, reason="KeyCreated", message=message)
        if domain.is_adoption(spec):
            await ensure_adopted_vm(kube, partition, agent)
        else:
            await ensure_created_vm(kube, partition, agent)
    except DeliveryError as exc:
        problem = ProblemError("KeyDeliveryFailed", str(exc))
    except ProblemError as exc:
        problem = exc
    await refresh_status(kube, meta["namespace"], meta["name"], problem)
    if problem is not None:
        kopf.warn(partition, reason=problem.condition.reason, message=problem.condition.message)
        raise kopf.PermanentError(problem.condition.message)


async def refresh_status(
    kube: Kube, namespace: str, name: str, problem: ProblemError | None = None
) -> None:
    """Mirror the VM and VMI into the Partition's status."""
    partition = await kube.get(PARTITION, namespace, name)
    if partition is None:
        return
    vm_name = domain.vm_name(name, partition.get("spec") or {})
    vm, vmi = await asyncio.gather(
        kube.get(VIRTUAL_MACHINE, namespace, vm_name),
        kube.get(VIRTUAL_MACHINE_INSTANCE, namespace, vm_name),
    )

    def compute(current: dict) -> dict:
        status = domain.observed_status(current, vm, vmi, now())
        if problem is not None:
            status["conditions"] = domain.conditions(
                current, problem.condition, status["agent"], now()
            )
        return status

    await write_status(kube, namespace, name, compute)


async def reconcile_by_name(memo: Any, namespace: str, name: str) -> None:
    """Reconcile after a VM or VMI change; best effort, the next change or resume retries."""
    partition = await memo.kube.get(PARTITION, namespace, name)
    if partition is None or partition["metadata"].get("deletionTimestamp"):
        return
    try:
        await reconcile(memo.kube, partition, gateway_url(memo))
    except kopf.PermanentError:
        pass  # already in status and events; a later change re-triggers
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
    await reconcile(memo.kube, _plain(body), gateway_url(memo))


@kopf.on.update(*RESOURCE)
@metrics.instrumented("partitions")
async def partition_update(body: kopf.Body, memo: Any, **_: Any) -> None:
    await reconcile(memo.kube, _plain(body), gateway_url(memo))


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
    await delete_owned_secret(memo.kube, partition)


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
    """Expire the heartbeat if due; returns how long to sleep before looking again."""
    partition = _plain(body)
    meta = partition["metadata"]
    timeout = domain.agent_spec(meta["name"], partition.get("spec") or {}).heartbeat_timeout
    idle = max(0.5, min(IDLE_CHECK_SECONDS, timeout / 2))
    status = partition.get("status") or {}
    deadline = domain.heartbeat_deadline(status.get("agent"), timeout)
    connected = domain.stored_condition(status, domain.AGENT_CONNECTED).status == "True"
    if deadline is None or not connected:
        return idle
    remaining = (deadline - now()).total_seconds()
    if remaining >= 0:
        return min(idle, remaining + 0.05)
    before, after = await write_status(
        kube, meta["namespace"], meta["name"], lambda p: domain.status_with_expiry(p, now())
    )
    if domain.transition(before, after, domain.AGENT_CONNECTED) == FALSE:
        message = f"No heartbeat from the guest agent for more than {timeout:g}s"
        kopf.warn(partition, reason="AgentLost", message=message)
    return idle


@kopf.on.event(*KUBEVIRT, VIRTUAL_MACHINE_INSTANCE.plural)
async def vmi_changed(
    namespace: str, name: str, memo: Any, partition_by_vm: kopf.Index, **_: Any
) -> None:
    """Node and address changes flow into the Partition's status as they happen."""
    for partition in partition_by_vm.get((namespace, name), []):
        await reconcile_by_name(memo, namespace, partition)


@kopf.on.event(*KUBEVIRT, VIRTUAL_MACHINE.plural)
async def vm_changed(
    namespace: str, name: str, memo: Any, partition_by_vm: kopf.Index, **_: Any
) -> None:
    """A VM that appears is adopted, one deleted under a live Partition is recreated."""
    for partition in partition_by_vm.get((namespace, name), []):
        await reconcile_by_name(memo, namespace, partition)


def _plain(body: kopf.Body) -> dict:
    """A plain-dict snapshot of a kopf body (the domain takes plain dicts)."""
    return copy.deepcopy(dict(body))
