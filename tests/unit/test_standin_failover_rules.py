"""Pieces of the stand-in failover relies on, without a server: the sparse copies behind volume
snapshots, KubeVirt's restored VM spec and claims, and runStrategy Manual (a Failed VMI stays
Failed; start and stop act through state change requests)."""

from __future__ import annotations

import os
from pathlib import Path

from lparkube_devenv.kubevirt.actions import Actions, Call
from lparkube_devenv.kubevirt.api import VM, VMI
from lparkube_devenv.kubevirt.controller import Controller, Settings
from lparkube_devenv.kubevirt.fake import FakeKube
from lparkube_devenv.kubevirt.nodes import node_labels, node_status
from lparkube_devenv.kubevirt.restores import restore_claim, restored_spec
from lparkube_devenv.kubevirt.storage.backing import copy_data

MIB = 2**20


def test_a_copy_holds_the_data_extents_and_keeps_the_holes(tmp_path: Path) -> None:
    source = tmp_path / "volume"
    with source.open("wb") as disk:
        disk.truncate(256 * MIB)
        disk.seek(200 * MIB)
        disk.write(b"tail data")
        disk.seek(0)
        disk.write(b"head")
    copy_data(source, tmp_path / "copy")
    copy = tmp_path / "copy"
    assert copy.stat().st_size == 256 * MIB
    assert copy.stat().st_blocks * 512 <= MIB  # two small extents, not 256 MiB
    with copy.open("rb") as disk:
        assert disk.read(4) == b"head"
        disk.seek(200 * MIB)
        assert disk.read(9) == b"tail data"
        assert os.lseek(disk.fileno(), 4096, os.SEEK_DATA) >= 199 * MIB  # a hole between
    assert copy.stat().st_mode & 0o777 == 0o600


def test_a_directory_volume_is_copied_file_by_file(tmp_path: Path) -> None:
    source = tmp_path / "fs"
    source.mkdir()
    (source / "disk.img").write_bytes(b"image")
    (source / "dumps").mkdir()
    (source / "dumps" / "a.memory.dump").write_bytes(b"dump")
    (source / "link").symlink_to("/etc/passwd")
    copy_data(source, tmp_path / "copy")
    assert (tmp_path / "copy" / "disk.img").read_bytes() == b"image"
    assert (tmp_path / "copy" / "dumps" / "a.memory.dump").read_bytes() == b"dump"
    assert not (tmp_path / "copy" / "link").exists()  # links are not followed out of a volume


RESTORE = {"metadata": {"name": "undo", "namespace": "ns", "uid": "r1"}}
RESTORES = [
    {"volumeName": "root", "persistentVolumeClaim": "restore-r1-root"},
    {"volumeName": "data", "persistentVolumeClaim": "restore-r1-data"},
    {"volumeName": "scratch", "persistentVolumeClaim": "restore-r1-scratch"},
]


def test_the_restored_spec_puts_each_volume_on_its_new_claim() -> None:
    source = {
        "dataVolumeTemplates": [{"metadata": {"name": "root-dv"}, "spec": {}}],
        "template": {
            "spec": {
                "volumes": [
                    {"name": "root", "dataVolume": {"name": "root-dv"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "scratch", "dataVolume": {"name": "no-template"}},
                    {"name": "dump", "memoryDump": {"claimName": "d"}},
                    {"name": "ci", "cloudInitNoCloud": {"userData": ""}},
                ]
            }
        },
    }
    spec = restored_spec(source, RESTORES)
    assert spec["dataVolumeTemplates"][0]["metadata"]["name"] == "restore-r1-root"
    assert spec["template"]["spec"]["volumes"] == [
        {"name": "root", "dataVolume": {"name": "restore-r1-root"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "restore-r1-data"}},
        {"name": "scratch", "persistentVolumeClaim": {"claimName": "restore-r1-scratch"}},
        {"name": "ci", "cloudInitNoCloud": {"userData": ""}},
    ]
    assert source["template"]["spec"]["volumes"][0]["dataVolume"]["name"] == "root-dv"


def test_a_restored_claim_is_the_backed_up_one_filled_from_its_volume_snapshot() -> None:
    backup = {
        "volumeName": "data",
        "volumeSnapshotName": "vmsnapshot-s1-volume-data",
        "persistentVolumeClaim": {
            "metadata": {
                "name": "data",
                "labels": {"app": "db"},
                "annotations": {"pv.kubernetes.io/bind-completed": "yes", "team": "a"},
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": "Block",
                "storageClassName": "lparkube-thin",
                "resources": {"requests": {"storage": "1Gi"}},
                "volumeName": "pvc-old",
            },
        },
    }
    content = {
        "spec": {"source": {"virtualMachine": {"metadata": {"name": "db", "namespace": "ns"}}}},
        "status": {
            "volumeSnapshotStatus": [
                {"volumeSnapshotName": "vmsnapshot-s1-volume-data", "restoreSize": "2Gi"}
            ]
        },
    }
    vm = {"metadata": {"name": "db", "uid": "v1"}}
    target = {**RESTORES[1], "volumeSnapshotName": backup["volumeSnapshotName"]}
    claim = restore_claim(RESTORE, backup, target, content, vm)
    assert claim["metadata"]["name"] == "restore-r1-data"
    assert claim["metadata"]["annotations"] == {
        "team": "a",
        "restore.kubevirt.io/name": "undo",
        "restore.kubevirt.io/lastRestoreUID": "undo-r1",
    }
    assert claim["metadata"]["labels"]["restore.kubevirt.io/source-vm-name"] == "db"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "v1"
    source = {
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": "vmsnapshot-s1-volume-data",
    }
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "lparkube-thin",
        "volumeMode": "Block",
        "resources": {"requests": {"storage": "2Gi"}},  # the restore size is larger
        "dataSource": source,
        "dataSourceRef": source,
    }


# --- runStrategy Manual ------------------------------------------------------------------------


def manual_vm() -> tuple[FakeKube, Controller, Actions]:
    kube = FakeKube()
    node = {"metadata": {"name": "node-a", "labels": node_labels("node-a")}, "spec": {}}
    kube.put("/api/v1/nodes/node-a", {**node, "status": node_status("node-a")})
    template = {"spec": {"domain": {"devices": {}}}}
    vm = {"metadata": {"name": "vm", "namespace": "ns"}, "spec": {"runStrategy": "Manual"}}
    kube.put(VM.path("ns", "vm"), {**vm, "spec": {**vm["spec"], "template": template}})
    controller = Controller(kube, Settings(restart_delay=0.0))  # type: ignore[arg-type]
    return kube, controller, Actions(kube)  # type: ignore[arg-type]


def put(actions: Actions, sub: str) -> tuple:
    return actions.handle(Call("PUT", "ns", "virtualmachines", "vm", sub, {}))


def phase(kube: FakeKube) -> str:
    return ((kube.get(VMI.path("ns", "vm")) or {}).get("status") or {}).get("phase", "-")


def passes(controller: Controller, count: int) -> None:
    for _ in range(count):
        controller.tick()


def test_a_manual_vm_starts_and_stops_only_on_request_and_leaves_a_failed_vmi_alone() -> None:
    kube, controller, actions = manual_vm()
    passes(controller, 4)
    assert phase(kube) == "-"  # Manual creates nothing by itself
    assert put(actions, "start") == (202, None)
    passes(controller, 8)
    assert phase(kube) == "Running"
    first = kube.get(VMI.path("ns", "vm"))["metadata"]["uid"]
    kube.merge_patch(VMI.path("ns", "vm"), {"status": {"phase": "Failed"}})  # the guest crashed
    passes(controller, 10)
    assert phase(kube) == "Failed"  # never restarted
    assert kube.get(VMI.path("ns", "vm"))["metadata"]["uid"] == first
    assert put(actions, "start") == (202, None)  # a stop of the Failed VMI, then a start
    passes(controller, 10)
    again = kube.get(VMI.path("ns", "vm"))
    assert again["metadata"]["uid"] != first and phase(kube) == "Running"
    assert put(actions, "stop") == (202, None)
    passes(controller, 6)
    assert kube.get(VMI.path("ns", "vm")) is None
    assert kube.get(VM.path("ns", "vm"))["spec"]["runStrategy"] == "Manual"  # kept
