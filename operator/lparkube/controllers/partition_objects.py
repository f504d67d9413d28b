"""The objects a Partition owns or adopts: its key Secret and its VirtualMachine.

Each function is idempotent: it reads first, creates or patches only what is missing, treats
"already exists" as a race it lost (and reads the winner), and never replaces a key. States a
user must fix raise ProblemError, which the controller shows as a condition.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lparkube.adapters.kube import VIRTUAL_MACHINE, Kube, not_found
from lparkube.domain import partition as domain
from lparkube.domain.conditions import FALSE, Condition
from lparkube.domain.key_delivery import DeliveryError
from lparkube.domain.partition_status import VM_READY
from lparkube_agent import protocol

VM_PATCH_ATTEMPTS = 5


def normal(partition: dict, *, reason: str, message: str) -> None:
    """A Normal event (kopf.info would drop it: posting.level is WARNING for log records)."""
    kopf.event(partition, type="Normal", reason=reason, message=message)


class ProblemError(Exception):
    """A state the user must fix; shown as VMReady=False with this reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.condition = Condition(VM_READY, FALSE, reason, message)


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
    return await _apply_template(kube, partition, agent, vm)


async def _apply_template(kube: Kube, partition: dict, agent: domain.AgentSpec, vm: dict) -> dict:
    """An edited vmTemplate reaches the VM; KubeVirt marks a running VM RestartRequired."""
    try:
        updated, patch = await _patch_vm(
            kube, partition, lambda vm: domain.template_patch(vm, partition, agent)
        )
    except ApiException as error:
        if error.status == 422:
            raise ProblemError("InvalidTemplate", _api_message(error)) from error
        raise
    if patch is None or updated is None:
        return updated or vm
    if "spec" in patch:
        message = (
            f"Applied the edited vmTemplate to VirtualMachine {vm['metadata']['name']}; "
            "a running VM takes it at its next restart"
        )
        normal(partition, reason="VMUpdated", message=message)
    return updated


async def ensure_adopted_vm(kube: Kube, partition: dict, agent: domain.AgentSpec) -> dict | None:
    """Add the Partition as a (non-controller) owner and the key disk; None if no such VM."""

    def plan(vm: dict) -> dict | None:
        try:
            return domain.adoption_patch(vm, partition, agent)
        except DeliveryError as exc:
            raise ProblemError("KeyDeliveryFailed", str(exc)) from exc

    vm, patch = await _patch_vm(kube, partition, plan)
    if patch is not None:
        note = " (the key disk reaches the guest at its next restart)" if "spec" in patch else ""
        message = f"Adopted VirtualMachine {vm['metadata']['name']}{note}"
        normal(partition, reason="VMAdopted", message=message)
    return vm


async def release_adopted_vm(kube: Kube, partition: dict) -> None:
    """Hand an adopted VM back: our owner reference and key disk removed, the VM kept."""
    uid = partition["metadata"]["uid"]
    vm, patch = await _patch_vm(kube, partition, lambda vm: domain.release_patch(vm, uid))
    if vm is not None and patch is not None:
        message = f"Released VirtualMachine {vm['metadata']['name']}"
        normal(partition, reason="VMReleased", message=message)


async def _patch_vm(
    kube: Kube, partition: dict, plan: Callable[[dict], dict | None]
) -> tuple[dict | None, dict | None]:
    """Read the adopted VM, plan a merge patch, apply it guarded by the resourceVersion it
    read; a conflict (KubeVirt updating its status, say) means read and plan again."""
    meta = partition["metadata"]
    namespace, name = meta["namespace"], domain.vm_name(meta["name"], partition["spec"])
    for _ in range(VM_PATCH_ATTEMPTS):
        vm = await kube.get(VIRTUAL_MACHINE, namespace, name)
        patch = plan(vm) if vm is not None else None
        if vm is None or patch is None:
            return vm, None
        try:
            return await kube.patch(VIRTUAL_MACHINE, namespace, name, patch), patch
        except ApiException as error:
            if not_found(error):
                return None, None
            if error.status != 409:
                raise
    raise kopf.TemporaryError(f"VirtualMachine {name} kept changing", delay=1)


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
