"""Names the CSI sidecars, the kubelet and the attach/detach controller agree on.

Each value is the one the real component uses (Kubernetes v1.35 and kubernetes-csi's
external-provisioner/-attacher/-resizer); where it is computed, the rule is the upstream one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

DRIVER = "thin.lparkube.io"
STORAGE_CLASS = "lparkube-thin"

STORAGE_API = "/apis/storage.k8s.io/v1"
CLASSES_PATH = f"{STORAGE_API}/storageclasses"
DRIVERS_PATH = f"{STORAGE_API}/csidrivers"
CSINODES_PATH = f"{STORAGE_API}/csinodes"
ATTACHMENTS_PATH = f"{STORAGE_API}/volumeattachments"
VOLUMES_PATH = "/api/v1/persistentvolumes"
CLAIMS_PATH = "/api/v1/persistentvolumeclaims"
NODES_PATH = "/api/v1/nodes"

# Ours: what users read on the PV, and what the PV remembers about its claim.
USED_BYTES_ANNOTATION = f"{DRIVER}/used-bytes"
NAMESPACE_ATTRIBUTE = f"{DRIVER}/namespace"

# The PV controller (persistentvolume-binder) names the external provisioner on the claim.
PROVISIONER_ANNOTATIONS = (
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
)
# sig-storage-lib-external-provisioner / external-provisioner.
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
PROVISIONER_FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"
PROVISIONER_IDENTITY_KEY = "storage.kubernetes.io/csiProvisionerIdentity"
DELETION_SECRET_ANNOTATIONS = (
    "volume.kubernetes.io/provisioner-deletion-secret-name",
    "volume.kubernetes.io/provisioner-deletion-secret-namespace",
)
# external-resizer.
NODE_EXPANSION_NOT_REQUIRED = "volume.kubernetes.io/node-expansion-not-required"
RESIZE_CONDITIONS = (
    "Resizing",
    "FileSystemResizePending",
    "ControllerResizeError",
    "NodeResizeError",
)
# external-attacher.
VA_NODE_ID_ANNOTATION = "csi.alpha.kubernetes.io/node-id"
# kubelet.
CONTROLLER_MANAGED_ATTACH = "volumes.kubernetes.io/controller-managed-attach-detach"
NODE_ID_ANNOTATION = "csi.volume.kubernetes.io/nodeid"
# StorageClass admission (DefaultStorageClass) and the node shutdown taint (KEP-2268).
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"
# external-snapshotter: the API group of VolumeSnapshots, a claim's data source.
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"

MULTI_NODE_MODES = ("ReadWriteMany", "ReadOnlyMany")


def sanitize_driver_name(driver: str) -> str:
    """external-attacher's SanitizeDriverName: non [a-zA-Z0-9-] become '-', no trailing '-'."""
    name = re.sub(r"[^a-zA-Z0-9-]", "-", driver)
    return name + "X" if name.endswith("-") else name


ATTACHER_FINALIZER = "external-attacher/" + sanitize_driver_name(DRIVER)


def attachment_name(volume_handle: str, driver: str, node: str) -> str:
    """The VolumeAttachment the kubelet's CSI plugin (pkg/volume/csi) creates for a volume/node."""
    digest = hashlib.sha256(f"{volume_handle}{driver}{node}".encode()).hexdigest()
    return f"csi-{digest}"


def unique_volume_name(driver: str, volume_handle: str) -> str:
    """How node.status.volumesInUse/volumesAttached name a CSI volume."""
    return f"kubernetes.io/csi/{driver}^{volume_handle}"


def multi_attach_allowed(access_modes: Iterable[str] | None) -> bool:
    """pkg/volume/util IsMultiAttachAllowed for a PV: no modes, or RWX/ROX among them."""
    modes = list(access_modes or [])
    return not modes or any(mode in MULTI_NODE_MODES for mode in modes)


def volume_name_for(claim_uid: str) -> str:
    """external-provisioner's PV name: the prefix 'pvc' and the claim's UID."""
    return f"pvc-{claim_uid}"
