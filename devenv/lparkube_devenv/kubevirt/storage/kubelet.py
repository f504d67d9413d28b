"""The kubelets' part in attach/detach, for nodes that have no kubelet.

A kubelet started with controller-managed attach/detach (the default) annotates its Node so the
attach/detach controller manages it, registers the CSI driver's node plugin (the CSINode object
and the ``csi.volume.kubernetes.io/nodeid`` annotation), and lists in ``status.volumesInUse``
every volume it is about to mount or has mounted, from the moment it takes a pod until it has
unmounted it. The attach/detach controller never detaches a volume in use (unless the node is
tainted out-of-service, or it is unhealthy and maxWaitForUnmountDuration has passed).

A powered-off node's kubelet is gone: it updates nothing, so its volumes stay in use.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable

from kubernetes.client import ApiException

from ..api import Kube
from ..logic import dig
from .names import (
    CONTROLLER_MANAGED_ATTACH,
    CSINODES_PATH,
    DRIVER,
    NODE_ID_ANNOTATION,
    NODES_PATH,
    VOLUMES_PATH,
    unique_volume_name,
)
from .objects import csi_node
from .readiness import claim_names


def node_annotations(node: dict) -> dict[str, str] | None:
    """The annotations the kubelet would add to ``node``; None when they are all there."""
    annotations = dig(node, "metadata", "annotations", default={}) or {}
    try:
        node_ids = json.loads(annotations.get(NODE_ID_ANNOTATION) or "{}")
    except ValueError:
        node_ids = {}
    name = dig(node, "metadata", "name")
    wanted = {}
    if annotations.get(CONTROLLER_MANAGED_ATTACH) != "true":
        wanted[CONTROLLER_MANAGED_ATTACH] = "true"
    if node_ids.get(DRIVER) != name:
        wanted[NODE_ID_ANNOTATION] = json.dumps({**node_ids, DRIVER: name}, sort_keys=True)
    return wanted or None


def pod_volume_names(kube: Kube, namespace: str, pod: dict) -> frozenset[str]:
    """The unique names of the pod's bound CSI volumes (what volumesInUse lists)."""
    names = set()
    for claim_name in claim_names(pod):
        claim = kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim_name}")
        volume_name = dig(claim, "spec", "volumeName")
        volume = kube.get(f"{VOLUMES_PATH}/{volume_name}") if volume_name else None
        csi = dig(volume, "spec", "csi")
        if csi:
            names.add(unique_volume_name(csi["driver"], csi["volumeHandle"]))
    return frozenset(names)


class Kubelets:
    """Volume mounts per (node, pod) and the power state of each node's kubelet.

    Mounts are kept per node: a pod name can come back on another node (a VMI's new launcher)
    while the old node's kubelet, if it is down, still holds the old pod's volumes.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._mounts: dict[tuple[str, str, str], frozenset[str]] = {}  # (node, ns, pod)
        self._down: set[str] = set()
        self._registered: dict[str, str] = {}  # node name -> the Node's UID registered

    def is_up(self, node: str) -> bool:
        return node not in self._down

    def in_use(self, node: str) -> list[str]:
        with self._lock:
            names = {
                n for (held, _, _), volumes in self._mounts.items() if held == node for n in volumes
            }
        return sorted(names)

    # --- kubelet actions -----------------------------------------------------------------------

    def mount(self, kube: Kube, namespace: str, pod_name: str) -> bool:
        """The pod's kubelet takes its volumes in use; False when no live kubelet has it."""
        pod = kube.get(f"/api/v1/namespaces/{namespace}/pods/{pod_name}")
        node = dig(pod, "spec", "nodeName")
        if not node or not self.is_up(node):
            return False
        volumes = pod_volume_names(kube, namespace, pod)
        with self._lock:
            self._mounts[(node, namespace, pod_name)] = volumes
            self._write_in_use(kube, node)
        return True

    def unmount(self, kube: Kube, namespace: str, pod_name: str, node: str | None = None) -> bool:
        """The pod's volumes are unmounted (on ``node``, else wherever it had them); False if
        a node holding them is down (its kubelet cannot unmount: they stay in use)."""
        with self._lock:
            held = [
                k
                for k in self._mounts
                if k[1:] == (namespace, pod_name) and (node is None or k[0] == node)
            ]
            down = [k for k in held if not self.is_up(k[0])]
            for k in held:
                if k not in down:
                    del self._mounts[k]
                    self._write_in_use(kube, k[0])
        return not down

    def power_off(self, node: str) -> None:
        """The node's kubelet is gone: nothing is unmounted or reported any more."""
        with self._lock:
            self._down.add(node)

    def power_on(self, kube: Kube, node: str) -> None:
        """The node booted again: its kubelet starts with nothing mounted and says so."""
        with self._lock:
            self._down.discard(node)
            self._mounts = {k: v for k, v in self._mounts.items() if k[0] != node}
            self._registered.pop(node, None)
            self._write_in_use(kube, node)

    def _write_in_use(self, kube: Kube, node: str) -> None:
        names = self.in_use(node)
        try:
            kube.merge_patch(
                f"{NODES_PATH}/{node}/status", {"status": {"volumesInUse": names or None}}
            )
        except ApiException as error:
            if error.status != 404:
                raise

    # --- registration -------------------------------------------------------------------------

    def register(self, kube: Kube, nodes: Iterable[dict]) -> bool:
        """Annotate and register the CSI node plugin on every live node; True if it wrote."""
        wrote = False
        for node in nodes:
            name, uid = dig(node, "metadata", "name"), dig(node, "metadata", "uid")
            if not self.is_up(name):
                continue
            annotations = node_annotations(node)
            if annotations:
                kube.merge_patch(f"{NODES_PATH}/{name}", {"metadata": {"annotations": annotations}})
                wrote = True
            if self._registered.get(name) != uid:
                ensure_csi_node(kube, node)
                self._registered[name] = uid
                wrote = True
        return wrote


def ensure_csi_node(kube: Kube, node: dict) -> None:
    """Create the node's CSINode with this driver, or add the driver to the one there."""
    wanted = csi_node(node)
    path = f"{CSINODES_PATH}/{wanted['metadata']['name']}"
    current = kube.get(path)
    if current is None:
        kube.create(CSINODES_PATH, wanted)
        return
    drivers = dig(current, "spec", "drivers", default=[]) or []
    owners = dig(current, "metadata", "ownerReferences", default=[]) or []
    has_driver = any(d.get("name") == DRIVER for d in drivers)
    if has_driver and owners == wanted["metadata"]["ownerReferences"]:
        return
    others = [d for d in drivers if d.get("name") != DRIVER]
    metadata = {
        **wanted["metadata"],
        "resourceVersion": dig(current, "metadata", "resourceVersion"),
    }
    body = {
        **wanted,
        "metadata": metadata,
        "spec": {"drivers": [*others, *wanted["spec"]["drivers"]]},
    }
    kube.request("PUT", path, body)
