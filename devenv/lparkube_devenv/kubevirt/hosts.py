"""The machines behind the stand-in's Nodes: each one's kubelet and virt-handler, and its guests.

With `Settings.guest_runtime == "qemu"` a VMI scheduled to a node gets a virt-launcher Pod
(`virt_launcher.launcher_pod`), and the node's "kubelet" runs it: once every PVC of the pod is
attached to the node (`storage`), it starts the guest (one QEMU process, `guests`), reports the
pod Running, and reports it Succeeded or Failed when the guest ends. A pod being deleted has its
guest powered off (the grace period, then killed) before the kubelet confirms the deletion.

Each powered node's virt-handler refreshes the `kubevirt.io/heartbeat` annotation every
`heartbeat_interval`. Powering a node off (`power_off`) kills its guests at once and silences its
kubelet and virt-handler: nothing on that node is reported any more, its pods stay in the API as
they were, and after `node_monitor_grace` the node-lifecycle controller's part (the local
control plane runs none) turns its Ready condition Unknown. What follows is KubeVirt's and
Kubernetes' own rules, played by the VMI controller (`vmi.node_loss`) and the real
kube-controller-manager; see docs/kubevirt-standin.md, "Node loss".
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kubernetes.client import ApiException

from ..qemu.machine import whole
from .api import IP_ANNOTATION, log, now_iso
from .logic import allocate_ip, dig
from .nodes import NODES_PATH, set_ready
from .virt_launcher import COMPUTE, guest_grace, owned_by

if TYPE_CHECKING:
    from .controller import Controller, World

HEARTBEAT_ANNOTATION = "kubevirt.io/heartbeat"


class Guest(Protocol):
    """One running guest as the kubelet and virt-handler see it (a QEMU process)."""

    def state(self) -> str: ...  # starting, running, paused, shutdown, panicked, crashed, stopped

    def stop(self, grace: float) -> None: ...  # power off, destroy after `grace` (returns at once)

    def kill(self) -> None: ...  # destroy the domain at once

    def close(self) -> None: ...  # release what is left of an ended guest (sockets, threads)

    def pause(self) -> None: ...

    def unpause(self) -> None: ...

    def reboot_soft(self) -> None: ...  # the guest's own reboot (Ctrl-Alt-Del)

    def memory_dump(self, path: Path) -> None: ...  # starts dump-guest-memory (ELF)

    def dump_state(self) -> str: ...  # active, completed, failed (QMP query-dump)

    def expand_disks(self, capacities: Mapping[str, int]) -> list[str]: ...  # disk -> bytes

    def cpus_stopped(self) -> AbstractContextManager[None]: ...  # disks still, for a snapshot

    def cut_network(self) -> None: ...  # its NICs' links down: it reaches nothing any more


GuestFactory = Callable[[dict, dict, str], Guest]  # (vmi, pod, node) -> a started guest


class VolumeNotReadyError(Exception):
    """What the guest needs is not there yet (a Secret, a ConfigMap): try again later."""


ENDED = ("shutdown", "panicked", "crashed", "stopped")


def no_real_guests(vmi: dict, pod: dict, node: str) -> Guest:
    raise RuntimeError("this stand-in was started without a guest launcher (no QEMU runtime)")


@dataclass
class NodeHost:
    name: str
    powered: bool = True  # False: nobody there reports (no power, or cut off the network)
    isolated: bool = False  # cut off the network: its guests run on, unseen
    silent_since: float | None = None  # when its kubelet stopped reporting
    next_heartbeat: float = 0.0


@dataclass
class Hosts:
    """Node machines and the guests they run, keyed by launcher pod uid."""

    launch: GuestFactory
    clock: Callable[[], float] = time.monotonic
    nodes: dict[str, NodeHost] = field(default_factory=dict)
    guests: dict[str, Guest] = field(default_factory=dict)  # by pod uid
    vmi_of_pod: dict[str, str] = field(default_factory=dict)  # pod uid -> VMI uid
    node_of_pod: dict[str, str] = field(default_factory=dict)  # pod uid -> node name
    dumps: dict[tuple[str, str], str] = field(default_factory=dict)  # (VM uid, claim) -> file
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def host(self, name: str) -> NodeHost:
        return self.nodes.setdefault(name, NodeHost(name))

    def guest_of(self, vmi_uid: str) -> Guest | None:
        """The live guest of a VMI (subresources act on it), if its node runs one."""
        with self._lock:
            for pod_uid, owner in self.vmi_of_pod.items():
                if owner == vmi_uid and pod_uid in self.guests:
                    return self.guests[pod_uid]
        return None

    # --- power ---------------------------------------------------------------------------------

    def power_off(self, name: str) -> int:
        """The node loses power: its guests die at once; returns how many were killed."""
        host = self.host(name)
        host.powered, host.silent_since = False, self.clock()
        with self._lock:
            doomed = [
                uid for uid, guest in self.guests.items() if self.node_of_pod.get(uid) == name
            ]
            victims = [self.guests.pop(uid) for uid in doomed]
        for guest in victims:
            guest.kill()
        log.info("node %s powered off; %d guest(s) killed", name, len(victims))
        return len(victims)

    def isolate(self, name: str) -> None:
        """The node is cut off the network: its kubelet and virt-handler go silent, as when it
        loses power, but its guests run on (nothing there hears a pod's deletion either)."""
        host = self.host(name)
        host.powered, host.isolated, host.silent_since = False, True, self.clock()
        with self._lock:
            cut = [g for uid, g in self.guests.items() if self.node_of_pod.get(uid) == name]
        for guest in cut:
            guest.cut_network()
        log.info("node %s cut off the network; its %d guest(s) run on", name, len(cut))

    def power_on(self, name: str) -> None:
        host = self.host(name)
        host.powered, host.silent_since, host.next_heartbeat = True, None, 0.0
        host.isolated = False

    def stop_all(self) -> None:
        """Kill every guest (the stand-in is stopping)."""
        with self._lock:
            victims = list(self.guests.values())
            self.guests.clear()
        for guest in victims:
            guest.kill()

    # --- the pass ------------------------------------------------------------------------------

    def reconcile(self, ctl: Controller, world: World) -> None:
        now = self.clock()
        for node in world.nodes.values():
            self._node(ctl, node, now)
        live = set()
        for pod in world.launcher_pods:
            live.add(dig(pod, "metadata", "uid"))
            host = self.host(dig(pod, "spec", "nodeName") or "")
            if host.powered:
                self._pod(ctl, world, pod)
        self._reap_orphans(live)

    def _node(self, ctl: Controller, node: dict, now: float) -> None:
        host = self.host(dig(node, "metadata", "name"))
        if host.powered:
            if now >= host.next_heartbeat:
                host.next_heartbeat = now + ctl.settings.heartbeat_interval
                _heartbeat(ctl, node)
            return
        grace = ctl.settings.node_monitor_grace
        ready = next(
            (
                c
                for c in dig(node, "status", "conditions", default=[]) or []
                if c.get("type") == "Ready"
            ),
            {},
        )
        silent_long = host.silent_since is not None and now - host.silent_since >= grace
        if silent_long and ready.get("status") != "Unknown":
            set_ready(ctl.kube, host.name, None, reason="NodeStatusUnknown")
            ctl.wrote()

    def _pod(self, ctl: Controller, world: World, pod: dict) -> None:
        uid = dig(pod, "metadata", "uid")
        guest = self.guests.get(uid)
        if dig(pod, "metadata", "deletionTimestamp"):
            self._terminate(ctl, pod, guest)
            return
        if guest is not None:
            self._report_end(ctl, pod, guest)
            self._expand_disks(world, uid, guest)
            return
        current = dig(pod, "status", "phase")
        if current == "Running":  # its guest died unreported (power loss, a stand-in restart)
            _pod_ended(
                ctl, pod, "Failed", code=137, reason="ContainerStatusUnknown", message="crashed"
            )
        elif current not in ("Succeeded", "Failed"):
            self._start(ctl, world, pod)

    def _start(self, ctl: Controller, world: World, pod: dict) -> None:
        owner = next(iter(dig(pod, "metadata", "ownerReferences", default=[]) or []), {})
        vmi = next(
            (v for v in world.vmis.values() if dig(v, "metadata", "uid") == owner.get("uid")),
            None,
        )
        if vmi is None or not owned_by(pod, str(owner.get("uid"))):
            return
        namespace, name = dig(pod, "metadata", "namespace"), dig(pod, "metadata", "name")
        ctl.storage.mount_volumes(namespace, name)  # the kubelet takes the pod's volumes in use
        ready = ctl.storage.volume_ready(namespace, name)
        if not ready.ok:
            _pod_waiting(ctl, pod, ready.reason, ready.message)
            return
        node = dig(pod, "spec", "nodeName")
        address = guest_address(world, vmi, ctl.settings.guest_network)  # the VMI reports it
        pod = {**pod, "status": {**(pod.get("status") or {}), "podIP": address}}
        try:
            guest = self.launch(vmi, pod, node)
        except (
            VolumeNotReadyError
        ) as waiting:  # a Secret not there yet: the kubelet retries the mount
            _pod_waiting(ctl, pod, "ContainerCreating", str(waiting))
            return
        except Exception as error:  # a bad spec or a missing file: the pod fails, as on a node
            _pod_ended(ctl, pod, "Failed", code=1, reason="StartError", message=str(error))
            return
        uid = dig(pod, "metadata", "uid")
        with self._lock:
            self.guests[uid] = guest
            self.vmi_of_pod[uid] = str(owner.get("uid"))
            self.node_of_pod[uid] = node
        _pod_running(ctl, pod, address)

    def _expand_disks(self, world: World, pod_uid: str, guest: Guest) -> None:
        """virt-launcher's sync with ExpandDisks: a running guest's PVC disks follow their
        claims' grown capacity (the volume was expanded first, by the resizer)."""
        if guest.state() in ENDED:
            return
        vmi_uid = self.vmi_of_pod.get(pod_uid)
        vmi = next((v for v in world.vmis.values() if dig(v, "metadata", "uid") == vmi_uid), None)
        capacities = claim_disk_capacities(vmi, world.pvcs) if vmi is not None else {}
        if capacities:
            guest.expand_disks(capacities)

    def _report_end(self, ctl: Controller, pod: dict, guest: Guest) -> None:
        state = guest.state()
        if state not in ENDED:
            return
        uid = dig(pod, "metadata", "uid")
        with self._lock:
            self.guests.pop(uid, None)
        guest.close()
        _unmount(ctl, pod)
        clean = state in ("shutdown", "stopped")
        phase = "Succeeded" if clean else "Failed"
        _pod_ended(ctl, pod, phase, code=0 if clean else 1, reason=_REASONS[state], message=state)

    def _terminate(self, ctl: Controller, pod: dict, guest: Guest | None) -> None:
        """A pod being deleted: power its guest off, then confirm the deletion (grace 0)."""
        if guest is not None and guest.state() not in ENDED:
            guest.stop(guest_grace(pod))
            return
        uid = dig(pod, "metadata", "uid")
        with self._lock:
            self.guests.pop(uid, None)
        _unmount(ctl, pod)
        with contextlib.suppress(ApiException):
            if ctl.kube.delete(_pod_path(pod), uid=uid, grace=0):
                ctl.wrote()

    def _reap_orphans(self, live: Iterable[str]) -> None:
        """A guest whose pod is gone from the API (force-deleted) is killed by its kubelet."""
        keep = set(live)
        with self._lock:
            cut_off = {n for n, host in self.nodes.items() if host.isolated}
            orphans = [
                uid
                for uid in self.guests
                if uid not in keep and self.node_of_pod.get(uid) not in cut_off
            ]
            victims = [self.guests.pop(uid) for uid in orphans]
        for guest in victims:
            guest.kill()


_REASONS = {
    "shutdown": "Completed",
    "stopped": "Completed",
    "panicked": "GuestPanicked",
    "crashed": "Error",
}


def claim_disk_capacities(vmi: dict, pvcs: Mapping[tuple[str, str], dict]) -> dict[str, int]:
    """Each writable disk of the VMI backed by a PVC (or a DataVolume's PVC), and the capacity
    its claim reports (``status.capacity.storage``), in bytes: what the guest's disk may grow to.
    A claim not found or without a capacity gives nothing for its disk."""
    namespace = dig(vmi, "metadata", "namespace")
    spec = vmi.get("spec") or {}
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    capacities = {}
    for disk in dig(spec, "domain", "devices", "disks", default=[]) or []:
        name = disk.get("name")
        volume = volumes.get(name) or {}
        source = volume.get("persistentVolumeClaim") or {}
        claim = source.get("claimName") or (volume.get("dataVolume") or {}).get("name")
        readonly = source.get("readOnly") or (disk.get("disk") or {}).get("readonly")
        if not claim or readonly or "cdrom" in disk or "lun" in disk:
            continue
        size = dig(pvcs.get((namespace, claim)) or {}, "status", "capacity", "storage")
        if size:
            capacities[name] = whole(size)
    return capacities


def guest_address(world: World, vmi: dict, network: str) -> str:
    """The launcher pod's address: the annotated one, else a free one of `network` (loopback:
    QEMU forwards it to the guest, so it must be this machine's)."""
    annotations = dig(vmi, "metadata", "annotations", default={}) or {}
    if annotations.get(IP_ANNOTATION):
        return str(annotations[IP_ANNOTATION])
    uid = str(dig(vmi, "metadata", "uid", default=""))
    return allocate_ip(uid, world.used_ips(), ip_network(network))


def _unmount(ctl: Controller, pod: dict) -> None:
    """The guest is gone: the kubelet no longer uses the pod's volumes (they may detach)."""
    ctl.storage.unmount_volumes(dig(pod, "metadata", "namespace"), dig(pod, "metadata", "name"))


def _heartbeat(ctl: Controller, node: dict) -> None:
    """virt-handler's heartbeat: the annotation, and the node schedulable again."""
    body = {"metadata": {"annotations": {HEARTBEAT_ANNOTATION: now_iso()}}}
    with contextlib.suppress(ApiException):
        ctl.kube.merge_patch(f"{NODES_PATH}/{dig(node, 'metadata', 'name')}", body)


def _pod_path(pod: dict) -> str:
    meta = pod["metadata"]
    return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"


def _patch_pod_status(ctl: Controller, pod: dict, status: dict) -> None:
    with contextlib.suppress(ApiException):
        ctl.kube.merge_patch(_pod_path(pod) + "/status", {"status": status})
        ctl.wrote()


def _compute_status(pod: dict, state: dict, *, ready: bool) -> dict:
    """The `compute` container's status as a kubelet reports it."""
    return {
        "name": COMPUTE,
        "ready": ready,
        "restartCount": 0,
        "image": dig(pod, "spec", "containers", default=[{}])[0].get("image"),
        "imageID": "",
        "state": state,
    }


def _pod_waiting(ctl: Controller, pod: dict, reason: str, message: str) -> None:
    statuses = dig(pod, "status", "containerStatuses", default=[]) or []
    waiting = (statuses[0].get("state") or {}).get("waiting") if statuses else None
    if waiting == {"reason": "ContainerCreating", "message": message}:
        return
    waiting = {"waiting": {"reason": "ContainerCreating", "message": message}}
    container = _compute_status(pod, waiting, ready=False)
    _patch_pod_status(
        ctl,
        pod,
        {
            "phase": "Pending",
            "reason": reason,
            "message": message,
            "containerStatuses": [container],
        },
    )


def _pod_running(ctl: Controller, pod: dict, address: str) -> None:
    now = now_iso()
    container = {
        **_compute_status(pod, {"running": {"startedAt": now}}, ready=True),
        "started": True,
    }
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    _patch_pod_status(
        ctl,
        pod,
        {
            "phase": "Running",
            "podIP": address,
            "podIPs": [{"ip": address}],
            "reason": None,
            "message": None,
            "startTime": now,
            "conditions": conditions,
            "containerStatuses": [container],
        },
    )


def _pod_ended(
    ctl: Controller, pod: dict, phase: str, *, code: int, reason: str, message: str
) -> None:
    now = now_iso()
    terminated = {"exitCode": code, "reason": reason, "message": message, "finishedAt": now}
    container = _compute_status(pod, {"terminated": terminated}, ready=False)
    _patch_pod_status(ctl, pod, {"phase": phase, "containerStatuses": [container]})
