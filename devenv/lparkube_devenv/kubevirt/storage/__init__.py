"""Thin volumes for the KubeVirt stand-in: a CSI driver as a cluster runs it.

The StorageClass ``lparkube-thin`` (provisioner ``thin.lparkube.io``) gives each claim a sparse
file (Block) or a directory (Filesystem) under ``<workdir>/volumes/<namespace>/<pv>``; the real
kube-controller-manager binds, attaches and detaches, and this package plays the
external-provisioner, -resizer and -attacher sidecars and the kubelets' volume part. See
``README.md`` in this package.
"""

from .attachlog import Violation, read_entries, two_writers
from .driver import Backing, StorageSettings, ThinStorage
from .names import DRIVER, STORAGE_CLASS, USED_BYTES_ANNOTATION
from .readiness import Readiness

__all__ = [
    "DRIVER",
    "STORAGE_CLASS",
    "USED_BYTES_ANNOTATION",
    "Backing",
    "Readiness",
    "StorageSettings",
    "ThinStorage",
    "Violation",
    "read_entries",
    "two_writers",
]
