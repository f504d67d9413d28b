"""Thin volumes on the real API server and kube-controller-manager, with plain Pods.

The real persistentvolume-binder binds, the real attach/detach controller creates and deletes
VolumeAttachments and refuses a second node (Multi-Attach), the real pod GC and taint eviction
release a lost node's pods; the stand-in plays the CSI sidecars and the kubelets' volume part.
The tests play the rest of a kubelet: pods' running status, and finishing a pod's deletion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client import ApiException

from lparkube_devenv.controlplane import wait_until
from lparkube_devenv.kubevirt import StandIn
from lparkube_devenv.kubevirt.api import now_iso
from lparkube_devenv.kubevirt.logic import SCHEDULABLE_LABEL
from lparkube_devenv.kubevirt.nodes import NODES_PATH, ensure_nodes, set_ready
from lparkube_devenv.kubevirt.storage import (
    DRIVER,
    STORAGE_CLASS,
    USED_BYTES_ANNOTATION,
    read_entries,
    two_writers,
)
from lparkube_devenv.kubevirt.storage.names import (
    ATTACHER_FINALIZER,
    ATTACHMENTS_PATH,
    CONTROLLER_MANAGED_ATTACH,
    CSINODES_PATH,
    DEFAULT_CLASS_ANNOTATION,
    OUT_OF_SERVICE_TAINT,
    PROVISIONED_BY,
    PROVISIONER_FINALIZER,
    attachment_name,
    unique_volume_name,
)

TIMEOUT = 30.0
GI = 2**30


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    return wait_until(predicate, timeout, what, interval=0.1)


class Volumes:
    """Claims and pods in one test namespace, and the kubelet's share the tests play."""

    def __init__(self, standin: StandIn, namespace: str):
        self.standin, self.storage, self.kube, self.ns = (
            standin,
            standin.storage,
            standin.kube,
            namespace,
        )

    def claim(
        self,
        name: str,
        size: str = "1Gi",
        mode: str = "Block",
        access: str = "ReadWriteOnce",
        **spec: Any,
    ) -> dict:
        body = {
            "metadata": {"name": name},
            "spec": {
                "accessModes": [access],
                "volumeMode": mode,
                "resources": {"requests": {"storage": size}},
                **spec,
            },
        }
        self.kube.create(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims", body)
        return wait_for(lambda: self._bound(name), f"claim {name} Bound")

    def _bound(self, name: str) -> dict | None:
        found = self.get_claim(name)
        return found if found and found["status"].get("phase") == "Bound" else None

    def get_claim(self, name: str) -> dict | None:
        return self.kube.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{name}")

    def volume(self, claim: str) -> dict:
        found = self.get_claim(claim)
        assert found is not None
        return self.kube.request("GET", f"/api/v1/persistentvolumes/{found['spec']['volumeName']}")

    def pod(self, name: str, node: str, claim: str, mode: str = "Block") -> dict:
        """A pod bound to ``node`` that its kubelet reports running, volumes taken in use."""
        device = {"volumeDevices": [{"name": "disk", "devicePath": "/dev/disk0"}]}
        if mode != "Block":
            device = {"volumeMounts": [{"name": "disk", "mountPath": "/data"}]}
        body = {
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": False,
                "containers": [{"name": "guest", "image": "registry.k8s.io/pause:3.10", **device}],
                "volumes": [{"name": "disk", "persistentVolumeClaim": {"claimName": claim}}],
            },
        }
        wait_for(lambda: self._create_pod(body), f"pod {name} created")
        running = {"running": {"startedAt": now_iso()}}
        container = {"name": "guest", "image": "pause", "imageID": "", "ready": True}
        status = {
            "phase": "Running",
            "containerStatuses": [{**container, "restartCount": 0, "state": running}],
        }
        self.kube.merge_patch(
            f"/api/v1/namespaces/{self.ns}/pods/{name}/status", {"status": status}
        )
        assert self.storage.mount_volumes(self.ns, name)
        return body

    def _create_pod(self, body: dict) -> bool:
        try:
            self.kube.create(f"/api/v1/namespaces/{self.ns}/pods", body)
            return True
        except ApiException as error:  # the namespace's default ServiceAccount may not exist yet
            if error.status == 403:
                return False
            raise

    def get_pod(self, name: str) -> dict | None:
        return self.kube.get(f"/api/v1/namespaces/{self.ns}/pods/{name}")

    def delete_pod(self, name: str, grace: int = 30) -> None:
        """What a user (or a controller) does: a graceful delete; the kubelet finishes it."""
        self.kube.request(
            "DELETE", f"/api/v1/namespaces/{self.ns}/pods/{name}", {"gracePeriodSeconds": grace}
        )

    def kubelet_finishes(self, name: str) -> None:
        """The pod's kubelet stopped its containers: it unmounts, then removes the pod."""
        assert self.storage.unmount_volumes(self.ns, name)
        self.delete_pod(name, grace=0)
        wait_for(lambda: self.get_pod(name) is None, f"pod {name} gone")

    def ready(self, pod: str) -> bool:
        return self.storage.volume_ready(self.ns, pod).ok

    def attachments(self, claim: str) -> dict[str, dict]:
        """The claim's VolumeAttachments by node."""
        volume = self.volume(claim)["metadata"]["name"]
        return {
            a["spec"]["nodeName"]: a
            for a in self.kube.items(ATTACHMENTS_PATH)
            if a["spec"]["source"].get("persistentVolumeName") == volume
        }

    def attached_nodes(self, claim: str) -> list[str]:
        return sorted(
            n for n, a in self.attachments(claim).items() if (a.get("status") or {}).get("attached")
        )

    def events(self, kind: str, name: str) -> list[tuple[str, str]]:
        items = self.kube.items(f"/api/v1/namespaces/{self.ns}/events")
        return [
            (e["reason"], e["message"])
            for e in items
            if e["involvedObject"].get("kind") == kind and e["involvedObject"].get("name") == name
        ]

    def log_for(self, claim: str) -> list[tuple[str, str]]:
        volume = self.volume(claim)["metadata"]["name"]
        return [
            (e["event"], e["node"])
            for e in read_entries(self.storage.attach_log_path)
            if e["pv"] == volume
        ]


@pytest.fixture
def volumes(kubevirt: StandIn, namespace: str) -> Volumes:
    return Volumes(kubevirt, namespace)


def test_the_driver_is_installed_and_every_node_registered(volumes: Volumes) -> None:
    thin = volumes.kube.request("GET", f"/apis/storage.k8s.io/v1/storageclasses/{STORAGE_CLASS}")
    assert thin["provisioner"] == DRIVER and thin["allowVolumeExpansion"] is True
    assert (thin["reclaimPolicy"], thin["volumeBindingMode"]) == ("Delete", "Immediate")
    assert thin["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true"
    driver = volumes.kube.request("GET", f"/apis/storage.k8s.io/v1/csidrivers/{DRIVER}")
    assert driver["spec"]["attachRequired"] is True
    for node in volumes.standin.node_names:
        annotations = volumes.kube.request("GET", f"{NODES_PATH}/{node}")["metadata"]["annotations"]
        assert annotations[CONTROLLER_MANAGED_ATTACH] == "true"
        csi_node = wait_for(
            lambda n=node: volumes.kube.get(f"{CSINODES_PATH}/{n}"), f"CSINode {node}"
        )
        assert [(d["name"], d["nodeID"]) for d in csi_node["spec"]["drivers"]] == [(DRIVER, node)]


def test_block_claim_is_a_sparse_file_of_the_requested_size(volumes: Volumes) -> None:
    claim = volumes.claim("disk", "1Gi")  # no class named: lparkube-thin is the default
    assert claim["spec"]["storageClassName"] == STORAGE_CLASS
    assert claim["status"]["capacity"] == {"storage": "1Gi"}
    volume = volumes.volume("disk")
    assert volume["metadata"]["name"] == f"pvc-{claim['metadata']['uid']}"
    assert volume["metadata"]["annotations"][PROVISIONED_BY] == DRIVER
    assert PROVISIONER_FINALIZER in volume["metadata"]["finalizers"]
    assert volume["spec"]["csi"]["driver"] == DRIVER
    assert volume["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"]
    path, mode, access = volumes.storage.backing(volumes.ns, "disk")
    assert (mode, access) == ("Block", ("ReadWriteOnce",))
    assert path == volumes.storage.store.root / volumes.ns / volume["metadata"]["name"]
    assert path.stat().st_size == GI
    assert path.stat().st_blocks * 512 < 1024 * 1024
    used = wait_for(
        lambda: volumes.volume("disk")["metadata"]["annotations"].get(USED_BYTES_ANNOTATION),
        "used bytes",
    )
    assert int(used) < 1024 * 1024
    with path.open("r+b") as disk:
        disk.seek(512 * 2**20)
        disk.write(b"\xa5" * 4 * 2**20)
    wait_for(
        lambda: used_bytes(volumes, "disk") >= 4 * 2**20, "used bytes counting what was written"
    )
    assert reasons(volumes.events("PersistentVolumeClaim", "disk")) >= {
        "Provisioning",
        "ProvisioningSucceeded",
    }


def test_filesystem_claim_is_a_directory(volumes: Volumes) -> None:
    volumes.claim(
        "files", "2Gi", mode="Filesystem", access="ReadWriteMany", storageClassName=STORAGE_CLASS
    )
    path, mode, access = volumes.storage.backing(volumes.ns, "files")
    assert (mode, access) == ("Filesystem", ("ReadWriteMany",))
    assert path.is_dir() and list(path.iterdir()) == []
    used = wait_for(
        lambda: volumes.volume("files")["metadata"]["annotations"].get(USED_BYTES_ANNOTATION),
        "used bytes",
    )
    assert used == "0"


def test_a_claim_of_another_namespace_has_no_backing_here(volumes: Volumes, namespace: str) -> None:
    volumes.claim("mine")
    with pytest.raises(LookupError):
        volumes.storage.backing("default", "mine")


def test_expansion_grows_the_file_and_the_claims_capacity(volumes: Volumes) -> None:
    volumes.claim("grow", "1Gi")
    path = volumes.storage.backing(volumes.ns, "grow").path
    with path.open("r+b") as disk:
        disk.write(b"boot sector stays")
    patch = {"spec": {"resources": {"requests": {"storage": "3Gi"}}}}
    volumes.kube.merge_patch(f"/api/v1/namespaces/{volumes.ns}/persistentvolumeclaims/grow", patch)
    grown = wait_for(
        lambda: (
            (c := volumes.get_claim("grow")) and c["status"]["capacity"]["storage"] == "3Gi" and c
        ),
        "status.capacity 3Gi",
    )
    assert grown["status"].get("allocatedResources") == {"storage": "3Gi"}
    assert not grown["status"].get("allocatedResourceStatuses")
    assert not [c for c in grown["status"].get("conditions") or [] if c["type"] == "Resizing"]
    assert (
        grown["metadata"]["annotations"]["volume.kubernetes.io/node-expansion-not-required"]
        == "true"
    )
    assert volumes.volume("grow")["spec"]["capacity"] == {"storage": "3Gi"}
    assert path.stat().st_size == 3 * GI
    with path.open("rb") as disk:
        assert disk.read(17) == b"boot sector stays"
    wanted = {"ExternalExpanding", "Resizing", "VolumeResizeSuccessful"}
    wait_for(
        lambda: reasons(volumes.events("PersistentVolumeClaim", "grow")) >= wanted,
        "the expander's hand-over and the resizer's events",
    )
    shrink = {"spec": {"resources": {"requests": {"storage": "1Gi"}}}}
    with pytest.raises(ApiException) as refused:  # the API server never lets a claim shrink
        volumes.kube.merge_patch(
            f"/api/v1/namespaces/{volumes.ns}/persistentvolumeclaims/grow", shrink
        )
    assert refused.value.status == 422
    assert path.stat().st_size == 3 * GI


def test_rwo_volume_stays_on_its_node_until_the_pod_there_is_gone(volumes: Volumes) -> None:
    volumes.claim("rwo")
    volumes.pod("first", "node-a", "rwo")
    wait_for(lambda: volumes.ready("first"), "first attached on node-a")
    volume = volumes.volume("rwo")
    handle = volume["spec"]["csi"]["volumeHandle"]
    attachment = volumes.attachments("rwo")["node-a"]
    assert attachment["metadata"]["name"] == attachment_name(handle, DRIVER, "node-a")
    assert attachment["spec"]["attacher"] == DRIVER
    assert ATTACHER_FINALIZER in attachment["metadata"]["finalizers"]
    node_status = volumes.kube.request("GET", f"{NODES_PATH}/node-a")["status"]
    assert unique_volume_name(DRIVER, handle) in node_status["volumesInUse"]
    assert unique_volume_name(DRIVER, handle) in [v["name"] for v in node_status["volumesAttached"]]

    volumes.pod("second", "node-b", "rwo")
    refused = wait_for(
        lambda: (
            (r := volumes.storage.volume_ready(volumes.ns, "second")).reason == "MultiAttach" and r
        ),
        "second refused with Multi-Attach",
    )
    assert not refused.ok
    assert refused.message.startswith(
        f'Multi-Attach error for volume "{volume["metadata"]["name"]}"'
    )
    assert "Volume is already used by pod(s) first" in refused.message
    assert ("FailedAttachVolume", refused.message) in volumes.events("Pod", "second")

    volumes.delete_pod("first")  # terminating, its containers still run: nothing moves
    time.sleep(2.0)
    assert volumes.attached_nodes("rwo") == ["node-a"]
    assert volumes.storage.volume_ready(volumes.ns, "second").reason == "MultiAttach"

    began = time.monotonic()
    volumes.kubelet_finishes("first")
    wait_for(lambda: volumes.ready("second"), "second attached on node-b once first is gone")
    print(f"unmounted and gone -> attached elsewhere in {time.monotonic() - began:.1f}s")
    assert volumes.attached_nodes("rwo") == ["node-b"]
    assert volumes.log_for("rwo") == [
        ("attach", "node-a"),
        ("refused", "node-b"),
        ("detach", "node-a"),
        ("attach", "node-b"),
    ]
    volumes.kubelet_finishes("second")
    wait_for(lambda: not volumes.attachments("rwo"), "the last attachment released")


def test_rwx_volume_attaches_on_both_nodes(volumes: Volumes) -> None:
    volumes.claim("shared", "1Gi", mode="Filesystem", access="ReadWriteMany")
    volumes.pod("left", "node-a", "shared", mode="Filesystem")
    volumes.pod("right", "node-b", "shared", mode="Filesystem")
    wait_for(lambda: volumes.ready("left") and volumes.ready("right"), "both attached")
    assert volumes.attached_nodes("shared") == ["node-a", "node-b"]
    assert not [r for r, _ in volumes.events("Pod", "right") if r == "FailedAttachVolume"]
    for pod in ("left", "right"):
        volumes.kubelet_finishes(pod)


def test_reclaim_delete_removes_the_file(volumes: Volumes) -> None:
    volumes.claim("scratch")
    path = volumes.storage.backing(volumes.ns, "scratch").path
    name = volumes.volume("scratch")["metadata"]["name"]
    volumes.kube.delete(f"/api/v1/namespaces/{volumes.ns}/persistentvolumeclaims/scratch")
    wait_for(
        lambda: volumes.kube.get(f"/api/v1/persistentvolumes/{name}") is None, "the PV deleted"
    )
    assert not path.exists()


@pytest.fixture
def lost_node(kubevirt: StandIn) -> Iterator[str]:
    """A node of its own (no VMI is placed there) that the test powers off and fences."""
    name = "node-lost"
    ensure_nodes(kubevirt.kube, [name])
    kubevirt.kube.merge_patch(
        f"{NODES_PATH}/{name}", {"metadata": {"labels": {SCHEDULABLE_LABEL: "false"}}}
    )
    wait_for(
        lambda: kubevirt.kube.get(f"{CSINODES_PATH}/{name}"), "the kubelet registered the driver"
    )
    yield name
    kubevirt.storage.power_on(name)
    kubevirt.kube.delete(f"{NODES_PATH}/{name}")


def test_a_lost_node_keeps_its_volume_until_fenced_and_its_pod_force_deleted(
    volumes: Volumes, lost_node: str
) -> None:
    volumes.claim("fenced")
    volumes.pod("stranded", lost_node, "fenced")
    wait_for(lambda: volumes.ready("stranded"), "attached on the node about to be lost")
    volumes.storage.power_off(lost_node)
    set_ready(volumes.kube, lost_node, False, "NodeStatusUnknown")
    volumes.pod("rescue", "node-b", "fenced")
    wait_for(
        lambda: volumes.storage.volume_ready(volumes.ns, "rescue").reason == "MultiAttach",
        "rescue refused",
    )

    time.sleep(3.0)  # NotReady, kubelet silent: the volume may still be written there
    assert volumes.attached_nodes("fenced") == [lost_node]
    assert volumes.get_pod("stranded") is not None

    # Fenced (KEP-2268): taint eviction deletes the pod, pod GC force-deletes it, the
    # attach/detach controller detaches although the dead kubelet still lists it in use.
    node = volumes.kube.request("GET", f"{NODES_PATH}/{lost_node}")
    taint = {"key": OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}
    taints = [*(node["spec"].get("taints") or []), taint]
    volumes.kube.merge_patch(f"{NODES_PATH}/{lost_node}", {"spec": {"taints": taints}})
    began = time.monotonic()
    wait_for(
        lambda: volumes.get_pod("stranded") is None, "pod GC force-deleted the stranded pod", 60
    )
    wait_for(lambda: volumes.ready("rescue"), "rescue attached on node-b", 30)
    print(f"fenced -> attached elsewhere in {time.monotonic() - began:.1f}s")
    assert volumes.attached_nodes("fenced") == ["node-b"]
    in_use = volumes.kube.request("GET", f"{NODES_PATH}/{lost_node}")["status"].get("volumesInUse")
    assert in_use, "the dead kubelet never unmounted"
    assert volumes.log_for("fenced")[-2:] == [("detach", lost_node), ("attach", "node-b")]
    volumes.kubelet_finishes("rescue")


def test_the_attach_log_never_shows_two_writers(kubevirt: StandIn) -> None:
    """Over every attach the session logged so far (this module's tests run before it)."""
    entries = read_entries(kubevirt.storage.attach_log_path)
    assert {"attach", "detach", "refused"} <= {e["event"] for e in entries}
    assert two_writers(kubevirt.storage.attach_log_path) == []


def used_bytes(volumes: Volumes, claim: str) -> int:
    return int(volumes.volume(claim)["metadata"]["annotations"][USED_BYTES_ANNOTATION])


def reasons(events: list[tuple[str, str]]) -> set[str]:
    return {reason for reason, _ in events}
