"""Attach/detach's pure parts: the attach log checker, pod readiness, the kubelets' mounts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lparkube_devenv.kubevirt.fake import FakeKube
from lparkube_devenv.kubevirt.storage import names, two_writers
from lparkube_devenv.kubevirt.storage.attacher import holders_elsewhere, sync_attachments
from lparkube_devenv.kubevirt.storage.attachlog import AttachLog, find_two_writers, read_entries
from lparkube_devenv.kubevirt.storage.kubelet import Kubelets, node_annotations
from lparkube_devenv.kubevirt.storage.readiness import (
    NOT_IN_USE,
    AttachState,
    claim_names,
    volume_ready,
)
from lparkube_devenv.kubevirt.storage.world import StorageWorld

RWO, RWX = ["ReadWriteOnce"], ["ReadWriteMany"]
PV = "pvc-1"
UNIQUE = names.unique_volume_name(names.DRIVER, PV)


def entry(event: str, node: str, modes: list[str] = RWO, pv: str = PV) -> dict:
    return {
        "time": f"t-{node}-{event}",
        "event": event,
        "pv": pv,
        "node": node,
        "accessModes": modes,
    }


# --- the attach log ------------------------------------------------------------------------------


def test_a_planted_second_writer_is_found(tmp_path: Path) -> None:
    log = AttachLog(tmp_path / "attach.log")
    log.append("attach", volume=PV, node="node-a", access_modes=RWO, pods=["ns/a"])
    log.append("attach", volume=PV, node="node-b", access_modes=RWO, pods=["ns/b"])
    log.append("detach", volume=PV, node="node-a", access_modes=RWO)
    [violation] = two_writers(log.path)
    assert violation.volume == PV
    assert violation.nodes == ("node-a", "node-b")
    assert violation.line == 2
    assert violation.time == read_entries(log.path)[1]["time"]


def test_handing_over_after_a_detach_is_no_violation() -> None:
    entries = [
        entry("attach", "a"),
        entry("refused", "b"),
        entry("detach", "a"),
        entry("attach", "b"),
    ]
    assert find_two_writers(entries) == []


def test_rwx_volumes_may_have_many_writers_and_volumes_are_independent() -> None:
    assert find_two_writers([entry("attach", "a", RWX), entry("attach", "b", RWX)]) == []
    other = [entry("attach", "a"), entry("attach", "b", pv="pvc-2")]
    assert find_two_writers(other) == []


def test_reattaching_on_the_same_node_is_no_violation() -> None:
    assert find_two_writers([entry("attach", "a"), entry("attach", "a")]) == []


def test_log_lines_are_json_with_what_a_reader_needs(tmp_path: Path) -> None:
    log = AttachLog(tmp_path / "sub" / "attach.log")
    log.append("refused", volume=PV, node="b", access_modes=RWO, claim="ns/disk", message="m")
    [line] = (tmp_path / "sub" / "attach.log").read_text().splitlines()
    record = json.loads(line)
    assert {"time", "event", "pv", "claim", "node", "pods", "accessModes", "message"} <= set(record)
    assert two_writers(tmp_path / "absent.log") == []


# --- the attacher's own refusal ------------------------------------------------------------------


def attachment(node: str, attached: bool = True, finalizer: bool = True) -> dict:
    meta = {"name": f"va-{node}", "finalizers": [names.ATTACHER_FINALIZER] if finalizer else []}
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "source": {"persistentVolumeName": PV}},
        "status": {"attached": attached},
    }


def test_the_attacher_refuses_a_single_node_volume_published_elsewhere() -> None:
    mine = attachment("b", attached=False, finalizer=False)
    volume = {"metadata": {"name": PV}, "spec": {"accessModes": RWO}}
    world = StorageWorld(attachments=[attachment("a"), mine])
    assert holders_elsewhere(mine, volume, world) == ["a"]
    detaching = StorageWorld(attachments=[attachment("a", attached=False), mine])
    assert holders_elsewhere(mine, volume, detaching) == ["a"]  # finalizer still held
    released = StorageWorld(attachments=[attachment("a", False, False), mine])
    assert holders_elsewhere(mine, volume, released) == []
    shared = {"metadata": {"name": PV}, "spec": {"accessModes": RWX}}
    assert holders_elsewhere(mine, shared, world) == []


# --- pod readiness -------------------------------------------------------------------------------


def pod(node: str | None = "node-b") -> dict:
    return {
        "metadata": {"name": "launcher", "namespace": "ns", "uid": "p1"},
        "spec": {
            "nodeName": node,
            "volumes": [
                {"name": "disk", "persistentVolumeClaim": {"claimName": "disk"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {}}},
                {"name": "cfg", "configMap": {"name": "c"}},
            ],
        },
    }


def bound(name: str, volume: str) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"volumeName": volume},
        "status": {"phase": "Bound"},
    }


def csi_volume(name: str) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"csi": {"driver": names.DRIVER, "volumeHandle": name}},
    }


def node(attached: list[str], in_use: tuple[str, ...] = (UNIQUE,)) -> dict:
    return {
        "metadata": {"name": "node-b"},
        "status": {"volumesAttached": [{"name": n} for n in attached], "volumesInUse": in_use},
    }


CLAIMS = {"disk": bound("disk", PV), "launcher-scratch": bound("launcher-scratch", "local-1")}
VOLUMES = {PV: csi_volume(PV), "local-1": {"metadata": {"name": "local-1"}, "spec": {"local": {}}}}


def test_claims_of_a_pod_include_generic_ephemeral_volumes() -> None:
    assert claim_names(pod()) == ["disk", "launcher-scratch"]


def test_ready_once_the_node_lists_the_volume_attached() -> None:
    ready = volume_ready(pod(), AttachState(CLAIMS, VOLUMES, node([UNIQUE])))
    assert ready.ok and ready.reason == "Attached"


def test_not_ready_before_scheduling_binding_or_attaching() -> None:
    assert volume_ready(pod(None), AttachState(CLAIMS, VOLUMES, None)).reason == "Unscheduled"
    missing = volume_ready(pod(), AttachState({}, VOLUMES, node([])))
    assert (missing.ok, missing.reason) == (False, "ClaimNotFound")
    pending = {**CLAIMS, "disk": {"metadata": {"name": "disk"}, "status": {"phase": "Pending"}}}
    assert volume_ready(pod(), AttachState(pending, VOLUMES, node([]))).reason == "ClaimPending"
    waiting = volume_ready(pod(), AttachState(CLAIMS, VOLUMES, node([])))
    assert (waiting.ok, waiting.reason) == (False, "Attaching")


def test_an_attached_volume_is_not_ready_before_the_kubelet_reports_it_in_use() -> None:
    state = AttachState(CLAIMS, VOLUMES, node([UNIQUE], in_use=()))
    assert tuple(volume_ready(pod(), state)) == (False, "NotInUse", NOT_IN_USE)


def test_multi_attach_refusal_is_reported_with_the_controllers_message() -> None:
    message = f'Multi-Attach error for volume "{PV}" Volume is already used by pod(s) old'
    events = [{"reason": "FailedAttachVolume", "message": message}]
    state = AttachState(CLAIMS, VOLUMES, node([]), [attachment("node-a")], events)
    assert tuple(volume_ready(pod(), state)) == (False, "MultiAttach", message)
    after_release = AttachState(CLAIMS, VOLUMES, node([]), [], events)
    assert volume_ready(pod(), after_release).reason == "Attaching"


def test_an_attach_error_is_reported() -> None:
    mine = names.attachment_name(PV, names.DRIVER, "node-b")
    failed = {"metadata": {"name": mine}, "spec": {"nodeName": "node-b"}, "status": {}}
    failed["status"]["attachError"] = {"message": "rpc error: boom"}
    state = AttachState(CLAIMS, VOLUMES, node([]), [failed])
    assert tuple(volume_ready(pod(), state)) == (False, "AttachFailed", "rpc error: boom")


# --- the kubelets' part --------------------------------------------------------------------------


def test_kubelet_annotations_are_added_once() -> None:
    fresh = {
        "metadata": {"name": "node-a", "annotations": {names.NODE_ID_ANNOTATION: '{"x": "1"}'}}
    }
    wanted = node_annotations(fresh)
    assert wanted is not None
    assert wanted[names.CONTROLLER_MANAGED_ATTACH] == "true"
    assert json.loads(wanted[names.NODE_ID_ANNOTATION]) == {"x": "1", names.DRIVER: "node-a"}
    fresh["metadata"]["annotations"].update(wanted)
    assert node_annotations(fresh) is None


@pytest.fixture
def kube() -> FakeKube:
    fake = FakeKube()
    for name in ("node-a", "node-b"):
        fake.put(f"/api/v1/nodes/{name}", {"metadata": {"name": name}, "status": {}})
    for name in ("one", "two"):
        fake.put(
            f"/api/v1/namespaces/ns/pods/{name}", {**pod("node-a"), "metadata": {"name": name}}
        )
    fake.put("/api/v1/namespaces/ns/persistentvolumeclaims/disk", CLAIMS["disk"])
    fake.put(f"/api/v1/persistentvolumes/{PV}", VOLUMES[PV])
    return fake


def in_use(kube: FakeKube, node_name: str = "node-a") -> list[str]:
    return (kube.get(f"/api/v1/nodes/{node_name}") or {})["status"].get("volumesInUse") or []


def test_volumes_stay_in_use_until_the_last_pod_on_the_node_unmounts(kube: FakeKube) -> None:
    kubelets = Kubelets()
    assert kubelets.mount(kube, "ns", "one") and kubelets.mount(kube, "ns", "two")  # type: ignore[arg-type]
    assert in_use(kube) == [UNIQUE]
    assert kubelets.unmount(kube, "ns", "one")  # type: ignore[arg-type]
    assert in_use(kube) == [UNIQUE]
    assert kubelets.unmount(kube, "ns", "two")  # type: ignore[arg-type]
    assert in_use(kube) == []


def test_a_powered_off_kubelet_unmounts_nothing_until_it_boots_empty(kube: FakeKube) -> None:
    kubelets = Kubelets()
    kubelets.mount(kube, "ns", "one")  # type: ignore[arg-type]
    kubelets.power_off("node-a")
    assert not kubelets.unmount(kube, "ns", "one")  # type: ignore[arg-type]
    assert not kubelets.mount(kube, "ns", "two")  # type: ignore[arg-type]
    assert in_use(kube) == [UNIQUE]
    kubelets.power_on(kube, "node-a")  # type: ignore[arg-type]
    assert in_use(kube) == []


def test_a_pod_back_on_another_node_leaves_the_dead_nodes_mount_alone(kube: FakeKube) -> None:
    kubelets = Kubelets()
    kubelets.mount(kube, "ns", "one")  # type: ignore[arg-type]
    kubelets.power_off("node-a")
    moved = kube.get("/api/v1/namespaces/ns/pods/one") or {}
    moved["spec"]["nodeName"] = "node-b"
    kube.put("/api/v1/namespaces/ns/pods/one", moved)  # a new launcher, same name
    assert kubelets.mount(kube, "ns", "one")  # type: ignore[arg-type]
    assert in_use(kube, "node-b") == [UNIQUE] and in_use(kube, "node-a") == [UNIQUE]
    assert kubelets.unmount(kube, "ns", "one", "node-b")  # type: ignore[arg-type]
    assert in_use(kube, "node-b") == [] and in_use(kube, "node-a") == [UNIQUE]
    assert not kubelets.unmount(kube, "ns", "one")  # type: ignore[arg-type]


class AttacherHost:
    """The parts of ThinStorage the attacher uses, over an in-memory API."""

    def __init__(self, kube: FakeKube):
        self.kube = kube
        self.records: list[tuple[str, str]] = []
        self.refusals_seen: set = set()

    def guard(self, step, *args) -> None:
        step(self, *args)

    def wrote(self) -> None:
        pass

    def record(self, event: str, attachment: dict, volume: dict, message: str = "") -> None:
        self.records.append((event, attachment["spec"]["nodeName"]))


def test_two_new_attachments_of_one_rwo_volume_in_one_pass_publish_only_one() -> None:
    kube = FakeKube()
    volume = {"metadata": {"name": PV, "finalizers": [names.ATTACHER_FINALIZER]}}
    volume["spec"] = {"accessModes": RWO, "csi": {"driver": names.DRIVER, "volumeHandle": PV}}
    kube.put(f"{names.VOLUMES_PATH}/{PV}", volume)
    for node_name in ("node-a", "node-b"):
        body = attachment(node_name, attached=False, finalizer=False)
        body["spec"]["attacher"] = names.DRIVER
        kube.put(f"{names.ATTACHMENTS_PATH}/va-{node_name}", body)
    host = AttacherHost(kube)
    world = StorageWorld(
        volumes={PV: kube.get(f"{names.VOLUMES_PATH}/{PV}")},
        attachments=kube.items(names.ATTACHMENTS_PATH),
    )
    sync_attachments(host, world)  # type: ignore[arg-type]
    assert host.records == [("attach", "node-a"), ("refused", "node-b")]
    attached = {
        name: (kube.get(f"{names.ATTACHMENTS_PATH}/va-{name}") or {})["status"].get("attached")
        for name in ("node-a", "node-b")
    }
    assert attached == {"node-a": True, "node-b": False}
    refused = (kube.get(f"{names.ATTACHMENTS_PATH}/va-node-b") or {})["status"]["attachError"]
    assert "FailedPrecondition" in refused["message"] and "node-a" in refused["message"]
