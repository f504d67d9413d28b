"""The reconcile loop against the in-memory API: VMs reach Running one step per pass, and odd
objects never stop the loop."""

from __future__ import annotations

import time

from lparkube_devenv.kubevirt.api import AGENT_ANNOTATION, POWER_ANNOTATION, VM, VMI, VMIM, now_iso
from lparkube_devenv.kubevirt.controller import Controller, Settings
from lparkube_devenv.kubevirt.fake import FakeKube
from lparkube_devenv.kubevirt.nodes import node_labels, node_status, ready_condition


def cluster(*names: str) -> FakeKube:
    kube = FakeKube()
    for name in names:
        node = {"metadata": {"name": name, "labels": node_labels(name)}, "spec": {}}
        kube.put(f"/api/v1/nodes/{name}", {**node, "status": node_status(name)})
    return kube


def add_vm(kube: FakeKube, name: str, strategy: str = "Always", **template_spec) -> None:
    spec = {"domain": {"devices": {}}, **template_spec}
    body = {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"runStrategy": strategy, "template": {"spec": spec}},
    }
    kube.put(VM.path("ns", name), body)


def passes(controller: Controller, count: int) -> None:
    for _ in range(count):
        controller.tick()


def phases(kube: FakeKube, controller: Controller, name: str, count: int) -> list[str]:
    seen = []
    for _ in range(count):
        controller.tick()
        vmi = kube.get(VMI.path("ns", name)) or {}
        seen.append((vmi.get("status") or {}).get("phase", "-"))
    return seen


def test_vm_reaches_running_through_every_phase() -> None:
    kube = cluster("node-a", "node-b")
    add_vm(kube, "vm")
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    seen = phases(kube, controller, "vm", 6)
    assert seen[:5] == ["-", "Pending", "Scheduling", "Scheduled", "Running"]
    vmi = kube.get(VMI.path("ns", "vm"))
    assert vmi["status"]["nodeName"] == "node-a"
    assert vmi["status"]["interfaces"][0]["ipAddress"].startswith("10.244.")
    assert kube.get(VM.path("ns", "vm"))["status"]["printableStatus"] == "Running"
    assert "Started" in kube.events


def test_vmi_addresses_come_from_the_configured_pod_network() -> None:
    """make run hands out loopback addresses, so a local demo agent can listen on them."""
    kube = cluster("node-a")
    add_vm(kube, "vm")
    controller = Controller(kube, Settings(pod_network="127.77.0.0/16"))  # type: ignore[arg-type]
    passes(controller, 6)
    address = kube.get(VMI.path("ns", "vm"))["status"]["interfaces"][0]["ipAddress"]
    assert address.startswith("127.77.")


def test_second_vm_goes_to_the_less_loaded_node() -> None:
    kube = cluster("node-a", "node-b")
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    add_vm(kube, "one")
    passes(controller, 6)
    add_vm(kube, "two")
    passes(controller, 6)
    nodes = {kube.get(VMI.path("ns", n))["status"]["nodeName"] for n in ("one", "two")}
    assert nodes == {"node-a", "node-b"}


def test_halted_vm_stops_and_deletes_its_vmi() -> None:
    kube = cluster("node-a")
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    add_vm(kube, "vm")
    passes(controller, 6)
    kube.merge_patch(VM.path("ns", "vm"), {"spec": {"runStrategy": "Halted"}})
    seen = phases(kube, controller, "vm", 3)
    assert seen[:2] == ["Succeeded", "-"]
    assert kube.get(VM.path("ns", "vm"))["status"]["printableStatus"] == "Stopped"


def test_migration_walks_kubevirt_phases() -> None:
    kube = cluster("node-a", "node-b")
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    add_vm(kube, "vm")
    passes(controller, 6)
    kube.create(VMIM.path("ns"), {"metadata": {"name": "m"}, "spec": {"vmiName": "vm"}})
    seen = []
    for _ in range(8):
        controller.tick()
        seen.append(kube.get(VMIM.path("ns", "m"))["status"]["phase"])
    assert seen[:7] == [
        "Pending",
        "Scheduling",
        "Scheduled",
        "PreparingTarget",
        "TargetReady",
        "Running",
        "Succeeded",
    ]
    assert kube.get(VMI.path("ns", "vm"))["status"]["nodeName"] == "node-b"


def test_odd_objects_do_not_stop_the_loop() -> None:
    kube = cluster("node-a")
    kube.put(
        VM.path("ns", "broken"),
        {"metadata": {"name": "broken", "namespace": "ns"}, "spec": "nonsense"},
    )
    kube.put(
        VMI.path("ns", "weird"), {"metadata": {"name": "weird", "namespace": "ns"}, "status": ["x"]}
    )
    kube.put(
        VMIM.path("ns", "m"), {"metadata": {"name": "m", "namespace": "ns"}, "spec": {"vmiName": 7}}
    )
    kube.put("/api/v1/nodes/odd", {"metadata": {"name": "odd"}, "spec": {"taints": "all"}})
    add_vm(kube, "fine")
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    passes(controller, 8)
    assert kube.get(VMI.path("ns", "fine"))["status"]["phase"] == "Running"


def versions(kube: FakeKube) -> dict[str, str]:
    return {path: obj["metadata"]["resourceVersion"] for path, obj in kube.objects.items()}


def test_converged_state_is_not_rewritten() -> None:
    """Once settled, passes write nothing, also with the guest agent gone or the VMI paused."""
    kube = cluster("node-a", "node-b")
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    add_vm(kube, "vm")
    agent = {"metadata": {"annotations": {AGENT_ANNOTATION: "disconnected"}}}
    paused = {"status": {"conditions": [{"type": "Paused", "status": "True"}]}}
    for change in (None, agent, paused):
        if change:
            kube.merge_patch(VMI.path("ns", "vm"), change)
        passes(controller, 8)
        settled = versions(kube)
        passes(controller, 3)
        assert versions(kube) == settled
    status = kube.get(VMI.path("ns", "vm"))["status"]
    assert "guestOSInfo" not in status
    assert kube.get(VM.path("ns", "vm"))["status"]["printableStatus"] == "Paused"


def test_a_memory_dump_goes_through_unmounting_as_kubevirts_does() -> None:
    kube = cluster("node-a")
    add_vm(kube, "vm")
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    passes(controller, 6)
    request = {"claimName": "dump", "phase": "Associating"}
    kube.merge_patch(VM.path("ns", "vm"), {"status": {"memoryDumpRequest": request}})
    seen = []
    for _ in range(8):
        controller.tick()
        phase = kube.get(VM.path("ns", "vm"))["status"]["memoryDumpRequest"]["phase"]
        if not seen or seen[-1] != phase:
            seen.append(phase)
    assert seen == ["InProgress", "Unmounting", "Completed"]


def test_a_guest_that_powers_itself_off_ends_its_vmi_and_the_run_strategy_decides() -> None:
    """StandIn.power_off_guest's annotation: the Running VMI Succeeds (with the stopped
    conditions and a Stopped event); Manual leaves it so, Always starts a new VMI."""
    kube = cluster("node-a")
    controller = Controller(kube, Settings())  # type: ignore[arg-type]
    add_vm(kube, "manual", "Manual")
    add_vm(kube, "always")
    kube.merge_patch(VM.path("ns", "manual"), {"status": {"stateChangeRequests": [
        {"action": "Start"}]}})  # fmt: skip
    passes(controller, 8)
    first = {n: kube.get(VMI.path("ns", n))["metadata"]["uid"] for n in ("manual", "always")}
    off = {"metadata": {"annotations": {POWER_ANNOTATION: "off"}}}
    for name in ("manual", "always"):
        assert kube.get(VMI.path("ns", name))["status"]["phase"] == "Running"
        kube.merge_patch(VMI.path("ns", name), off)
    controller.tick()
    ended = kube.get(VMI.path("ns", "manual"))
    assert ended["status"]["phase"] == "Succeeded"
    conditions = {c["type"]: c for c in ended["status"]["conditions"]}
    assert "AgentConnected" not in conditions and conditions["Ready"]["status"] == "False"
    assert "Stopped" in kube.events
    passes(controller, 8)
    assert kube.get(VMI.path("ns", "manual"))["metadata"]["uid"] == first["manual"]
    assert kube.get(VMI.path("ns", "manual"))["status"]["phase"] == "Succeeded"
    assert kube.get(VM.path("ns", "manual"))["status"]["printableStatus"] == "Stopped"
    again = kube.get(VMI.path("ns", "always"))
    assert again["metadata"]["uid"] != first["always"]
    assert again["status"]["phase"] == "Running"  # a new guest: the annotation was the old VMI's


# --- a simulated VMI whose node is lost follows KubeVirt's rules ---------------------------------


def lost_node_world(**settings: float) -> tuple[FakeKube, Controller, list[float]]:
    """node-a and node-b (heartbeats at "now"), a VM running on node-a, a settable wall clock."""
    kube = cluster("node-a", "node-b")
    clock = [time.time()]
    for name in ("node-a", "node-b"):
        stamp = {"metadata": {"annotations": {HEARTBEAT: now_iso()}}}
        kube.merge_patch(f"/api/v1/nodes/{name}", stamp)
    controller = Controller(kube, Settings(**settings), wall_clock=lambda: clock[0])  # type: ignore[arg-type]
    add_vm(kube, "vm")
    passes(controller, 6)
    assert kube.get(VMI.path("ns", "vm"))["status"]["nodeName"] == "node-a"
    return kube, controller, clock


def test_a_not_ready_node_fails_no_simulated_vmi() -> None:
    kube, controller, _ = lost_node_world()
    kube.merge_patch("/api/v1/nodes/node-a/status", {"status": {"conditions": [
        ready_condition(None, now_iso())]}})  # fmt: skip
    passes(controller, 4)
    assert kube.get(VMI.path("ns", "vm"))["status"]["phase"] == "Running"


def test_a_fenced_node_fails_its_simulated_vmi_and_the_vm_restarts_elsewhere() -> None:
    kube, controller, _ = lost_node_world(restart_delay=0.0)
    uid = kube.get(VMI.path("ns", "vm"))["metadata"]["uid"]
    fence = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown"}
    kube.merge_patch("/api/v1/nodes/node-a/status", {"status": {"conditions": [
        ready_condition(None, now_iso())]}})  # fmt: skip
    kube.merge_patch(
        "/api/v1/nodes/node-a", {"spec": {"taints": [{**fence, "effect": "NoExecute"}]}}
    )
    passes(controller, 1)
    failed = kube.get(VMI.path("ns", "vm"))
    assert failed["status"]["phase"] == "Failed" and "reason" not in failed["status"]  # KubeVirt
    passes(controller, 8)
    again = kube.get(VMI.path("ns", "vm"))
    assert again["metadata"]["uid"] != uid
    assert (again["status"]["phase"], again["status"]["nodeName"]) == ("Running", "node-b")


def test_a_stale_virt_handler_heartbeat_fails_a_simulated_vmi_node_unresponsive() -> None:
    kube, controller, clock = lost_node_world(heartbeat_timeout=60.0, heartbeat_interval=1e9)
    clock[0] += 30
    passes(controller, 1)
    assert kube.get(VMI.path("ns", "vm"))["status"]["phase"] == "Running"
    clock[0] += 31
    passes(controller, 1)
    vmi = kube.get(VMI.path("ns", "vm"))
    assert (vmi["status"]["phase"], vmi["status"]["reason"]) == ("Failed", "NodeUnresponsive")


HEARTBEAT = "kubevirt.io/heartbeat"
