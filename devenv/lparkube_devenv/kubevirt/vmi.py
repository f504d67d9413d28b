"""VMI lifecycle as virt-controller and virt-handler drive it.

Pending -> Scheduling -> Scheduled (node chosen) -> Running (addresses, conditions), one step per
pass. Running VMIs follow their node as KubeVirt's do (`node_loss`): a NotReady node fails
nothing; a stale virt-handler heartbeat or a fence (an untolerated NoExecute taint) does.
Tests may flip the guest agent with the AGENT_ANNOTATION annotation or report another IP
with IP_ANNOTATION; POWER_ANNOTATION "off" is the guest powering itself off (a shutdown or a
suspend to disk from inside): the VMI Succeeds, as a real guest's does.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from ..vmi_spec import mac_address, networks_of
from .api import (
    AGENT_ANNOTATION,
    IP_ANNOTATION,
    LAUNCHER_IMAGE,
    POWER_ANNOTATION,
    QEMU,
    VMI,
    now_iso,
    parse_iso,
    runtime_of,
)
from .logic import (
    FINAL_PHASES,
    allocate_ip,
    choose_node,
    condition_true,
    dig,
    disk_target,
    get_condition,
    live_migratable,
    missing_claims,
    next_phase,
    phase,
    remove_condition,
    set_condition,
    taints,
    tolerates,
)
from .virt_launcher import owned_by

if TYPE_CHECKING:
    from .controller import Controller, World

NODE_LABEL = "kubevirt.io/nodeName"
NODE_UNRESPONSIVE = "NodeUnresponsive"
POD_GONE = "PodGone"  # the stand-in's name for the case; KubeVirt gives no reason
VMI_CRASHED = "The VirtualMachineInstance crashed."  # virt-handler's VMICrashed
HEARTBEAT_ANNOTATION = "kubevirt.io/heartbeat"
GUEST_OS = {
    "id": "fedora",
    "name": "Fedora Linux",
    "prettyName": "Fedora Linux 41 (Cloud Edition)",
    "version": "41 (Cloud Edition)",
    "versionId": "41",
    "kernelRelease": "6.11.4-301.fc41.x86_64",
    "kernelVersion": "#1 SMP PREEMPT_DYNAMIC",
    "machine": "x86_64",
}


def reconcile(ctl: Controller, world: World, vmi: dict) -> None:
    if dig(vmi, "metadata", "deletionTimestamp"):
        return
    if orphaned(world, vmi):
        ctl.delete(path_of(vmi), vmi)  # the garbage collector would, but only after its resync
        return
    if phase(vmi) in FINAL_PHASES:
        return
    current = phase(vmi)
    node_name = dig(vmi, "status", "nodeName")
    if current in ("Scheduled", "Running") and _on_a_lost_node(ctl, world, vmi, node_name):
        return
    if current == "Running":
        if powered_off(vmi):
            stop(ctl, vmi)
        else:
            refresh(ctl, world, vmi)
        return
    step = next_phase(current)
    if step == "Pending":
        set_phase(ctl, vmi, "Pending", {})
    elif step == "Scheduling":
        set_phase(ctl, vmi, "Scheduling", {})
    elif step == "Scheduled":
        schedule(ctl, world, vmi)
    elif step == "Running":
        start(ctl, world, vmi)


def _on_a_lost_node(ctl: Controller, world: World, vmi: dict, node_name: str) -> bool:
    """Failed for a node loss (`node_loss`), or left alone on a powered-off node (nobody there
    reports anything): True when the pass is done with the VMI."""
    lost = node_loss(ctl, world.nodes.get(node_name), vmi)
    if lost == NODE_UNRESPONSIVE:
        fail_unresponsive(ctl, vmi)
    elif lost == POD_GONE:
        fail_without_pod(ctl, vmi)
    return lost is not None or not ctl.hosts.host(node_name).powered


def node_loss(ctl: Controller, node: dict | None, vmi: dict) -> str | None:
    """Why KubeVirt fails a VMI whose node is lost, played for a simulated VMI (it has no
    launcher pod: one is imagined on its node), or None while nothing does. A node that is
    merely NotReady fails nothing.

    * NODE_UNRESPONSIVE: its node's virt-handler heartbeat is older than `heartbeat_timeout`
      (or the node is gone) and it has no live launcher pod, which holds for a simulated VMI:
      virt-controller's node controller fails it.
    * POD_GONE: its node has a NoExecute taint the VMI does not tolerate (a fence:
      node.kubernetes.io/out-of-service): taint eviction deletes the pod, pod GC force-deletes
      it on a lost node, and a running VMI without its pod fails (lifecycle.go).
    """
    if node_unresponsive(ctl, node):
        return NODE_UNRESPONSIVE
    tolerations = dig(vmi, "spec", "tolerations", default=[]) or []
    for taint in taints(node or {}):
        if taint.get("effect") == "NoExecute" and not tolerates(tolerations, taint):
            return POD_GONE
    return None


def node_unresponsive(ctl: Controller, node: dict | None) -> bool:
    """KubeVirt's isNodeUnresponsive: no node, or a virt-handler heartbeat past the timeout."""
    if node is None:
        return True
    stamp = parse_iso(dig(node, "metadata", "annotations", HEARTBEAT_ANNOTATION))
    if stamp is None:
        return False
    return ctl.wall_clock() - stamp.timestamp() > ctl.settings.heartbeat_timeout


def powered_off(vmi: dict) -> bool:
    """The simulated guest powered itself off (POWER_ANNOTATION "off" on the VMI)."""
    annotations = dig(vmi, "metadata", "annotations", default={}) or {}
    return annotations.get(POWER_ANNOTATION) == "off"


def orphaned(world: World, vmi: dict) -> bool:
    """Controlled by a VirtualMachine that no longer exists (same name, other UID, or none)."""
    owner = next(
        (
            o
            for o in dig(vmi, "metadata", "ownerReferences", default=[]) or []
            if o.get("kind") == "VirtualMachine" and o.get("controller")
        ),
        None,
    )
    if owner is None:
        return False
    vm = world.vms.get((dig(vmi, "metadata", "namespace"), owner.get("name")))
    return vm is None or dig(vm, "metadata", "uid") != owner.get("uid")


def _transitions(vmi: dict, new_phase: str, now: str) -> list[dict]:
    stamps = [s for s in dig(vmi, "status", "phaseTransitionTimestamps", default=[]) or []]
    return [*stamps, {"phase": new_phase, "phaseTransitionTimestamp": now}]


def set_phase(ctl: Controller, vmi: dict, new_phase: str, status: dict, **meta) -> bool:
    now = now_iso()
    patch = {
        "status": {
            **status,
            "phase": new_phase,
            "phaseTransitionTimestamps": _transitions(vmi, new_phase, now),
        }
    }
    if meta:
        patch["metadata"] = meta
    return ctl.patch(path_of(vmi), vmi, patch)


def path_of(vmi: dict) -> str:
    return VMI.path(dig(vmi, "metadata", "namespace"), dig(vmi, "metadata", "name"))


def claim_modes(world: World, namespace: str) -> dict[str, list[str]]:
    return {
        name: list(dig(pvc, "spec", "accessModes", default=[]) or [])
        for (ns, name), pvc in world.pvcs.items()
        if ns == namespace
    }


def unschedulable(ctl: Controller, vmi: dict, reason: str, message: str) -> None:
    conditions = dig(vmi, "status", "conditions", default=[]) or []
    current = get_condition(vmi, "PodScheduled") or {}
    if current.get("reason") == reason and current.get("message") == message:
        return
    updated = set_condition(
        conditions, "PodScheduled", "False", now_iso(), reason=reason, message=message
    )
    ctl.patch(path_of(vmi), vmi, {"status": {"conditions": updated}})


def schedule(ctl: Controller, world: World, vmi: dict) -> None:
    """Pick a node like the scheduler would for virt-launcher's pod."""
    namespace = dig(vmi, "metadata", "namespace")
    spec = dig(vmi, "spec", default={}) or {}
    if ctl.settings.require_pvcs:
        missing = missing_claims(spec, claim_modes(world, namespace))
        if missing:
            message = f'persistentvolumeclaim "{missing[0]}" not found'
            unschedulable(ctl, vmi, "PvcNotFound", message)
            return
    node = choose_node(world.nodes.values(), spec, world.load())
    if node is None:
        message = f"0/{len(world.nodes)} nodes are available for the VMI"
        unschedulable(ctl, vmi, "Unschedulable", message)
        return
    labels = {**(dig(vmi, "metadata", "labels", default={}) or {}), NODE_LABEL: node}
    conditions = remove_condition(dig(vmi, "status", "conditions"), "PodScheduled")
    if set_phase(
        ctl, vmi, "Scheduled", {"nodeName": node, "conditions": conditions}, labels=labels
    ):
        world.vmis[(namespace, dig(vmi, "metadata", "name"))] = {
            **vmi,
            "status": {**(vmi.get("status") or {}), "nodeName": node, "phase": "Scheduled"},
        }
        ctl.event(vmi, "SuccessfulCreate", f"Created virtual machine pod on node {node}")


def agent_connected(vmi: dict) -> bool:
    annotations = dig(vmi, "metadata", "annotations", default={}) or {}
    return annotations.get(AGENT_ANNOTATION, "connected") != "disconnected"


def pod_ip(world: World, vmi: dict) -> str:
    """Annotation override, else the launcher pod's address (a real guest's), else the address
    already reported, else a new stable fake one."""
    annotations = dig(vmi, "metadata", "annotations", default={}) or {}
    if annotations.get(IP_ANNOTATION):
        return str(annotations[IP_ANNOTATION])
    uid = str(dig(vmi, "metadata", "uid", default=""))
    for pod in world.launcher_pods:
        if owned_by(pod, uid) and dig(pod, "status", "podIP"):
            return str(pod["status"]["podIP"])
    for iface in dig(vmi, "status", "interfaces", default=[]) or []:
        if isinstance(iface, dict) and iface.get("ipAddress"):
            return iface["ipAddress"]
    return allocate_ip(uid, world.used_ips(), world.pod_network)


def interfaces(world: World, vmi: dict) -> list[dict]:
    spec = dig(vmi, "spec", default={}) or {}
    agent = agent_connected(vmi)
    declared = {
        i.get("name"): i
        for i in dig(spec, "domain", "devices", "interfaces", default=[]) or []
        if isinstance(i, dict)
    }
    uid = str(dig(vmi, "metadata", "uid", default=""))
    result = []
    for index, net in enumerate(networks_of(spec)):
        name = net.get("name")
        entry = {
            "name": name,
            "mac": (declared.get(name) or {}).get("macAddress") or mac_address(f"{uid}/{name}"),
            "infoSource": "domain, guest-agent" if agent else "domain",
            "queueCount": 1,
        }
        if "pod" in net:
            address = pod_ip(world, vmi)
            entry.update({"ipAddress": address, "ipAddresses": [address]})
        if agent:
            entry["interfaceName"] = f"eth{index}"
        result.append(entry)
    return result


def observed(world: World, vmi: dict, now: str) -> dict:
    """Status fields of a running VMI that follow the spec, annotations and conditions."""
    spec = dig(vmi, "spec", default={}) or {}
    conditions = list(dig(vmi, "status", "conditions", default=[]) or [])
    paused = condition_true(vmi, "Paused")
    ready_reason = "PausedByUser" if paused else ""
    conditions = set_condition(
        conditions, "Ready", "False" if paused else "True", now, reason=ready_reason
    )
    modes = claim_modes(world, dig(vmi, "metadata", "namespace"))
    ok, reason, message = live_migratable(spec, modes)
    if runtime_of(vmi, world.guest_runtime) == QEMU:
        ok, reason = False, "RealGuest"
        message = "the stand-in does not live-migrate a VMI that runs as a real guest"
    conditions = set_condition(
        conditions, "LiveMigratable", str(ok), now, reason=reason, message=message
    )
    status: dict = {"interfaces": interfaces(world, vmi)}
    if agent_connected(vmi):
        conditions = set_condition(conditions, "AgentConnected", "True", now)
        status["guestOSInfo"] = GUEST_OS
    else:
        conditions = remove_condition(conditions, "AgentConnected")
        status["guestOSInfo"] = None
    status["conditions"] = conditions
    return status


def _changed(vmi: dict, status: dict) -> bool:
    current = vmi.get("status") or {}
    return any(current.get(k) != v for k, v in status.items() if k != "conditions") or (
        strip_conditions(current.get("conditions")) != strip_conditions(status.get("conditions"))
    )


def strip_conditions(conditions) -> list:
    """Conditions without timestamps, order-independent, for change detection."""
    return sorted(
        (c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
        for c in conditions or []
        if isinstance(c, dict)
    )


def start(ctl: Controller, world: World, vmi: dict) -> None:
    """Scheduled -> Running: the guest boots on its node."""
    now = now_iso()
    spec = dig(vmi, "spec", default={}) or {}
    status = observed(world, vmi, now)
    if dig(spec, "startStrategy") == "Paused":
        status["conditions"] = set_condition(
            status["conditions"],
            "Paused",
            "True",
            now,
            reason="PausedByUser",
            message="VMI was paused by user",
        )
        status["conditions"] = set_condition(
            status["conditions"], "Ready", "False", now, reason="PausedByUser"
        )
    cpu = dig(spec, "domain", "cpu", default={}) or {}
    node = dig(vmi, "status", "nodeName")
    status.update(
        {
            "launcherContainerImageVersion": LAUNCHER_IMAGE,
            "qosClass": "Burstable",
            "migrationMethod": "BlockMigration" if _has_local_disks(spec) else "LiveMigration",
            "migrationTransport": "Unix",
            "activePods": {str(uuid.uuid4()): node},
            "machine": {"type": dig(spec, "domain", "machine", "type") or "q35"},
            "currentCPUTopology": {
                "cores": cpu.get("cores", 1),
                "sockets": cpu.get("sockets", 1),
                "threads": cpu.get("threads", 1),
            },
            "volumeStatus": _volume_status(spec),
            "runtimeUser": 107,
            "selinuxContext": "none",
        }
    )
    if set_phase(ctl, vmi, "Running", status):
        ctl.event(vmi, "Started", "VirtualMachineInstance started.")


def _has_local_disks(spec: dict) -> bool:
    return any("containerDisk" in v or "emptyDisk" in v for v in spec.get("volumes") or [])


def _volume_status(spec: dict) -> list[dict]:
    disks = [d.get("name") for d in dig(spec, "domain", "devices", "disks", default=[]) or []]
    result = []
    for volume in spec.get("volumes") or []:
        name = volume.get("name")
        index = disks.index(name) if name in disks else len(disks)
        entry = {"name": name, "target": disk_target(index)}
        claim = dig(volume, "persistentVolumeClaim", "claimName") or dig(
            volume, "dataVolume", "name"
        )
        if claim:
            entry["persistentVolumeClaimInfo"] = {"claimName": claim}
        result.append(entry)
    return result


def paused_conditions(vmi: dict, paused: bool, now: str) -> list[dict]:
    """The VMI's conditions once it is paused by its user, or unpaused."""
    conditions = dig(vmi, "status", "conditions", default=[]) or []
    if not paused:
        conditions = remove_condition(conditions, "Paused")
        return set_condition(conditions, "Ready", "True", now)
    message = "VMI was paused by user"
    conditions = set_condition(
        conditions, "Paused", "True", now, reason="PausedByUser", message=message
    )
    return set_condition(conditions, "Ready", "False", now, reason="PausedByUser")


def refresh(ctl: Controller, world: World, vmi: dict) -> None:
    """Keep a running VMI's reported state in line with annotations, pauses and PVCs."""
    status = observed(world, vmi, now_iso())
    if _changed(vmi, status):
        ctl.patch(path_of(vmi), vmi, {"status": status})


def _stopped_conditions(vmi: dict, now: str, reason: str, message: str = "") -> list[dict]:
    conditions = remove_condition(dig(vmi, "status", "conditions"), "AgentConnected")
    conditions = remove_condition(conditions, "Paused")
    return set_condition(conditions, "Ready", "False", now, reason=reason, message=message)


def _fail(ctl: Controller, vmi: dict, ready_reason: str, message: str, **status: str) -> bool:
    conditions = _stopped_conditions(vmi, now_iso(), ready_reason, message)
    return set_phase(ctl, vmi, "Failed", {**status, "conditions": conditions})


def fail_crashed(ctl: Controller, vmi: dict) -> None:
    """virt-handler saw the domain end badly (crashed, panicked, its QEMU gone: libvirt's
    shutoff reason Crashed): phase Failed, no reason, its Warning event `Stopped`."""
    if _fail(ctl, vmi, "GuestNotRunning", "Guest VM is not reported as running"):
        ctl.event(vmi, "Stopped", VMI_CRASHED, "Warning")


def fail_without_pod(ctl: Controller, vmi: dict) -> None:
    """virt-controller: a scheduled or running VMI whose launcher pod is gone (or down while
    scheduling) is Failed, with no reason and no event (lifecycle.go)."""
    _fail(ctl, vmi, "PodNotExists", "virt-launcher pod has not yet been scheduled")


def fail_unresponsive(ctl: Controller, vmi: dict) -> None:
    """virt-controller's node controller: reason NodeUnresponsive and its Normal event."""
    node = dig(vmi, "status", "nodeName")
    message = f"virt-handler on node {node} is not responsive, marking VMI as failed"
    if _fail(ctl, vmi, NODE_UNRESPONSIVE, message, reason=NODE_UNRESPONSIVE):
        ctl.event(vmi, NODE_UNRESPONSIVE, message)


def stop(ctl: Controller, vmi: dict) -> None:
    """A requested shutdown: the guest powers off cleanly, phase Succeeded."""
    now = now_iso()
    status = {"conditions": _stopped_conditions(vmi, now, "GuestNotRunning")}
    if set_phase(ctl, vmi, "Succeeded", status):
        ctl.event(vmi, "Stopped", "The VirtualMachineInstance was shut down.")
