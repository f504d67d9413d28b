"""The external-attacher's part, and the attach log.

The real attach/detach controller creates a VolumeAttachment per (volume, node) when a pod on a
node needs the volume, and deletes it when no pod there does (and the node no longer has it in
use). This attacher, as external-attacher does, puts its finalizer on the PV and on the
VolumeAttachment, then marks it ``status.attached``; a deleted VolumeAttachment loses the
finalizer (ControllerUnpublish) and so goes away. Like a CSI driver without MULTI_NODE
capability for a single-node volume, ControllerPublish refuses (FAILED_PRECONDITION,
``status.attachError``) a volume already published on another node: a second line behind the
controller's own Multi-Attach check.

Each attach, detach and refusal is appended to the attach log as it happens (attach before the
API says so, detach after).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubernetes.client import ApiException

from ..api import log, now_iso
from ..logic import dig
from .attachlog import ATTACH, DETACH, REFUSED
from .names import (
    ATTACHER_FINALIZER,
    ATTACHMENTS_PATH,
    DRIVER,
    VA_NODE_ID_ANNOTATION,
    VOLUMES_PATH,
    multi_attach_allowed,
)
from .readiness import MULTI_ATTACH, claim_names, volume_of_event
from .world import StorageWorld, add_finalizer, finalizers, guarded_patch, remove_finalizer

if TYPE_CHECKING:
    from .driver import ThinStorage


def sync_attachments(driver: ThinStorage, world: StorageWorld) -> None:
    for attachment in list(world.attachments):
        if dig(attachment, "spec", "attacher") != DRIVER:
            continue
        if dig(attachment, "metadata", "deletionTimestamp"):
            driver.guard(detach, attachment, world)
        elif not dig(attachment, "status", "attached"):
            driver.guard(attach, attachment, world)
    for volume in list(world.volumes.values()):
        if _releasable(volume, world):
            driver.guard(release_volume, volume)
    for event in world.refusals:
        driver.guard(note_refusal, event, world)


def holders_elsewhere(attachment: dict, volume: dict, world: StorageWorld) -> list[str]:
    """Other nodes a single-node volume is (or may still be) published on."""
    if multi_attach_allowed(dig(volume, "spec", "accessModes")):
        return []
    node = dig(attachment, "spec", "nodeName")
    return sorted(
        dig(other, "spec", "nodeName")
        for other in world.attachments_of(volume["metadata"]["name"])
        if dig(other, "spec", "nodeName") != node
        and (ATTACHER_FINALIZER in finalizers(other) or dig(other, "status", "attached"))
    )


def attach(driver: ThinStorage, attachment: dict, world: StorageWorld) -> None:
    volume_name = dig(attachment, "spec", "source", "persistentVolumeName")
    volume = world.volumes.get(volume_name or "")
    if volume is None:
        _attach_error(driver, attachment, f'persistentvolume "{volume_name}" not found')
        return
    if dig(volume, "metadata", "deletionTimestamp"):
        _attach_error(
            driver, attachment, f'PersistentVolume "{volume_name}" is marked for deletion'
        )
        return
    if (
        add_finalizer(driver.kube, f"{VOLUMES_PATH}/{volume_name}", volume, ATTACHER_FINALIZER)
        is None
    ):
        return
    others = holders_elsewhere(attachment, volume, world)
    if others:
        refuse(driver, attachment, volume, others)
        return
    publish(driver, attachment, volume)


def publish(driver: ThinStorage, attachment: dict, volume: dict) -> None:
    """ControllerPublish: finalizer and node ID on the VolumeAttachment, logged, then attached."""
    name, node = attachment["metadata"]["name"], dig(attachment, "spec", "nodeName")
    path = f"{ATTACHMENTS_PATH}/{name}"
    held = finalizers(attachment)
    metadata = {
        "finalizers": held if ATTACHER_FINALIZER in held else [*held, ATTACHER_FINALIZER],
        "annotations": {VA_NODE_ID_ANNOTATION: node},
    }
    if guarded_patch(driver.kube, path, attachment, {"metadata": metadata}) is None:
        return  # changed meanwhile: the next pass looks again
    driver.record(ATTACH, attachment, volume)
    # From here on this pass's view must show it held: another attachment of the same volume
    # later in the pass is then refused, not published too.
    attachment["metadata"]["finalizers"] = metadata["finalizers"]
    attachment.setdefault("status", {})["attached"] = True
    try:
        status = {"status": {"attached": True, "attachError": None, "attachmentMetadata": None}}
        driver.kube.merge_patch(f"{path}/status", status)
    except Exception as error:
        driver.record(DETACH, attachment, volume, message=f"attach not recorded: {error}")
        raise
    driver.wrote()


def refuse(driver: ThinStorage, attachment: dict, volume: dict, others: list[str]) -> None:
    message = (
        f"rpc error: code = FailedPrecondition desc = volume {volume['metadata']['name']} "
        f"is published on node(s) {', '.join(others)} and is not a multi-node volume"
    )
    if dig(attachment, "status", "attachError", "message") != message:
        _attach_error(driver, attachment, message)
        driver.record(REFUSED, attachment, volume, message=message)


def _attach_error(driver: ThinStorage, attachment: dict, message: str) -> None:
    if dig(attachment, "status", "attachError", "message") == message:
        return
    status = {"status": {"attachError": {"time": now_iso(), "message": message}}}
    try:
        driver.kube.merge_patch(
            f"{ATTACHMENTS_PATH}/{attachment['metadata']['name']}/status", status
        )
    except ApiException as error:
        if error.status != 404:
            raise
    driver.wrote()


def detach(driver: ThinStorage, attachment: dict, world: StorageWorld) -> None:
    """ControllerUnpublish: nothing to undo for a file; the finalizer goes, then the object."""
    if ATTACHER_FINALIZER not in finalizers(attachment):
        return
    name = attachment["metadata"]["name"]
    if not remove_finalizer(driver.kube, f"{ATTACHMENTS_PATH}/{name}", ATTACHER_FINALIZER):
        return
    volume = world.volumes.get(dig(attachment, "spec", "source", "persistentVolumeName") or "")
    driver.record(DETACH, attachment, volume or {})
    try:
        status = {"status": {"attached": False, "detachError": None, "attachmentMetadata": None}}
        driver.kube.merge_patch(f"{ATTACHMENTS_PATH}/{name}/status", status)
    except ApiException as error:
        if error.status != 404:  # gone with its last finalizer, as expected
            raise
    driver.wrote()


def _releasable(volume: dict, world: StorageWorld) -> bool:
    return (
        ATTACHER_FINALIZER in finalizers(volume)
        and bool(dig(volume, "metadata", "deletionTimestamp"))
        and not world.attachments_of(volume["metadata"]["name"])
    )


def release_volume(driver: ThinStorage, volume: dict) -> None:
    """A PV being deleted that no VolumeAttachment uses any more loses the attacher's finalizer."""
    if remove_finalizer(
        driver.kube, f"{VOLUMES_PATH}/{volume['metadata']['name']}", ATTACHER_FINALIZER
    ):
        driver.wrote()


def note_refusal(driver: ThinStorage, event: dict, world: StorageWorld) -> None:
    """Log the attach/detach controller's Multi-Attach refusals, once per event and count."""
    if MULTI_ATTACH not in str(event.get("message")):
        return
    seen = (dig(event, "metadata", "uid"), event.get("count"))
    if seen in driver.refusals_seen:
        return
    driver.refusals_seen.add(seen)
    volume = world.volumes.get(volume_of_event(event)) or {}
    pod_namespace = dig(event, "involvedObject", "namespace")
    pod_name = dig(event, "involvedObject", "name")
    pod = driver.kube.get(f"/api/v1/namespaces/{pod_namespace}/pods/{pod_name}")
    driver.attach_log.append(
        REFUSED,
        volume=volume_of_event(event),
        node=dig(pod, "spec", "nodeName", default="") or "",
        access_modes=dig(volume, "spec", "accessModes", default=[]) or [],
        claim=claim_key(volume),
        pods=[f"{pod_namespace}/{pod_name}"],
        message=str(event.get("message")),
    )


def claim_key(volume: dict) -> str:
    ref = dig(volume, "spec", "claimRef", default={}) or {}
    return f"{ref.get('namespace')}/{ref.get('name')}" if ref else ""


def pods_using(driver: ThinStorage, volume: dict, node: str) -> list[str]:
    """Pods on ``node`` whose claim is bound to ``volume`` (for the attach log)."""
    ref = dig(volume, "spec", "claimRef", default={}) or {}
    namespace = ref.get("namespace")
    if not namespace:
        return []
    try:
        listed = driver.kube.request(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods",
            query={"fieldSelector": f"spec.nodeName={node}"},
        )
    except ApiException as error:
        log.debug("pods on %s not listed: %s", node, error)
        return []
    return [
        f"{namespace}/{dig(pod, 'metadata', 'name')}"
        for pod in listed.get("items") or []
        if ref.get("name") in claim_names(pod)
    ]
