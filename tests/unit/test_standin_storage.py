"""Thin volumes' pure parts: names, sizes, the PV and the resize status, the backing files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lparkube_devenv.kubevirt.storage import names, objects, resizer
from lparkube_devenv.kubevirt.storage.backing import BLOCK, FILESYSTEM, BackingError, BackingStore
from lparkube_devenv.kubevirt.storage.quantity import format_bytes, round_to_sector, to_bytes

GI = 2**30


def claim(**spec: object) -> dict:
    return {
        "metadata": {
            "name": "disk",
            "namespace": "tenant-a",
            "uid": "0f3c",
            "resourceVersion": "7",
            "annotations": {"volume.kubernetes.io/storage-provisioner": names.DRIVER},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": names.STORAGE_CLASS,
            "resources": {"requests": {"storage": "1Gi"}},
            **spec,
        },
        "status": {"phase": "Pending"},
    }


# --- names -------------------------------------------------------------------------------------


def test_attacher_finalizer_is_the_sanitized_driver_name() -> None:
    assert names.ATTACHER_FINALIZER == "external-attacher/thin-lparkube-io"
    assert names.sanitize_driver_name("a.b_") == "a-b-X"


def test_attachment_name_depends_on_volume_driver_and_node() -> None:
    one = names.attachment_name("pvc-1", names.DRIVER, "node-a")
    assert one.startswith("csi-") and len(one) == 4 + 64
    assert one != names.attachment_name("pvc-1", names.DRIVER, "node-b")
    assert one != names.attachment_name("pvc-2", names.DRIVER, "node-a")


def test_unique_volume_name_is_the_csi_plugins() -> None:
    assert names.unique_volume_name("d.io", "h") == "kubernetes.io/csi/d.io^h"


@pytest.mark.parametrize(
    ("modes", "allowed"),
    [
        (["ReadWriteOnce"], False),
        (["ReadWriteOncePod"], False),
        (["ReadWriteOnce", "ReadWriteMany"], True),
        (["ReadOnlyMany"], True),
        ([], True),
    ],
)
def test_multi_attach_follows_the_access_modes(modes: list[str], allowed: bool) -> None:
    assert names.multi_attach_allowed(modes) is allowed


# --- sizes -------------------------------------------------------------------------------------


def test_quantities_in_bytes() -> None:
    assert to_bytes("1Gi") == GI
    assert to_bytes("1.5G") == 1_500_000_000
    assert to_bytes("100m") == 1  # a tenth of a byte rounds up
    assert to_bytes(None) == 0


def test_sizes_round_to_sectors_and_print_exactly() -> None:
    assert round_to_sector(1) == 512
    assert round_to_sector(GI) == GI
    assert format_bytes(GI) == "1Gi"
    assert format_bytes(3 * 2**20) == "3Mi"
    assert format_bytes(1_500_000_000) == "1500M"
    assert format_bytes(1_000_000_100) == "1000000100"
    assert to_bytes(format_bytes(1_000_000_100)) == 1_000_000_100


# --- the objects ---------------------------------------------------------------------------------


def test_storage_class_expandable_deleted_immediate_and_optionally_default() -> None:
    default = objects.storage_class(default=True)
    assert default["provisioner"] == names.DRIVER
    assert default["allowVolumeExpansion"] is True
    assert (default["reclaimPolicy"], default["volumeBindingMode"]) == ("Delete", "Immediate")
    assert default["metadata"]["annotations"] == {names.DEFAULT_CLASS_ANNOTATION: "true"}
    assert objects.storage_class(default=False)["metadata"]["annotations"] == {}


def test_the_driver_requires_attach() -> None:
    assert objects.csi_driver()["spec"]["attachRequired"] is True


def test_pv_is_prebound_csi_and_guarded_by_the_provisioner_finalizer() -> None:
    pv = objects.volume_for_claim(claim(volumeMode="Block"), "Delete", "id-1")
    assert pv["metadata"]["name"] == "pvc-0f3c"
    assert pv["metadata"]["finalizers"] == [names.PROVISIONER_FINALIZER]
    assert pv["metadata"]["annotations"][names.PROVISIONED_BY] == names.DRIVER
    ref = pv["spec"]["claimRef"]
    assert (ref["namespace"], ref["name"], ref["uid"]) == ("tenant-a", "disk", "0f3c")
    assert pv["spec"]["capacity"] == {"storage": "1Gi"}
    assert pv["spec"]["volumeMode"] == "Block"
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    csi = pv["spec"]["csi"]
    assert (csi["driver"], csi["volumeHandle"]) == (names.DRIVER, "pvc-0f3c")
    assert csi["volumeAttributes"][names.NAMESPACE_ATTRIBUTE] == "tenant-a"
    assert objects.is_ours(pv)
    assert objects.volume_namespace(pv) == "tenant-a"


def test_pv_capacity_is_the_request_in_whole_sectors() -> None:
    pv = objects.volume_for_claim(claim(resources={"requests": {"storage": "1000"}}), "Delete", "")
    assert pv["spec"]["capacity"] == {"storage": "1Ki"}  # 1000 bytes -> two sectors
    assert objects.volume_mode(pv) == "Filesystem"


def test_only_claims_handed_to_this_driver_and_unbound_want_a_volume() -> None:
    assert objects.wants_volume(claim())
    bound = claim(volumeName="pvc-0f3c")
    assert not objects.wants_volume(bound)
    other = claim()
    other["metadata"]["annotations"] = {"volume.kubernetes.io/storage-provisioner": "x.io"}
    assert not objects.wants_volume(other)


def test_content_sources_and_empty_requests_are_refused() -> None:
    assert objects.unsupported(claim()) is None
    clone = claim(dataSource={"kind": "PersistentVolumeClaim", "name": "src"})
    assert "content sources" in (objects.unsupported(clone) or "")
    assert "no storage" in (objects.unsupported(claim(resources={})) or "")


# --- resize status -------------------------------------------------------------------------------


def bound_pair(request: str, capacity: str) -> tuple[dict, dict]:
    pvc = claim(volumeName="pvc-0f3c", resources={"requests": {"storage": request}})
    pvc["status"] = {"phase": "Bound", "capacity": {"storage": capacity}}
    pv = objects.volume_for_claim(claim(), "Delete", "")
    pv["spec"]["capacity"] = {"storage": capacity}
    return pvc, pv


def test_a_larger_request_needs_a_resize_an_equal_one_does_not() -> None:
    assert resizer.needs_resize(*bound_pair("2Gi", "1Gi"))
    assert not resizer.needs_resize(*bound_pair("1Gi", "1Gi"))
    pvc, pv = bound_pair("2Gi", "1Gi")
    pv["spec"]["claimRef"]["uid"] = "someone-else"
    assert not resizer.needs_resize(pvc, pv)


def test_an_interrupted_resize_is_finished() -> None:
    pvc, pv = bound_pair("2Gi", "2Gi")
    pvc["status"]["conditions"] = [{"type": "Resizing", "status": "True"}]
    assert resizer.needs_resize(pvc, pv)


def test_resize_marks_progress_then_finishes_as_external_resizer() -> None:
    pvc, _ = bound_pair("2Gi", "1Gi")
    pvc["status"]["conditions"] = [{"type": "Custom", "status": "True"}]
    started = resizer.in_progress_patch(pvc, "2Gi")["status"]
    assert started["allocatedResources"] == {"storage": "2Gi"}
    assert started["allocatedResourceStatuses"] == {"storage": "ControllerResizeInProgress"}
    assert [c["type"] for c in started["conditions"]] == ["Custom", "Resizing"]
    pvc["status"].update(started)
    done = resizer.finished_patch(pvc, 2 * GI)
    assert done["status"]["capacity"] == {"storage": "2Gi"}
    assert [c["type"] for c in done["status"]["conditions"]] == ["Custom"]
    assert done["status"]["allocatedResourceStatuses"] is None
    assert done["metadata"]["annotations"] == {names.NODE_EXPANSION_NOT_REQUIRED: "true"}


def test_merge_resize_conditions_keeps_others_and_old_resize_ones_only_on_request() -> None:
    old = [{"type": "FileSystemResizePending", "status": "True"}, {"type": "X", "status": "True"}]
    new = [{"type": "Resizing", "status": "True"}]
    kinds = lambda conditions: [c["type"] for c in conditions]  # noqa: E731
    assert kinds(resizer.merge_resize_conditions(old, new, keep_old=False)) == ["X", "Resizing"]
    kept = resizer.merge_resize_conditions(old, new, keep_old=True)
    assert kinds(kept) == ["FileSystemResizePending", "X", "Resizing"]


# --- backing files -------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> BackingStore:
    return BackingStore(tmp_path / "volumes")


def test_block_volume_is_a_sparse_file_of_the_requested_size(store: BackingStore) -> None:
    path = store.create("tenant-a", "pvc-1", BLOCK, 4 * GI)
    assert path == store.root / "tenant-a" / "pvc-1"
    assert path.stat().st_size == 4 * GI
    assert store.used_bytes(path) < 64 * 1024
    with path.open("r+b") as disk:
        disk.seek(GI)
        disk.write(b"x" * 8192)
    assert 8192 <= store.used_bytes(path) < 1024 * 1024


def test_growing_keeps_the_data_and_never_shrinks(store: BackingStore) -> None:
    path = store.create("tenant-a", "pvc-1", BLOCK, 2**20)
    with path.open("r+b") as disk:
        disk.write(b"kept")
    store.grow(path, BLOCK, 2**21)
    assert path.stat().st_size == 2**21
    store.grow(path, BLOCK, 2**20)
    assert path.stat().st_size == 2**21
    store.create("tenant-a", "pvc-1", BLOCK, 2**20)  # a retried create truncates nothing
    assert path.stat().st_size == 2**21
    assert path.read_bytes()[:4] == b"kept"


def test_filesystem_volume_is_a_directory_measured_by_its_files(store: BackingStore) -> None:
    path = store.create("tenant-a", "pvc-2", FILESYSTEM, GI)
    assert path.is_dir() and store.used_bytes(path) == 0
    (path / "disk.img").write_bytes(os.urandom(10000))
    assert store.used_bytes(path) >= 10000
    store.remove(path)
    assert not path.exists()


def test_removing_a_block_volume_deletes_its_file(store: BackingStore) -> None:
    path = store.create("tenant-a", "pvc-1", BLOCK, GI)
    other = store.create("tenant-a", "pvc-2", BLOCK, GI)
    store.remove(path)
    assert not path.exists() and other.exists()
    store.remove(path)  # already gone: fine
    store.remove(other)
    assert not (store.root / "tenant-a").exists()  # its namespace's last volume


@pytest.mark.parametrize(
    ("namespace", "volume"),
    [("..", "pvc-1"), ("tenant-a", ".."), ("tenant-a", "a/b"), ("Tenant", "pvc-1"), ("", "pvc")],
)
def test_no_name_leaves_its_namespace(store: BackingStore, namespace: str, volume: str) -> None:
    with pytest.raises(BackingError):
        store.path(namespace, volume)


def test_a_missing_block_file_cannot_grow(store: BackingStore) -> None:
    with pytest.raises(BackingError):
        store.grow(store.path("tenant-a", "pvc-9"), BLOCK, GI)
