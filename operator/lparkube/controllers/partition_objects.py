"""The objects a Partition owns or adopts: its key Secret and its VirtualMachine.

Each function is idempotent: it reads first, creates or patches only what is missing, treats
"already exists" as a race it lost (and reads the winner), and never replaces a key. States a
user must fix raise ProblemError, which the controller shows as a condition.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lparkube.adapters.agent_identity import AgentIdentity
from lparkube.adapters.kube import PARTITION, VIRTUAL_MACHINE, Kube, not_found
from lparkube.controllers.partition_scope import PartitionScope
from lparkube.domain import key_delivery, vm_ownership
from lparkube.domain import partition as domain
from lparkube.domain import partition_status as status_rules
from lparkube.domain.conditions import FALSE, Condition

VM_PATCH_ATTEMPTS = 5


def normal(partition: dict, *, reason: str, message: str) -> None:
    """A Normal event (kopf.info would drop it: posting.level is WARNING for log records)."""
    kopf.event(partition, type="Normal", reason=reason, message=message)


def vm_problem(reason: str, message: str) -> Condition:
    """A problem with the Partition's VM, shown as VMReady=False."""
    return Condition(status_rules.VM_READY, FALSE, reason, message)


class ProblemError(Exception):
    """A state the user must fix; shown as VMReady=False with this reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.condition = vm_problem(reason, message)


# --- the key Secret --------------------------------------------------------------------------


class KeySecrets:
    """Writes each Partition's key Secret from the operator's identity, without reading one.

    A Secret is created, or rewritten by a JSON patch that applies only to a Secret this
    Partition controls; what was last written is remembered (by Partition uid and Secret
    name), so a reconcile that changes nothing makes no write. The operator never reads a
    tenant's Secret: the key is derived again whenever it is needed.
    """

    def __init__(self, identity: AgentIdentity, url: str) -> None:
        self.identity = identity
        self.url = url
        self._written: dict[str, tuple[str, str]] = {}  # Partition uid -> (Secret, digest)

    async def ensure(self, kube: Kube, partition: dict, agent: domain.AgentSpec) -> bool:
        """Create or rewrite the key Secret; True when this call created it."""
        meta = partition["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        credentials = self.identity.agent_credentials(namespace, name, uid)
        data = domain.secret_data(partition, agent, credentials, self.url)
        written = (agent.key_secret_name, domain.data_digest(data))
        if self._written.get(uid) == written:
            return False
        created = await self._create_or_rewrite(kube, partition, agent, data)
        self._written[uid] = written
        return created

    def forget(self, partition: dict) -> None:
        """The Partition is gone: nothing of it stays remembered."""
        self._written.pop(partition["metadata"]["uid"], None)

    async def _create_or_rewrite(
        self, kube: Kube, partition: dict, agent: domain.AgentSpec, data: dict[str, str]
    ) -> bool:
        namespace = partition["metadata"]["namespace"]
        body = domain.key_secret(partition, agent, data)
        try:
            await kube.call(kube.core.create_namespaced_secret, namespace, body)
            return True
        except ApiException as error:
            if error.status != 409:
                raise
        patch = domain.owned_secret_patch(partition["metadata"]["uid"], data)
        try:
            await kube.call(
                kube.core.patch_namespaced_secret, agent.key_secret_name, namespace, patch
            )
        except ApiException as error:
            if not_found(error):
                raise kopf.TemporaryError("the key Secret vanished", delay=1) from error
            if error.status != 422:
                raise
            raise ProblemError(
                status_rules.KEY_SECRET_CONFLICT,
                f"Secret {agent.key_secret_name} exists and is not this Partition's: lparkube "
                "makes the key Secret itself and writes only one its Partition controls. "
                "Delete that Secret, or create the Partition again naming another "
                "spec.agent.keySecretName",
            ) from error
        return False


# --- the VirtualMachine ----------------------------------------------------------------------


async def check_claim(kube: Kube, scope: PartitionScope, vm: dict) -> None:
    """Raise ProblemError when the VM is another Partition's (the claim rules in
    ``vm_ownership``); the Partition then leaves it alone."""
    other = vm_ownership.other_claimant(vm, scope.name)
    claimant = await kube.get(PARTITION, scope.namespace, other) if other else None
    refusal = vm_ownership.claim_refusal(vm_ownership.ClaimInput.of(scope.partition, vm, claimant))
    if refusal is not None:
        scope.refused = True
        raise ProblemError(refusal.reason, refusal.message)


async def ensure_created_vm(kube: Kube, scope: PartitionScope) -> None:
    """The Partition's own VM, created from the template when missing."""
    if scope.vm is None:
        if scope.vm_held:
            return  # waiting for the paging LU (PagingReady says why)
        body = domain.vm_from_template(scope.partition, scope.agent, scope.paging_claim)
        try:
            scope.vm = await kube.create(VIRTUAL_MACHINE, scope.namespace, body)
            message = f"Created VirtualMachine {scope.name}"
            normal(scope.partition, reason="VMCreated", message=message)
            return
        except ApiException as error:
            if error.status == 422:
                raise ProblemError(status_rules.INVALID_TEMPLATE, _api_message(error)) from error
            if error.status != 409:
                raise
        scope.vm = await kube.get(VIRTUAL_MACHINE, scope.namespace, scope.name)
        if scope.vm is None:
            raise kopf.TemporaryError("the VM vanished while being created", delay=1)
        await check_claim(kube, scope, scope.vm)
    await _apply_template(kube, scope)


async def _apply_template(kube: Kube, scope: PartitionScope) -> None:
    """An edited vmTemplate reaches the VM; KubeVirt marks a running VM RestartRequired."""

    async def plan(vm: dict) -> dict | None:
        return domain.template_patch(vm, scope.partition, scope.agent, scope.paging_claim)

    try:
        patch = await _patch_vm(kube, scope, plan)
    except ApiException as error:
        if error.status == 422:
            raise ProblemError(status_rules.INVALID_TEMPLATE, _api_message(error)) from error
        raise
    if patch is not None and "spec" in patch:
        message = (
            f"Applied the edited vmTemplate to VirtualMachine {scope.vm_name}; "
            "a running VM takes it at its next restart"
        )
        normal(scope.partition, reason="VMUpdated", message=message)


async def ensure_adopted_vm(kube: Kube, scope: PartitionScope) -> None:
    """Mark the VM as this Partition's and give it the key disk; nothing while it is missing.
    The claim phase checked the VM read first; one read again after a conflict is checked
    again (another Partition may have just taken it)."""
    adopted_before, checked = False, scope.vm

    async def plan(vm: dict) -> dict | None:
        nonlocal adopted_before
        if vm is not checked:
            await check_claim(kube, scope, vm)
        adopted_before = vm_ownership.claimed_by(vm, scope.name, scope.uid)
        return vm_ownership.adoption_patch(vm, scope.partition, scope.agent)

    patch = await _patch_vm(kube, scope, plan)
    if patch is None:
        return
    if adopted_before and "spec" in patch:
        kopf.warn(scope.partition, reason="KeyDiskRestored", message=_restored(scope))
    elif not adopted_before:
        note = " (the key disk reaches the guest at its next restart)" if "spec" in patch else ""
        message = f"Adopted VirtualMachine {scope.vm_name}{note}"
        normal(scope.partition, reason="VMAdopted", message=message)


def _restored(scope: PartitionScope) -> str:
    return (
        f"VirtualMachine {scope.vm_name} had lost the key volume or disk "
        f"{key_delivery.KEY_VOLUME!r} (applied from a manifest without it?); added it back. "
        "Put them into the VM's manifest, and applying it changes nothing (docs/api.md, "
        '"What lparkube changes on an adopted VM")'
    )


async def release_adopted_vm(kube: Kube, partition: dict) -> None:
    """Hand an adopted VM back: our claim and key disk removed, the VM kept. A VM that is
    not this Partition's (it was refused) is not touched."""
    scope = PartitionScope(partition)
    scope.vm = await kube.get(VIRTUAL_MACHINE, scope.namespace, scope.vm_name)

    async def plan(vm: dict) -> dict | None:
        return vm_ownership.release_patch(vm, partition)

    if await _patch_vm(kube, scope, plan) is not None:
        message = f"Released VirtualMachine {scope.vm_name}"
        normal(partition, reason="VMReleased", message=message)


async def _patch_vm(
    kube: Kube, scope: PartitionScope, plan: Callable[[dict], Awaitable[dict | None]]
) -> dict | None:
    """Plan a merge patch of the scope's VM and apply it guarded by the resourceVersion it was
    planned from; a conflict (KubeVirt updating its status, another Partition adopting it)
    means read and plan again. The scope's VM becomes the patched one; returns the patch."""
    for _ in range(VM_PATCH_ATTEMPTS):
        vm = scope.vm
        patch = await plan(vm) if vm is not None else None
        if vm is None or patch is None:
            return None
        try:
            scope.vm = await kube.patch(VIRTUAL_MACHINE, scope.namespace, scope.vm_name, patch)
            return patch
        except ApiException as error:
            if not_found(error):
                scope.vm = None
                return None
            if error.status != 409:
                raise
        scope.vm = await kube.get(VIRTUAL_MACHINE, scope.namespace, scope.vm_name)
    raise kopf.TemporaryError(f"VirtualMachine {scope.vm_name} kept changing", delay=1)


async def delete_owned_vm(kube: Kube, partition: dict) -> None:
    """Delete the VM this Partition controls now, rather than when the garbage collector next
    notices (the owner reference stays as the backstop)."""
    meta = partition["metadata"]
    vm = await kube.get(VIRTUAL_MACHINE, meta["namespace"], meta["name"])
    if vm is not None and domain.controlled_by(vm, meta["uid"]):
        ref, delete = VIRTUAL_MACHINE, kube.custom.delete_namespaced_custom_object
        args = (ref.group, ref.version, meta["namespace"], ref.plural, meta["name"])
        await _delete(kube, delete, *args, uid=vm["metadata"]["uid"])


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
