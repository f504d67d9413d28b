"""Whether a pod's volumes are attached to its node, as the kubelet decides before mounting.

The kubelet mounts an attachable volume of the pod only once it has itself reported the volume in
its node's ``status.volumesInUse`` and the attach/detach controller lists it in
``status.volumesAttached`` (after the external attacher marked the VolumeAttachment attached):
VerifyControllerAttachedVolume in pkg/volume/util/operationexecutor. Pure functions over
objects read by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from ..logic import dig
from .names import attachment_name, unique_volume_name

MULTI_ATTACH = "Multi-Attach error"
NOT_IN_USE = "Volume has not been added to the list of VolumesInUse in the node's volume status"
_VOLUME_IN_MESSAGE = re.compile(r'for volume "([^"]+)"')


class Readiness(NamedTuple):
    ok: bool
    reason: str
    message: str


def claim_names(pod: Mapping) -> list[str]:
    """The PVCs a pod uses: persistentVolumeClaim volumes and generic ephemeral volumes."""
    names = []
    for volume in dig(pod, "spec", "volumes", default=[]) or []:
        claim = dig(volume, "persistentVolumeClaim", "claimName")
        if claim:
            names.append(claim)
        elif dig(volume, "ephemeral"):
            names.append(f"{dig(pod, 'metadata', 'name')}-{volume.get('name')}")
    return names


def volume_of_event(event: Mapping) -> str:
    """The PV an attach/detach controller event is about ('... for volume "pvc-..." ...')."""
    found = _VOLUME_IN_MESSAGE.search(str(event.get("message") or ""))
    return found.group(1) if found else ""


def attached_names(node: Mapping | None) -> set[str]:
    return {
        str(v.get("name"))
        for v in dig(node, "status", "volumesAttached", default=[]) or []
        if isinstance(v, Mapping)
    }


def in_use_names(node: Mapping | None) -> set[str]:
    return {str(n) for n in dig(node, "status", "volumesInUse", default=[]) or []}


@dataclass(frozen=True)
class AttachState:
    """What the kubelet knows when it checks a pod's volumes."""

    claims: Mapping[str, Mapping]  # the pod's namespace's PVCs by name
    volumes: Mapping[str, Mapping]  # PVs by name
    node: Mapping | None  # the pod's node
    attachments: list[Mapping] = field(default_factory=list)  # every VolumeAttachment
    events: list[Mapping] = field(default_factory=list)  # the pod's FailedAttachVolume events


def volume_ready(pod: Mapping, state: AttachState) -> Readiness:
    """(ok, reason, message) for all of the pod's claims on its node."""
    node_name = dig(pod, "spec", "nodeName")
    if not node_name:
        return Readiness(False, "Unscheduled", "the pod has no node yet")
    if state.node is None:
        return Readiness(False, "NodeNotFound", f'node "{node_name}" not found')
    for claim_name in claim_names(pod):
        claim_state = _claim_state(claim_name, state)
        if not claim_state.ok:
            return claim_state
    return Readiness(True, "Attached", f'all volumes are attached to node "{node_name}"')


def _claim_state(claim_name: str, state: AttachState) -> Readiness:
    claim = state.claims.get(claim_name)
    if claim is None:
        return Readiness(False, "ClaimNotFound", f'persistentvolumeclaim "{claim_name}" not found')
    volume_name = dig(claim, "spec", "volumeName")
    volume = state.volumes.get(volume_name or "")
    if dig(claim, "status", "phase") != "Bound" or volume is None:
        message = f'persistentvolumeclaim "{claim_name}" is not bound yet'
        return Readiness(False, "ClaimPending", message)
    csi = dig(volume, "spec", "csi")
    if not csi:  # not attachable (hostPath, local, ...): nothing to wait for
        return Readiness(True, "Attached", "")
    unique = unique_volume_name(csi["driver"], csi["volumeHandle"])
    if unique not in in_use_names(state.node):
        return Readiness(False, "NotInUse", NOT_IN_USE)
    if unique in attached_names(state.node):
        return Readiness(True, "Attached", "")
    return _why_not_attached(volume_name, csi, state)


def _why_not_attached(volume_name: str, csi: Mapping, state: AttachState) -> Readiness:
    node_name = dig(state.node, "metadata", "name")
    held_elsewhere = any(
        dig(a, "spec", "source", "persistentVolumeName") == volume_name
        and dig(a, "spec", "nodeName") != node_name
        for a in state.attachments
    )
    refusals = [
        e
        for e in state.events
        if volume_of_event(e) == volume_name and MULTI_ATTACH in str(e.get("message"))
    ]
    if held_elsewhere and refusals:
        return Readiness(False, "MultiAttach", str(refusals[-1].get("message")))
    mine = attachment_name(csi["volumeHandle"], csi["driver"], node_name)
    attachment = next((a for a in state.attachments if dig(a, "metadata", "name") == mine), None)
    error = dig(attachment, "status", "attachError", "message")
    if error:
        return Readiness(False, "AttachFailed", str(error))
    message = f'waiting for volume "{volume_name}" to be attached to node "{node_name}"'
    return Readiness(False, "Attaching", message)
