"""The external-provisioner's part: a PV and its backing file per claim, deleted with the claim.

As sig-storage-lib-external-provisioner does it: claims the PV controller annotated with this
driver's name get a PV named ``pvc-<claim uid>``, pre-bound to the claim by ``claimRef``, with
``pv.kubernetes.io/provisioned-by`` and the finalizer
``external-provisioner.volume.kubernetes.io/finalizer``; the PV controller then binds them. A
Released PV whose reclaim policy is Delete loses its backing file, then the PV itself, then the
finalizer. Its usage on the host disk is published as ``thin.lparkube.io/used-bytes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubernetes.client import ApiException

from ..api import key, log
from ..logic import dig
from .backing import FILESYSTEM, copy_data
from .names import (
    CLASSES_PATH,
    PROVISIONER_FINALIZER,
    USED_BYTES_ANNOTATION,
    VOLUMES_PATH,
    volume_name_for,
)
from .objects import (
    is_ours,
    snapshot_source,
    unsupported,
    volume_for_claim,
    volume_mode,
    volume_namespace,
    wants_volume,
)
from .quantity import to_bytes
from .world import StorageWorld, finalizers, remove_finalizer

if TYPE_CHECKING:
    from .driver import ThinStorage


def provision_claims(driver: ThinStorage, world: StorageWorld) -> None:
    for claim in list(world.claims.values()):
        if wants_volume(claim) and volume_name_for(claim["metadata"]["uid"]) not in world.volumes:
            driver.guard(provision, claim)


def provision(driver: ThinStorage, claim: dict) -> None:
    problem = unsupported(claim)
    if problem:
        driver.warn_once(
            claim, "PersistentVolumeClaim", "ProvisioningFailed", problem, "provisioner"
        )
        return
    class_name = dig(claim, "spec", "storageClassName")
    storage_class = driver.kube.get(f"{CLASSES_PATH}/{class_name}") or {}
    reclaim_policy = storage_class.get("reclaimPolicy") or "Delete"
    namespace, name = key(claim)
    driver.event(
        claim,
        "PersistentVolumeClaim",
        "Provisioning",
        f'External provisioner is provisioning volume for claim "{namespace}/{name}"',
        "provisioner",
    )
    volume = volume_for_claim(claim, reclaim_policy, driver.identity)
    volume_name = volume["metadata"]["name"]
    size = to_bytes(volume["spec"]["capacity"]["storage"])
    refusal = fill_from_snapshot(driver, claim, volume_name, size)
    if refusal:
        driver.warn_once(
            claim, "PersistentVolumeClaim", "ProvisioningFailed", refusal, "provisioner"
        )
        return
    driver.store.create(namespace, volume_name, volume_mode(claim), size)
    try:
        driver.kube.create(VOLUMES_PATH, volume)
    except ApiException as error:
        if error.status != 409:
            raise
        return
    driver.wrote()
    log.info("thin storage: provisioned %s for %s/%s", volume_name, namespace, name)
    driver.event(
        claim,
        "PersistentVolumeClaim",
        "ProvisioningSucceeded",
        f"Successfully provisioned volume {volume_name}",
        "provisioner",
    )


def fill_from_snapshot(driver: ThinStorage, claim: dict, volume_name: str, size: int) -> str:
    """CreateVolume with a VolumeSnapshot content source: the new volume starts as a copy of
    the snapshot, which must be of the claim's own namespace (a name resolves nowhere else),
    of the claim's volume mode and no larger than the claim. Why not, else ""."""
    name = snapshot_source(claim)
    if not name:
        return ""
    namespace = claim["metadata"]["namespace"]
    copy = driver.snapshots.path(namespace, name)
    if not copy.exists():
        return (
            f"error getting handle for DataSource Type VolumeSnapshot by Name {name}: "
            f'volumesnapshots.snapshot.storage.k8s.io "{name}" not found'
        )
    if copy.is_dir() != (volume_mode(claim) == FILESYSTEM):
        return (
            f"requested volume {namespace}/{claim['metadata']['name']} modifies the mode of "
            "the source volume but does not have permission to do so"
        )
    if copy.is_file() and copy.stat().st_size > size:
        return (
            f"requested volume size {size} is less than the size {copy.stat().st_size} "
            "for the source snapshot"
        )
    target = driver.store.path(namespace, volume_name)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    copy_data(copy, target)
    return ""


def should_delete(volume: dict) -> bool:
    """shouldDelete of the provisioner library, for this driver's volumes."""
    return (
        is_ours(volume)
        and dig(volume, "status", "phase") == "Released"
        and dig(volume, "spec", "persistentVolumeReclaimPolicy") == "Delete"
        and (
            not dig(volume, "metadata", "deletionTimestamp")
            or PROVISIONER_FINALIZER in finalizers(volume)
        )
    )


def reclaim_volumes(driver: ThinStorage, world: StorageWorld) -> None:
    for volume in list(world.volumes.values()):
        if should_delete(volume):
            driver.guard(delete_volume, volume, world)


def delete_volume(driver: ThinStorage, volume: dict, world: StorageWorld) -> None:
    """DeleteVolume refuses a volume still attached somewhere (CSI FAILED_PRECONDITION)."""
    name = volume["metadata"]["name"]
    holders = sorted(dig(a, "spec", "nodeName") for a in world.attachments_of(name))
    if holders:
        message = (
            f"rpc error: code = FailedPrecondition desc = volume {name} is still attached "
            f"to node(s) {', '.join(holders)}"
        )
        driver.warn_once(volume, "PersistentVolume", "VolumeFailedDelete", message, "provisioner")
        return
    driver.store.remove(driver.store.path(volume_namespace(volume), name))
    driver.kube.delete(f"{VOLUMES_PATH}/{name}")
    remove_finalizer(driver.kube, f"{VOLUMES_PATH}/{name}", PROVISIONER_FINALIZER)
    driver.wrote()
    log.info("thin storage: deleted %s and its backing file", name)


def refresh_usage(driver: ThinStorage, world: StorageWorld) -> None:
    """Publish each live volume's real usage on its PV (only when it changed)."""
    for volume in list(world.volumes.values()):
        if is_ours(volume) and not dig(volume, "metadata", "deletionTimestamp"):
            driver.guard(publish_usage, volume)


def publish_usage(driver: ThinStorage, volume: dict) -> None:
    name = volume["metadata"]["name"]
    used = str(driver.store.used_bytes(driver.store.path(volume_namespace(volume), name)))
    if dig(volume, "metadata", "annotations", USED_BYTES_ANNOTATION) == used:
        return
    patch = {"metadata": {"annotations": {USED_BYTES_ANNOTATION: used}}}
    try:
        driver.kube.merge_patch(f"{VOLUMES_PATH}/{name}", patch)
    except ApiException as error:
        if error.status != 404:
            raise
