"""The API objects the driver installs or creates, built as plain dicts (no I/O)."""

from __future__ import annotations

from ..logic import dig
from .names import (
    DEFAULT_CLASS_ANNOTATION,
    DELETION_SECRET_ANNOTATIONS,
    DRIVER,
    NAMESPACE_ATTRIBUTE,
    PROVISIONED_BY,
    PROVISIONER_ANNOTATIONS,
    PROVISIONER_FINALIZER,
    PROVISIONER_IDENTITY_KEY,
    SNAPSHOT_GROUP,
    STORAGE_CLASS,
    volume_name_for,
)
from .quantity import format_bytes, round_to_sector, to_bytes


def storage_class(default: bool) -> dict:
    """``lparkube-thin``: expandable, deleted with its claim, bound as soon as it is asked for."""
    annotations = {DEFAULT_CLASS_ANNOTATION: "true"} if default else {}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": annotations},
        "provisioner": DRIVER,
        "allowVolumeExpansion": True,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def csi_driver() -> dict:
    """The CSIDriver: attach required, so the attach/detach controller makes VolumeAttachments."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": DRIVER},
        "spec": {
            "attachRequired": True,
            "podInfoOnMount": False,
            "volumeLifecycleModes": ["Persistent"],
        },
    }


def csi_node(node: dict) -> dict:
    """The CSINode the kubelet registers once the driver's node plugin runs on ``node``."""
    name = dig(node, "metadata", "name")
    owner = {
        "apiVersion": "v1",
        "kind": "Node",
        "name": name,
        "uid": dig(node, "metadata", "uid"),
    }
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSINode",
        "metadata": {"name": name, "ownerReferences": [owner]},
        "spec": {"drivers": [{"name": DRIVER, "nodeID": name, "topologyKeys": None}]},
    }


def wants_volume(claim: dict) -> bool:
    """A claim the PV controller handed to this driver and that has no volume yet."""
    annotations = dig(claim, "metadata", "annotations", default={}) or {}
    ours = any(annotations.get(a) == DRIVER for a in PROVISIONER_ANNOTATIONS)
    return (
        ours
        and not dig(claim, "spec", "volumeName")
        and not dig(claim, "metadata", "deletionTimestamp")
        and dig(claim, "status", "phase", default="Pending") == "Pending"
    )


def snapshot_source(claim: dict) -> str | None:
    """The VolumeSnapshot (of the claim's own namespace) the claim is to be filled from."""
    source = dig(claim, "spec", "dataSourceRef") or dig(claim, "spec", "dataSource") or {}
    if (source.get("apiGroup"), source.get("kind")) == (SNAPSHOT_GROUP, "VolumeSnapshot"):
        return source.get("name")
    return None


def unsupported(claim: dict) -> str | None:
    """Why this driver cannot provision the claim (as CreateVolume would fail), else None."""
    sourced = dig(claim, "spec", "dataSource") or dig(claim, "spec", "dataSourceRef")
    if sourced and not snapshot_source(claim):
        return f"{DRIVER} does not support volume content sources other than VolumeSnapshots"
    if requested_bytes(claim) <= 0:
        return "the claim requests no storage (spec.resources.requests.storage)"
    if not dig(claim, "spec", "accessModes"):
        return "the claim has no access modes"
    return None


def requested_bytes(claim: dict) -> int:
    return to_bytes(dig(claim, "spec", "resources", "requests", "storage"))


def volume_mode(obj: dict) -> str:
    return dig(obj, "spec", "volumeMode") or "Filesystem"


def volume_for_claim(claim: dict, reclaim_policy: str, identity: str) -> dict:
    """The PV external-provisioner creates: pre-bound by claimRef, a CSI source, its finalizer."""
    meta = claim["metadata"]
    name = volume_name_for(meta["uid"])
    capacity = round_to_sector(requested_bytes(claim))
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {PROVISIONED_BY: DRIVER}
            | dict.fromkeys(DELETION_SECRET_ANNOTATIONS, ""),
            "finalizers": [PROVISIONER_FINALIZER],
        },
        "spec": {
            "accessModes": list(dig(claim, "spec", "accessModes", default=[])),
            "capacity": {"storage": format_bytes(capacity)},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "persistentVolumeReclaimPolicy": reclaim_policy,
            "storageClassName": dig(claim, "spec", "storageClassName"),
            "volumeMode": volume_mode(claim),
            "csi": {
                "driver": DRIVER,
                "volumeHandle": name,
                "volumeAttributes": {
                    PROVISIONER_IDENTITY_KEY: identity,
                    NAMESPACE_ATTRIBUTE: meta["namespace"],
                },
            },
        },
    }


def is_ours(volume: dict | None) -> bool:
    """A PV this driver provisioned (and so has a backing file here)."""
    annotations = dig(volume, "metadata", "annotations", default={}) or {}
    return (
        annotations.get(PROVISIONED_BY) == DRIVER and dig(volume, "spec", "csi", "driver") == DRIVER
    )


def volume_namespace(volume: dict) -> str:
    """The namespace of the claim the PV was made for (immutable: it is in the CSI source)."""
    return dig(volume, "spec", "csi", "volumeAttributes", NAMESPACE_ATTRIBUTE, default="") or ""


def capacity_bytes(obj: dict, *where: str) -> int:
    return to_bytes(dig(obj, *where, "storage"))
