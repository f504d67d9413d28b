"""The external-resizer's part: a larger request grows the volume, never a smaller one.

As external-resizer (with RecoverVolumeExpansionFailure, GA in Kubernetes 1.34) leaves the
claim: first ``status.allocatedResources.storage`` = the request,
``allocatedResourceStatuses.storage = ControllerResizeInProgress`` and condition
``Resizing=True`` (event ``Resizing``); then ControllerExpandVolume (here: the sparse file grows)
and the PV's ``spec.capacity``; then, as no node expansion is needed (a file or a directory has
no file system of its own to grow), ``status.capacity``, the resize conditions and the
allocatedResourceStatuses entry cleared, the annotation
``volume.kubernetes.io/node-expansion-not-required: "true"`` and the event
``VolumeResizeSuccessful``.

A running guest using the claim as a disk sees the new size only after that: the node's
virt-handler pass (``hosts.Hosts._expand_disks``, KubeVirt's ExpandDisks) compares the claim's
``status.capacity`` with the guest's disk and resizes it through QMP ``block_resize``, so the
volume is always at least as large as the disk the guest is shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import key, now_iso
from ..logic import dig, get_condition
from .names import NODE_EXPANSION_NOT_REQUIRED, RESIZE_CONDITIONS, VOLUMES_PATH
from .objects import capacity_bytes, is_ours, requested_bytes, volume_mode, volume_namespace
from .quantity import format_bytes, round_to_sector
from .world import StorageWorld, guarded_patch

if TYPE_CHECKING:
    from .driver import ThinStorage

IN_PROGRESS = "ControllerResizeInProgress"


def merge_resize_conditions(old: list[dict] | None, new: list[dict], keep_old: bool) -> list[dict]:
    """external-resizer's MergeResizeConditionsOfPVC: conditions of other kinds always stay, a
    new resize condition replaces the old one of its type, other old resize conditions stay
    only with ``keep_old``; new ones without an old counterpart come last."""
    pending = {c["type"]: c for c in new}
    merged = []
    for condition in old or []:
        kind = condition.get("type")
        if kind not in RESIZE_CONDITIONS:
            merged.append(condition)
        elif kind in pending:
            merged.append(pending.pop(kind))
        elif keep_old:
            merged.append(condition)
    return merged + list(pending.values())


def needs_resize(claim: dict, volume: dict | None) -> bool:
    """pvNeedResize: the PV is smaller than the request, or a resize was left half done."""
    if volume is None or not is_ours(volume) or dig(claim, "status", "phase") != "Bound":
        return False
    ref = dig(volume, "spec", "claimRef", default={}) or {}
    namespace, uid = dig(claim, "metadata", "namespace"), dig(claim, "metadata", "uid")
    if ref.get("namespace") != namespace or ref.get("uid") != uid:
        return False
    if capacity_bytes(volume, "spec", "capacity") < requested_bytes(claim):
        return True
    return get_condition(claim, "Resizing") is not None


def in_progress_patch(claim: dict, request: str) -> dict:
    resizing = {"type": "Resizing", "status": "True", "lastTransitionTime": now_iso()}
    conditions = merge_resize_conditions(
        dig(claim, "status", "conditions"), [resizing], keep_old=False
    )
    return {
        "metadata": {"annotations": {NODE_EXPANSION_NOT_REQUIRED: None}},
        "status": {
            "conditions": conditions,
            "allocatedResources": {"storage": request},
            "allocatedResourceStatuses": {"storage": IN_PROGRESS},
        },
    }


def finished_patch(claim: dict, size: int) -> dict:
    statuses = dig(claim, "status", "allocatedResourceStatuses", default={}) or {}
    others = {k: v for k, v in statuses.items() if k != "storage"}
    return {
        "metadata": {"annotations": {NODE_EXPANSION_NOT_REQUIRED: "true"}},
        "status": {
            "capacity": {"storage": format_bytes(size)},
            "conditions": merge_resize_conditions(
                dig(claim, "status", "conditions"), [], keep_old=False
            )
            or None,
            "allocatedResourceStatuses": {"storage": None} if others else None,
        },
    }


def resize_claims(driver: ThinStorage, world: StorageWorld) -> None:
    for claim in list(world.claims.values()):
        volume = world.volumes.get(dig(claim, "spec", "volumeName") or "")
        if needs_resize(claim, volume):
            assert volume is not None
            driver.guard(expand, claim, volume)


def expand(driver: ThinStorage, claim: dict, volume: dict) -> None:
    namespace, name = key(claim)
    claim_status = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}/status"
    request = str(dig(claim, "spec", "resources", "requests", "storage"))
    size = max(round_to_sector(requested_bytes(claim)), capacity_bytes(volume, "spec", "capacity"))
    claim = guarded_patch(driver.kube, claim_status, claim, in_progress_patch(claim, request))
    if claim is None:
        return  # changed meanwhile: the next pass looks again
    volume_name = volume["metadata"]["name"]
    message = f"External resizer is resizing volume {volume_name}"
    driver.event(claim, "PersistentVolumeClaim", "Resizing", message, "resizer")
    path = driver.store.path(volume_namespace(volume), volume_name)
    driver.store.grow(path, volume_mode(volume), size)
    capacity = {"spec": {"capacity": {"storage": format_bytes(size)}}}
    driver.kube.merge_patch(f"{VOLUMES_PATH}/{volume_name}", capacity)
    driver.kube.merge_patch(claim_status, finished_patch(claim, size))
    driver.wrote()
    driver.event(
        claim,
        "PersistentVolumeClaim",
        "VolumeResizeSuccessful",
        "Resize volume succeeded",
        "resizer",
    )
