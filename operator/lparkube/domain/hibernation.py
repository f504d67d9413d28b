"""HibernationImage decisions as pure functions: whether a partition may hibernate, what its
I/O adapter configuration is, whether a resume may use it, and where a capture or a resume
stands.

Seed 001's hibernation data: the guest's own kernel writes its memory to the partition's paging
LU (in-guest suspend-to-disk onto the swap LU) and powers off; the HibernationImage records that
LU and the adapter configuration a restore needs identical. Resuming is starting the same VM
again with that configuration: the guest's kernel finds the image on the paging disk and
restores it, and the agent's report with the same boot id proves it (docs/api.md).

The controller reads everything once into a :class:`HibernationView`, asks these functions,
carries out the one action they name, and writes the status they return.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lparkube.api.v1alpha1.hibernationimage import CAPTURED, READY, RESUMED
from lparkube.domain.clock import parse_duration, parse_time
from lparkube.domain.conditions import Condition

# --- names (docs/api.md, "HibernationImage"); the conditions are the API's --------------------

__all__ = ["CAPTURED", "READY", "RESUMED"]

# capture steps, in order (status.progress.step)
VALIDATING = "Validating"
SAVING = "Saving"
PREPARING_LU = "PreparingLU"
CAPTURING_ADAPTERS = "CapturingAdapters"
SUSPENDING = "Suspending"
POWERING_OFF = "PoweringOff"
CAPTURE_STEPS = (VALIDATING, SAVING, PREPARING_LU, CAPTURING_ADAPTERS, SUSPENDING, POWERING_OFF)
# resume steps, after the capture's
CHECKING_ADAPTERS = "CheckingAdapters"
STARTING = "Starting"
RESTORING = "Restoring"
RESUME_STEPS = (CHECKING_ADAPTERS, STARTING, RESTORING)

# refusals and outcomes (condition reasons)
PARTITION_NOT_FOUND = "PartitionNotFound"
PARTITION_DELETING = "PartitionDeleting"
NO_PAGING_LU = "NoPagingLU"
EPHEMERAL_DISK = "EphemeralDisk"
PAGING_INACTIVE = "PagingInactive"
AGENT_NOT_CONNECTED = "AgentNotConnected"
VM_NOT_RUNNING = "VMNotRunning"
ALREADY_HIBERNATED = "AlreadyHibernated"
SAVE_FAILED = "SaveFailed"
GUEST_REFUSED = "GuestRefused"
GUEST_FAILED = "HibernationFailed"
DEADLINE_EXCEEDED = "DeadlineExceeded"
IN_PROGRESS = "InProgress"
IMAGE_CAPTURED = "ImageCaptured"
NOT_REQUESTED = "NotRequested"
ADAPTER_CONFIGURATION_CHANGED = "AdapterConfigurationChanged"
IMAGE_NOT_RESTORED = "ImageNotRestored"
IMAGE_RESTORED = "ImageRestored"
NOT_CAPTURED = "NotCaptured"

# agent hibernation states (docs/agent-protocol.md)
AGENT_HIBERNATING = "Hibernating"
AGENT_RESUMED = "Resumed"
AGENT_FAILED = "Failed"

DEFAULT_DEADLINE = "10m"
# Beyond the memory itself the image holds swsusp's header and page maps (a 512 MiB guest's
# need a few hundred KiB); the margin also covers the swap signature page.
IMAGE_MARGIN_BYTES = 16 * 2**20
FINAL_VMI_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Refusal:
    """Why the image cannot be made (or used) now: a condition reason and a message."""

    reason: str
    message: str


@dataclass(frozen=True)
class HibernationView:
    """What one reconcile read: the image, its Partition, VM and VMI, other images of the
    same partition, and the SaveEvent run first (any may be missing)."""

    image: Mapping[str, Any]
    partition: Mapping[str, Any] | None = None
    vm: Mapping[str, Any] | None = None
    vmi: Mapping[str, Any] | None = None
    siblings: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    save_event: Mapping[str, Any] | None = None

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.image.get("spec") or {}

    @property
    def status(self) -> Mapping[str, Any]:
        return self.image.get("status") or {}

    @property
    def partition_status(self) -> Mapping[str, Any]:
        return (self.partition or {}).get("status") or {}

    @property
    def agent_hibernation(self) -> Mapping[str, Any]:
        """The agent's last hibernate run, when it is this image's."""
        run = (self.partition_status.get("agent") or {}).get("hibernation") or {}
        uid = (self.image.get("metadata") or {}).get("uid")
        return run if uid and run.get("id") == uid else {}


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _condition_true(obj: Mapping[str, Any] | None, type_: str) -> bool:
    conditions = _get(obj, "status", "conditions") or []
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


# --- may it hibernate? (a policy chain: the first check that refuses wins) ---------------------


def _partition_exists(view: HibernationView) -> Refusal | None:
    name = view.spec.get("partitionName")
    if view.partition is None:
        namespace = _get(view.image, "metadata", "namespace")
        return Refusal(
            PARTITION_NOT_FOUND,
            f'Partition "{name}" not found in namespace {namespace} (an image only names a '
            "Partition of its own namespace)",
        )
    if _get(view.partition, "metadata", "deletionTimestamp"):
        return Refusal(PARTITION_DELETING, f'Partition "{name}" is being deleted')
    return None


def _has_paging_lu(view: HibernationView) -> Refusal | None:
    if not _get(view.partition_status, "paging", "claimName"):
        return Refusal(
            NO_PAGING_LU,
            "the Partition has no paging LU to write the image to: set spec.paging and "
            "spec.viosClusterName on the Partition and restart its VM",
        )
    return None


def _vm_running(view: HibernationView) -> Refusal | None:
    phase = _get(view.vmi, "status", "phase")
    if phase != "Running":
        return Refusal(VM_NOT_RUNNING, f"the VM is not running (its VMI is {phase or 'absent'})")
    return None


def _agent_connected(view: HibernationView) -> Refusal | None:
    if not _condition_true(view.partition, "AgentConnected"):
        return Refusal(
            AGENT_NOT_CONNECTED,
            "the guest agent is not connected: only the guest's kernel can write the image",
        )
    return None


def _paging_active(view: HibernationView) -> Refusal | None:
    paging = _get(view.partition_status, "agent", "paging") or {}
    if not paging.get("active"):
        detail = paging.get("message") or "the agent reports no active swap on it"
        return Refusal(PAGING_INACTIVE, f"the paging LU is not the guest's swap: {detail}")
    return None


def _no_other_image(view: HibernationView) -> Refusal | None:
    for other in view.siblings:
        if _holds_the_partition(other):
            return Refusal(
                ALREADY_HIBERNATED,
                f'HibernationImage "{_get(other, "metadata", "name")}" of this Partition is '
                "in progress or not yet resumed",
            )
    return None


def _holds_the_partition(image: Mapping[str, Any]) -> bool:
    """An image under way, or captured and not yet resumed (or failed), holds its partition."""
    conditions = {c.get("type"): c for c in _get(image, "status", "conditions") or []}
    captured = conditions.get(CAPTURED) or {}
    if captured.get("status") == "True":
        resumed = conditions.get(RESUMED) or {}
        return resumed.get("status") != "True"
    return captured.get("status") != "False" or captured.get("reason") == IN_PROGRESS


# Volumes whose content KubeVirt makes anew for each VMI: a restored kernel would find them
# changed under its page cache and mounted filesystems.
EPHEMERAL_VOLUMES = ("containerDisk", "emptyDisk", "ephemeral")


def _disks_persist(view: HibernationView) -> Refusal | None:
    spec = _template_spec(view.vm)
    disks = {d.get("name") for d in _get(spec, "domain", "devices", "disks") or []}
    lost = sorted(
        f"{v.get('name')} ({kind})"
        for v in spec.get("volumes") or []
        for kind in EPHEMERAL_VOLUMES
        if kind in v and v.get("name") in disks
    )
    if lost:
        return Refusal(
            EPHEMERAL_DISK,
            f"disk {', '.join(lost)} does not outlive the VMI: the restored kernel would find "
            "it changed; put it on a PersistentVolumeClaim or DataVolume",
        )
    return None


CAPTURE_CHECKS: tuple[Callable[[HibernationView], Refusal | None], ...] = (
    _partition_exists,
    _no_other_image,
    _has_paging_lu,
    _disks_persist,
    _vm_running,
    _agent_connected,
    _paging_active,
)


def capture_refusal(view: HibernationView) -> Refusal | None:
    """The first reason this partition cannot hibernate now, or None."""
    for check in CAPTURE_CHECKS:
        refusal = check(view)
        if refusal is not None:
            return refusal
    return None


def image_bytes_needed(memory_bytes: int) -> int:
    """What the paging LU must hold for the image of a guest of `memory_bytes`."""
    return memory_bytes + IMAGE_MARGIN_BYTES


def deadline_time(image: Mapping[str, Any]) -> datetime | None:
    """When the capture must be done: creation + spec.deadline (None: no creation time)."""
    created = parse_time(_get(image, "metadata", "creationTimestamp"))
    if created is None:
        return None
    return created + parse_duration(_get(image, "spec", "deadline"), DEFAULT_DEADLINE)


def past_deadline(image: Mapping[str, Any], now: datetime) -> bool:
    deadline = deadline_time(image)
    return deadline is not None and now >= deadline


# --- the I/O adapter configuration -------------------------------------------------------------


def _template_spec(vm: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _get(vm, "spec", "template", "spec") or {}


def _volume_source(volume: Mapping[str, Any] | None) -> dict[str, str]:
    """Where a disk's data comes from: its claim, else its volume's kind and name."""
    volume = volume or {}
    if "persistentVolumeClaim" in volume:
        return {"claimName": (volume.get("persistentVolumeClaim") or {}).get("claimName", "")}
    for key, field_ in (
        ("dataVolume", "name"),
        ("secret", "secretName"),
        ("configMap", "name"),
        ("containerDisk", "image"),
    ):
        if key in volume:
            return {"volume": f"{key}/{(volume.get(key) or {}).get(field_, '')}"}
    kinds = sorted(k for k in volume if k != "name")
    return {"volume": kinds[0]} if kinds else {}


def _network_source(network: Mapping[str, Any] | None) -> dict[str, str]:
    network = network or {}
    if "multus" in network:
        return {"network": f"multus/{(network.get('multus') or {}).get('networkName', '')}"}
    return {"network": "pod"} if "pod" in network else {}


def _disk_bus(disk: Mapping[str, Any]) -> str:
    for kind in ("disk", "lun", "cdrom"):
        if kind in disk:
            bus = (disk.get(kind) or {}).get("bus") or "virtio"
            return bus if kind == "disk" else f"{kind}/{bus}"
    return "virtio"


def capture_adapters(
    vm: Mapping[str, Any] | None, vmi: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Each disk (claim, bus, serial, boot order) and interface (MAC, network, model) of the
    VM, keyed by a stable id (`disk/<name>`, `interface/<name>`)."""
    spec = _template_spec(vm)
    devices = _get(spec, "domain", "devices") or {}
    namespace = _get(vm, "metadata", "namespace") or ""
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    networks = {n.get("name"): n for n in spec.get("networks") or []}
    macs = {i.get("name"): i.get("mac") for i in _get(vmi, "status", "interfaces") or []}
    adapters = [
        {
            "id": f"disk/{disk.get('name')}",
            "type": "Disk",
            "name": disk.get("name"),
            "source": _volume_source(volumes.get(disk.get("name"))),
            "bus": _disk_bus(disk),
            "serial": disk.get("serial") or "",
            "bootOrder": disk.get("bootOrder") or 0,
            "clientNamespace": namespace,
        }
        for disk in devices.get("disks") or []
    ]
    adapters += [
        {
            "id": f"interface/{nic.get('name')}",
            "type": "Interface",
            "name": nic.get("name"),
            "source": _network_source(networks.get(nic.get("name"))),
            "macAddress": nic.get("macAddress") or macs.get(nic.get("name")) or "",
            "model": nic.get("model") or "virtio",
            "clientNamespace": namespace,
        }
        for nic in devices.get("interfaces") or []
    ]
    return adapters


def capture_machine(vm: Mapping[str, Any] | None) -> dict[str, str]:
    """What a restore needs identical besides the adapters, each as one canonical string."""
    domain = _get(_template_spec(vm), "domain") or {}
    resources = domain.get("resources") or {}
    memory = _get(domain, "memory", "guest") or _get(resources, "requests", "memory") or ""
    cpu = {
        k: v for k, v in (domain.get("cpu") or {}).items() if k in ("sockets", "cores", "threads")
    }
    cpu_limit = _get(resources, "limits", "cpu") or _get(resources, "requests", "cpu")
    if cpu_limit is not None:
        cpu["resources"] = str(cpu_limit)
    return {
        "machineType": str(_get(domain, "machine", "type") or ""),
        "firmware": _canonical(domain.get("firmware") or {}),
        "memory": str(memory),
        "cpu": _canonical(cpu),
    }


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


ADAPTER_FIELDS = ("type", "source", "bus", "serial", "bootOrder", "macAddress", "model")


def configuration_changes(
    captured_adapters: Sequence[Mapping[str, Any]],
    captured_machine: Mapping[str, str],
    vm: Mapping[str, Any] | None,
) -> list[str]:
    """How the VM's configuration differs from the captured one, in words (empty: none).

    A MAC the VM spec leaves to KubeVirt counts as unchanged: the capture pins it into the
    spec, so a VM whose spec lost it again is a change."""
    now = {a["id"]: a for a in capture_adapters(vm, None)}
    changes = [
        f"{key} changed from {captured_machine.get(key)!r} to {value!r}"
        for key, value in capture_machine(vm).items()
        if captured_machine.get(key) != value
    ]
    for adapter in captured_adapters:
        current = now.pop(adapter["id"], None)
        if current is None:
            changes.append(f"{adapter['id']} was removed")
            continue
        changes += [
            f"{adapter['id']} {key} changed from {adapter.get(key)!r} to {current.get(key)!r}"
            for key in ADAPTER_FIELDS
            if key in adapter and adapter.get(key) != current.get(key)
        ]
    changes += [f"{adapter_id} was added" for adapter_id in sorted(now)]
    return changes


def pinned_macs_patch(vm: Mapping[str, Any], adapters: Sequence[Mapping[str, Any]]) -> list | None:
    """The VM template's interfaces with every captured MAC written in (a JSON patch value),
    or None when the spec already names them all: the restored kernel keeps its NIC's MAC."""
    interfaces = _get(_template_spec(vm), "domain", "devices", "interfaces") or []
    macs = {a["name"]: a.get("macAddress") for a in adapters if a.get("type") == "Interface"}
    pinned = [
        {**nic, "macAddress": macs[nic.get("name")]}
        if not nic.get("macAddress") and macs.get(nic.get("name"))
        else dict(nic)
        for nic in interfaces
    ]
    return pinned if pinned != [dict(n) for n in interfaces] else None


# --- where a capture stands ---------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureOutcome:
    """`done` with the Captured condition, or still waiting (`condition` says for what)."""

    condition: Condition
    done: bool = False


def power_off_outcome(view: HibernationView, now: datetime) -> CaptureOutcome:
    """After the agent took the instruction: the guest writing its image and powering off.

    Captured only once the guest's kernel powered the VM off after accepting this image's
    instruction (the VMI Succeeded); a guest that reported a failure, a VMI that failed, or a
    deadline passed is a failed capture, and the VM is handed back running."""
    run = view.agent_hibernation
    phase = _get(view.vmi, "status", "phase")
    if run.get("state") == AGENT_FAILED:
        message = run.get("message") or "the guest's kernel could not write the image"
        return CaptureOutcome(Condition.of(CAPTURED, False, GUEST_FAILED, message), done=True)
    if phase == "Succeeded":
        return CaptureOutcome(
            Condition.of(
                CAPTURED, True, IMAGE_CAPTURED, "the guest wrote its memory and powered off"
            ),
            done=True,
        )
    if phase == "Failed" or view.vmi is None:
        message = f"the VMI {'failed' if view.vmi else 'disappeared'} before the guest powered off"
        return CaptureOutcome(Condition.of(CAPTURED, False, GUEST_FAILED, message), done=True)
    if past_deadline(view.image, now):
        return CaptureOutcome(
            Condition.of(CAPTURED, False, DEADLINE_EXCEEDED, "the guest did not power off in time"),
            done=True,
        )
    return CaptureOutcome(
        Condition.of(CAPTURED, False, IN_PROGRESS, "the guest is writing its memory to the LU")
    )


def progress(step: str, bytes_written: int | None = None) -> dict[str, Any]:
    """`status.progress` for a step of the capture or the resume."""
    if step in RESUME_STEPS:
        done, total = RESUME_STEPS.index(step), len(RESUME_STEPS)
    elif step in CAPTURE_STEPS:
        done, total = CAPTURE_STEPS.index(step), len(CAPTURE_STEPS)
    else:
        done, total = len(CAPTURE_STEPS), len(CAPTURE_STEPS)
    found: dict[str, Any] = {"step": step, "completedSteps": done, "totalSteps": total}
    if bytes_written is not None:
        found["bytesWritten"] = bytes_written
    return found


# --- resume -------------------------------------------------------------------------------------


def resume_refusal(view: HibernationView) -> Refusal | None:
    """Why the captured image cannot be resumed now (None: start the VM)."""
    if not _condition_true(view.image, CAPTURED):
        return Refusal(NOT_CAPTURED, "the image is not Captured: nothing to resume")
    if view.partition is None or view.vm is None:
        return _partition_exists(view) or Refusal(PARTITION_NOT_FOUND, "the Partition's VM is gone")
    changes = configuration_changes(
        view.status.get("adapters") or [], view.status.get("machine") or {}, view.vm
    )
    if changes:
        return Refusal(
            ADAPTER_CONFIGURATION_CHANGED,
            "the VM no longer has the configuration the image was captured with ("
            + "; ".join(changes[:8])
            + "): put it back, or delete the image to boot afresh",
        )
    return None


def restore_outcome(view: HibernationView) -> Condition:
    """After the VM was started again: the agent's boot id says whether the image came back."""
    agent = view.partition_status.get("agent") or {}
    captured_boot = view.status.get("bootId")
    reported_boot = agent.get("bootId")
    started = parse_time(view.status.get("resumeStartedTime"))
    heard = parse_time(agent.get("lastHeartbeatTime"))
    if not reported_boot or started is None or heard is None or heard < started:
        return Condition.of(RESUMED, False, IN_PROGRESS, "waiting for the guest agent's report")
    if reported_boot != captured_boot:
        return Condition.of(
            RESUMED,
            False,
            IMAGE_NOT_RESTORED,
            f"the guest booted afresh (boot id {reported_boot}, the image's is {captured_boot})",
        )
    return Condition.of(RESUMED, True, IMAGE_RESTORED, "the guest resumed from its image")
