"""RemoteRestart decisions: the steps as data, the source-stopped proof, the RWO release check,
lock names, the VM hold and its rollback, verification, termination and conditions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from lparkube.api.v1alpha1 import remoterestart as api
from lparkube.domain import remote_restart as rr
from lparkube.domain.leadership import LeaseRecord

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FENCE = {"key": api.OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}


def node(name: str, ready: bool = True, taints: list | None = None) -> dict:
    status = "True" if ready else "Unknown"
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints or []},
        "status": {"conditions": [{"type": "Ready", "status": status}]},
    }


# --- steps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("with_image", "skipped"), [(True, api.BOOTING), (False, api.RESTORING_MEMORY)]
)
def test_initial_steps_skip_the_unused_start(with_image: bool, skipped: str) -> None:
    steps = rr.steps_initial(with_image)
    assert [s["name"] for s in steps] == list(api.STEPS)
    assert {s["name"] for s in steps if s["status"] == api.SKIPPED} == {skipped}
    assert rr.progress(steps) == {"completedSteps": 1, "totalSteps": len(api.STEPS)}


def test_advance_walks_every_step_skipping_the_unused_one() -> None:
    steps = rr.start_step(rr.steps_initial(False), api.VALIDATING, NOW)
    order, current = [api.VALIDATING], api.VALIDATING
    while current is not None:
        steps, current = rr.advance(steps, current, NOW + timedelta(seconds=len(order)))
        if current:
            order.append(current)
            assert rr.step_status(steps, current) == api.RUNNING
    assert order == [s for s in api.STEPS if s != api.RESTORING_MEMORY]
    assert all(s["status"] in (api.DONE, api.SKIPPED) for s in steps)
    assert rr.progress(steps)["completedSteps"] == len(api.STEPS)
    first = steps[0]
    assert (first["startTime"], first["completionTime"]) == (
        "2026-12-01T12:00:00Z",
        "2026-12-01T12:00:01Z",
    )


def test_a_running_step_keeps_its_start_and_a_failed_one_records_why() -> None:
    steps = rr.start_step(rr.steps_initial(False), api.LOCKING_ADAPTERS, NOW)
    steps = rr.start_step(steps, api.LOCKING_ADAPTERS, NOW + timedelta(minutes=1), "waiting")
    steps = rr.fail_step(steps, api.LOCKING_ADAPTERS, NOW + timedelta(minutes=2), "gone")
    locking = steps[1]
    assert locking["startTime"] == "2026-12-01T12:00:00Z"
    assert (locking["status"], locking["message"]) == (api.FAILED, "gone")
    assert locking["completionTime"] == "2026-12-01T12:02:00Z"


@pytest.mark.parametrize(
    ("started", "expected"),
    [(None, False), (api.BOOTING, True), (api.RESTORING_MEMORY, True), (api.VERIFYING, False)],
)
def test_target_start_requested_once_booting_or_restoring_began(started, expected) -> None:
    steps = rr.steps_initial(started == api.RESTORING_MEMORY)
    if started:
        steps = rr.start_step(steps, started, NOW)
    assert rr.target_start_requested(steps) is expected


# --- the source must be proven stopped -----------------------------------------------------


def pod(node_name: str, phase: str = "Running") -> dict:
    return {
        "metadata": {"name": f"virt-launcher-web-{node_name}"},
        "spec": {"nodeName": node_name},
        "status": {"phase": phase},
    }


def vmi(node_name: str = "a", phase: str = "Running") -> dict:
    return {"status": {"phase": phase, "nodeName": node_name}}


CAPTURED = {"status": {"conditions": [{"type": "Captured", "status": "True"}]}}
SOURCE_CASES = {
    "hibernated": (dict(image=CAPTURED), None),
    "image captured but a VMI runs": (
        dict(image=CAPTURED, vmi=vmi(), pods=[pod("a")]),
        "VMI web is Running on node a (Ready)",
    ),
    "no VMI no pod": ({}, None),
    "running on a ready node": (dict(vmi=vmi(), pods=[pod("a")]), "stop VM web"),
    "node powered off, VMI failed, pod left": (
        dict(vmi=vmi(phase="Failed"), pods=[pod("a")], nodes=[node("a", False), node("b")]),
        "node a is NotReady and not fenced: taint it node.kubernetes.io/out-of-service=",
    ),
    "node fenced": (
        dict(vmi=vmi(phase="Failed"), pods=[pod("a")], nodes=[node("a", False, [FENCE])]),
        None,
    ),
    "running VMI on a fenced node": (
        dict(vmi=vmi(), pods=[pod("a")], nodes=[node("a", False, [FENCE])]),
        None,
    ),
    "a new VMI waits for its volume elsewhere": (
        dict(
            vmi=vmi("b", "Scheduled"),
            pods=[pod("a"), pod("b", "Pending")],
            nodes=[node("a", False, [FENCE]), node("b")],
        ),
        None,
    ),
    "a new VMI already runs elsewhere": (
        dict(vmi=vmi("b"), pods=[pod("b")], nodes=[node("a", False, [FENCE]), node("b")]),
        "VMI web is Running on node b",
    ),
    "source node lost and unfenced, its VMI deleted": (
        dict(nodes=[node("a", False), node("b")]),
        "node a is NotReady and not fenced",
    ),
    "source node lost and unfenced, KubeVirt's new VMI waits elsewhere": (
        dict(vmi=vmi("b", "Scheduled"), nodes=[node("a", False), node("b")]),
        "node a is NotReady and not fenced",
    ),
    "source node lost after its VMI powered off cleanly": (
        dict(vmi=vmi(phase="Succeeded"), nodes=[node("a", False), node("b")]),
        None,
    ),
    "terminated pod on the source": (dict(vmi=None, pods=[pod("a", "Failed")]), None),
    "source node object gone": (dict(pods=[pod("a")], nodes=[]), "which is gone and not fenced"),
}


@pytest.mark.parametrize("case", sorted(SOURCE_CASES))
def test_source_stopped_proof(case: str) -> None:
    fields, expected = SOURCE_CASES[case]
    fields = {"nodes": [node("a"), node("b")], **fields}
    refusal = rr.source_stop_refusal(rr.SourceView("web", "a", **fields))
    if expected is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.reason == api.WAITING_FOR_SOURCE_STOP
        assert expected in refusal.message


# --- RWO volumes ------------------------------------------------------------------------------


def claim(name: str, volume: str, modes: tuple[str, ...] = ("ReadWriteOnce",)) -> dict:
    return {"metadata": {"name": name}, "spec": {"volumeName": volume, "accessModes": list(modes)}}


def attachment(volume: str, node_name: str) -> dict:
    return {"spec": {"nodeName": node_name, "source": {"persistentVolumeName": volume}}}


@pytest.mark.parametrize(
    ("claims", "attachments", "held"),
    [
        ([claim("root", "pv-1")], [], None),
        ([claim("root", "pv-1")], [attachment("pv-1", "b")], None),
        ([claim("root", "pv-1")], [attachment("pv-1", "a")], "root on node a"),
        ([claim("root", "pv-1", ("ReadWriteMany",))], [attachment("pv-1", "a")], None),
        ([claim("root", "pv-1")], [attachment("pv-2", "a")], None),
    ],
    ids=["unattached", "on target", "on source", "shared", "other volume"],
)
def test_volume_release(claims, attachments, held) -> None:
    refusal = rr.volume_release_refusal(claims, attachments, "b")
    if held is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.reason == api.WAITING_FOR_VOLUME_RELEASE
        assert held in refusal.message


# --- locks ------------------------------------------------------------------------------------


def test_lease_names_are_dns_labels_and_stay_distinct() -> None:
    assert rr.lease_name("web-1", api.SOURCE, "disk/root") == "rr-web-1-source-disk-root"
    long_a = rr.lease_name("p" * 60, api.TARGET, "interface/default")
    long_b = rr.lease_name("p" * 60, api.TARGET, "interface/other")
    assert len(long_a) <= 63 and len(long_b) <= 63 and long_a != long_b
    odd = rr.lease_name("web", api.SOURCE, "disk/Root_Disk")
    assert odd.startswith("rr-web-source-disk-root-disk-") and len(odd) <= 63


def test_locks_cover_every_adapter_on_both_sides() -> None:
    locks = rr.locks_for("web", [{"id": "disk/root"}, {"id": "interface/default"}])
    assert {(lock.adapter_id, lock.side) for lock in locks} == {
        ("disk/root", "Source"),
        ("disk/root", "Target"),
        ("interface/default", "Source"),
        ("interface/default", "Target"),
    }


@pytest.mark.parametrize(
    ("record", "live"),
    [
        (LeaseRecord("t", 60, NOW, NOW), True),
        (LeaseRecord("t", 60, NOW - timedelta(minutes=2), NOW - timedelta(minutes=2)), False),
        (LeaseRecord("", 60, NOW, NOW), False),
        (LeaseRecord("t", 60, NOW - timedelta(minutes=2), None), False),
    ],
)
def test_lease_live(record: LeaseRecord, live: bool) -> None:
    assert rr.lease_live(record, NOW) is live


# --- the VM hold ------------------------------------------------------------------------------


def held_vm(**spec: object) -> dict:
    template = {"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]}}}
    return {
        "metadata": {"name": "web", "namespace": "t", "resourceVersion": "7"},
        "spec": {"runStrategy": "Always", "template": {"spec": {**template, **spec}}},
    }


ADAPTERS = [
    {"id": "interface/default", "type": "Interface", "name": "default",
     "source": {"network": "pod"}, "macAddress": "02:00:00:00:00:01"},
    {"id": "disk/data", "type": "Disk", "name": "data", "source": {"claimName": "data"},
     "bus": "virtio", "serial": "data-1"},
]  # fmt: skip


def test_hold_patch_records_what_the_vm_had_and_pins_it() -> None:
    vm = held_vm(nodeSelector={"zone": "z1"})
    ops = rr.hold_patch(vm, "tok", "b", ADAPTERS)
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    by_path = {op["path"]: op for op in ops}
    hold = json.loads(by_path["/metadata/annotations"]["value"][api.HOLD_ANNOTATION])
    assert hold == {"token": "tok", "runStrategy": "Always", "nodeSelector": {"zone": "z1"}}
    assert by_path["/metadata/labels"]["value"] == {api.OPERATION_TOKEN_LABEL: "tok"}
    assert by_path["/spec/runStrategy"]["value"] == "Halted"
    selector = by_path["/spec/template/spec/nodeSelector"]["value"]
    assert selector == {"zone": "z1", "kubernetes.io/hostname": "b"}
    nics = by_path["/spec/template/spec/domain/devices/interfaces"]["value"]
    assert nics[0]["macAddress"] == "02:00:00:00:00:01"
    disk = by_path["/spec/template/spec/domain/devices/disks/-"]["value"]
    assert disk == {"name": "data", "disk": {"bus": "virtio"}, "serial": "data-1"}
    volume = by_path["/spec/template/spec/volumes/-"]["value"]
    assert volume == {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}


def test_hold_patch_keeps_a_halted_vm_halted_and_an_own_hold() -> None:
    vm = held_vm()
    vm["spec"]["runStrategy"] = "Halted"
    hold = rr.Hold("tok", "Halted", None)
    vm["metadata"]["annotations"] = {api.HOLD_ANNOTATION: hold.encode()}
    paths = [op["path"] for op in rr.hold_patch(vm, "tok", "b", ADAPTERS[:1])]
    assert "/spec/runStrategy" not in paths
    assert not [p for p in paths if p.startswith("/metadata/annotations")]
    assert rr.hold_of(vm) == hold


@pytest.mark.parametrize(
    ("case", "strategy", "vmi_", "nodes", "wanted"),
    [
        ("lost node, Always", "Always", vmi(), [node("a", False)], True),
        ("VMI failed, RerunOnFailure", "RerunOnFailure", vmi(phase="Failed"), [node("a")], True),
        ("no VMI, Always", "Always", None, [node("a")], True),
        ("running on a Ready node", "Always", vmi(), [node("a")], False),
        ("Manual: KubeVirt starts nothing by itself", "Manual", None, [node("a", False)], False),
    ],
)
def test_the_vm_is_held_while_waiting_only_when_kubevirt_would_start_it_itself(
    case: str, strategy: str, vmi_: dict | None, nodes: list, wanted: bool
) -> None:
    vm = held_vm()
    vm["spec"]["runStrategy"] = strategy
    view = rr.SourceView("web", "a", vmi=vmi_, nodes=nodes)
    assert rr.source_hold_wanted(view, vm) is wanted, case


def test_the_source_hold_records_the_vm_and_halts_it_without_pinning() -> None:
    vm = held_vm(nodeSelector={"zone": "z1"})
    by_path = {op["path"]: op for op in rr.source_hold_patch(vm, "tok")}
    assert by_path["/metadata/resourceVersion"]["op"] == "test"
    hold = json.loads(by_path["/metadata/annotations"]["value"][api.HOLD_ANNOTATION])
    assert hold == {"token": "tok", "runStrategy": "Always", "nodeSelector": {"zone": "z1"}}
    assert by_path["/spec/runStrategy"]["value"] == "Halted"
    assert not [p for p in by_path if p.startswith("/spec/template")]
    vm["metadata"]["annotations"] = {api.HOLD_ANNOTATION: rr.Hold("tok", "Always", None).encode()}
    assert not rr.source_hold_wanted(rr.SourceView("web", "a"), vm), "held once"


@pytest.mark.parametrize(
    ("recorded", "current", "expected"),
    [
        (None, {"kubernetes.io/hostname": "b"}, None),
        ({"zone": "z1"}, {"zone": "z1", "kubernetes.io/hostname": "b"},
         {"zone": "z1", "kubernetes.io/hostname": None}),
    ],
)  # fmt: skip
def test_release_patch_restores_the_recorded_node_selector(recorded, current, expected) -> None:
    vm = held_vm(nodeSelector=current)
    patch = rr.release_patch(vm, rr.Hold("tok", "Always", recorded), None)
    assert patch["spec"]["template"]["spec"]["nodeSelector"] == expected
    assert patch["metadata"]["annotations"] == {api.HOLD_ANNOTATION: None}
    assert patch["metadata"]["labels"] == {api.OPERATION_TOKEN_LABEL: None}
    assert "runStrategy" not in patch["spec"]


@pytest.mark.parametrize(
    ("started", "stop_vmi", "strategy"),
    [
        (None, False, "Always"),
        (api.BOOTING, True, "Halted"),
        (api.RESTORING_MEMORY, True, "Halted"),
    ],
)
def test_rollback_never_runs_the_partition_twice(started, stop_vmi, strategy) -> None:
    steps = rr.steps_initial(started == api.RESTORING_MEMORY)
    if started:
        steps = rr.start_step(steps, started, NOW)
    plan = rr.rollback_plan(rr.Hold("tok", "Always", None), steps)
    assert (plan.stop_vmi, plan.run_strategy) == (stop_vmi, strategy)


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [("Always", ("Always", False)), ("RerunOnFailure", ("RerunOnFailure", False)),
     ("Manual", ("Manual", True)), ("Halted", ("Manual", True))],
)  # fmt: skip
def test_boot_run_strategy(recorded: str, expected: tuple) -> None:
    assert rr.boot_run_strategy(rr.Hold("t", recorded, None)) == expected


def test_an_unreadable_hold_is_none() -> None:
    vm = held_vm()
    vm["metadata"]["annotations"] = {api.HOLD_ANNOTATION: "{not json"}
    assert rr.hold_of(vm) is None
    assert rr.hold_of(held_vm()) is None


# --- verification -----------------------------------------------------------------------------


def partition(
    connected: bool = True, heard: str = "2026-12-01T12:00:05Z", boot: str = "b1"
) -> dict:
    condition = {"type": "AgentConnected", "status": "True" if connected else "False"}
    agent = {"lastHeartbeatTime": heard, "bootId": boot}
    return {"status": {"conditions": [condition], "agent": agent}}


IMAGE = {"status": {"bootId": "b1"}}
VERIFY_CASES = {
    "running, agent heard since": (vmi("b"), partition(), None, "done"),
    "pending": (vmi("b", "Scheduled"), partition(), None, "waiting for the VMI"),
    "absent": (None, partition(), None, "absent"),
    "failed": (vmi("b", "Failed"), partition(), None, api.TARGET_START_FAILED),
    "running elsewhere": (vmi("c"), partition(), None, api.TARGET_START_FAILED),
    "agent not connected": (vmi("b"), partition(False), None, "agent's first report"),
    "agent heard before the start": (
        vmi("b"), partition(heard="2026-12-01T11:59:00Z"), None, "agent's first report",
    ),
    "resumed same boot": (vmi("b"), partition(), IMAGE, "done"),
    "the source's failed VMI, made before the start": (
        {**vmi("a", "Failed"), "metadata": {"creationTimestamp": "2026-12-01T11:00:00Z"}},
        partition(), None, "waiting for a new VMI",
    ),
    "a new failed VMI": (
        {**vmi("b", "Failed"), "metadata": {"creationTimestamp": "2026-12-01T12:00:00Z"}},
        partition(), None, api.TARGET_START_FAILED,
    ),
    "resumed other boot": (vmi("b"), partition(boot="b2"), IMAGE, api.BOOT_ID_CHANGED),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(VERIFY_CASES))
def test_verify(case: str) -> None:
    the_vmi, the_partition, image, expected = VERIFY_CASES[case]
    outcome = rr.verify(the_vmi, the_partition, "b", NOW, image)
    if expected == "done":
        assert outcome.done and outcome.refusal is None
    elif expected in api.FAILURE_REASONS:
        assert outcome.refusal is not None and outcome.refusal.reason == expected
    else:
        assert not outcome.done and outcome.refusal is None and expected in outcome.message


# --- termination and conditions ---------------------------------------------------------------


def restart(**spec: object) -> dict:
    meta = {"name": "r", "namespace": "t", "creationTimestamp": "2026-12-01T11:50:00Z"}
    return {"metadata": meta, "spec": {"partitionName": "web", **spec}}


@pytest.mark.parametrize(
    ("spec", "step", "reason"),
    [
        ({}, api.BOOTING, None),
        ({"stop": "Failed"}, api.BOOTING, api.STOPPED_BY_USER),
        ({"stop": "Succeeded"}, api.BOOTING, None),
        ({"deadline": "5m"}, api.BOOTING, api.DEADLINE_EXCEEDED),
        ({"deadline": "5m"}, api.LOCKING_ADAPTERS, api.SOURCE_NOT_STOPPED),
    ],
)
def test_termination_cause(spec: dict, step: str, reason: str | None) -> None:
    cause = rr.termination_cause(restart(**spec), NOW, step)
    assert (cause.reason if cause else None) == reason


def test_deadline_and_lock_timeout_defaults() -> None:
    assert rr.deadline_time(restart()) == datetime(2026, 12, 1, 12, 5, tzinfo=UTC)
    assert rr.lock_seconds(restart(), None) == 300
    assert rr.lock_seconds(restart(), {"spec": {"lockTimeout": "1m"}}) == 60
    assert rr.lock_seconds(restart(lockTimeout="10s"), {"spec": {"lockTimeout": "1m"}}) == 10


def conditions(steps, **kwargs) -> dict:
    return {c.type: (c.status, c.reason) for c in rr.conditions_from(steps, **kwargs)}


def test_conditions_follow_the_steps() -> None:
    steps = rr.start_step(rr.steps_initial(False), api.LOCKING_ADAPTERS, NOW)
    waiting = rr.Refusal(api.WAITING_FOR_SOURCE_STOP, "node a is NotReady")
    assert conditions(steps, waiting=waiting) == {
        api.LOCKED: ("False", api.WAITING_FOR_SOURCE_STOP),
        api.ADAPTERS_CONFIGURED: ("False", api.IN_PROGRESS),
        api.RESTORED: ("False", api.IN_PROGRESS),
        api.COMPLETE: ("False", api.IN_PROGRESS),
    }
    for name in api.STEPS:
        if rr.step_status(steps, name) != api.SKIPPED:
            steps = rr.complete_step(steps, name, NOW)
    done = conditions(steps, termination=api.RESTART_SUCCEEDED)
    assert done[api.COMPLETE] == ("True", api.RESTART_SUCCEEDED)
    assert done[api.RESTORED][0] == done[api.ADAPTERS_CONFIGURED][0] == "True"
    assert done[api.LOCKED][0] == "False"
    failure = rr.Refusal(api.TARGET_START_FAILED, "the VMI failed")
    failed = conditions(steps, termination=api.RESTART_FAILED, failure=failure)
    assert failed[api.COMPLETE] == ("False", api.TARGET_START_FAILED)


def test_every_reason_is_unique_and_camel_case() -> None:
    assert len(set(api.FAILURE_REASONS)) == len(api.FAILURE_REASONS)
    assert all(r[0].isupper() and r.isalnum() for r in api.FAILURE_REASONS)


@pytest.mark.parametrize(
    ("record", "action"),
    [
        (None, rr.CREATE),
        (LeaseRecord("tok", 60, NOW, NOW - timedelta(seconds=5)), rr.KEEP),
        (LeaseRecord("tok", 60, NOW, NOW - timedelta(seconds=30)), rr.RENEW),
        (LeaseRecord("tok", 60, NOW, NOW - timedelta(minutes=5)), rr.RENEW),
        (LeaseRecord("tok", 10, NOW, NOW), rr.RENEW),  # lockTimeout grew
        (LeaseRecord("other", 60, NOW, NOW), rr.REFUSE),
        (LeaseRecord("other", 60, NOW, NOW - timedelta(minutes=2)), rr.TAKE_OVER),
        (LeaseRecord("", 60, NOW, NOW), rr.TAKE_OVER),
    ],
    ids=["none", "fresh", "third gone", "ours expired", "shorter", "live", "expired", "free"],
)
def test_lock_action(record: LeaseRecord | None, action: str) -> None:
    assert rr.lock_action(record, "tok", NOW, 60) == action
