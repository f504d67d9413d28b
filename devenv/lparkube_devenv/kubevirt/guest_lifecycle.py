"""The VMI lifecycle when VMIs run as real guests (`Settings.guest_runtime == "qemu"`).

virt-controller's part, read off KubeVirt's `pkg/virt-controller/watch/vmi/lifecycle.go` and
`watch/node/node.go`, with the virt-launcher Pod as the link to the node:

* Pending: the stand-in picks the node (there is no kube-scheduler) and creates the launcher
  Pod bound to it -> Scheduling.
* Scheduling: waits for the pod to run (its volumes attached, its guest started by the node's
  kubelet, `hosts`); a pod that is gone or down fails the VMI -> Scheduled once it runs.
* Scheduled -> Running once QEMU runs the guest.
* Running follows the guest: paused (condition `Paused`), powered off by the guest ->
  Succeeded, panicked -> a Warning event `GuestPanicked` and Failed (libvirt's
  `on_crash=destroy`: the memory is gone), QEMU gone -> Failed; the launcher pod gone from the
  API -> Failed, as virt-controller does.
* Deletion: every VMI carries KubeVirt's finalizer; a deleted one has its pods deleted and
  goes only once none is left (`_deleting`), a final one loses the finalizer then too.
* Node loss: nothing here looks at the node's Ready condition. A VMI is failed with reason
  `NodeUnresponsive` only when its node's virt-handler heartbeat is older than
  `heartbeat_timeout` and it has no live launcher pod (KubeVirt's node controller), or through
  the rule above once its pod has been deleted (after fencing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import vmi as vmis
from .api import now_iso
from .hosts import ENDED
from .logic import (
    FINAL_PHASES,
    choose_node,
    condition_true,
    dig,
    memory_dump_file,
    missing_claims,
    phase,
    set_condition,
)
from .virt_launcher import grace_seconds, launcher_pod, owned_by, pod_alive

if TYPE_CHECKING:
    from .controller import Controller, World

FINALIZER = (
    "kubevirt.io/foregroundDeleteVirtualMachine"  # KubeVirt's VirtualMachineInstanceFinalizer
)


def reconcile(ctl: Controller, world: World, vmi: dict) -> None:
    pods = pods_of(world, vmi)
    if dig(vmi, "metadata", "deletionTimestamp"):
        _deleting(ctl, world, vmi, pods)
        return
    if vmis.orphaned(world, vmi):
        ctl.delete(vmis.path_of(vmi), vmi)
        return
    current = phase(vmi)
    if current in FINAL_PHASES:
        _delete_pods(ctl, pods)
        _release(ctl, vmi, pods)
        return
    pod = current_pod(vmi, pods)
    if current in ("", "Pending"):
        _place(ctl, world, vmi, pods)
    elif current == "Scheduling":
        _await_pod(ctl, vmi, pod)
    elif current == "Scheduled":
        _await_guest(ctl, world, vmi, pod)
    elif current == "Running":
        _follow(ctl, world, vmi, pod)


def pods_of(world: World, vmi: dict) -> list[dict]:
    uid = str(dig(vmi, "metadata", "uid"))
    namespace = dig(vmi, "metadata", "namespace")
    return [
        p
        for p in world.launcher_pods
        if dig(p, "metadata", "namespace") == namespace and owned_by(p, uid)
    ]


def current_pod(vmi: dict, pods: list[dict]) -> dict | None:
    """KubeVirt's CurrentVMIPod: the newest of its pods on the VMI's node (any node before it
    has one), terminating or not: a pod being deleted still exists until it is gone."""
    node = dig(vmi, "status", "nodeName")
    mine = [p for p in pods if not node or dig(p, "spec", "nodeName") == node]
    return max(mine, key=lambda p: str(dig(p, "metadata", "creationTimestamp") or ""), default=None)


def _deleting(ctl: Controller, world: World, vmi: dict, pods: list[dict]) -> None:
    """A deleted VMI stays (its finalizer) until no pod of it is left: virt-controller deletes
    its pods (deleteAllMatchingPods); a running guest is powered off by the pod's deletion and
    the VMI follows it; a VMI left without a pod turns Failed; a final one without pods loses
    the finalizer, and the API server removes it. So a VMI on a lost node stays until the node
    is fenced and its pod force-deleted, as in KubeVirt."""
    _delete_pods(ctl, pods)
    current = phase(vmi)
    if current in FINAL_PHASES:
        _release(ctl, vmi, pods)
    elif not pods:
        vmis.fail_without_pod(ctl, vmi)
    elif current == "Running":
        _follow(ctl, world, vmi, current_pod(vmi, pods))


def _release(ctl: Controller, vmi: dict, pods: list[dict]) -> None:
    """A final VMI whose pods are all gone loses its finalizer (KubeVirt's lifecycle.go)."""
    finalizers = dig(vmi, "metadata", "finalizers", default=[]) or []
    if pods or FINALIZER not in finalizers:
        return
    kept = [f for f in finalizers if f != FINALIZER]
    ctl.patch(vmis.path_of(vmi), vmi, {"metadata": {"finalizers": kept or None}})


def _place(ctl: Controller, world: World, vmi: dict, pods: list[dict]) -> None:
    if phase(vmi) == "":
        # virt-api's mutating webhook adds the finalizer to every new VMI; the stand-in has no
        # webhook, so its first pass does
        finalizers = dig(vmi, "metadata", "finalizers", default=[]) or []
        meta = {} if FINALIZER in finalizers else {"finalizers": [*finalizers, FINALIZER]}
        vmis.set_phase(ctl, vmi, "Pending", {}, **meta)
        return
    spec = dig(vmi, "spec", default={}) or {}
    if ctl.settings.require_pvcs:
        missing = missing_claims(spec, vmis.claim_modes(world, dig(vmi, "metadata", "namespace")))
        if missing:
            vmis.unschedulable(
                ctl, vmi, "PvcNotFound", f'persistentvolumeclaim "{missing[0]}" not found'
            )
            return
    if not pods:
        node = choose_node(world.nodes.values(), spec, world.load())
        if node is None:
            message = f"0/{len(world.nodes)} nodes are available for the VMI"
            vmis.unschedulable(ctl, vmi, "Unschedulable", message)
            return
        body = launcher_pod(vmi, node)
        if ctl.create(f"/api/v1/namespaces/{body['metadata']['namespace']}/pods", body) is None:
            return
        ctl.event(
            vmi,
            "SuccessfulCreate",
            f"Created virtual machine pod {body['metadata']['generateName']}",
        )
    vmis.set_phase(ctl, vmi, "Scheduling", {})


def _await_pod(ctl: Controller, vmi: dict, pod: dict | None) -> None:
    if pod is None or not pod_alive(pod):
        vmis.fail_without_pod(ctl, vmi)
        return
    if dig(pod, "status", "phase") != "Running":
        _mirror_waiting(ctl, vmi, pod)
        return
    node = dig(pod, "spec", "nodeName")
    labels = {**(dig(vmi, "metadata", "labels", default={}) or {}), vmis.NODE_LABEL: node}
    conditions = [
        c
        for c in dig(vmi, "status", "conditions", default=[]) or []
        if c.get("type") not in ("PodScheduled", "Synchronized")
    ]
    status = {"nodeName": node, "conditions": conditions}
    if vmis.set_phase(ctl, vmi, "Scheduled", status, labels=labels):
        ctl.event(vmi, "SuccessfulCreate", f"Created virtual machine pod on node {node}")


def _mirror_waiting(ctl: Controller, vmi: dict, pod: dict) -> None:
    """A pod that cannot start (a volume attached elsewhere): the reason shows on the VMI."""
    reason, message = dig(pod, "status", "reason"), dig(pod, "status", "message")
    if not reason:
        return
    current = next(
        (
            c
            for c in dig(vmi, "status", "conditions", default=[]) or []
            if c.get("type") == "Synchronized"
        ),
        {},
    )
    if (current.get("reason"), current.get("message")) == (reason, message):
        return
    conditions = set_condition(
        dig(vmi, "status", "conditions"),
        "Synchronized",
        "False",
        now_iso(),
        reason=reason,
        message=message,
    )
    ctl.patch(vmis.path_of(vmi), vmi, {"status": {"conditions": conditions}})


def _await_guest(ctl: Controller, world: World, vmi: dict, pod: dict | None) -> None:
    if pod is None or not pod_alive(pod):
        vmis.fail_without_pod(ctl, vmi)
        return
    guest = ctl.hosts.guest_of(str(dig(vmi, "metadata", "uid")))
    if guest is not None and guest.state() in ("running", "paused"):
        vmis.start(ctl, world, vmi)


def _follow(ctl: Controller, world: World, vmi: dict, pod: dict | None) -> None:
    if pod is None:
        vmis.fail_without_pod(ctl, vmi)
        return
    node = dig(vmi, "status", "nodeName")
    if vmis.node_unresponsive(ctl, world.nodes.get(node)) and not pod_alive(pod):
        vmis.fail_unresponsive(ctl, vmi)
        return
    if not ctl.hosts.host(node).powered:
        return  # nobody on that node reports anything
    guest = ctl.hosts.guest_of(str(dig(vmi, "metadata", "uid")))
    state = guest.state() if guest is not None else _ended_state(pod)
    if state == "panicked":  # virt-launcher's event, then the domain is gone (on_crash=destroy)
        ctl.event(vmi, "GuestPanicked", "GuestPanicked (details unavailable)", "Warning")
    if state in ("panicked", "crashed"):
        vmis.fail_crashed(ctl, vmi)
    elif state in ("shutdown", "stopped"):
        vmis.stop(ctl, vmi)
    elif state in ("running", "paused"):
        _sync_paused(ctl, world, vmi, state == "paused")


def _ended_state(pod: dict) -> str:
    """The guest's end as its pod reported it (after a stand-in restart, say)."""
    statuses = dig(pod, "status", "containerStatuses", default=[]) or []
    terminated = (statuses[0].get("state") or {}).get("terminated") if statuses else None
    if not terminated:
        return "crashed" if dig(pod, "status", "phase") in ("Failed", "Succeeded") else "unknown"
    return str(terminated.get("message") or "crashed")


def _sync_paused(ctl: Controller, world: World, vmi: dict, paused: bool) -> None:
    if paused != condition_true(vmi, "Paused"):
        conditions = vmis.paused_conditions(vmi, paused, now_iso())
        ctl.patch(vmis.path_of(vmi), vmi, {"status": {"conditions": conditions}})
        return
    vmis.refresh(ctl, world, vmi)


def _delete_pods(ctl: Controller, pods: list[dict]) -> None:
    """virt-controller deletes the launcher pods of a VMI that reached a final phase."""
    for pod in pods:
        if not dig(pod, "metadata", "deletionTimestamp"):
            meta = pod["metadata"]
            ctl.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", pod)


def request_stop(ctl: Controller, vmi: dict) -> None:
    """A stop (run strategy, `stop`): virt-handler powers the guest off within its grace period.

    The VMI turns Succeeded once the guest is down (`_follow`). A VMI whose node is off or cut
    off the network cannot be powered off by anyone: it is deleted, as KubeVirt's VM
    controller stops a VMI (`stopVMI`), and stays with its finalizer until its pod is gone
    (`_deleting`).
    """
    node = dig(vmi, "status", "nodeName")
    if node and not ctl.hosts.host(node).powered:  # off, or cut off: its guest runs on unseen
        ctl.delete(vmis.path_of(vmi), vmi)
        return
    guest = ctl.hosts.guest_of(str(dig(vmi, "metadata", "uid")))
    if guest is not None:
        if guest.state() not in ENDED:
            guest.stop(grace_seconds(vmi))
        return
    vmis.stop(ctl, vmi)


def dump_progress(ctl: Controller, vm: dict, vmi: dict, request: dict) -> dict:
    """InProgress: virt-handler dumps the guest's memory into the claim's file system.

    As KubeVirt's virt-launcher does it (libvirt core dump, memory only): QEMU's
    `dump-guest-memory` in ELF format, without paging, into
    `<vm>-<claim>-<YYYYMMDD-HHMMSS>.memory.dump`. Returns `request` itself while it runs.
    """
    guest = ctl.hosts.guest_of(str(dig(vmi, "metadata", "uid")))
    if guest is None:
        return {**request, "phase": "Failed", "message": "the VMI has no running guest"}
    claim = request.get("claimName", "")
    key = (str(dig(vm, "metadata", "uid")), claim)
    started = ctl.hosts.dumps.get(key)
    if started is None:
        name = memory_dump_file(dig(vm, "metadata", "name"), claim, now_iso())
        directory = ctl.storage.backing(dig(vm, "metadata", "namespace"), claim).path
        guest.memory_dump(directory / name)
        ctl.hosts.dumps[key] = name
        return {**request, "startTimestamp": request.get("startTimestamp") or now_iso()}
    state = guest.dump_state()
    if state == "active":
        return request
    ctl.hosts.dumps.pop(key, None)
    if state == "completed":
        return {**request, "phase": "Unmounting", "fileName": started}
    return {**request, "phase": "Failed", "message": f"dump-guest-memory: {state}"}
