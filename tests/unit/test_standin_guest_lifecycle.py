"""The stand-in's VMI lifecycle for real guests, over the in-memory API with a fake guest: the
launcher pod, the kubelet's part, and KubeVirt's rules for guest ends and node loss. The real
QEMU processes are proven in tests/realguest/."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

from lparkube_devenv.kubevirt.api import RUNTIME_ANNOTATION, VMI, now_iso
from lparkube_devenv.kubevirt.controller import Controller, Settings
from lparkube_devenv.kubevirt.fake import FakeKube
from lparkube_devenv.kubevirt.hosts import Hosts
from lparkube_devenv.kubevirt.nodes import node_labels, node_status
from lparkube_devenv.kubevirt.virt_launcher import (
    CREATED_BY_LABEL,
    claim_volumes,
    guest_grace,
    launcher_pod,
    pod_alive,
    vmi_id,
)


@dataclass
class FakeGuest:
    current: str = "running"
    calls: list[str] = field(default_factory=list)

    def state(self) -> str:
        return self.current

    def stop(self, grace: float) -> None:
        self.calls.append(f"stop {grace}")
        self.current = "stopped"

    def kill(self) -> None:
        self.calls.append("kill")
        self.current = "crashed"

    def close(self) -> None:
        self.calls.append("close")

    def pause(self) -> None:
        self.current = "paused"

    def unpause(self) -> None:
        self.current = "running"

    def reboot_soft(self) -> None:
        self.calls.append("reboot")


class Readiness(NamedTuple):
    ok: bool
    reason: str
    message: str


@dataclass
class FakeStorage:
    blocked: dict[str, tuple[str, str]] = field(default_factory=dict)  # pod name -> why
    mounted: list[str] = field(default_factory=list)

    def mount_volumes(self, namespace: str, pod: str) -> bool:
        if pod not in self.mounted:
            self.mounted.append(pod)
        return True

    def volume_ready(self, namespace: str, pod: str) -> Readiness:
        why = self.blocked.get(pod)
        return Readiness(False, *why) if why else Readiness(True, "Attached", "")

    def unmount_volumes(self, namespace: str, pod: str) -> bool:
        if pod in self.mounted:  # a second unmount (the pod's deletion after its end) is a no-op
            self.mounted.remove(pod)
        return True


class World:
    def __init__(self, *nodes: str) -> None:
        self.kube = FakeKube()
        for name in nodes:
            node = {"metadata": {"name": name, "labels": node_labels(name)}, "spec": {}}
            self.kube.put(f"/api/v1/nodes/{name}", {**node, "status": node_status(name)})
        self.guests: list[FakeGuest] = []
        self.now = time.time()  # heartbeats are wall-clock stamps
        self.storage = FakeStorage()
        self.hosts = Hosts(self.launch, clock=lambda: self.now)
        settings = Settings(guest_runtime="qemu", heartbeat_interval=10, heartbeat_timeout=60)
        self.controller = Controller(
            self.kube,  # type: ignore[arg-type]
            settings,
            hosts=self.hosts,
            storage=self.storage,
            wall_clock=lambda: self.now,
        )

    def launch(self, vmi: dict, pod: dict, node: str) -> FakeGuest:
        guest = FakeGuest()
        self.guests.append(guest)
        return guest

    def add_vm(self, name: str = "vm", **annotations: str) -> None:
        template = {"metadata": {"annotations": annotations}, "spec": {"domain": {"devices": {}}}}
        body = {
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"runStrategy": "Always", "template": template},
        }
        self.kube.put("/apis/kubevirt.io/v1/namespaces/ns/virtualmachines/" + name, body)

    def passes(self, count: int) -> None:
        for _ in range(count):
            self.controller.tick()

    def vmi(self, name: str = "vm") -> dict:
        return self.kube.get(VMI.path("ns", name)) or {}

    def phase(self, name: str = "vm") -> str:
        return (self.vmi(name).get("status") or {}).get("phase", "-")

    def pods(self) -> list[dict]:
        return self.kube.items("/api/v1/pods")


def running_world() -> World:
    world = World("node-a", "node-b")
    world.add_vm()
    world.passes(8)
    assert world.phase() == "Running"
    return world


def test_a_vmi_runs_through_its_launcher_pod_and_guest() -> None:
    world = World("node-a")
    world.add_vm()
    seen = []
    for _ in range(8):
        world.controller.tick()
        seen.append(world.phase())
    assert [p for i, p in enumerate(seen) if i == 0 or p != seen[i - 1]] == [
        "-",
        "Pending",
        "Scheduling",
        "Scheduled",
        "Running",
    ]
    [pod] = world.pods()
    vmi = world.vmi()
    assert pod["spec"]["nodeName"] == vmi["status"]["nodeName"] == "node-a"
    assert pod["metadata"]["labels"]["kubevirt.io"] == "virt-launcher"
    assert pod["metadata"]["labels"][CREATED_BY_LABEL] == vmi["metadata"]["uid"]
    assert pod["status"]["phase"] == "Running"
    assert world.storage.mounted == [pod["metadata"]["name"]]
    assert len(world.guests) == 1


def test_a_simulated_vmi_beside_real_ones_gets_no_pod() -> None:
    world = World("node-a")
    world.add_vm("sim", **{RUNTIME_ANNOTATION: "simulated"})
    world.passes(6)
    assert world.phase("sim") == "Running"
    assert world.pods() == [] and world.guests == []


def test_a_pod_whose_volume_is_attached_elsewhere_waits_with_the_reason() -> None:
    world = World("node-a")
    world.add_vm()
    world.passes(3)
    [pod] = world.pods()
    world.storage.blocked[pod["metadata"]["name"]] = ("MultiAttach", "Multi-Attach error")
    world.passes(4)
    assert world.phase() == "Scheduling" and world.guests == []
    [condition] = [c for c in world.vmi()["status"]["conditions"] if c["type"] == "Synchronized"]
    assert (condition["reason"], condition["message"]) == ("MultiAttach", "Multi-Attach error")
    world.storage.blocked.clear()
    world.passes(4)
    assert world.phase() == "Running"


def test_a_panic_gives_a_warning_event_and_fails_the_vmi() -> None:
    world = running_world()
    world.guests[0].current = "panicked"
    world.passes(2)
    assert world.phase() == "Failed"
    assert "GuestPanicked" in world.kube.events
    [pod] = [p for p in world.pods() if p["status"]["phase"] == "Failed"]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "GuestPanicked"


def test_a_guest_power_off_succeeds_and_pause_follows_qemu() -> None:
    world = running_world()
    world.guests[0].current = "paused"
    world.passes(1)
    assert any(c["type"] == "Paused" for c in world.vmi()["status"]["conditions"])
    world.guests[0].current = "running"
    world.passes(1)
    assert not any(c["type"] == "Paused" for c in world.vmi()["status"]["conditions"])
    world.guests[0].current = "shutdown"
    world.passes(2)
    assert world.phase() == "Succeeded"


def test_a_launcher_pod_gone_from_the_api_fails_the_vmi_and_kills_the_guest() -> None:
    world = running_world()
    [pod] = world.pods()
    world.kube.delete(f"/api/v1/namespaces/ns/pods/{pod['metadata']['name']}", grace=0)
    world.passes(1)
    assert world.phase() == "Failed"
    assert world.guests[0].calls == ["kill"]


def test_a_deleted_pod_has_its_guest_powered_off_before_the_kubelet_confirms() -> None:
    world = running_world()
    [pod] = world.pods()
    path = f"/api/v1/namespaces/ns/pods/{pod['metadata']['name']}"
    world.kube.merge_patch(path, {"metadata": {"deletionTimestamp": now_iso()}})
    world.passes(1)
    assert world.guests[0].calls == ["stop 30"]
    world.passes(1)
    assert world.kube.get(path) is None


def test_a_powered_off_node_leaves_its_vmi_running_until_the_launcher_is_gone() -> None:
    world = running_world()
    node = world.vmi()["status"]["nodeName"]
    assert world.hosts.power_off(node) == 1
    assert world.guests[0].calls == ["kill"]
    world.now += 600  # heartbeats stopped long ago, but the pod still "runs" in the API
    world.passes(3)
    assert world.phase() == "Running"
    ready = [c for c in world.kube.get(f"/api/v1/nodes/{node}")["status"]["conditions"]]
    assert ready[0]["status"] == "Unknown"
    [pod] = world.pods()  # fenced: the pod is force-deleted (podgc) -> the VMI fails
    world.kube.delete(f"/api/v1/namespaces/ns/pods/{pod['metadata']['name']}", grace=0)
    world.passes(1)
    assert world.phase() == "Failed"


def test_node_unresponsive_needs_a_stale_heartbeat_and_no_live_pod() -> None:
    world = running_world()
    node = world.vmi()["status"]["nodeName"]
    world.hosts.power_off(node)
    [pod] = world.pods()
    status = {"status": {"phase": "Failed"}}
    world.kube.merge_patch(f"/api/v1/namespaces/ns/pods/{pod['metadata']['name']}", status)
    world.passes(1)
    assert world.phase() == "Running"  # the heartbeat is still fresh
    world.now += 61  # no heartbeat since the power went
    world.passes(1)
    assert world.phase() == "Failed"
    assert world.vmi()["status"]["reason"] == "NodeUnresponsive"


def test_launcher_pod_carries_what_virt_controller_renders() -> None:
    vmi = {
        "metadata": {"name": "v" * 70, "namespace": "ns", "uid": "u1", "labels": {"a": "b"}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "volumes": [
                {"name": "root", "persistentVolumeClaim": {"claimName": "pvc-root"}},
                {"name": "dv", "dataVolume": {"name": "dv-1"}},
                {"name": "ci", "cloudInitNoCloud": {"userData": "x"}},
            ],
        },
    }
    pod = launcher_pod(vmi, "node-b")
    assert pod["spec"]["nodeName"] == "node-b"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 20 and guest_grace(pod) == 5
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]] == [
        "pvc-root",
        "dv-1",
    ]
    assert claim_volumes(vmi["spec"]) == [("root", "pvc-root"), ("dv", "dv-1")]
    labels = pod["metadata"]["labels"]
    assert labels["a"] == "b" and labels["vmi.kubevirt.io/id"] == vmi_id("v" * 70)
    assert len(vmi_id("v" * 70)) == 63
    assert pod["spec"]["tolerations"] == vmi["spec"]["tolerations"]


def test_pod_alive_is_kubevirts_test() -> None:
    assert pod_alive({"status": {"phase": "Pending"}})
    assert not pod_alive({"status": {"phase": "Failed"}})
    done = {"state": {"terminated": {"exitCode": 0}}}
    assert not pod_alive({"status": {"phase": "Running", "containerStatuses": [done]}})


FINALIZER = "kubevirt.io/foregroundDeleteVirtualMachine"


def test_a_new_vmi_gets_kubevirts_finalizer() -> None:
    world = World("node-a")
    world.add_vm()
    world.passes(2)
    assert world.phase() == "Pending"
    assert world.vmi()["metadata"]["finalizers"] == [FINALIZER]


def test_a_deleted_vmi_stays_until_its_guest_is_off_and_its_pod_gone() -> None:
    world = running_world()
    world.kube.merge_patch(VM_PATH, {"spec": {"runStrategy": "Halted"}})  # nothing restarts it
    uid = world.vmi()["metadata"]["uid"]
    world.kube.delete(VMI.path("ns", "vm"))
    assert world.vmi()["metadata"]["deletionTimestamp"]
    world.passes(1)  # virt-controller deletes the pod; its kubelet powers the guest off
    [pod] = world.pods()
    assert pod["metadata"]["deletionTimestamp"]
    assert world.vmi()["metadata"]["uid"] == uid
    world.passes(6)
    assert world.guests[0].calls[0] == "stop 30"
    assert world.pods() == [] and world.vmi() == {}


def test_a_deleted_vmi_on_a_lost_node_stays_until_the_node_is_fenced() -> None:
    world = running_world()
    node = world.vmi()["status"]["nodeName"]
    other = "node-b" if node == "node-a" else "node-a"
    uid = world.vmi()["metadata"]["uid"]
    world.hosts.power_off(node)
    selector = {"kubernetes.io/hostname": other}
    world.kube.merge_patch(VM_PATH, {"spec": {"template": {"spec": {"nodeSelector": selector}}}})
    world.kube.delete(VMI.path("ns", "vm"))
    world.now += 600
    world.passes(6)
    [pod] = world.pods()  # deleted, but no kubelet confirms: the VMI waits with it
    assert pod["metadata"]["deletionTimestamp"] and pod["spec"]["nodeName"] == node
    assert world.vmi()["metadata"]["uid"] == uid and world.phase() == "Running"
    world.kube.delete(f"/api/v1/namespaces/ns/pods/{pod['metadata']['name']}", grace=0)  # podgc
    world.passes(12)
    assert world.vmi()["metadata"]["uid"] != uid  # only now a new one, on the other node
    assert world.phase() == "Running" and world.vmi()["status"]["nodeName"] == other


def test_a_final_vmi_keeps_its_finalizer_only_while_a_pod_of_it_is_left() -> None:
    world = running_world()
    world.kube.merge_patch(VM_PATH, {"spec": {"runStrategy": "Manual"}})
    world.guests[0].current = "shutdown"
    world.passes(2)
    assert world.phase() == "Succeeded" and world.vmi()["metadata"]["finalizers"] == [FINALIZER]
    world.passes(4)
    assert world.pods() == [] and "finalizers" not in world.vmi()["metadata"]


VM_PATH = "/apis/kubevirt.io/v1/namespaces/ns/virtualmachines/vm"
