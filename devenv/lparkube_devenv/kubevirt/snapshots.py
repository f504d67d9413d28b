"""VirtualMachineSnapshot and VirtualMachineRestore, enough for backup flows.

No storage is copied: a snapshot records the VM's spec in a VirtualMachineSnapshotContent
(as KubeVirt does) and lists its PVC-backed volumes; a restore writes that spec back.
An online snapshot with a connected guest agent freezes the guest file systems meanwhile.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .api import RESTORE, SNAPSHOT, SNAPSHOT_CONTENT, VM, VMI, now_iso, parse_iso
from .logic import condition_true, dig, is_final, phase, set_condition, snapshot_support
from .vmi import agent_connected

if TYPE_CHECKING:
    from .controller import Controller, World

DEADLINE_SECONDS = 300.0


def _nn(obj: dict) -> tuple[str, str]:
    return dig(obj, "metadata", "namespace"), dig(obj, "metadata", "name")


def _conditions(obj: dict, progressing: bool, ready: bool, reason: str) -> list[dict]:
    now = now_iso()
    conditions = dig(obj, "status", "conditions", default=[]) or []
    conditions = set_condition(
        conditions, "Progressing", str(progressing), now, reason=reason, message=reason
    )
    return set_condition(conditions, "Ready", str(ready), now, reason=reason, message=reason)


def _owner(obj: dict, resource) -> dict:
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "name": dig(obj, "metadata", "name"),
        "uid": dig(obj, "metadata", "uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _age(obj: dict) -> float:
    created = parse_iso(dig(obj, "metadata", "creationTimestamp"))
    return time.time() - created.timestamp() if created else 0.0


def content_name(snapshot: dict) -> str:
    return f"vmsnapshot-content-{dig(snapshot, 'metadata', 'uid')}"


# --- snapshot ------------------------------------------------------------------------------


def reconcile_snapshot(ctl: Controller, world: World, snapshot: dict) -> None:
    current = phase(snapshot)
    if current in ("Succeeded", "Failed") or dig(snapshot, "metadata", "deletionTimestamp"):
        return
    namespace = dig(snapshot, "metadata", "namespace")
    source = dig(snapshot, "spec", "source", default={}) or {}
    vm = (
        world.vms.get((namespace, source.get("name")))
        if source.get("kind") == "VirtualMachine"
        else None
    )
    if vm is None:
        _source_missing(ctl, snapshot)
    elif current == "":
        begin(ctl, world, snapshot, vm)
    else:
        complete(ctl, world, snapshot, vm)


def _source_missing(ctl: Controller, snapshot: dict) -> None:
    if _age(snapshot) > DEADLINE_SECONDS:
        status = {
            "phase": "Failed",
            "error": {"time": now_iso(), "message": "snapshot source does not exist"},
            "conditions": _conditions(snapshot, False, False, "Source does not exist"),
        }
    elif phase(snapshot) != "InProgress":
        status = {
            "phase": "InProgress",
            "readyToUse": False,
            "conditions": _conditions(snapshot, False, False, "Source does not exist"),
        }
    else:
        return
    ctl.patch(SNAPSHOT.path(*_nn(snapshot)), snapshot, {"status": status}, status=True)


def _indications(vmi: dict | None) -> list[str]:
    if vmi is None or phase(vmi) != "Running":
        return []
    return [
        "Online",
        "GuestAgent"
        if agent_connected(vmi) and condition_true(vmi, "AgentConnected")
        else "NoGuestAgent",
    ]


def begin(ctl: Controller, world: World, snapshot: dict, vm: dict) -> None:
    namespace, name = _nn(vm)
    vmi = world.vmis.get((namespace, name))
    indications = _indications(vmi)
    if "GuestAgent" in indications:
        ctl.patch(VMI.path(namespace, name), vmi, {"status": {"fsFreezeStatus": "frozen"}})
    ctl.patch(
        VM.path(namespace, name),
        vm,
        {"status": {"snapshotInProgress": dig(snapshot, "metadata", "name")}},
        status=True,
    )
    status = {
        "phase": "InProgress",
        "readyToUse": False,
        "sourceUID": dig(vm, "metadata", "uid"),
        "indications": indications or None,
        "conditions": _conditions(snapshot, True, False, "Source locked and operation in progress"),
    }
    ctl.patch(SNAPSHOT.path(*_nn(snapshot)), snapshot, {"status": status}, status=True)


def _volumes(vm: dict) -> tuple[list[str], list[str]]:
    included, excluded = [], []
    for volume in dig(vm, "spec", "template", "spec", "volumes", default=[]) or []:
        (included if snapshot_support(volume)[0] else excluded).append(volume.get("name"))
    return included, excluded


def create_content(ctl: Controller, snapshot: dict, vm: dict) -> None:
    meta = vm.get("metadata") or {}
    volumes = dig(vm, "spec", "template", "spec", "volumes", default=[]) or []
    uid = dig(snapshot, "metadata", "uid")
    backups = [
        {
            "volumeName": v.get("name"),
            "persistentVolumeClaim": {
                "metadata": {
                    "name": dig(v, "persistentVolumeClaim", "claimName")
                    or dig(v, "dataVolume", "name")
                }
            },
            "volumeSnapshotName": f"vmsnapshot-{uid}-volume-{v.get('name')}",
        }
        for v in volumes
        if snapshot_support(v)[0]
    ]
    body = {
        "apiVersion": SNAPSHOT_CONTENT.api_version,
        "kind": SNAPSHOT_CONTENT.kind,
        "metadata": {
            "name": content_name(snapshot),
            "namespace": meta.get("namespace"),
            "ownerReferences": [_owner(snapshot, SNAPSHOT)],
        },
        "spec": {
            "virtualMachineSnapshotName": dig(snapshot, "metadata", "name"),
            "source": {
                "virtualMachine": {
                    "metadata": {
                        "name": meta.get("name"),
                        "namespace": meta.get("namespace"),
                        "labels": meta.get("labels") or {},
                        "annotations": meta.get("annotations") or {},
                        "generation": meta.get("generation"),
                    },
                    "spec": vm.get("spec") or {},
                }
            },
            "volumeBackups": backups,
        },
    }
    created = ctl.create(SNAPSHOT_CONTENT.path(meta.get("namespace")), body)
    if created is not None:
        ready = {"status": {"readyToUse": True, "creationTime": now_iso()}}
        ctl.kube.merge_patch(
            SNAPSHOT_CONTENT.path(meta.get("namespace"), content_name(snapshot)) + "/status", ready
        )


def complete(ctl: Controller, world: World, snapshot: dict, vm: dict) -> None:
    namespace, name = _nn(vm)
    if ctl.kube.get(SNAPSHOT_CONTENT.path(namespace, content_name(snapshot))) is None:
        create_content(ctl, snapshot, vm)
        return
    vmi = world.vmis.get((namespace, name))
    thawed = {"status": {"fsFreezeStatus": None}}
    frozen = vmi is not None and dig(vmi, "status", "fsFreezeStatus")
    if frozen and not ctl.patch(VMI.path(namespace, name), vmi, thawed):
        return
    if dig(vm, "status", "snapshotInProgress"):
        ctl.patch(
            VM.path(namespace, name), vm, {"status": {"snapshotInProgress": None}}, status=True
        )
    included, excluded = _volumes(vm)
    status = {
        "phase": "Succeeded",
        "readyToUse": True,
        "creationTime": now_iso(),
        "virtualMachineSnapshotContentName": content_name(snapshot),
        "snapshotVolumes": {
            "includedVolumes": included or None,
            "excludedVolumes": excluded or None,
        },
        "conditions": _conditions(snapshot, False, True, "Operation complete"),
    }
    if ctl.patch(SNAPSHOT.path(*_nn(snapshot)), snapshot, {"status": status}, status=True):
        ctl.event(
            snapshot,
            "SuccessfulVirtualMachineSnapshotCreate",
            f"Successfully created snapshot of {name}",
        )


# --- restore -------------------------------------------------------------------------------


def reconcile_restore(ctl: Controller, world: World, restore: dict) -> None:
    if dig(restore, "status", "complete") is True or dig(restore, "metadata", "deletionTimestamp"):
        return
    namespace, _ = _nn(restore)
    snapshot_name = dig(restore, "spec", "virtualMachineSnapshotName")
    snapshot = next((s for s in world.snapshots if _nn(s) == (namespace, snapshot_name)), None)
    target = dig(restore, "spec", "target", "name")
    vm = world.vms.get((namespace, target))
    if snapshot is None or dig(snapshot, "status", "readyToUse") is not True:
        _restore_waiting(ctl, restore, "Waiting for the snapshot to be ready")
    elif vm is not None and not _stopped(world, vm):
        _wait_for_target(ctl, restore, vm)
    else:
        _apply(ctl, world, restore, snapshot, vm)


def _stopped(world: World, vm: dict) -> bool:
    vmi = world.vmis.get(_nn(vm))
    return vmi is None or is_final(vmi)


def _restore_waiting(ctl: Controller, restore: dict, reason: str) -> None:
    status = {"complete": False, "conditions": _conditions(restore, True, False, reason)}
    current = [
        (c.get("type"), c.get("reason"))
        for c in dig(restore, "status", "conditions", default=[]) or []
    ]
    if ("Ready", reason) not in current:
        ctl.patch(RESTORE.path(*_nn(restore)), restore, {"status": status}, status=True)


def _wait_for_target(ctl: Controller, restore: dict, vm: dict) -> None:
    policy = dig(restore, "spec", "targetReadinessPolicy") or "WaitGracePeriod"
    if policy == "StopTarget" and dig(vm, "spec", "runStrategy") != "Halted":
        patch = {"spec": {"runStrategy": "Halted", "running": None}}
        ctl.kube.merge_patch(VM.path(*_nn(vm)), patch)
        ctl.wrote()
    elif policy == "FailImmediate" or (
        policy == "WaitGracePeriod" and _age(restore) > DEADLINE_SECONDS
    ):
        status = {
            "complete": False,
            "conditions": _conditions(restore, False, False, "Restore target is not ready"),
        }
        ctl.patch(RESTORE.path(*_nn(restore)), restore, {"status": status}, status=True)
        return
    _restore_waiting(ctl, restore, "Waiting for target VM to be stopped")


def _apply(ctl: Controller, world: World, restore: dict, snapshot: dict, vm: dict | None) -> None:
    namespace, _ = _nn(restore)
    content = ctl.kube.get(SNAPSHOT_CONTENT.path(namespace, content_name(snapshot))) or {}
    source = dig(content, "spec", "source", "virtualMachine", default={}) or {}
    target = dig(restore, "spec", "target", "name")
    spec = dict(source.get("spec") or {})
    if vm is None:
        body = {
            "apiVersion": VM.api_version,
            "kind": VM.kind,
            "metadata": {
                "name": target,
                "namespace": namespace,
                "labels": dig(source, "metadata", "labels") or {},
            },
            "spec": {**spec, "runStrategy": "Halted", "running": None} if spec else {},
        }
        body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
        ctl.create(VM.path(namespace), body)
    else:
        keep = {k: dig(vm, "spec", k) for k in ("runStrategy", "running")}
        ctl.kube.merge_patch(VM.path(namespace, target), {"spec": {**spec, **keep}})
        ctl.wrote()
    restores = [
        {
            "volumeName": b.get("volumeName"),
            "persistentVolumeClaim": dig(b, "persistentVolumeClaim", "metadata", "name"),
            "volumeSnapshotName": b.get("volumeSnapshotName"),
        }
        for b in dig(content, "spec", "volumeBackups", default=[]) or []
    ]
    status = {
        "complete": True,
        "restoreTime": now_iso(),
        "restores": restores or None,
        "conditions": _conditions(restore, False, True, "Operation complete"),
    }
    if ctl.patch(RESTORE.path(*_nn(restore)), restore, {"status": status}, status=True):
        ctl.event(
            restore,
            "VirtualMachineRestoreComplete",
            f"Successfully completed VirtualMachineRestore {_nn(restore)[1]}",
        )
