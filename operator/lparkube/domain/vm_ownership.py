"""Whose VirtualMachine it is, and what adopting or releasing one changes: pure rules.

A VM belongs to at most one Partition. A Partition that created its VM controls it: a
controller owner reference, so the garbage collector deletes the VM with the Partition. An
adopted VM is marked with the annotation ``lparkube.io/adopted-by`` (the Partition's name)
instead: the garbage collector deletes an object once all its owners are gone, and an adopted
VM must outlive its Partition even when that Partition disappears without the operator (its
finalizer cleared by hand). Earlier versions did put a plain owner reference on adopted VMs;
it still counts as a claim, and adopting again replaces it by the annotation.

Every decision whether a Partition may take a VM is a named check ``ClaimInput -> Refusal``
(first refusal wins), so a new rule is one more function in the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lparkube.domain import key_delivery
from lparkube.domain.partition import API_VERSION, KIND, AgentSpec, is_adoption, vm_name
from lparkube.domain.partition_status import VM_NAME_CONFLICT

ADOPTED_BY = "lparkube.io/adopted-by"
GROUP_PREFIX = API_VERSION.split("/")[0] + "/"


@dataclass(frozen=True)
class Claim:
    """The Partition a VM belongs to: ``created`` when it controls the VM (made it)."""

    partition: str
    uid: str | None
    created: bool


@dataclass(frozen=True)
class Refusal:
    """Why a Partition must leave a VM alone: a condition reason and a message for users."""

    reason: str
    message: str


@dataclass(frozen=True)
class ClaimInput:
    """What a claim decision reads: the Partition, the claim on its VM (which exists) and,
    when that claim names another Partition of the namespace, that Partition (None: gone)."""

    name: str
    uid: str
    adoption: bool
    vm_name: str
    claim: Claim | None
    claimant: dict[str, Any] | None = None

    @classmethod
    def of(
        cls, partition: dict[str, Any], vm: dict[str, Any], claimant: dict[str, Any] | None
    ) -> ClaimInput:
        meta = partition["metadata"]
        adoption = is_adoption(partition.get("spec") or {})
        name = vm["metadata"]["name"]
        return cls(meta["name"], meta["uid"], adoption, name, claim_of(vm), claimant)


def _partition_refs(vm: dict[str, Any]) -> list[dict[str, Any]]:
    refs = (vm.get("metadata") or {}).get("ownerReferences") or []
    return [
        r
        for r in refs
        if r.get("kind") == KIND and str(r.get("apiVersion", "")).startswith(GROUP_PREFIX)
    ]


def claim_of(vm: dict[str, Any]) -> Claim | None:
    """The Partition that created the VM, else the one that adopted it, else None."""
    refs = _partition_refs(vm)
    for ref in refs:
        if ref.get("controller"):
            return Claim(ref.get("name", ""), ref.get("uid"), created=True)
    adopter = ((vm.get("metadata") or {}).get("annotations") or {}).get(ADOPTED_BY)
    if adopter:
        return Claim(adopter, None, created=False)
    if refs:
        return Claim(refs[0].get("name", ""), refs[0].get("uid"), created=False)
    return None


def claimed_by(vm: dict[str, Any], name: str, uid: str) -> bool:
    """The VM belongs to this Partition."""
    claim = claim_of(vm)
    if claim is None:
        return False
    return claim.uid == uid if claim.uid is not None else claim.partition == name


def other_claimant(vm: dict[str, Any], name: str) -> str | None:
    """The other Partition an adopted VM's claim names, whose existence decides whether it
    still holds (a created VM's controller needs no lookup: the VM goes with it)."""
    claim = claim_of(vm)
    if claim is None or claim.created or claim.partition == name:
        return None
    return claim.partition


# --- the claim checks ------------------------------------------------------------------------


def created_by_another(claim: ClaimInput) -> Refusal | None:
    found = claim.claim
    if found is None or not found.created or found.uid == claim.uid:
        return None
    return Refusal(
        VM_NAME_CONFLICT,
        f"VirtualMachine {claim.vm_name} belongs to Partition {found.partition}, which created "
        "it; a VM belongs to at most one Partition, so this one leaves it alone: delete this "
        "Partition or name another VM",
    )


def adopted_by_another(claim: ClaimInput) -> Refusal | None:
    found, other = claim.claim, claim.claimant
    if found is None or found.created or other is None or not _names_vm(other, claim.vm_name):
        return None
    return Refusal(
        VM_NAME_CONFLICT,
        f"VirtualMachine {claim.vm_name} belongs to Partition {found.partition}, which adopted "
        "it; a VM belongs to at most one Partition, so this one leaves it alone: delete this "
        f"Partition, or delete {found.partition} to hand the VM over",
    )


def not_created_by_this(claim: ClaimInput) -> Refusal | None:
    found = claim.claim
    if found is not None and found.created and found.uid == claim.uid:
        return None
    owner = f" (it belongs to Partition {found.partition})" if found else ""
    return Refusal(
        VM_NAME_CONFLICT,
        f"VirtualMachine {claim.vm_name} exists and is not this Partition's{owner}; delete or "
        "rename it, or adopt it with spec.vmName instead of spec.vmTemplate",
    )


Check = Callable[[ClaimInput], Refusal | None]
ADOPTION_CHECKS: tuple[Check, ...] = (created_by_another, adopted_by_another)
TEMPLATE_CHECKS: tuple[Check, ...] = (not_created_by_this,)


def claim_refusal(claim: ClaimInput) -> Refusal | None:
    """The first check that refuses this Partition its VM, or None: the VM is, or may become,
    this Partition's."""
    checks = ADOPTION_CHECKS if claim.adoption else TEMPLATE_CHECKS
    return next((refusal for check in checks if (refusal := check(claim))), None)


def _names_vm(partition: dict[str, Any], name: str) -> bool:
    meta = partition.get("metadata") or {}
    return vm_name(meta.get("name", ""), partition.get("spec") or {}) == name


# --- adoption and release --------------------------------------------------------------------


def adoption_patch(
    vm: dict[str, Any], partition: dict[str, Any], agent: AgentSpec
) -> dict[str, Any] | None:
    """The merge patch that adopts a VM (annotation, key disk), or None if done already.

    A key disk the VM already carries (its manifest may hold it, so that applying the
    manifest again changes nothing) is left as it is. Lists are replaced whole by a merge
    patch, so the patch carries the VM's resourceVersion and fails instead of overwriting a
    concurrent change (another Partition's adoption included).
    """
    meta, spec = vm["metadata"], vm.get("spec") or {}
    name, uid = partition["metadata"]["name"], partition["metadata"]["uid"]
    patch: dict[str, Any] = {}
    if (meta.get("annotations") or {}).get(ADOPTED_BY) != name:
        patch["metadata"] = {"annotations": {ADOPTED_BY: name}}
    if any(r.get("uid") == uid for r in meta.get("ownerReferences") or []):
        kept = [r for r in meta["ownerReferences"] if r.get("uid") != uid]
        patch.setdefault("metadata", {})["ownerReferences"] = kept or None
    if not key_delivery.delivered(spec, agent.key_delivery, agent.key_secret_name):
        key_delivery.adoptable_delivery(spec, agent.key_delivery)
        wanted = key_delivery.with_key_delivery(spec, agent.key_delivery, agent.key_secret_name)
        patch["spec"] = {"template": {"spec": _volume_lists(wanted)}}
    if not patch:
        return None
    patch.setdefault("metadata", {})["resourceVersion"] = meta["resourceVersion"]
    return patch


def release_patch(vm: dict[str, Any], partition: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that hands an adopted VM back (claim and key disk removed), or None
    when there is nothing of this Partition's on it: another Partition's VM is never touched."""
    meta = partition["metadata"]
    if not claimed_by(vm, meta["name"], meta["uid"]):
        return None
    vm_meta = vm["metadata"]
    patch: dict[str, Any] = {"metadata": {"resourceVersion": vm_meta["resourceVersion"]}}
    if ADOPTED_BY in (vm_meta.get("annotations") or {}):
        patch["metadata"]["annotations"] = {ADOPTED_BY: None}
    refs = vm_meta.get("ownerReferences") or []
    if any(r.get("uid") == meta["uid"] for r in refs):
        kept = [r for r in refs if r.get("uid") != meta["uid"]]
        patch["metadata"]["ownerReferences"] = kept or None
    if key_delivery.has_operator_volumes(vm.get("spec") or {}):
        spec = key_delivery.without_key_delivery(vm.get("spec") or {})
        patch["spec"] = {"template": {"spec": _volume_lists(spec)}}
    return patch


def _volume_lists(spec: dict[str, Any]) -> dict[str, Any]:
    pod = spec["template"]["spec"]
    return {
        "volumes": pod["volumes"],
        "domain": {"devices": {"disks": pod["domain"]["devices"]["disks"]}},
    }
