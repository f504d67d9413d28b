"""VirtualMachine controller: run strategies, start/stop requests, status, memory dumps."""

from __future__ import annotations

import contextlib
import copy
import time
import uuid
from typing import TYPE_CHECKING

from kubernetes.client import ApiException

from . import guest_lifecycle
from . import vmi as vmis
from .api import QEMU, VM, VMI, now_iso, parse_iso, runtime_of
from .logic import (
    condition_true,
    dig,
    get_condition,
    is_final,
    memory_dump_file,
    phase,
    printable_status,
    remove_condition,
    run_strategy,
    set_condition,
    snapshot_support,
    vm_action,
)

if TYPE_CHECKING:
    from .controller import Controller, World

PAUSED_MESSAGE = "VMI was paused by user"
GENERATION_ANNOTATION = "kubevirt.io/vm-generation"
MEMORY_DUMP_ANNOTATION = "kubevirt.io/memory-dump"


def reconcile(ctl: Controller, world: World, vm: dict) -> None:
    namespace, name = dig(vm, "metadata", "namespace"), dig(vm, "metadata", "name")
    vmi = world.vmis.get((namespace, name))
    if dig(vm, "metadata", "deletionTimestamp"):
        if vmi is not None and not dig(vmi, "metadata", "deletionTimestamp"):
            ctl.delete(VMI.path(namespace, name), vmi)
        return
    strategy = run_strategy(vm)
    # Each step below may write the VM's status; a second write in the same pass would only
    # conflict on the resourceVersion, so the pass ends after the first one.
    if handle_requests(ctl, vm, vmi):
        return
    ensure_data_volume_claims(ctl, world, vm)
    act(ctl, vm, vmi, strategy)
    if handle_memory_dump(ctl, vm, vmi):
        return
    update_status(ctl, vm, vmi, strategy)


def ensure_data_volume_claims(ctl: Controller, world: World, vm: dict) -> None:
    """CDI's part, played: each of the VM's dataVolumeTemplates becomes its PVC (the DataVolume's
    name, its storage request), blank — no import runs; real guests boot the guest image."""
    namespace = dig(vm, "metadata", "namespace")
    for template in dig(vm, "spec", "dataVolumeTemplates", default=[]) or []:
        name = dig(template, "metadata", "name")
        if not name or (namespace, name) in world.pvcs:
            continue
        ctl.create(
            f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
            data_volume_claim(vm, template),
        )


def data_volume_claim(vm: dict, template: dict) -> dict:
    """The PVC of a dataVolumeTemplate: `spec.storage` (or the older `spec.pvc`), owned by the
    VM as KubeVirt owns the DataVolume (deleted with it)."""
    spec = dig(template, "spec", "storage") or dig(template, "spec", "pvc") or {}
    claim = {
        "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
        "resources": spec.get("resources") or {},
        **{k: spec[k] for k in ("volumeMode", "storageClassName") if spec.get(k)},
    }
    owner = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "name": dig(vm, "metadata", "name"),
        "uid": dig(vm, "metadata", "uid"),
        "controller": True,
    }
    labels = dig(template, "metadata", "labels", default={}) or {}
    metadata = {"name": dig(template, "metadata", "name"), "ownerReferences": [owner]}
    return {"metadata": {**metadata, **({"labels": labels} if labels else {})}, "spec": claim}


def act(ctl: Controller, vm: dict, vmi: dict | None, strategy: str) -> None:
    uid = dig(vm, "metadata", "uid", default="")
    action = vm_action(strategy, vmi, started_once=uid in ctl.started_once)
    if action == "create":
        create_vmi(ctl, vm)
    elif action == "stop" and vmi is not None:
        end_vmi(ctl, vmi)
    elif action == "restart" and vmi is not None and _restart_due(ctl, vmi):
        if dig(vmi, "metadata", "deletionTimestamp"):
            return  # deleted already: it goes once its pods are gone (its finalizer)
        ctl.delete(_vmi_path(vm), vmi)


def _vmi_path(vm: dict) -> str:
    return VMI.path(dig(vm, "metadata", "namespace"), dig(vm, "metadata", "name"))


def _restart_due(ctl: Controller, vmi: dict) -> bool:
    """A Failed VMI stays visible for restart_delay seconds (KubeVirt backs off, too)."""
    if phase(vmi) != "Failed":
        return True
    stamps = dig(vmi, "status", "phaseTransitionTimestamps", default=[]) or []
    failed_at = parse_iso(stamps[-1].get("phaseTransitionTimestamp")) if stamps else None
    if failed_at is None:
        return True
    return time.time() - failed_at.timestamp() >= ctl.settings.restart_delay


def end_vmi(ctl: Controller, vmi: dict) -> None:
    """Stop a live VMI (it turns Succeeded), or delete one that already finished."""
    if dig(vmi, "metadata", "deletionTimestamp"):
        return
    if is_final(vmi):
        namespace, name = dig(vmi, "metadata", "namespace"), dig(vmi, "metadata", "name")
        ctl.delete(VMI.path(namespace, name), vmi)
    elif runtime_of(vmi, ctl.settings.guest_runtime) == QEMU:
        guest_lifecycle.request_stop(ctl, vmi)
    else:
        vmis.stop(ctl, vmi)


def vmi_body(vm: dict, paused: bool = False) -> dict:
    """The VMI a VM's template describes, with the defaults KubeVirt's webhooks add."""
    meta = vm.get("metadata") or {}
    template = dig(vm, "spec", "template", default={}) or {}
    tmeta = template.get("metadata") or {}
    spec = copy.deepcopy(template.get("spec") or {})
    domain = spec.setdefault("domain", {})
    domain.setdefault("devices", {})
    firmware = domain.setdefault("firmware", {})
    firmware.setdefault("uuid", str(uuid.uuid5(uuid.NAMESPACE_DNS, meta.get("name", ""))))
    domain.setdefault("machine", {}).setdefault("type", "q35")
    if not spec.get("networks") and domain["devices"].get("autoattachPodInterface") is not False:
        spec["networks"] = [{"name": "default", "pod": {}}]
        domain["devices"].setdefault("interfaces", [{"name": "default", "masquerade": {}}])
    if paused:
        spec["startStrategy"] = "Paused"
    annotations = {
        **(tmeta.get("annotations") or {}),
        GENERATION_ANNOTATION: str(meta.get("generation", 1)),
        "kubevirt.io/latest-observed-api-version": "v1",
        "kubevirt.io/storage-observed-api-version": "v1",
    }
    return {
        "apiVersion": VMI.api_version,
        "kind": VMI.kind,
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": dict(tmeta.get("labels") or {}),
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": VM.api_version,
                    "kind": VM.kind,
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def create_vmi(ctl: Controller, vm: dict, paused: bool = False) -> None:
    namespace = dig(vm, "metadata", "namespace")
    try:
        created = ctl.create(VMI.path(namespace), vmi_body(vm, paused))
    except ApiException as error:
        _failure(ctl, vm, "FailedCreate", f"Error creating VMI: {error.reason}: {error.body}")
        return
    ctl.started_once.add(dig(vm, "metadata", "uid", default=""))
    if created is not None:
        name = dig(created, "metadata", "name")
        ctl.event(
            vm,
            "SuccessfulCreate",
            f"Started the virtual machine by creating the new virtual machine instance {name}",
        )


def _failure(ctl: Controller, vm: dict, reason: str, message: str) -> None:
    conditions = set_condition(
        dig(vm, "status", "conditions"),
        "Failure",
        "True",
        now_iso(),
        reason=reason,
        message=message,
    )
    ctl.patch(VM.path(*_nn(vm)), vm, {"status": {"conditions": conditions}}, status=True)
    ctl.event(vm, reason, message, "Warning")


def _nn(obj: dict) -> tuple[str, str]:
    return dig(obj, "metadata", "namespace"), dig(obj, "metadata", "name")


def handle_requests(ctl: Controller, vm: dict, vmi: dict | None) -> bool:
    """Work off status.stateChangeRequests (from start/stop/restart); True when one acted."""
    requests = [
        r for r in dig(vm, "status", "stateChangeRequests", default=[]) or [] if isinstance(r, dict)
    ]
    if not requests:
        return False
    request, rest = requests[0], requests[1:]
    done = True
    if request.get("action") == "Stop":
        if vmi is not None and request.get("uid") in (None, dig(vmi, "metadata", "uid")):
            done = is_final(vmi)
            end_vmi(ctl, vmi)
    elif request.get("action") == "Start":
        if vmi is not None and is_final(vmi):
            end_vmi(ctl, vmi)
            done = False
        elif vmi is None:
            paused = (request.get("data") or {}).get("paused") == "true"
            create_vmi(ctl, vm, paused)
    if done:
        ctl.patch(
            VM.path(*_nn(vm)), vm, {"status": {"stateChangeRequests": rest or None}}, status=True
        )
    return True


def handle_memory_dump(ctl: Controller, vm: dict, vmi: dict | None) -> bool:
    """Associating -> InProgress -> Unmounting -> Completed; Dissociating removes the request."""
    request = dig(vm, "status", "memoryDumpRequest")
    if not isinstance(request, dict):
        return False
    current, now = request.get("phase"), now_iso()
    if current == "Dissociating":
        update = None
    elif current == "Associating":
        update = {**request, "phase": "InProgress", "startTimestamp": now}
    elif current == "InProgress":
        if vmi is None or phase(vmi) != "Running":
            update = {**request, "phase": "Failed", "message": "VMI is not running"}
        elif runtime_of(vmi, ctl.settings.guest_runtime) == QEMU:
            update = guest_lifecycle.dump_progress(ctl, vm, vmi, request)
        else:
            file_name = memory_dump_file(
                dig(vm, "metadata", "name"), request.get("claimName", ""), now
            )
            update = {**request, "phase": "Unmounting", "fileName": file_name}
    elif current == "Unmounting":
        update = {**request, "phase": "Completed", "endTimestamp": now}
        _annotate_claim(ctl, vm, request.get("claimName", ""), request.get("fileName", ""))
    else:
        return False
    if update is request:
        return False
    ctl.patch(VM.path(*_nn(vm)), vm, {"status": {"memoryDumpRequest": update}}, status=True)
    return True


def _annotate_claim(ctl: Controller, vm: dict, claim: str, file_name: str) -> None:
    path = f"/api/v1/namespaces/{dig(vm, 'metadata', 'namespace')}/persistentvolumeclaims/{claim}"
    with contextlib.suppress(ApiException):  # a vanished claim does not fail the dump
        ctl.kube.merge_patch(
            path, {"metadata": {"annotations": {MEMORY_DUMP_ANNOTATION: file_name}}}
        )


def desired_status(vm: dict, vmi: dict | None, strategy: str) -> dict:
    now = now_iso()
    conditions = list(dig(vm, "status", "conditions", default=[]) or [])
    if vmi is None:
        conditions = set_condition(
            conditions, "Ready", "False", now, reason="VMINotExists", message="VMI does not exist"
        )
    else:
        ready = get_condition(vmi, "Ready") or {}
        conditions = set_condition(
            conditions,
            "Ready",
            ready.get("status", "False"),
            now,
            reason=ready.get("reason", ""),
            message=ready.get("message", ""),
        )
    if vmi is not None and condition_true(vmi, "Paused"):
        conditions = set_condition(
            conditions, "Paused", "True", now, reason="PausedByUser", message=PAUSED_MESSAGE
        )
    else:
        conditions = remove_condition(conditions, "Paused")
    if vmi is not None and not is_final(vmi):
        conditions = remove_condition(conditions, "Failure")
    volumes = dig(vm, "spec", "template", "spec", "volumes", default=[]) or []
    snapshot_statuses = []
    for volume in volumes:
        enabled, reason = snapshot_support(volume)
        entry = {"name": volume.get("name"), "enabled": enabled}
        if reason:
            entry["reason"] = reason
        snapshot_statuses.append(entry)
    observed = dig(vmi, "metadata", "annotations", GENERATION_ANNOTATION)
    status = {
        "printableStatus": printable_status(vm, vmi, strategy),
        "created": vmi is not None,
        "ready": vmi is not None and condition_true(vmi, "Ready"),
        "conditions": conditions,
        "runStrategy": strategy,
        "volumeSnapshotStatuses": snapshot_statuses or None,
        "desiredGeneration": dig(vm, "metadata", "generation", default=1),
    }
    if observed and observed.isdigit():
        status["observedGeneration"] = int(observed)
    return status


def update_status(ctl: Controller, vm: dict, vmi: dict | None, strategy: str) -> None:
    status = desired_status(vm, vmi, strategy)
    current = vm.get("status") or {}
    changed = any(current.get(k) != v for k, v in status.items() if k != "conditions")
    if changed or vmis.strip_conditions(current.get("conditions")) != vmis.strip_conditions(
        status["conditions"]
    ):
        ctl.patch(VM.path(*_nn(vm)), vm, {"status": status}, status=True)
