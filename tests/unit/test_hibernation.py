"""HibernationImage decisions: refusals, the adapter configuration, capture and resume outcomes."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from lparkube.domain import hibernation as h

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def vm() -> dict:
    return {
        "metadata": {"name": "web", "namespace": "tenant-a"},
        "spec": {
            "template": {
                "spec": {
                    "domain": {
                        "machine": {"type": "q35"},
                        "memory": {"guest": "512Mi"},
                        "cpu": {"cores": 1},
                        "devices": {
                            "disks": [
                                {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
                                {
                                    "name": "lparkube-paging",
                                    "serial": "lparkube-paging",
                                    "disk": {},
                                },
                                {"name": "seed", "cdrom": {"bus": "sata"}},
                            ],
                            "interfaces": [{"name": "default", "masquerade": {}}],
                        },
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [
                        {"name": "root", "containerDisk": {"image": "debian:12"}},
                        {"name": "lparkube-paging", "persistentVolumeClaim": {"claimName": "lu-1"}},
                        {"name": "seed", "cloudInitNoCloud": {"userData": "#cloud-config"}},
                    ],
                }
            }
        },
    }


def vmi(phase: str = "Running") -> dict:
    return {
        "status": {
            "phase": phase,
            "interfaces": [{"name": "default", "mac": "02:00:00:aa:bb:cc"}],
        }
    }


def partition(**status: object) -> dict:
    base = {
        "conditions": [{"type": "AgentConnected", "status": "True"}],
        "paging": {"claimName": "lu-1", "size": "640Mi"},
        "agent": {"paging": {"active": True}, "bootId": "boot-1"},
    }
    return {"metadata": {"name": "web", "namespace": "tenant-a"}, "status": {**base, **status}}


def image(name: str = "web-hib", **status: object) -> dict:
    return {
        "metadata": {
            "name": name,
            "namespace": "tenant-a",
            "uid": f"uid-{name}",
            "creationTimestamp": "2026-12-01T11:59:00Z",
        },
        "spec": {"partitionName": "web"},
        "status": dict(status),
    }


def persistent_vm() -> dict:
    """vm() with its root on a PVC: a containerDisk does not outlive the VMI."""
    machine = vm()
    volumes = machine["spec"]["template"]["spec"]["volumes"]
    volumes[0] = {"name": "root", "persistentVolumeClaim": {"claimName": "root"}}
    return machine


def view(**changes: object) -> h.HibernationView:
    base = {"image": image(), "partition": partition(), "vm": persistent_vm(), "vmi": vmi()}
    fields = {**base, **changes}
    return h.HibernationView(**fields)


# --- refusals ----------------------------------------------------------------------------------


def test_a_running_partition_with_an_active_paging_lu_may_hibernate() -> None:
    assert h.capture_refusal(view()) is None


def test_a_disk_that_does_not_outlive_the_vmi_is_refused() -> None:
    refusal = h.capture_refusal(view(vm=vm()))  # root: a containerDisk
    assert refusal.reason == h.EPHEMERAL_DISK
    assert "root (containerDisk)" in refusal.message
    machine = persistent_vm()
    spec = machine["spec"]["template"]["spec"]
    spec["volumes"].append({"name": "scratch", "emptyDisk": {"capacity": "1Gi"}})
    assert h.capture_refusal(view(vm=machine)) is None  # a volume no disk uses is harmless
    spec["domain"]["devices"]["disks"].append({"name": "scratch", "disk": {}})
    assert "scratch (emptyDisk)" in h.capture_refusal(view(vm=machine)).message


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"partition": None}, h.PARTITION_NOT_FOUND),
        ({"partition": partition(paging=None)}, h.NO_PAGING_LU),
        ({"vmi": None}, h.VM_NOT_RUNNING),
        ({"vmi": vmi("Scheduling")}, h.VM_NOT_RUNNING),
        ({"partition": partition(conditions=[])}, h.AGENT_NOT_CONNECTED),
        ({"partition": partition(agent={"paging": {"active": False}})}, h.PAGING_INACTIVE),
    ],
)
def test_each_unsafe_request_is_refused_with_its_reason(changes: dict, reason: str) -> None:
    refusal = h.capture_refusal(view(**changes))
    assert refusal is not None and refusal.reason == reason
    assert refusal.message


def test_a_partition_being_deleted_is_refused() -> None:
    deleting = partition()
    deleting["metadata"]["deletionTimestamp"] = "2026-12-01T11:00:00Z"
    assert h.capture_refusal(view(partition=deleting)).reason == h.PARTITION_DELETING


def test_the_first_failing_check_wins() -> None:
    refusal = h.capture_refusal(view(partition=partition(paging=None, conditions=[]), vmi=None))
    assert refusal.reason == h.NO_PAGING_LU


def captured(resumed: str | None = None) -> list[dict]:
    conditions = [{"type": h.CAPTURED, "status": "True", "reason": h.IMAGE_CAPTURED}]
    if resumed:
        conditions.append({"type": h.RESUMED, "status": resumed})
    return conditions


@pytest.mark.parametrize(
    ("conditions", "holds"),
    [
        ([], True),  # new, under way
        ([{"type": h.CAPTURED, "status": "False", "reason": h.IN_PROGRESS}], True),
        (captured(), True),  # captured, not resumed
        (captured(resumed="False"), True),
        (captured(resumed="True"), False),
        ([{"type": h.CAPTURED, "status": "False", "reason": h.GUEST_FAILED}], False),
    ],
)
def test_another_image_holds_the_partition_until_resumed_or_failed(
    conditions: list, holds: bool
) -> None:
    other = image("older", conditions=conditions)
    refusal = h.capture_refusal(view(siblings=[other]))
    assert (refusal is not None and refusal.reason == h.ALREADY_HIBERNATED) is holds


def test_the_image_needs_memory_plus_a_margin() -> None:
    assert h.image_bytes_needed(512 * 2**20) == 512 * 2**20 + h.IMAGE_MARGIN_BYTES


def test_deadline_counts_from_creation() -> None:
    made = image()
    made["spec"]["deadline"] = "30s"
    assert not h.past_deadline(made, datetime(2026, 12, 1, 11, 59, 29, tzinfo=UTC))
    assert h.past_deadline(made, datetime(2026, 12, 1, 11, 59, 30, tzinfo=UTC))
    assert not h.past_deadline(image(), NOW)  # default 10m


# --- adapters ----------------------------------------------------------------------------------


def test_adapters_are_every_disk_and_interface_with_what_a_restore_needs() -> None:
    adapters = {a["id"]: a for a in h.capture_adapters(vm(), vmi())}
    assert sorted(adapters) == [
        "disk/lparkube-paging",
        "disk/root",
        "disk/seed",
        "interface/default",
    ]
    assert adapters["disk/root"] == {
        "id": "disk/root",
        "type": "Disk",
        "name": "root",
        "source": {"volume": "containerDisk/debian:12"},
        "bus": "virtio",
        "serial": "",
        "bootOrder": 1,
        "clientNamespace": "tenant-a",
    }
    assert adapters["disk/lparkube-paging"]["source"] == {"claimName": "lu-1"}
    assert adapters["disk/lparkube-paging"]["serial"] == "lparkube-paging"
    assert adapters["disk/seed"]["bus"] == "cdrom/sata"
    assert adapters["disk/seed"]["source"] == {"volume": "cloudInitNoCloud"}
    nic = adapters["interface/default"]
    assert (nic["macAddress"], nic["model"], nic["source"]) == (
        "02:00:00:aa:bb:cc",
        "virtio",
        {"network": "pod"},
    )


def test_an_unchanged_vm_has_no_configuration_changes_once_its_macs_are_pinned() -> None:
    machine = vm()
    adapters = h.capture_adapters(machine, vmi())
    interfaces = h.pinned_macs_patch(machine, adapters)
    assert interfaces == [{"name": "default", "masquerade": {}, "macAddress": "02:00:00:aa:bb:cc"}]
    machine["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] = interfaces
    assert h.pinned_macs_patch(machine, adapters) is None
    assert h.configuration_changes(adapters, h.capture_machine(machine), machine) == []


def changed(edit) -> list[str]:
    before = vm()
    before["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"] = "m1"
    adapters, machine = h.capture_adapters(before, None), h.capture_machine(before)
    after = copy.deepcopy(before)
    edit(after["spec"]["template"]["spec"])
    return h.configuration_changes(adapters, machine, after)


def test_each_kind_of_change_is_named() -> None:
    def serial(spec: dict) -> None:
        spec["domain"]["devices"]["disks"][0]["serial"] = "other"

    def claim(spec: dict) -> None:
        spec["volumes"][1]["persistentVolumeClaim"]["claimName"] = "lu-2"

    def memory(spec: dict) -> None:
        spec["domain"]["memory"]["guest"] = "1Gi"

    def mac(spec: dict) -> None:
        spec["domain"]["devices"]["interfaces"][0]["macAddress"] = "m2"

    def removed(spec: dict) -> None:
        spec["domain"]["devices"]["disks"].pop(2)

    def added(spec: dict) -> None:
        spec["domain"]["devices"]["disks"].append({"name": "extra", "disk": {}})

    def kernel_boot(spec: dict) -> None:
        spec["domain"]["firmware"] = {"kernelBoot": {"kernelArgs": "quiet"}}

    assert changed(serial) == ["disk/root serial changed from '' to 'other'"]
    assert changed(claim) == [
        "disk/lparkube-paging source changed from {'claimName': 'lu-1'} to {'claimName': 'lu-2'}"
    ]
    assert changed(memory) == ["memory changed from '512Mi' to '1Gi'"]
    assert changed(mac) == ["interface/default macAddress changed from 'm1' to 'm2'"]
    assert changed(removed) == ["disk/seed was removed"]
    assert changed(added) == ["disk/extra was added"]
    assert changed(kernel_boot)[0].startswith("firmware changed from '{}'")


# --- capture and resume outcomes ---------------------------------------------------------------


def agent_run(state: str, run_id: str = "uid-web-hib", **fields: object) -> dict:
    return partition(agent={"hibernation": {"id": run_id, "state": state, **fields}})


def test_captured_only_once_the_guest_powered_off() -> None:
    waiting = h.power_off_outcome(view(partition=agent_run("Hibernating")), NOW)
    assert not waiting.done and waiting.condition.reason == h.IN_PROGRESS
    done = h.power_off_outcome(view(partition=agent_run("Hibernating"), vmi=vmi("Succeeded")), NOW)
    assert done.done and done.condition.status == "True"
    assert done.condition.reason == h.IMAGE_CAPTURED


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"partition": agent_run("Failed", message="ENOSPC")}, h.GUEST_FAILED),
        ({"vmi": vmi("Failed")}, h.GUEST_FAILED),
        ({"vmi": None}, h.GUEST_FAILED),
    ],
)
def test_a_guest_that_failed_is_never_captured(changes: dict, reason: str) -> None:
    outcome = h.power_off_outcome(view(**changes), NOW)
    assert outcome.done and outcome.condition.status == "False"
    assert outcome.condition.reason == reason


def test_another_images_run_is_not_this_ones() -> None:
    other = view(partition=agent_run("Failed", run_id="uid-other"))
    assert other.agent_hibernation == {}
    assert not h.power_off_outcome(other, NOW).done


def test_a_guest_that_does_not_power_off_in_time_fails_the_capture() -> None:
    late = h.power_off_outcome(view(), NOW + timedelta(minutes=10))
    assert late.done and late.condition.reason == h.DEADLINE_EXCEEDED


def test_progress_counts_steps() -> None:
    assert h.progress(h.SAVING) == {"step": h.SAVING, "completedSteps": 1, "totalSteps": 6}
    assert h.progress(h.CAPTURED, 4096)["completedSteps"] == 6
    assert h.progress(h.RESTORING)["totalSteps"] == 3


def resumable(**status: object) -> dict:
    machine = persistent_vm()
    adapters = h.capture_adapters(machine, None)
    base = {
        "conditions": captured(),
        "adapters": adapters,
        "machine": h.capture_machine(machine),
        "bootId": "boot-1",
    }
    return image(**{**base, **status})


def test_a_captured_image_with_the_same_configuration_may_resume() -> None:
    assert h.resume_refusal(view(image=resumable(), vmi=None)) is None


def test_a_changed_configuration_refuses_the_resume_naming_it() -> None:
    edited = persistent_vm()
    edited["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = "1Gi"
    refusal = h.resume_refusal(view(image=resumable(), vm=edited, vmi=None))
    assert refusal.reason == h.ADAPTER_CONFIGURATION_CHANGED
    assert "memory changed from '512Mi' to '1Gi'" in refusal.message


def test_an_image_not_captured_cannot_resume() -> None:
    assert h.resume_refusal(view(image=image())).reason == h.NOT_CAPTURED


def reported(boot_id: str, heard: str) -> dict:
    return partition(agent={"bootId": boot_id, "lastHeartbeatTime": heard})


def test_resumed_when_the_agent_reports_the_captured_boot_id_after_the_start() -> None:
    started = resumable(resumeStartedTime="2026-12-01T12:00:00Z")
    before = h.restore_outcome(
        view(image=started, partition=reported("boot-1", "2026-12-01T11:00:00Z"))
    )
    assert before.reason == h.IN_PROGRESS
    same = h.restore_outcome(
        view(image=started, partition=reported("boot-1", "2026-12-01T12:00:05Z"))
    )
    assert (same.status, same.reason) == ("True", h.IMAGE_RESTORED)
    fresh = h.restore_outcome(
        view(image=started, partition=reported("boot-2", "2026-12-01T12:00:05Z"))
    )
    assert (fresh.status, fresh.reason) == ("False", h.IMAGE_NOT_RESTORED)
