"""virt-api's subresource handlers against an in-memory API (no server)."""

from __future__ import annotations

from typing import Any

import pytest

from lparkube_devenv.kubevirt.actions import Actions, Call, StatusError
from lparkube_devenv.kubevirt.api import VM, VMI, VMIM
from lparkube_devenv.kubevirt.fake import FakeKube
from lparkube_devenv.kubevirt.logic import memory_dump_claim_refusal

NS = "ns"


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def actions(kube: FakeKube) -> Actions:
    return Actions(kube)  # type: ignore[arg-type]


def add_vm(kube: FakeKube, strategy: str = "Halted", **spec: Any) -> None:
    body = {
        "metadata": {"name": "vm", "namespace": NS},
        "spec": {"runStrategy": strategy, "template": {"spec": {}}, **spec},
    }
    if spec.get("running") is not None:
        del body["spec"]["runStrategy"]
    kube.put(VM.path(NS, "vm"), body)


def add_vmi(kube: FakeKube, phase: str = "Running", **status: Any) -> None:
    body = {
        "metadata": {"name": "vm", "namespace": NS},
        "spec": {},
        "status": {"phase": phase, **status},
    }
    kube.put(VMI.path(NS, "vm"), body)


def call(sub: str, resource: str = "virtualmachines", method: str = "PUT", **body: Any) -> Call:
    return Call(method, NS, resource, "vm", sub, body)


def error_of(actions: Actions, request: Call) -> StatusError:
    with pytest.raises(StatusError) as caught:
        actions.handle(request)
    return caught.value


def test_start_halted_vm_sets_always(kube: FakeKube, actions: Actions) -> None:
    add_vm(kube)
    assert actions.handle(call("start")) == (202, None)
    assert kube.get(VM.path(NS, "vm"))["spec"]["runStrategy"] == "Always"


def test_start_uses_running_flag_when_set(kube: FakeKube, actions: Actions) -> None:
    add_vm(kube, running=False)
    actions.handle(call("start"))
    spec = kube.get(VM.path(NS, "vm"))["spec"]
    assert spec["running"] is True and "runStrategy" not in spec


def test_start_conflicts(kube: FakeKube, actions: Actions) -> None:
    assert error_of(actions, call("start")).code == 404
    add_vm(kube, "Always")
    add_vmi(kube, "Running")
    error = error_of(actions, call("start"))
    assert (error.code, error.reason) == (409, "Conflict")
    assert error.body()["details"]["kind"] == "virtualmachine"
    add_vmi(kube, "Succeeded")
    assert "does not support manual start" in error_of(actions, call("start")).message


def test_manual_start_and_stop_queue_requests(kube: FakeKube, actions: Actions) -> None:
    add_vm(kube, "Manual")
    actions.handle(call("start", paused=True))
    requests = kube.get(VM.path(NS, "vm"))["status"]["stateChangeRequests"]
    assert requests == [{"action": "Start", "data": {"paused": "true"}}]
    assert kube.get(VM.path(NS, "vm"))["spec"]["runStrategy"] == "Manual"
    add_vmi(kube, "Running")
    actions.handle(call("stop"))
    requests = kube.get(VM.path(NS, "vm"))["status"]["stateChangeRequests"]
    assert requests[-1] == {
        "action": "Stop",
        "uid": kube.get(VMI.path(NS, "vm"))["metadata"]["uid"],
    }


def test_stop_semantics(kube: FakeKube, actions: Actions) -> None:
    add_vm(kube, "Always")
    actions.handle(call("stop"))
    assert kube.get(VM.path(NS, "vm"))["spec"]["runStrategy"] == "Halted"
    assert "not running" in error_of(actions, call("stop")).message
    add_vm(kube, "RerunOnFailure")
    assert error_of(actions, call("stop")).code == 409


def test_restart_validation(kube: FakeKube, actions: Actions) -> None:
    add_vm(kube, "Always")
    assert error_of(actions, call("restart", gracePeriodSeconds=5)).code == 400
    assert error_of(actions, call("restart")).code == 409
    add_vmi(kube)
    actions.handle(call("restart"))
    actions_queued = [
        r["action"] for r in kube.get(VM.path(NS, "vm"))["status"]["stateChangeRequests"]
    ]
    assert actions_queued == ["Stop", "Start"]


def test_migrate_creates_migration(kube: FakeKube, actions: Actions) -> None:
    add_vm(kube, "Always")
    assert error_of(actions, call("migrate")).code == 409
    add_vmi(kube)
    actions.handle(call("migrate"))
    migration = kube.items(VMIM.path(NS))[0]
    assert migration["spec"] == {"vmiName": "vm"}
    assert migration["metadata"]["name"].startswith("kubevirt-migrate-vm-")


def test_memory_dump_request(kube: FakeKube, actions: Actions) -> None:
    add_vm(kube, "Always")
    assert error_of(actions, call("memorydump")).code == 400
    add_vmi(kube)
    assert error_of(actions, call("memorydump", claimName="dump")).code == 404  # no PVC
    put_claim(kube, "dump", "1Gi")
    actions.handle(call("memorydump", claimName="dump"))
    request = kube.get(VM.path(NS, "vm"))["status"]["memoryDumpRequest"]
    assert request == {"claimName": "dump", "phase": "Associating"}
    assert "already in progress" in error_of(actions, call("memorydump", claimName="dump")).message
    assert "still associated" in error_of(actions, call("memorydump", claimName="other")).message
    actions.handle(call("removememorydump"))
    assert kube.get(VM.path(NS, "vm"))["status"]["memoryDumpRequest"]["phase"] == "Dissociating"


def put_claim(kube: FakeKube, name: str, size: str, **spec: Any) -> None:
    body = {
        "metadata": {"name": name},
        "spec": {"resources": {"requests": {"storage": size}}, **spec},
    }
    kube.put(f"/api/v1/namespaces/{NS}/persistentvolumeclaims/{name}", body)


@pytest.mark.parametrize(
    ("size", "spec", "refusal"),
    [
        ("1Gi", {"volumeMode": "Block"}, "pvc should be filesystem pvc"),
        ("1Gi", {"accessModes": ["ReadOnlyMany"]}, "pvc access mode can't be read only"),
        ("600Mi", {}, "should be bigger then"),  # 512Mi + 100Mi + 5.5 % does not fit
    ],
)
def test_memory_dump_refuses_claims_virt_api_refuses(
    kube: FakeKube, actions: Actions, size: str, spec: dict, refusal: str
) -> None:
    add_vm(kube, "Always")
    add_vmi(kube)
    kube.merge_patch(VMI.path(NS, "vm"), {"spec": {"domain": {"memory": {"guest": "512Mi"}}}})
    put_claim(kube, "dump", size, **spec)
    error = error_of(actions, call("memorydump", claimName="dump"))
    assert error.code == 409 and refusal in error.message
    assert "memoryDumpRequest" not in (kube.get(VM.path(NS, "vm")).get("status") or {})


def test_memory_dump_accepts_memory_plus_overhead() -> None:
    spec = {"domain": {"memory": {"guest": "512Mi"}}}
    needed = -(-int(1.055 * (612 * 2**20)) // 2**20) * 2**20
    fits = {"spec": {"resources": {"requests": {"storage": str(needed)}}}}
    short = {"spec": {"resources": {"requests": {"storage": str(needed - 2**20)}}}}
    assert memory_dump_claim_refusal(spec, fits) is None
    assert memory_dump_claim_refusal(spec, short) is not None


def test_pause_unpause_freeze(kube: FakeKube, actions: Actions) -> None:
    add_vm(kube, "Always")
    add_vmi(kube, "Scheduled")
    vmi_call = lambda sub, **body: call(sub, "virtualmachineinstances", **body)  # noqa: E731
    assert error_of(actions, vmi_call("pause")).code == 409
    add_vmi(kube, "Running", conditions=[{"type": "Ready", "status": "True"}])
    actions.handle(vmi_call("pause"))
    conditions = {
        c["type"]: c["status"] for c in kube.get(VMI.path(NS, "vm"))["status"]["conditions"]
    }
    assert conditions == {"Ready": "False", "Paused": "True"}
    assert "already paused" in error_of(actions, vmi_call("pause")).message
    actions.handle(vmi_call("unpause"))
    conditions = {
        c["type"]: c["status"] for c in kube.get(VMI.path(NS, "vm"))["status"]["conditions"]
    }
    assert conditions == {"Ready": "True"}
    assert "not paused" in error_of(actions, vmi_call("unpause")).message
    actions.handle(vmi_call("freeze", unfreezeTimeout="5m"))
    assert kube.get(VMI.path(NS, "vm"))["status"]["fsFreezeStatus"] == "frozen"
    actions.handle(vmi_call("unfreeze"))
    assert "fsFreezeStatus" not in kube.get(VMI.path(NS, "vm"))["status"]


def test_guest_agent_endpoints_need_the_agent(kube: FakeKube, actions: Actions) -> None:
    add_vm(kube, "Always")
    add_vmi(kube, "Running", conditions=[{"type": "AgentConnected", "status": "True"}])
    code, info = actions.handle(call("guestosinfo", "virtualmachineinstances", "GET"))
    assert code == 200 and info["os"]["id"] == "fedora"
    assert actions.handle(call("userlist", "virtualmachineinstances", "GET"))[1]["items"]
    add_vmi(kube, "Running", conditions=[])
    error = error_of(actions, call("guestosinfo", "virtualmachineinstances", "GET"))
    assert error.code == 409 and "guest agent" in error.message


def test_volumes_hotplug_into_template_and_vmi(kube: FakeKube, actions: Actions) -> None:
    add_vm(kube, "Always")
    add_vmi(kube)
    source = {"persistentVolumeClaim": {"claimName": "extra", "hotpluggable": True}}
    actions.handle(call("addvolume", name="extra", volumeSource=source))
    template = kube.get(VM.path(NS, "vm"))["spec"]["template"]["spec"]
    assert template["volumes"] == [{"name": "extra", **source}]
    assert template["domain"]["devices"]["disks"][0]["name"] == "extra"
    assert kube.get(VMI.path(NS, "vm"))["spec"]["volumes"][0]["name"] == "extra"
    assert error_of(actions, call("addvolume", name="extra", volumeSource=source)).code == 409
    actions.handle(call("removevolume", name="extra"))
    assert kube.get(VM.path(NS, "vm"))["spec"]["template"]["spec"]["volumes"] == []
    assert error_of(actions, call("removevolume")).code == 400


def test_unknown_routes(kube: FakeKube, actions: Actions) -> None:
    assert error_of(actions, call("teleport")).code == 404
    assert error_of(actions, call("start", method="GET")).code == 405
