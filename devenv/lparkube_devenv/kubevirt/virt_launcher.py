"""The virt-launcher Pod of a VMI, as virt-controller renders it (pure functions).

Read off KubeVirt's `pkg/virt-controller/services/template.go` (RenderLaunchManifest, podLabels)
and `pkg/apimachinery/labels.go`: generateName `virt-launcher-<vmi>-`, the VMI's labels plus
`kubevirt.io: virt-launcher`, `kubevirt.io/created-by: <vmi uid>`, `vm.kubevirt.io/name` and
`vmi.kubevirt.io/id`; annotations `kubevirt.io/domain` and the default container `compute`; the
VMI as controller owner; restartPolicy Never; termination grace = the VMI's (30 s by default)
plus 15 s of padding; no service-account token; the VMI's tolerations, affinity and node
selector (with `kubevirt.io/schedulable: "true"`); one pod volume per PVC/DataVolume volume.

There is no kube-scheduler in the local control plane, so the stand-in binds the pod itself:
`spec.nodeName` is the node the stand-in's scheduling chose for the VMI.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from .api import LAUNCHER_IMAGE
from .logic import SCHEDULABLE_LABEL, dig

APP_LABEL = "kubevirt.io"
LAUNCHER_APP = "virt-launcher"
CREATED_BY_LABEL = "kubevirt.io/created-by"
VM_NAME_LABEL = "vm.kubevirt.io/name"
VMI_ID_LABEL = "vmi.kubevirt.io/id"
DOMAIN_ANNOTATION = "kubevirt.io/domain"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
COMPUTE = "compute"
LAUNCHER_PODS = f"/api/v1/pods?labelSelector={APP_LABEL}%3D{LAUNCHER_APP}"  # every namespace
UNPAUSED_GATE = "kubevirt.io/virtual-machine-unpaused"
DEFAULT_GRACE_SECONDS = 30
GRACE_PADDING_SECONDS = 15
LABEL_MAX = 63  # DNS-1035 label length
ID_HASH_LENGTH = 8


def vmi_id(name: str) -> str:
    """`vmi.kubevirt.io/id`: the VMI's name, or a prefix and a short SHA-1 when too long."""
    if len(name) <= LABEL_MAX:
        return name
    prefix = name[: LABEL_MAX - ID_HASH_LENGTH - 1]
    return f"{prefix}-{hashlib.sha1(name.encode()).hexdigest()[:ID_HASH_LENGTH]}"


def grace_seconds(vmi: Mapping) -> int:
    """How long a stop waits for the guest to power off before the domain is destroyed."""
    value = dig(vmi, "spec", "terminationGracePeriodSeconds")
    return value if isinstance(value, int) and value >= 0 else DEFAULT_GRACE_SECONDS


def guest_grace(pod: Mapping) -> int:
    """The VMI's grace period, read back from its launcher pod (which adds the padding)."""
    total = dig(pod, "spec", "terminationGracePeriodSeconds")
    if not isinstance(total, int):
        return DEFAULT_GRACE_SECONDS
    return max(0, total - GRACE_PADDING_SECONDS)


def claim_volumes(spec: Mapping) -> list[tuple[str, str]]:
    """(volume name, claim name) of every PVC or DataVolume volume, in spec order."""
    result = []
    for volume in spec.get("volumes") or []:
        if not isinstance(volume, Mapping):
            continue
        claim = dig(volume, "persistentVolumeClaim", "claimName") or dig(
            volume, "dataVolume", "name"
        )
        if claim:
            result.append((str(volume.get("name")), str(claim)))
    return result


def _labels(vmi: Mapping) -> dict[str, str]:
    meta = vmi.get("metadata") or {}
    name = str(meta.get("name"))
    hostname = dig(vmi, "spec", "hostname") or name
    return {
        **(meta.get("labels") or {}),
        APP_LABEL: LAUNCHER_APP,
        CREATED_BY_LABEL: str(meta.get("uid")),
        VM_NAME_LABEL: str(hostname),
        VMI_ID_LABEL: vmi_id(name),
    }


def _owner(vmi: Mapping) -> dict:
    meta = vmi.get("metadata") or {}
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _container(volumes: Iterable[tuple[str, str]]) -> dict:
    mounts = [
        {"name": name, "mountPath": f"/var/run/kubevirt-private/vmi-disks/{name}"}
        for name, _ in volumes
    ]
    return {
        "name": COMPUTE,
        "image": LAUNCHER_IMAGE,
        "command": ["/usr/bin/virt-launcher-monitor", "--qemu-timeout", "240s"],
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            "runAsNonRoot": True,
            "runAsUser": 107,
        },
    }


def launcher_pod(vmi: Mapping, node: str) -> dict:
    """The virt-launcher Pod for `vmi`, bound to `node`."""
    meta = vmi.get("metadata") or {}
    spec = vmi.get("spec") or {}
    volumes = claim_volumes(spec)
    pod_spec = {
        "nodeName": node,
        "hostname": str(spec.get("hostname") or meta.get("name")),
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace_seconds(vmi) + GRACE_PADDING_SECONDS,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [_container(volumes)],
        "volumes": [
            {"name": name, "persistentVolumeClaim": {"claimName": claim}} for name, claim in volumes
        ],
        "nodeSelector": {**(spec.get("nodeSelector") or {}), SCHEDULABLE_LABEL: "true"},
        "readinessGates": [{"conditionType": UNPAUSED_GATE}],
    }
    for field in ("tolerations", "affinity", "subdomain", "priorityClassName"):
        if spec.get(field):
            pod_spec[field] = spec[field]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"virt-launcher-{meta.get('name')}-",
            "namespace": meta.get("namespace"),
            "labels": _labels(vmi),
            "annotations": {
                DOMAIN_ANNOTATION: meta.get("name"),
                DEFAULT_CONTAINER_ANNOTATION: COMPUTE,
            },
            "ownerReferences": [_owner(vmi)],
        },
        "spec": pod_spec,
    }


def owned_by(pod: Mapping, vmi_uid: str) -> bool:
    """The pod is a virt-launcher whose controller is the VMI with this uid."""
    labels = dig(pod, "metadata", "labels", default={}) or {}
    return labels.get(APP_LABEL) == LAUNCHER_APP and labels.get(CREATED_BY_LABEL) == vmi_uid


def pod_alive(pod: Mapping) -> bool:
    """KubeVirt's node controller's test: not Failed/Succeeded, some container not terminated."""
    if dig(pod, "status", "phase") in ("Failed", "Succeeded"):
        return False
    statuses = dig(pod, "status", "containerStatuses", default=[]) or []
    return not statuses or any("terminated" not in (s.get("state") or {}) for s in statuses)
