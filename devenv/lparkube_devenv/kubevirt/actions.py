"""What virt-api's subresource endpoints do, on plain dicts.

Each handler validates like virt-api (same conflict messages where we know them), then changes
the VM or VMI the way virt-api does: start/stop flip the run strategy or queue a state change
request for virt-controller, pause/freeze are carried out on the VMI (virt-handler's part).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiException

from .api import AGENT_ANNOTATION, VM, VMI, VMIM, Kube, now_iso
from .logic import (
    condition_true,
    dig,
    is_final,
    memory_dump_claim_refusal,
    phase,
    run_strategy,
)
from .vmi import GUEST_OS, agent_connected, paused_conditions


class StatusError(Exception):
    """An error answered as a Kubernetes Status object."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def body(self) -> dict:
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def not_found(kind: str, name: str) -> StatusError:
    details = {"name": name, "group": "kubevirt.io", "kind": kind}
    return StatusError(404, "NotFound", f'{kind}.kubevirt.io "{name}" not found', details)


def conflict(kind: str, name: str, why: str) -> StatusError:
    details = {"name": name, "group": "kubevirt.io", "kind": kind}
    message = f'Operation cannot be fulfilled on {kind}.kubevirt.io "{name}": {why}'
    return StatusError(409, "Conflict", message, details)


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


VM_NOT_RUNNING = "VM is not running"
VMI_NOT_RUNNING = "VMI is not running"
NO_AGENT = "VMI does not have guest agent connected"


@dataclass
class Call:
    """One subresource request after routing."""

    method: str
    namespace: str
    resource: str  # virtualmachines or virtualmachineinstances
    name: str
    subresource: str
    body: dict = field(default_factory=dict)
    user: str = ""


class Actions:
    """Subresource handlers; kick() tells the controller to look again right away."""

    def __init__(
        self,
        kube: Kube,
        kick: Callable[[], None] = lambda: None,
        guests: Callable[[str], Any] = lambda _uid: None,
    ):
        self.kube, self.kick = kube, kick
        self.guests = guests  # VMI uid -> its real guest (hosts.Guest), when it runs as one
        self.routes: dict[tuple[str, str, str], Callable[[Call], tuple[int, Any]]] = {
            ("PUT", "virtualmachines", "start"): self.start,
            ("PUT", "virtualmachines", "stop"): self.stop,
            ("PUT", "virtualmachines", "restart"): self.restart,
            ("PUT", "virtualmachines", "migrate"): self.migrate,
            ("PUT", "virtualmachines", "memorydump"): self.memory_dump,
            ("PUT", "virtualmachines", "removememorydump"): self.remove_memory_dump,
            ("PUT", "virtualmachines", "addvolume"): self.add_volume,
            ("PUT", "virtualmachines", "removevolume"): self.remove_volume,
            ("GET", "virtualmachines", "expand-spec"): self.expand_spec,
            ("PUT", "virtualmachineinstances", "pause"): self.pause,
            ("PUT", "virtualmachineinstances", "unpause"): self.unpause,
            ("PUT", "virtualmachineinstances", "freeze"): self.freeze,
            ("PUT", "virtualmachineinstances", "unfreeze"): self.unfreeze,
            ("PUT", "virtualmachineinstances", "softreboot"): self.soft_reboot,
            ("PUT", "virtualmachineinstances", "addvolume"): self.add_volume,
            ("PUT", "virtualmachineinstances", "removevolume"): self.remove_volume,
            ("GET", "virtualmachineinstances", "guestosinfo"): self.guest_os_info,
            ("GET", "virtualmachineinstances", "userlist"): self.user_list,
            ("GET", "virtualmachineinstances", "filesystemlist"): self.filesystem_list,
        }

    def handle(self, call: Call) -> tuple[int, Any]:
        """(HTTP code, JSON body or None); raises StatusError."""
        handler = self.routes.get((call.method, call.resource, call.subresource))
        if handler is None:
            if any(r[1:] == (call.resource, call.subresource) for r in self.routes):
                raise StatusError(405, "MethodNotAllowed", f"{call.method} is not supported")
            raise StatusError(
                404, "NotFound", f"the server could not find {call.resource}/{call.subresource}"
            )
        result = handler(call)
        self.kick()
        return result

    # --- object access ------------------------------------------------------------------------

    def vm(self, call: Call) -> dict:
        found = self.kube.get(VM.path(call.namespace, call.name))
        if found is None:
            raise not_found("virtualmachine", call.name)
        return found

    def vmi(self, call: Call, name: str | None = None) -> dict | None:
        return self.kube.get(VMI.path(call.namespace, name or call.name))

    def running_vmi(self, call: Call, why: str = VMI_NOT_RUNNING) -> dict:
        vmi = self.vmi(call)
        if vmi is None:
            raise not_found("virtualmachineinstance", call.name)
        if phase(vmi) != "Running":
            raise conflict("virtualmachineinstance", call.name, why)
        return vmi

    def patch_with_retry(
        self, path: str, build: Callable[[dict], dict], *, status: bool = False
    ) -> None:
        """Read-modify-write guarded by resourceVersion; build() may raise StatusError."""
        for attempt in range(8):
            current = self.kube.get(path)
            if current is None:
                raise StatusError(404, "NotFound", f"{path} not found")
            patch = build(current)
            patch.setdefault("metadata", {})["resourceVersion"] = dig(
                current, "metadata", "resourceVersion"
            )
            try:
                self.kube.merge_patch(path + ("/status" if status else ""), patch)
                return
            except ApiException as error:
                if error.status != 409 or attempt == 7:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def add_requests(self, vm: dict, requests: list[dict]) -> None:
        def build(current: dict) -> dict:
            queued = list(dig(current, "status", "stateChangeRequests", default=[]) or [])
            return {"status": {"stateChangeRequests": queued + requests}}

        self.patch_with_retry(VM.path(*_nn(vm)), build, status=True)

    def set_running(self, vm: dict, running: bool) -> None:
        if dig(vm, "spec", "running") is not None:
            spec = {"running": running}
        else:
            spec = {"runStrategy": "Always" if running else "Halted"}
        self.kube.merge_patch(VM.path(*_nn(vm)), {"spec": spec})

    # --- VM lifecycle ---------------------------------------------------------------------------

    def start(self, call: Call) -> tuple[int, Any]:
        vm, vmi = self.vm(call), self.vmi(call)
        if vmi is not None and not is_final(vmi) and phase(vmi) not in ("", "Unknown"):
            raise conflict("virtualmachine", call.name, "VM is already running")
        strategy = run_strategy(vm)
        data = {"paused": "true"} if call.body.get("paused") else {}
        if strategy == "Halted":
            if data:
                self.add_requests(vm, [{"action": "Start", "data": data}])
            self.set_running(vm, True)
        elif strategy in ("Manual", "RerunOnFailure"):
            if strategy == "RerunOnFailure" and phase(vmi) == "Failed":
                raise conflict(
                    "virtualmachine",
                    call.name,
                    "RerunOnFailure does not support starting VM from failed state",
                )
            requests = [{"action": "Start", **({"data": data} if data else {})}]
            if vmi is not None and is_final(vmi):
                requests.insert(0, {"action": "Stop", "uid": dig(vmi, "metadata", "uid")})
            self.add_requests(vm, requests)
        else:
            raise conflict(
                "virtualmachine", call.name, f"{strategy} does not support manual start requests"
            )
        return 202, None

    def stop(self, call: Call) -> tuple[int, Any]:
        vm, vmi = self.vm(call), self.vmi(call)
        strategy = run_strategy(vm)
        live = vmi is not None and not is_final(vmi)
        if strategy in ("Always", "Once"):
            self.set_running(vm, False)
        elif not live:
            raise conflict("virtualmachine", call.name, VM_NOT_RUNNING)
        elif strategy == "Halted" and call.body.get("gracePeriod") is None:
            raise conflict(
                "virtualmachine",
                call.name,
                "Halted only supports manual stop requests with a shorter graceperiod",
            )
        else:
            self.add_requests(vm, [{"action": "Stop", "uid": dig(vmi, "metadata", "uid")}])
        return 202, None

    def restart(self, call: Call) -> tuple[int, Any]:
        grace = call.body.get("gracePeriodSeconds")
        if isinstance(grace, int) and grace > 0:
            raise bad_request("For force restart, only gracePeriod=0 is supported for now")
        if isinstance(grace, int) and grace < 0:
            raise bad_request("gracePeriod has to be greater or equal to 0")
        vm = self.vm(call)
        strategy = run_strategy(vm)
        if strategy in ("Halted", "Once"):
            raise conflict(
                "virtualmachine", call.name, f"{strategy} does not support manual restart requests"
            )
        vmi = self.vmi(call)
        if vmi is None:
            raise conflict("virtualmachine", call.name, VM_NOT_RUNNING)
        self.add_requests(
            vm, [{"action": "Stop", "uid": dig(vmi, "metadata", "uid")}, {"action": "Start"}]
        )
        return 202, None

    def migrate(self, call: Call) -> tuple[int, Any]:
        self.vm(call)
        vmi = self.vmi(call)
        if vmi is None or phase(vmi) != "Running":
            raise conflict("virtualmachine", call.name, VM_NOT_RUNNING)
        spec: dict[str, Any] = {"vmiName": call.name}
        if isinstance(call.body.get("addedNodeSelector"), dict):
            spec["addedNodeSelector"] = call.body["addedNodeSelector"]
        body = {
            "apiVersion": VMIM.api_version,
            "kind": VMIM.kind,
            "metadata": {"generateName": "kubevirt-migrate-vm-", "namespace": call.namespace},
            "spec": spec,
        }
        if call.body.get("dryRun") != ["All"]:
            self.kube.create(VMIM.path(call.namespace), body)
        return 202, None

    # --- memory dump ------------------------------------------------------------------------------

    def memory_dump(self, call: Call) -> tuple[int, Any]:
        claim = call.body.get("claimName") or ""
        vm = self.vm(call)
        existing = dig(vm, "status", "memoryDumpRequest") or {}
        if not claim and not existing:
            raise bad_request("Memory dump requires claim name to be set")
        claim = claim or existing.get("claimName")
        if existing and existing.get("claimName") != claim:
            why = (
                f"can't request memory dump for pvc [{claim}] while pvc "
                f"[{existing.get('claimName')}] is still associated as the memory dump pvc"
            )
            raise conflict("virtualmachine", call.name, why)
        if existing.get("phase") not in (None, "Completed", "Failed"):
            raise conflict(
                "virtualmachine",
                call.name,
                f"memory dump request for pvc [{claim}] already in progress",
            )
        vmi = self.running_vmi(call)
        pvc = self.kube.get(f"/api/v1/namespaces/{call.namespace}/persistentvolumeclaims/{claim}")
        if pvc is None:
            raise StatusError(404, "NotFound", f'persistentvolumeclaim "{claim}" not found')
        refusal = memory_dump_claim_refusal(vmi.get("spec") or {}, pvc)
        if refusal:
            raise conflict("persistentvolumeclaim", claim, refusal)
        request = {"claimName": claim, "phase": "Associating"}
        self.patch_with_retry(
            VM.path(*_nn(vm)), lambda _: {"status": {"memoryDumpRequest": request}}, status=True
        )
        return 202, None

    def remove_memory_dump(self, call: Call) -> tuple[int, Any]:
        vm = self.vm(call)
        existing = dig(vm, "status", "memoryDumpRequest")
        if not existing:
            raise conflict(
                "virtualmachine",
                call.name,
                f"can't remove memory dump association for vm {call.name}, no association found",
            )
        request = {"claimName": existing.get("claimName"), "phase": "Dissociating", "remove": True}
        self.patch_with_retry(
            VM.path(*_nn(vm)), lambda _: {"status": {"memoryDumpRequest": request}}, status=True
        )
        return 202, None

    # --- volumes ------------------------------------------------------------------------------

    def add_volume(self, call: Call) -> tuple[int, Any]:
        name, source = call.body.get("name"), call.body.get("volumeSource")
        if not name or not isinstance(source, dict) or not source:
            raise bad_request("AddVolumeOptions requires name and volumeSource to be set")
        disk = {**(call.body.get("disk") or {"disk": {"bus": "scsi"}}), "name": name}
        volume = {"name": name, **source}
        self._edit_volumes(
            call, lambda vols, disks: ([*vols, volume], [*disks, disk]), name, adding=True
        )
        return 202, None

    def remove_volume(self, call: Call) -> tuple[int, Any]:
        name = call.body.get("name")
        if not name:
            raise bad_request("RemoveVolumeOptions requires name to be set")

        def drop(vols: list, disks: list) -> tuple[list, list]:
            return [v for v in vols if v.get("name") != name], [
                d for d in disks if d.get("name") != name
            ]

        self._edit_volumes(call, drop, name, adding=False)
        return 202, None

    def _edit_volumes(self, call: Call, edit, name: str, *, adding: bool) -> None:
        """Apply edit to the VM template (for a VM) and to the running VMI."""
        targets = []
        if call.resource == "virtualmachines":
            self.vm(call)
            targets.append((VM.path(call.namespace, call.name), ("spec", "template", "spec")))
        vmi = self.vmi(call)
        if vmi is not None and not is_final(vmi):
            targets.append((VMI.path(call.namespace, call.name), ("spec",)))
        elif call.resource == "virtualmachineinstances":
            raise conflict("virtualmachineinstance", call.name, VMI_NOT_RUNNING)
        for path, where in targets:
            self.patch_with_retry(
                path, lambda obj, where=where: _volume_patch(obj, where, edit, name, adding)
            )

    # --- VMI operations (virt-handler's part) -----------------------------------------------------

    def _vmi_update(self, call: Call, build: Callable[[dict], dict]) -> None:
        self.patch_with_retry(VMI.path(call.namespace, call.name), build)

    def pause(self, call: Call) -> tuple[int, Any]:
        def build(vmi: dict) -> dict:
            if phase(vmi) != "Running":
                raise conflict("virtualmachineinstance", call.name, VM_NOT_RUNNING)
            if dig(vmi, "spec", "livenessProbe"):
                raise StatusError(
                    403, "Forbidden", "Pausing VMIs with LivenessProbe is currently not supported"
                )
            if condition_true(vmi, "Paused"):
                raise conflict("virtualmachineinstance", call.name, "VMI is already paused")
            self._on_guest(vmi, "pause")
            return {"status": {"conditions": paused_conditions(vmi, True, now_iso())}}

        self._require(call)
        self._vmi_update(call, build)
        return 202, None

    def unpause(self, call: Call) -> tuple[int, Any]:
        def build(vmi: dict) -> dict:
            if phase(vmi) != "Running":
                raise conflict("virtualmachineinstance", call.name, VMI_NOT_RUNNING)
            if not condition_true(vmi, "Paused"):
                raise conflict("virtualmachineinstance", call.name, "VMI is not paused")
            self._on_guest(vmi, "unpause")
            return {"status": {"conditions": paused_conditions(vmi, False, now_iso())}}

        self._require(call)
        self._vmi_update(call, build)
        return 202, None

    def _require(self, call: Call) -> None:
        if self.vmi(call) is None:
            raise not_found("virtualmachineinstance", call.name)

    def _freeze(self, call: Call, frozen: bool) -> tuple[int, Any]:
        def build(vmi: dict) -> dict:
            if phase(vmi) != "Running":
                raise conflict("virtualmachineinstance", call.name, VMI_NOT_RUNNING)
            if not agent_connected(vmi):
                raise conflict("virtualmachineinstance", call.name, NO_AGENT)
            return {"status": {"fsFreezeStatus": "frozen" if frozen else None}}

        self._require(call)
        self._vmi_update(call, build)
        return 202, None

    def freeze(self, call: Call) -> tuple[int, Any]:
        if call.body.get("unfreezeTimeout") is not None and not isinstance(
            call.body["unfreezeTimeout"], str
        ):
            raise bad_request("unfreezeTimeout must be a duration such as 5m")
        return self._freeze(call, True)

    def unfreeze(self, call: Call) -> tuple[int, Any]:
        return self._freeze(call, False)

    def soft_reboot(self, call: Call) -> tuple[int, Any]:
        vmi = self.running_vmi(call)
        if condition_true(vmi, "Paused"):
            raise conflict("virtualmachineinstance", call.name, "VMI is paused")
        self._on_guest(vmi, "reboot_soft")
        self.kube.event(vmi, "SoftRebooted", "VirtualMachineInstance soft rebooted")
        return 202, None

    def _on_guest(self, vmi: dict, method: str) -> None:
        """virt-handler's part: act on the real guest, when the VMI runs as one."""
        guest = self.guests(str(dig(vmi, "metadata", "uid")))
        if guest is not None:
            getattr(guest, method)()

    def _agent_vmi(self, call: Call) -> dict:
        vmi = self.running_vmi(call)
        annotations = dig(vmi, "metadata", "annotations", default={}) or {}
        if annotations.get(AGENT_ANNOTATION) == "disconnected" or not condition_true(
            vmi, "AgentConnected"
        ):
            raise conflict("virtualmachineinstance", call.name, NO_AGENT)
        return vmi

    def guest_os_info(self, call: Call) -> tuple[int, Any]:
        vmi = self._agent_vmi(call)
        info = {
            "guestAgentVersion": "9.0.0",
            "hostname": dig(vmi, "spec", "hostname") or call.name,
            "os": GUEST_OS,
            "timezone": "UTC, 0",
            "fsFreezeStatus": dig(vmi, "status", "fsFreezeStatus") or "thawed",
            "supportedCommands": [
                {"name": n, "enabled": True}
                for n in (
                    "guest-ping",
                    "guest-fsfreeze-freeze",
                    "guest-fsfreeze-thaw",
                    "guest-shutdown",
                )
            ],
            "fsInfo": {"disks": _filesystems()},
            "userList": _users(),
        }
        return 200, info

    def user_list(self, call: Call) -> tuple[int, Any]:
        self._agent_vmi(call)
        return 200, {
            "kind": "VirtualMachineInstanceGuestOSUserList",
            "apiVersion": "v1",
            "metadata": {},
            "items": _users(),
        }

    def filesystem_list(self, call: Call) -> tuple[int, Any]:
        self._agent_vmi(call)
        return 200, {
            "kind": "VirtualMachineInstanceFileSystemList",
            "apiVersion": "v1",
            "metadata": {},
            "items": _filesystems(),
        }

    def expand_spec(self, call: Call) -> tuple[int, Any]:
        return 200, self.vm(call)


def _nn(obj: dict) -> tuple[str, str]:
    return dig(obj, "metadata", "namespace"), dig(obj, "metadata", "name")


def _users() -> list[dict]:
    return [{"userName": "fedora", "loginTime": 1700000000.0}]


def _filesystems() -> list[dict]:
    return [
        {
            "diskName": "vda1",
            "mountPoint": "/",
            "fileSystemType": "ext4",
            "usedBytes": 1 << 30,
            "totalBytes": 10 << 30,
            "disk": [{"busType": "virtio"}],
        }
    ]


def _volume_patch(obj: dict, where: tuple[str, ...], edit, name: str, adding: bool) -> dict:
    spec = dig(obj, *where, default={}) or {}
    volumes = list(spec.get("volumes") or [])
    disks = list(dig(spec, "domain", "devices", "disks", default=[]) or [])
    exists = any(v.get("name") == name for v in volumes)
    if adding and exists:
        raise conflict(
            "virtualmachine",
            dig(obj, "metadata", "name"),
            f"Unable to add volume [{name}] because volume with that name already exists",
        )
    if not adding and not exists:
        raise conflict(
            "virtualmachine",
            dig(obj, "metadata", "name"),
            f"Unable to remove volume [{name}] because it does not exist",
        )
    volumes, disks = edit(volumes, disks)
    patch: dict = {"volumes": volumes, "domain": {"devices": {"disks": disks}}}
    for part in reversed(where):
        patch = {part: patch}
    return patch
