"""VirtualMachineRestore as KubeVirt's restore controller (`pkg/storage/snapshot/restore.go`)
runs it, with the default volume restore policy (RandomizeNames).

A restore reads the snapshot and its content of its own namespace only. Its target VM must
have no VMI at all (`Ready`: a stopped VM's final VMI counts as one); until then the
`targetReadinessPolicy` decides: `WaitGracePeriod` (the default) waits 5 minutes and then
fails, `WaitEventually` waits, `StopTarget` stops the VM as the `stop` subresource would,
`FailImmediate` fails. Then, one step a pass: the VM's `status.restoreInProgress`;
`status.restores` (`restore-<restore uid>-<volume>` per volume backup); a new PVC per volume,
the backed-up claim's spec with the VolumeSnapshot as its data source, which the thin
storage's provisioner fills from the snapshot's copy, waited for until Bound; the VM written:
the snapshot's spec, its volumes renamed to the new claims, its run strategy kept (a new VM is
Halted), annotated `restore.kubevirt.io/lastRestoreUID`; the lock released and `complete`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from .api import RESTORE, VM, now_iso
from .logic import dig, run_strategy, set_condition
from .snapshots import age, conditions, content_name, nn
from .storage.names import SNAPSHOT_GROUP
from .storage.quantity import format_bytes, to_bytes

if TYPE_CHECKING:
    from .controller import Controller, World

GRACE_SECONDS = 300.0  # snapshotv1beta1.DefaultGracePeriod
LAST_RESTORE_ANNOTATION = "restore.kubevirt.io/lastRestoreUID"
RESTORE_NAME_ANNOTATION = "restore.kubevirt.io/name"
SOURCE_NAME_LABEL = "restore.kubevirt.io/source-vm-name"
SOURCE_NAMESPACE_LABEL = "restore.kubevirt.io/source-vm-namespace"
DROPPED_ANNOTATIONS = (  # restoreAnnotationsToDelete: the binding's and CDI's
    "pv.kubernetes.io",
    "volume.beta.kubernetes.io",
    "cdi.kubevirt.io",
    "volume.kubernetes.io",
    "k8s.io/CloneRequest",
    "k8s.io/CloneOf",
)
WAIT_GRACE = (
    "Waiting for target VM to be powered off. Please stop the restore target to proceed "
    "with restore, or the operation will fail after 5m0s"
)
WAIT_EVENTUALLY = (
    "Waiting for target VM to be powered off. Please stop the restore target to proceed "
    "with restore"
)
STOPPING = "Automatically stopping restore target for restore operation"
VMI_EXISTS = (
    "Restore target VMI still exists, please stop the restore target to proceed with restore"
)
GRACE_EXCEEDED = (
    "Restore target failed to be ready within 5m0s. Please power off the target VM before "
    "attempting restore"
)
NOT_READY = "Restore target VMI must be powered off before restore operation"


def reconcile_restore(ctl: Controller, world: World, restore: dict) -> None:
    if dig(restore, "status", "complete") is True or dig(restore, "metadata", "deletionTimestamp"):
        return
    if any(c.get("type") == "Failure" for c in dig(restore, "status", "conditions") or []):
        return
    namespace, _ = nn(restore)
    name = dig(restore, "spec", "virtualMachineSnapshotName")
    snapshot = next((s for s in world.snapshots if nn(s) == (namespace, name)), None)
    vm = world.vms.get((namespace, dig(restore, "spec", "target", "name")))
    content = world.snapshot_contents.get((namespace, content_name(snapshot or {})))
    vmi = world.vmis.get(nn(vm)) if vm is not None else None
    if vm is not None and vmi is not None:
        _target_not_ready(ctl, restore, vm, vmi)
    elif content is None or dig(snapshot, "status", "readyToUse") is not True:
        _report(ctl, restore, "Waiting for the snapshot to be ready")
    else:
        _restore(ctl, world, restore, content, vm)


def _report(ctl: Controller, restore: dict, reason: str, event: str = "") -> None:
    """Progressing and Ready False with `reason` (and the event), once while it holds."""
    current = {c.get("reason") for c in dig(restore, "status", "conditions", default=[]) or []}
    if reason in current:
        return
    status = {"complete": False, "conditions": conditions(restore, False, False, reason)}
    if ctl.patch(RESTORE.path(*nn(restore)), restore, {"status": status}, status=True) and event:
        ctl.event(restore, "RestoreTargetNotReady", event, "Warning")


def _fail(ctl: Controller, restore: dict, message: str) -> None:
    found = conditions(restore, False, False, message)
    found = set_condition(found, "Failure", "True", now_iso(), reason=message, message=message)
    status = {"complete": False, "conditions": found}
    if ctl.patch(RESTORE.path(*nn(restore)), restore, {"status": status}, status=True):
        ctl.event(restore, "Operation failed", f"VirtualMachineRestore failed {message}", "Warning")


def _target_not_ready(ctl: Controller, restore: dict, vm: dict, vmi: dict) -> None:
    policy = dig(restore, "spec", "targetReadinessPolicy") or "WaitGracePeriod"
    if policy == "StopTarget":
        _stop(ctl, vm, vmi)
        _report(ctl, restore, STOPPING, STOPPING)
    elif policy == "FailImmediate":
        _fail(ctl, restore, NOT_READY)
    elif policy == "WaitGracePeriod" and age(restore) > GRACE_SECONDS:
        _fail(ctl, restore, GRACE_EXCEEDED)
    else:
        _report(
            ctl, restore, WAIT_EVENTUALLY if policy == "WaitEventually" else WAIT_GRACE, VMI_EXISTS
        )


def _stop(ctl: Controller, vm: dict, vmi: dict) -> None:
    """What virt-api's `stop` does: Always and Once become Halted; Manual and RerunOnFailure
    get a stop request (their VMI is stopped, the strategy stays)."""
    if run_strategy(vm) in ("Always", "Once"):
        ctl.kube.merge_patch(VM.path(*nn(vm)), {"spec": {"runStrategy": "Halted", "running": None}})
        ctl.wrote()
    elif not dig(vm, "status", "stateChangeRequests"):
        requests = {"stateChangeRequests": [{"action": "Stop", "uid": dig(vmi, "metadata", "uid")}]}
        ctl.patch(VM.path(*nn(vm)), vm, {"status": requests}, status=True)


def restore_id(restore: dict) -> str:
    return f"{dig(restore, 'metadata', 'name')}-{dig(restore, 'metadata', 'uid')}"


def _restore(ctl: Controller, world: World, restore: dict, content: dict, vm: dict | None) -> None:
    namespace, name = nn(restore)
    restored = vm is not None and (
        dig(vm, "metadata", "annotations", LAST_RESTORE_ANNOTATION) == restore_id(restore)
    )
    if vm is not None and not restored and dig(vm, "status", "restoreInProgress") != name:
        ctl.patch(VM.path(*nn(vm)), vm, {"status": {"restoreInProgress": name}}, status=True)
        return
    restores = volume_restores(restore, content)
    if dig(restore, "status", "restores") != restores:
        status = {"complete": False, "restores": restores or None}
        status["conditions"] = conditions(restore, True, False, "Creating new PVCs")
        ctl.patch(RESTORE.path(namespace, name), restore, {"status": status}, status=True)
        return
    if not restored and not _claims_bound(ctl, world, restore, content, vm):
        return
    if not restored:
        _write_target(ctl, restore, content, vm, restores)
        return
    if dig(vm, "status", "restoreInProgress") == name:
        ctl.patch(VM.path(*nn(vm)), vm, {"status": {"restoreInProgress": None}}, status=True)
        return
    status = {
        "complete": True,
        "restoreTime": now_iso(),
        "conditions": conditions(restore, False, True, "Operation complete"),
    }
    if ctl.patch(RESTORE.path(namespace, name), restore, {"status": status}, status=True):
        message = f"Successfully completed VirtualMachineRestore {name}"
        ctl.event(restore, "VirtualMachineRestoreComplete", message)


def volume_restores(restore: dict, content: dict) -> list[dict]:
    """KubeVirt's restorePVCName (RandomizeNames): `restore-<restore uid>-<volume name>`."""
    uid = dig(restore, "metadata", "uid")
    return [
        {
            "volumeName": b.get("volumeName"),
            "persistentVolumeClaim": f"restore-{uid}-{b.get('volumeName')}",
            "volumeSnapshotName": b.get("volumeSnapshotName"),
        }
        for b in dig(content, "spec", "volumeBackups", default=[]) or []
    ]


def _claims_bound(
    ctl: Controller, world: World, restore: dict, content: dict, vm: dict | None
) -> bool:
    """Each restored volume's new PVC created (missing ones, this pass) and Bound."""
    namespace = dig(restore, "metadata", "namespace")
    bound = True
    for backup, target in zip(
        dig(content, "spec", "volumeBackups", default=[]) or [],
        dig(restore, "status", "restores", default=[]) or [],
        strict=True,
    ):
        claim = world.pvcs.get((namespace, target["persistentVolumeClaim"]))
        if claim is None:
            body = restore_claim(restore, backup, target, content, vm)
            ctl.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", body)
        bound = bound and dig(claim, "status", "phase") == "Bound"
    if not bound:
        _report(ctl, restore, "Waiting for new PVCs")
    return bound


def restore_claim(
    restore: dict, backup: dict, target: dict, content: dict, vm: dict | None
) -> dict:
    """KubeVirt's CreateRestorePVCDefFromVMRestore: the backed-up claim's labels, annotations
    (less the binding's and CDI's) and spec, at least the snapshot's restore size, its
    VolumeSnapshot as data source; owned by the target VM when there is one."""
    claim = backup.get("persistentVolumeClaim") or {}
    spec = claim.get("spec") or {}
    meta = claim.get("metadata") or {}
    source = dig(content, "spec", "source", "virtualMachine", "metadata", default={}) or {}
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if not k.startswith(DROPPED_ANNOTATIONS)
    }
    annotations |= {
        RESTORE_NAME_ANNOTATION: dig(restore, "metadata", "name"),
        LAST_RESTORE_ANNOTATION: restore_id(restore),
    }
    labels = {
        **(meta.get("labels") or {}),
        SOURCE_NAME_LABEL: source.get("name"),
        SOURCE_NAMESPACE_LABEL: source.get("namespace"),
    }
    restore_size = next(
        (
            to_bytes(s.get("restoreSize"))
            for s in dig(content, "status", "volumeSnapshotStatus", default=[]) or []
            if s.get("volumeSnapshotName") == target["volumeSnapshotName"]
        ),
        0,
    )
    resources = copy.deepcopy(spec.get("resources") or {})
    if restore_size > to_bytes(dig(resources, "requests", "storage")):
        resources.setdefault("requests", {})["storage"] = format_bytes(restore_size)
    data_source = {
        "apiGroup": SNAPSHOT_GROUP,
        "kind": "VolumeSnapshot",
        "name": target["volumeSnapshotName"],
    }
    metadata = {"name": target["persistentVolumeClaim"], "labels": labels}
    metadata["annotations"] = annotations
    if vm is not None:
        metadata["ownerReferences"] = [_owner(vm)]
    kept = ("accessModes", "storageClassName", "volumeMode")
    return {
        "metadata": metadata,
        "spec": {
            **{k: spec[k] for k in kept if spec.get(k)},
            "resources": resources,
            "dataSource": data_source,
            "dataSourceRef": data_source,
        },
    }


def _owner(vm: dict) -> dict:
    return {
        "apiVersion": VM.api_version,
        "kind": VM.kind,
        "name": dig(vm, "metadata", "name"),
        "uid": dig(vm, "metadata", "uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def restored_spec(source_spec: dict, restores: list[dict]) -> dict:
    """KubeVirt's generateRestoredVMSpec: the snapshot's spec with each restored volume on its
    new claim; a DataVolume volume keeps its template under the new name, one without a
    template becomes a PVC volume; memory dump volumes are dropped."""
    spec = copy.deepcopy(source_spec)
    claims = {r["volumeName"]: r["persistentVolumeClaim"] for r in restores}
    templates = {dig(t, "metadata", "name"): t for t in spec.get("dataVolumeTemplates") or []}
    volumes = [
        _on_claim(volume, claims.get(volume.get("name")), templates)
        for volume in dig(spec, "template", "spec", "volumes", default=[]) or []
        if "memoryDump" not in volume
    ]
    if spec.get("template"):
        spec["template"].setdefault("spec", {})["volumes"] = volumes
    return spec


def _on_claim(volume: dict, claim: str | None, templates: dict[str, dict]) -> dict:
    if claim and "persistentVolumeClaim" in volume:
        volume["persistentVolumeClaim"]["claimName"] = claim
    elif claim and "dataVolume" in volume:
        template = templates.get(volume["dataVolume"].get("name"))
        if template is None:
            return {"name": volume["name"], "persistentVolumeClaim": {"claimName": claim}}
        template["metadata"]["name"] = volume["dataVolume"]["name"] = claim
    return volume


def _write_target(
    ctl: Controller, restore: dict, content: dict, vm: dict | None, restores: list[dict]
) -> None:
    namespace = dig(restore, "metadata", "namespace")
    source = dig(content, "spec", "source", "virtualMachine", default={}) or {}
    spec = restored_spec(source.get("spec") or {}, restores)
    annotation = {LAST_RESTORE_ANNOTATION: restore_id(restore)}
    if vm is None:
        meta = source.get("metadata") or {}
        body = {
            "apiVersion": VM.api_version,
            "kind": VM.kind,
            "metadata": {
                "name": dig(restore, "spec", "target", "name"),
                "namespace": namespace,
                "labels": meta.get("labels") or {},
                "annotations": {**(meta.get("annotations") or {}), **annotation},
            },
            "spec": {**spec, "runStrategy": "Halted", "running": None},
        }
        body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
        ctl.create(VM.path(namespace), body)
        return
    keep = (
        {"running": False, "runStrategy": None}
        if dig(vm, "spec", "running") is not None
        else {"runStrategy": run_strategy(vm), "running": None}
    )
    gone = dict.fromkeys(set(vm.get("spec") or {}) - set(spec))
    patch = {"metadata": {"annotations": annotation}, "spec": {**gone, **spec, **keep}}
    ctl.patch(VM.path(*nn(vm)), vm, patch)
