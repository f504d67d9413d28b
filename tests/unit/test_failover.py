"""Failover decisions (domain/failover.py): leases, failures, escalation, fences, images."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lparkube.api.v1alpha1 import failover as api
from lparkube.domain import failover as fo
from lparkube.domain import remote_restart as rr

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
WATCHDOG = {"name": "lparkube-watchdog", "i6300esb": {"action": "poweroff"}}


def stamp(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def partition(
    *, enabled: bool = True, failover_status: dict | None = None, **spec: Any
) -> dict[str, Any]:
    agent = {
        "lastHeartbeatTime": stamp(-2),
        "watchdog": {"device": "/dev/watchdog", "timeoutSeconds": 10, "armed": True},
    }
    return {
        "metadata": {"name": "web", "namespace": "t"},
        "spec": {"failover": {"enabled": enabled, "bootImage": {"pvcName": "clean"}, **spec}},
        "status": {"agent": agent, "failover": failover_status or {}},
    }


def vmi(phase: str = "Running", node: str = "a", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "uid": "vmi-1", "creationTimestamp": stamp(-600)},
        "spec": {"domain": {"devices": {"watchdog": WATCHDOG}}},
        "status": {"phase": phase, "nodeName": node, **status},
    }


def node(name: str = "a", ready: bool = True, taints: list | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"taints": taints or []},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "Unknown"}]},
    }


VM = {"metadata": {"name": "web"}, "spec": {"runStrategy": "Always"}}


def observe(p: dict, v: dict | None, n: dict | None, **kw: Any) -> fo.Failure | None:
    return fo.detect_failure(fo.Observed(p, kw.pop("vm", VM), v, n, kw.pop("now", NOW), **kw))


# --- settings and the lease ------------------------------------------------------------------


def test_settings_default_and_odd_values_fall_back() -> None:
    s = fo.settings_of({"spec": {"failover": {"enabled": True, "selfFence": {"lease": "x"}}}})
    assert (s.enabled, s.lease, s.watchdog_timeout, s.keep) == (
        True,
        timedelta(seconds=10),
        timedelta(seconds=10),
        3,
    )
    assert s.window == timedelta(minutes=15) and s.interval == timedelta(hours=1)
    assert not fo.settings_of({}).enabled


def test_a_lease_is_granted_while_self_fence_is_on() -> None:
    answer = fo.lease_answer(partition(selfFence={"lease": "12s", "watchdogTimeout": "8s"}))
    assert answer.body() == {
        "lease": {"seconds": 12, "watchdogTimeoutSeconds": 8, "renewSeconds": 4}
    }


def test_no_lease_while_a_failover_fences_and_none_is_a_disarm() -> None:
    fencing = partition(failover_status={"current": {"phase": api.FENCING}})
    assert fo.lease_answer(fencing).body() is None
    done = partition(failover_status={"current": {"phase": api.DONE}})
    assert fo.lease_answer(done).grants


def test_self_fence_off_disarms_only_an_armed_watchdog() -> None:
    off = partition(selfFence={"enabled": False})
    assert fo.lease_answer(off).body() == {"disarm": True}
    off["status"]["agent"]["watchdog"]["armed"] = False
    assert fo.lease_answer(off).body() is None
    assert fo.lease_answer(partition(enabled=False)).body() == {"disarm": True}


def test_lease_expiry_rounds_up_and_never_moves_back() -> None:
    answer = fo.lease_answer(partition())
    at = NOW + timedelta(milliseconds=300)
    assert fo.lease_expiry(answer, at) == stamp(11)
    later = partition(failover_status={"leaseExpiry": stamp(30)})
    assert fo.status_with_lease(later, answer, at) == {}
    assert fo.status_with_lease(partition(), answer, at) == {"failover": {"leaseExpiry": stamp(11)}}


# --- the guest's own fence -------------------------------------------------------------------


def test_self_fence_time_is_lease_plus_watchdog_plus_margin() -> None:
    p = partition(failover_status={"leaseExpiry": stamp(0)})
    at, why = fo.self_fence_time(p, vmi())
    assert at == NOW + timedelta(seconds=10 + api.FENCE_MARGIN_SECONDS) and why == ""


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda p, v: p["status"]["failover"].clear(), "no lease"),
        (lambda p, v: v["spec"]["domain"]["devices"].clear(), "without an i6300esb"),
        (lambda p, v: p["status"]["agent"]["watchdog"].update(armed=False), "did not arm"),
        (lambda p, v: p["status"]["agent"]["watchdog"].update(timeoutSeconds=60), "not within"),
        (lambda p, v: p["spec"]["failover"].update(selfFence={"enabled": False}), "off"),
    ],
)
def test_self_fence_is_not_counted_on_without_its_parts(change: Any, why: str) -> None:
    p, v = partition(failover_status={"leaseExpiry": stamp(0)}), vmi()
    change(p, v)
    at, message = fo.self_fence_time(p, v)
    assert at is None and why in message


# --- failure detection -----------------------------------------------------------------------


def test_a_healthy_partition_has_no_failure() -> None:
    p = partition(failover_status={"leaseExpiry": stamp(5)})
    assert observe(p, vmi(), node()) is None


def test_a_failed_vmi_and_a_panic() -> None:
    assert observe(partition(), vmi("Failed"), node()).reason == api.VMI_FAILED
    assert observe(partition(), vmi("Failed"), node(), panicked=True).reason == api.GUEST_PANICKED
    assert observe(partition(), vmi("Failed"), node(), panicked=True, crash_dumps=True) is None


def test_a_lost_node_unless_fenced() -> None:
    lost = observe(partition(), vmi(), node(ready=False))
    assert lost.reason == api.NODE_LOST and "not Ready" in lost.message
    assert observe(partition(), vmi(), None).reason == api.NODE_LOST
    fenced = node(ready=False, taints=[{"key": rr.api.OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}])
    assert observe(partition(), vmi(), fenced) is None


def test_an_agent_whose_lease_ran_out() -> None:
    p = partition(failover_status={"leaseExpiry": stamp(-1)})
    assert observe(p, vmi(), node()).reason == api.AGENT_LOST
    paused = vmi(conditions=[{"type": "Paused", "status": "True"}])
    assert observe(p, paused, node()) is None


def test_without_self_fence_the_heartbeat_timeout_counts() -> None:
    p = partition(selfFence={"enabled": False})
    assert observe(p, vmi(), node()) is None
    assert observe(p, vmi(), node(), now=NOW + timedelta(seconds=91)).reason == api.AGENT_LOST


def test_a_booting_guest_lost_nothing() -> None:
    p = partition(failover_status={"leaseExpiry": stamp(-700)})
    p["status"]["agent"]["lastHeartbeatTime"] = stamp(-700)  # the previous instance's
    assert observe(p, vmi(), node()) is None


@pytest.mark.parametrize(
    "vm",
    [
        {"spec": {"runStrategy": "Halted"}},
        {"spec": {"running": False}},
        {
            "spec": {"runStrategy": "Always"},
            "status": {"stateChangeRequests": [{"action": "Stop"}]},
        },
    ],
)
def test_a_user_stop_is_never_a_failure(vm: dict) -> None:
    assert observe(partition(), vmi("Failed"), node(), vm=vm) is None


def test_nothing_is_decided_twice_or_when_off() -> None:
    under_way = partition(failover_status={"current": {"phase": api.FENCING}})
    assert observe(under_way, vmi("Failed"), node()) is None
    stopped = partition(failover_status={"current": {"phase": api.STOPPED, "instanceUid": "vmi-1"}})
    assert observe(stopped, vmi("Failed"), node()) is None
    assert observe(partition(enabled=False), vmi("Failed"), node()) is None
    deleting = vmi()
    deleting["metadata"]["deletionTimestamp"] = stamp(-1)
    assert observe(partition(), deleting, node(ready=False)) is None


# --- escalation ------------------------------------------------------------------------------


def images(n: int = 1) -> list[dict]:
    return [{"name": f"ci-{i}", "time": stamp(-3600 + i)} for i in range(n)]


def test_first_failure_uses_the_newest_consistency_image() -> None:
    choice = fo.choose_image(partition(failover_status={"consistencyImages": images()}), NOW)
    assert choice.image == api.CONSISTENCY_IMAGE
    assert fo.choose_image(partition(), NOW).image == api.BOOT_IMAGE  # none yet


def test_a_second_failure_within_the_window_escalates_then_stops() -> None:
    recent = {"consistencyImages": images(), "lastFailureTime": stamp(-60)}
    second = fo.choose_image(partition(failover_status={**recent, "lastImage": "Consistency"}), NOW)
    assert second.image == api.BOOT_IMAGE and "second failure" in second.reason
    third = fo.choose_image(partition(failover_status={**recent, "lastImage": "Boot"}), NOW)
    assert third.image is None and "again" in third.reason


def test_after_the_window_a_consistency_image_again() -> None:
    old = {"consistencyImages": images(), "lastFailureTime": stamp(-901), "lastImage": "Boot"}
    assert fo.choose_image(partition(failover_status=old), NOW).image == api.CONSISTENCY_IMAGE


# --- fence proofs ----------------------------------------------------------------------------


def view(**kw: Any) -> fo.FenceView:
    base: dict[str, Any] = {
        "partition": partition(failover_status={"leaseExpiry": stamp(-10)}),
        "node_name": "a",
        "vmi": vmi(),
        "node": node(ready=False),
        "now": NOW,
    }
    return fo.FenceView(**{**base, **kw})


def test_a_fenced_node_proves_it() -> None:
    taint = [{"key": rr.api.OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}]
    assert fo.fence_proof(view(node=node(ready=False, taints=taint))).by == api.NODE_FENCED


def test_an_instance_gone_proves_it_only_from_a_ready_node() -> None:
    assert fo.fence_proof(view(vmi=None, node=node())).by == api.INSTANCE_GONE
    pod = {"spec": {"nodeName": "a"}, "status": {"phase": "Running"}}
    assert fo.fence_proof(view(vmi=None, node=node(), pods=[pod])).by is None
    lost = fo.fence_proof(view(vmi=None, partition=partition()))
    assert lost.by is None and "no lease" in lost.message


def test_the_self_fence_time_proves_it_once_passed() -> None:
    proof = fo.fence_proof(view())
    assert proof.by is None and "powers itself off by" in proof.message
    assert proof.at == NOW + timedelta(seconds=-10 + 10 + api.FENCE_MARGIN_SECONDS)
    later = fo.fence_proof(view(now=NOW + timedelta(seconds=6)))
    assert later.by == api.SELF_FENCED


def test_the_recorded_instance_spec_counts_once_the_vmi_is_gone() -> None:
    gone = view(vmi=None, instance_spec=vmi()["spec"], now=NOW + timedelta(seconds=6))
    assert fo.fence_proof(gone).by == api.SELF_FENCED


def test_a_remote_restart_takes_a_self_fenced_source_as_stopped() -> None:
    fenced = {"current": {"fence": {"by": api.SELF_FENCED}, "nodeName": "a"}}
    p = partition(failover_status=fenced)
    assert fo.self_fenced_on(p, None, "a", NOW)
    assert not fo.self_fenced_on(p, None, "b", NOW)
    view_ = rr.SourceView("web", "a", vmi(), None, (), (node(ready=False),), self_fenced=True)
    assert rr.source_stop_refusal(view_) is None
    unfenced = rr.SourceView("web", "a", vmi(), None, (), (node(ready=False),))
    assert rr.source_stop_refusal(unfenced).reason == rr.api.WAITING_FOR_SOURCE_STOP


# --- consistency images, boot image, watchdog ------------------------------------------------


def test_consistency_images_are_due_on_schedule() -> None:
    assert fo.consistency_image_due(partition(), NOW)
    later = partition(failover_status={"nextConsistencyImageTime": stamp(10)})
    assert not fo.consistency_image_due(later, NOW)
    assert fo.consistency_image_due(later, NOW + timedelta(seconds=10))
    assert not fo.consistency_image_due(partition(enabled=False), NOW)
    assert fo.next_image_time(partition(consistencyImage={"interval": "5m"}), NOW) == stamp(300)


def test_images_beyond_keep_are_pruned_oldest_first() -> None:
    kept, pruned = fo.images_after(images(3), {"name": "ci-new"}, 3)
    assert [i["name"] for i in kept] == ["ci-1", "ci-2", "ci-new"] and pruned == ["ci-0"]
    assert fo.consistency_of({"status": {"indications": ["Online", "GuestAgent"]}}) == (
        api.APPLICATION_CONSISTENT
    )
    assert fo.consistency_of({"status": {"indications": ["NoGuestAgent"]}}) == api.CRASH_CONSISTENT


def vm_spec(disks: list[dict], volumes: list[dict]) -> dict:
    return {"template": {"spec": {"domain": {"devices": {"disks": disks}}, "volumes": volumes}}}


def test_the_boot_disk_and_its_image() -> None:
    claims = [{"name": n, "persistentVolumeClaim": {"claimName": n}} for n in ("data", "root")]
    spec = vm_spec([{"name": "data", "bootOrder": 2}, {"name": "root", "bootOrder": 1}], claims)
    assert fo.boot_disk(spec) == "root"
    own = [  # the key disk and the paging LU are never the boot disk
        {"name": "lparkube", "secret": {"secretName": "k"}},
        {"name": "lparkube-paging", "persistentVolumeClaim": {"claimName": "lu"}},
        {"name": "first", "containerDisk": {"image": "i"}},
    ]
    disks = [{"name": v["name"]} for v in own]
    assert fo.boot_disk(vm_spec(disks, own)) == "first"
    assert fo.boot_disk(vm_spec(disks[:2], own[:2])) is None
    assert fo.boot_volume({"pvcName": "clean"}, "web", "f1") == {
        "persistentVolumeClaim": {"claimName": "clean"}
    }
    assert fo.boot_volume({"dataVolumeTemplate": {}}, "web", "abcdef123") == {
        "dataVolume": {"name": "web-boot-abcdef12"}
    }


def test_the_watchdog_is_added_once() -> None:
    spec = fo.with_watchdog({})
    assert spec["template"]["spec"]["domain"]["devices"]["watchdog"] == {
        "name": api.WATCHDOG_DEVICE,
        "i6300esb": {"action": "poweroff"},
    }
    own = {"name": "mine", "i6300esb": {"action": "reset"}}
    kept = fo.with_watchdog({"template": {"spec": {"domain": {"devices": {"watchdog": own}}}}})
    assert kept["template"]["spec"]["domain"]["devices"]["watchdog"] == own


def test_failover_takes_a_running_vms_restarts_and_gives_them_back() -> None:
    vm = {"metadata": {"resourceVersion": "7"}, "spec": {"runStrategy": "Always"}}
    ops = fo.take_restarts_patch(partition(), vm, vmi())
    assert ops == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": "/metadata/annotations",
         "value": {api.RUN_STRATEGY_ANNOTATION: "Always"}},
        {"op": "add", "path": "/spec/runStrategy", "value": "Manual"},
    ]  # fmt: skip
    assert fo.take_restarts_patch(partition(), vm, vmi("Scheduled")) is None
    assert fo.take_restarts_patch(partition(enabled=False), vm, vmi()) is None
    manual = {"metadata": {"annotations": {api.RUN_STRATEGY_ANNOTATION: "Always"}},
              "spec": {"runStrategy": "Manual"}}  # fmt: skip
    assert fo.take_restarts_patch(partition(), manual, vmi()) is None
    assert fo.user_run_strategy(manual) == "Always"
    assert fo.give_back_restarts_patch(manual) == {
        "metadata": {"annotations": {api.RUN_STRATEGY_ANNOTATION: None}},
        "spec": {"runStrategy": "Always"},
    }
    assert fo.give_back_restarts_patch(vm) is None
