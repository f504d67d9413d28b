"""Fake Nodes for a cluster without kubelets: labelled and sized like KubeVirt worker nodes.

The local control plane runs no node-lifecycle controller, so nothing marks these nodes NotReady
on its own; tests change conditions, taints and labels through the API (helpers below).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from kubernetes.client import ApiException

from .api import Kube, now_iso
from .logic import DRAIN_TAINT, SCHEDULABLE_LABEL

NODES_PATH = "/api/v1/nodes"
CAPACITY = {
    "cpu": "8",
    "memory": "32Gi",
    "pods": "110",
    "ephemeral-storage": "100Gi",
    "devices.kubevirt.io/kvm": "1k",
    "devices.kubevirt.io/tun": "1k",
    "devices.kubevirt.io/vhost-net": "1k",
}


def node_labels(name: str) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node-role.kubernetes.io/worker": "",
        SCHEDULABLE_LABEL: "true",
        "kubevirt.io/ksm-enabled": "false",
        "cpu-model.node.kubevirt.io/Skylake-Client-IBRS": "true",
    }


def node_address(name: str) -> str:
    """A made-up InternalIP (documentation range; nothing ever connects to it)."""
    return f"198.51.100.{zlib.crc32(name.encode()) % 250 + 2}"


def ready_condition(ready: bool | None, stamp: str, reason: str | None = None) -> dict:
    """Ready True, False, or Unknown (None: the kubelet stopped posting status)."""
    if ready is None:
        return {
            "type": "Ready",
            "status": "Unknown",
            "reason": reason or "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": reason or ("KubeletReady" if ready else "KubeletNotReady"),
        "message": "kubelet is posting ready status" if ready else "node is not ready",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }


def node_status(name: str) -> dict:
    stamp = now_iso()
    return {
        "capacity": CAPACITY,
        "allocatable": CAPACITY,
        "conditions": [ready_condition(True, stamp)],
        "addresses": [
            {"type": "InternalIP", "address": node_address(name)},
            {"type": "Hostname", "address": name},
        ],
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "osImage": "lparkube stand-in node",
            "kernelVersion": "6.1.0",
            "containerRuntimeVersion": "containerd://2.0.0",
            "kubeletVersion": "v1.35.4",
            "kubeProxyVersion": "",
            "machineID": f"{zlib.crc32(name.encode()):032x}",
            "systemUUID": f"{zlib.crc32(name.encode()):032x}",
            "bootID": "",
        },
    }


NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"


def lifecycle_taints(node: dict) -> list[dict] | None:
    """The node's taints as the node-lifecycle controller would keep them; None if unchanged.

    The API server's TaintNodesByCondition admission taints every new node not-ready; with no
    kubelet and no node-lifecycle controller nobody would ever lift it, so the stand-in does:
    Ready=True clears not-ready/unreachable, False adds not-ready, Unknown adds unreachable.
    """
    taints = [t for t in (node.get("spec") or {}).get("taints") or [] if isinstance(t, dict)]
    ready = next(
        (
            c.get("status")
            for c in (node.get("status") or {}).get("conditions") or []
            if c.get("type") == "Ready"
        ),
        "Unknown",
    )
    kept = [t for t in taints if t.get("key") not in (NOT_READY_TAINT, UNREACHABLE_TAINT)]
    if ready == "False":
        kept.append({"key": NOT_READY_TAINT, "effect": "NoSchedule"})
    elif ready != "True":
        kept.append({"key": UNREACHABLE_TAINT, "effect": "NoSchedule"})
    strip = [{k: t.get(k) for k in ("key", "value", "effect") if t.get(k)} for t in taints]
    wanted = [{k: t.get(k) for k in ("key", "value", "effect") if t.get(k)} for t in kept]
    return None if strip == wanted else kept


def sync_taints(kube: Kube, node: dict) -> bool:
    """Apply lifecycle_taints; True when the node was changed."""
    taints = lifecycle_taints(node)
    if taints is None:
        return False
    patch = {
        "metadata": {"resourceVersion": node["metadata"].get("resourceVersion")},
        "spec": {"taints": taints or None},
    }
    try:
        kube.merge_patch(f"{NODES_PATH}/{node['metadata']['name']}", patch)
    except ApiException as error:
        if error.status in (404, 409):
            return False
        raise
    return True


def ensure_nodes(kube: Kube, names: Iterable[str]) -> None:
    """Create the nodes, or reset existing ones to Ready and schedulable (labels are merged)."""
    for name in names:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": node_labels(name),
                "annotations": {"kubevirt.io/heartbeat": now_iso()},
            },
            "spec": {},
        }
        try:
            kube.create(NODES_PATH, body)
        except ApiException as error:
            if error.status != 409:
                raise
            kube.merge_patch(f"{NODES_PATH}/{name}", {"metadata": {"labels": node_labels(name)}})
        node = kube.merge_patch(f"{NODES_PATH}/{name}/status", {"status": node_status(name)})
        sync_taints(kube, node)


def set_ready(kube: Kube, name: str, ready: bool | None, reason: str | None = None) -> None:
    """Flip the node's Ready condition, as a kubelet (or its absence) would."""
    stamp = now_iso()
    kube.merge_patch(
        f"{NODES_PATH}/{name}/status",
        {"status": {"conditions": [ready_condition(ready, stamp, reason)]}},
    )


def cordon(kube: Kube, name: str, unschedulable: bool = True) -> None:
    kube.merge_patch(f"{NODES_PATH}/{name}", {"spec": {"unschedulable": unschedulable}})


def set_drain_taint(kube: Kube, name: str, present: bool = True) -> None:
    """Add or remove KubeVirt's kubevirt.io/drain:NoSchedule taint (other taints are kept)."""
    node = kube.request("GET", f"{NODES_PATH}/{name}")
    kept = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != DRAIN_TAINT]
    if present:
        kept.append({"key": DRAIN_TAINT, "effect": "NoSchedule"})
    kube.merge_patch(f"{NODES_PATH}/{name}", {"spec": {"taints": kept or None}})
