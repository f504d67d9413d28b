"""Snapshots that hold data, on the real API server with simulated VMIs: a VirtualMachineSnapshot
copies each thin volume (its data extents only), a VirtualMachineRestore brings it back on a
new `restore-<uid>-<volume>` claim filled from the copy, a deleted snapshot takes its copies
with it, and a claim of another namespace cannot name the copy."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from lparkube_devenv.controlplane import wait_until
from lparkube_devenv.kubevirt import RESTORE, SNAPSHOT, VM, VMI, StandIn
from lparkube_devenv.kubevirt.api import SNAPSHOT_CONTENT

MIB = 2**20
MARK = b"written before the snapshot"
MARK_OFFSET = 40 * MIB  # far into the disk: everything before it is a hole


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.1)


class Scene:
    def __init__(self, kubevirt: StandIn, namespace: str) -> None:
        self.kubevirt, self.kube, self.ns = kubevirt, kubevirt.kube, namespace
        self.claims = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims"

    def claim(self, name: str, mode: str = "Block", namespace: str | None = None, **spec) -> None:
        body = {
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": mode,
                "resources": {"requests": {"storage": "64Mi"}},
                **spec,
            },
        }
        self.kube.create(f"/api/v1/namespaces/{namespace or self.ns}/persistentvolumeclaims", body)

    def bound(self, name: str) -> dict:
        return wait_for(
            lambda: (
                (self.kube.get(f"{self.claims}/{name}") or {}).get("status", {}).get("phase")
                == "Bound"
                and self.kube.get(f"{self.claims}/{name}")
            ),
            f"claim {name} Bound",
        )

    def vm(self, name: str, claim: str, strategy: str = "Always") -> None:
        template = {
            "spec": {
                "domain": {"devices": {"disks": [{"name": "data", "disk": {"bus": "virtio"}}]}},
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
            }
        }
        body = {
            "apiVersion": VM.api_version,
            "kind": VM.kind,
            "metadata": {"name": name},
            "spec": {"runStrategy": strategy, "template": template},
        }
        self.kube.create(VM.path(self.ns), body)

    def snapshot(self, name: str, vm: str) -> dict:
        body = {
            "apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineSnapshot",
            "metadata": {"name": name},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm}},
        }
        self.kube.create(SNAPSHOT.path(self.ns), body)
        return wait_for(
            lambda: (
                self._status(SNAPSHOT.path(self.ns, name)).get("phase") == "Succeeded"
                and self.kube.get(SNAPSHOT.path(self.ns, name))
            ),
            f"snapshot {name} Succeeded",
        )

    def restore(self, name: str, snapshot: str, vm: str, namespace: str | None = None) -> dict:
        body = {
            "apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineRestore",
            "metadata": {"name": name},
            "spec": {
                "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm},
                "virtualMachineSnapshotName": snapshot,
            },
        }
        return self.kube.create(RESTORE.path(namespace or self.ns), body)

    def _status(self, path: str) -> dict:
        return (self.kube.get(path) or {}).get("status") or {}

    def backing(self, claim: str, namespace: str | None = None):  # type: ignore[no-untyped-def]
        return self.kubevirt.storage.backing(namespace or self.ns, claim).path


@pytest.fixture
def scene(kubevirt: StandIn, namespace: str) -> Scene:
    return Scene(kubevirt, namespace)


def write(path, data: bytes, offset: int = MARK_OFFSET) -> None:  # type: ignore[no-untyped-def]
    with open(path, "r+b") as disk:
        disk.seek(offset)
        disk.write(data)


def read(path, size: int = len(MARK), offset: int = MARK_OFFSET) -> bytes:  # type: ignore[no-untyped-def]
    with open(path, "rb") as disk:
        disk.seek(offset)
        return disk.read(size)


def test_a_snapshot_copies_the_data_and_a_restore_brings_it_back_on_a_new_claim(
    scene: Scene,
) -> None:
    scene.claim("disk")
    scene.bound("disk")
    write(scene.backing("disk"), MARK)
    scene.vm("db", "disk")
    wait_for(lambda: scene._status(VMI.path(scene.ns, "db")).get("phase") == "Running", "VMI")
    taken = scene.snapshot("nightly", "db")
    content = scene.kube.get(
        SNAPSHOT_CONTENT.path(scene.ns, f"vmsnapshot-content-{taken['metadata']['uid']}")
    )
    [backup] = content["spec"]["volumeBackups"]
    name = f"vmsnapshot-{taken['metadata']['uid']}-volume-data"
    assert backup["volumeSnapshotName"] == name
    assert backup["persistentVolumeClaim"]["spec"]["volumeMode"] == "Block"
    [volume_status] = content["status"]["volumeSnapshotStatus"]
    assert volume_status["readyToUse"] is True and volume_status["restoreSize"] == "64Mi"
    assert content["status"]["readyToUse"] is True
    copy = scene.kubevirt.storage.snapshots.path(scene.ns, name)
    assert copy.stat().st_size == 64 * MIB and read(copy) == MARK
    assert copy.stat().st_blocks * 512 <= MIB  # only the written extent was copied
    assert os.lseek(os.open(copy, os.O_RDONLY), 0, os.SEEK_DATA) >= MARK_OFFSET - 4096

    write(scene.backing("disk"), b"X" * len(MARK))  # changed after the snapshot
    scene.kube.merge_patch(VM.path(scene.ns, "db"), {"spec": {"runStrategy": "Halted"}})
    wait_for(lambda: scene.kube.get(VMI.path(scene.ns, "db")) is None, "VMI gone")
    restore = scene.restore("undo", "nightly", "db")
    wait_for(lambda: scene._status(RESTORE.path(scene.ns, "undo")).get("complete"), "restored")
    claim = f"restore-{restore['metadata']['uid']}-data"
    restored = scene.bound(claim)
    assert restored["spec"]["dataSource"] == {
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": name,
    }
    assert restored["metadata"]["ownerReferences"][0]["kind"] == "VirtualMachine"
    assert read(scene.backing(claim)) == MARK
    assert read(scene.backing("disk")) == b"X" * len(MARK)  # the old claim is left as it was
    vm = scene.kube.get(VM.path(scene.ns, "db"))
    assert vm["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": claim
    }
    assert vm["spec"]["runStrategy"] == "Halted"  # kept as it was
    statuses = scene._status(RESTORE.path(scene.ns, "undo"))["restores"]
    assert statuses == [
        {"volumeName": "data", "persistentVolumeClaim": claim, "volumeSnapshotName": name}
    ]

    scene.kube.delete(SNAPSHOT.path(scene.ns, "nightly"))
    wait_for(lambda: not copy.exists(), "the copy deleted with its snapshot")
    wait_for(lambda: scene.kube.get(SNAPSHOT.path(scene.ns, "nightly")) is None, "snapshot gone")
    assert scene.kube.get(SNAPSHOT_CONTENT.path(scene.ns, content["metadata"]["name"])) is None


def test_a_restore_waits_while_its_target_has_a_vmi(scene: Scene) -> None:
    scene.claim("disk", mode="Filesystem")
    scene.bound("disk")
    scene.vm("app", "disk")
    wait_for(lambda: scene._status(VMI.path(scene.ns, "app")).get("phase") == "Running", "VMI")
    scene.snapshot("before", "app")
    scene.restore("wait", "before", "app")
    waiting = wait_for(
        lambda: [
            c
            for c in scene._status(RESTORE.path(scene.ns, "wait")).get("conditions") or []
            if c["type"] == "Ready" and "powered off" in c.get("reason", "")
        ],
        "the restore waits for the VM to be powered off",
    )
    assert waiting[0]["status"] == "False"
    assert not scene._status(RESTORE.path(scene.ns, "wait")).get("restores")


def test_a_claim_of_another_namespace_cannot_use_the_copy(
    scene: Scene, api_client: client.ApiClient
) -> None:
    scene.claim("disk")
    scene.bound("disk")
    scene.vm("own", "disk", strategy="Halted")
    taken = scene.snapshot("mine", "own")
    name = f"vmsnapshot-{taken['metadata']['uid']}-volume-data"
    other = f"{scene.ns}-other"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": other}})
    try:
        source = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": name}
        scene.claim("thief", namespace=other, dataSource=source)
        events = f"/api/v1/namespaces/{other}/events"
        refused = wait_for(
            lambda: [e for e in scene.kube.items(events) if e["reason"] == "ProvisioningFailed"],
            "the other namespace's claim refused",
        )
        assert "not found" in refused[0]["message"]
        claim = scene.kube.get(f"/api/v1/namespaces/{other}/persistentvolumeclaims/thief")
        assert claim["status"]["phase"] == "Pending"
        scene.restore("steal", "mine", "own", namespace=other)  # no snapshot "mine" there
        wait_for(
            lambda: any(
                c.get("reason") == "Waiting for the snapshot to be ready"
                for c in scene._status(RESTORE.path(other, "steal")).get("conditions") or []
            ),
            "the other namespace's restore finds no snapshot",
        )
    finally:
        client.CoreV1Api(api_client).delete_namespace(other)
