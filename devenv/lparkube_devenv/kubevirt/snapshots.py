"""VirtualMachineSnapshot and its VirtualMachineSnapshotContent, as KubeVirt's snapshot
controller (`pkg/storage/snapshot/snapshot.go`) runs them, with the thin volumes' CSI snapshots.

A snapshot gets KubeVirt's finalizer, locks its VM (`status.snapshotInProgress`), freezes the
guest file systems when the guest agent is connected, and creates the content: the VM's
metadata and spec, and a volume backup (the claim's metadata and spec, the VolumeSnapshot name
`vmsnapshot-<snapshot uid>-volume-<volume>`) per PVC or DataVolume volume whose claim exists.
Then each volume is snapshotted: the thin storage copies its data extents (`take_snapshot`),
all volumes at one instant, a real guest's CPUs stopped meanwhile (QMP `stop`/`cont`), and the
content turns `readyToUse` with a `volumeSnapshotStatus` per volume. Then the guest is thawed,
the VM unlocked and the snapshot Succeeded. Deleting the snapshot deletes its content (unless
`deletionPolicy: retain`); a deleted content has its copies deleted, then loses its finalizer.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from .api import SNAPSHOT, SNAPSHOT_CONTENT, VM, VMI, now_iso, parse_iso
from .logic import condition_true, dig, phase, set_condition, snapshot_support
from .storage.quantity import format_bytes
from .vmi import agent_connected

if TYPE_CHECKING:
    from .controller import Controller, World

DEADLINE_SECONDS = 300.0
SNAPSHOT_FINALIZER = "snapshot.kubevirt.io/vmsnapshot-protection"
CONTENT_FINALIZER = "snapshot.kubevirt.io/vmsnapshotcontent-protection"


def nn(obj: dict) -> tuple[str, str]:
    return dig(obj, "metadata", "namespace"), dig(obj, "metadata", "name")


def finalizers(obj: dict) -> list[str]:
    return list(dig(obj, "metadata", "finalizers", default=[]) or [])


def drop_finalizer(ctl: Controller, path: str, obj: dict, finalizer: str) -> None:
    kept = [f for f in finalizers(obj) if f != finalizer]
    ctl.patch(path, obj, {"metadata": {"finalizers": kept or None}})


def conditions(obj: dict, progressing: bool, ready: bool, reason: str) -> list[dict]:
    now = now_iso()
    found = dig(obj, "status", "conditions", default=[]) or []
    found = set_condition(
        found, "Progressing", str(progressing), now, reason=reason, message=reason
    )
    return set_condition(found, "Ready", str(ready), now, reason=reason, message=reason)


def age(obj: dict) -> float:
    created = parse_iso(dig(obj, "metadata", "creationTimestamp"))
    return time.time() - created.timestamp() if created else 0.0


def content_name(snapshot: dict) -> str:
    return f"vmsnapshot-content-{dig(snapshot, 'metadata', 'uid')}"


# --- snapshot ------------------------------------------------------------------------------


def reconcile_snapshot(ctl: Controller, world: World, snapshot: dict) -> None:
    if dig(snapshot, "metadata", "deletionTimestamp"):
        _release(ctl, world, snapshot)
        return
    current = phase(snapshot)
    if current in ("Succeeded", "Failed"):
        return
    if SNAPSHOT_FINALIZER not in finalizers(snapshot):
        meta = {"finalizers": [*finalizers(snapshot), SNAPSHOT_FINALIZER]}
        ctl.patch(SNAPSHOT.path(*nn(snapshot)), snapshot, {"metadata": meta})
        return
    vm = _source(world, snapshot)
    if vm is None:
        _source_missing(ctl, snapshot)
    elif current == "":
        begin(ctl, world, snapshot, vm)
    else:
        complete(ctl, world, snapshot, vm)


def _source(world: World, snapshot: dict) -> dict | None:
    source = dig(snapshot, "spec", "source", default={}) or {}
    if source.get("kind") != "VirtualMachine":
        return None
    return world.vms.get((dig(snapshot, "metadata", "namespace"), source.get("name")))


def _release(ctl: Controller, world: World, snapshot: dict) -> None:
    """A deleted snapshot: its VM unlocked, its content deleted (deletionPolicy `delete`, the
    default), then its finalizer dropped; one step a pass."""
    if SNAPSHOT_FINALIZER not in finalizers(snapshot):
        return
    vm = _source(world, snapshot)
    if vm is not None and dig(vm, "status", "snapshotInProgress") == nn(snapshot)[1]:
        _unlock(ctl, world, vm)
        return
    content = world.snapshot_contents.get((nn(snapshot)[0], content_name(snapshot)))
    retain = dig(snapshot, "spec", "deletionPolicy") == "retain"
    if content is not None and not retain and not dig(content, "metadata", "deletionTimestamp"):
        ctl.delete(SNAPSHOT_CONTENT.path(*nn(content)), content)
        return
    drop_finalizer(ctl, SNAPSHOT.path(*nn(snapshot)), snapshot, SNAPSHOT_FINALIZER)


def _unlock(ctl: Controller, world: World, vm: dict) -> bool:
    """The guest thawed and the VM's snapshot lock released; True when nothing was left."""
    namespace, name = nn(vm)
    vmi = world.vmis.get((namespace, name))
    if vmi is not None and dig(vmi, "status", "fsFreezeStatus"):
        ctl.patch(VMI.path(namespace, name), vmi, {"status": {"fsFreezeStatus": None}})
        return False
    if dig(vm, "status", "snapshotInProgress"):
        unlocked = {"status": {"snapshotInProgress": None}}
        ctl.patch(VM.path(namespace, name), vm, unlocked, status=True)
        return False
    return True


def _source_missing(ctl: Controller, snapshot: dict) -> None:
    if age(snapshot) > DEADLINE_SECONDS:
        status = {
            "phase": "Failed",
            "error": {"time": now_iso(), "message": "snapshot source does not exist"},
            "conditions": conditions(snapshot, False, False, "Source does not exist"),
        }
    elif phase(snapshot) != "InProgress":
        status = {
            "phase": "InProgress",
            "readyToUse": False,
            "conditions": conditions(snapshot, False, False, "Source does not exist"),
        }
    else:
        return
    ctl.patch(SNAPSHOT.path(*nn(snapshot)), snapshot, {"status": status}, status=True)


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
    namespace, name = nn(vm)
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
        "conditions": conditions(snapshot, True, False, "Source locked and operation in progress"),
    }
    ctl.patch(SNAPSHOT.path(*nn(snapshot)), snapshot, {"status": status}, status=True)


def _claim_of(volume: dict) -> str | None:
    return dig(volume, "persistentVolumeClaim", "claimName") or dig(volume, "dataVolume", "name")


def volume_backups(world: World, snapshot: dict, vm: dict) -> list[dict]:
    """KubeVirt's volume backups: one per snapshot-supported volume whose claim exists."""
    namespace = dig(vm, "metadata", "namespace")
    backups = []
    for volume in dig(vm, "spec", "template", "spec", "volumes", default=[]) or []:
        claim = world.pvcs.get((namespace, _claim_of(volume)))
        if not snapshot_support(volume)[0] or claim is None:
            continue
        meta = claim.get("metadata") or {}
        kept = ("name", "namespace", "labels", "annotations", "ownerReferences")
        backups.append(
            {
                "volumeName": volume.get("name"),
                "persistentVolumeClaim": {
                    "metadata": {k: meta[k] for k in kept if meta.get(k)},
                    "spec": claim.get("spec") or {},
                },
                "volumeSnapshotName": (
                    f"vmsnapshot-{dig(snapshot, 'metadata', 'uid')}-volume-{volume.get('name')}"
                ),
            }
        )
    return backups


def create_content(ctl: Controller, world: World, snapshot: dict, vm: dict) -> None:
    meta = vm.get("metadata") or {}
    body = {
        "apiVersion": SNAPSHOT_CONTENT.api_version,
        "kind": SNAPSHOT_CONTENT.kind,
        "metadata": {
            "name": content_name(snapshot),
            "namespace": meta.get("namespace"),
            "finalizers": [CONTENT_FINALIZER],
        },
        "spec": {
            "virtualMachineSnapshotName": dig(snapshot, "metadata", "name"),
            "source": {
                "virtualMachine": {
                    "metadata": {
                        "name": meta.get("name"),
                        "namespace": meta.get("namespace"),
                        "uid": meta.get("uid"),
                        "labels": meta.get("labels") or {},
                        "annotations": meta.get("annotations") or {},
                        "generation": meta.get("generation"),
                    },
                    "spec": vm.get("spec") or {},
                }
            },
            "volumeBackups": volume_backups(world, snapshot, vm),
        },
    }
    if ctl.create(SNAPSHOT_CONTENT.path(meta.get("namespace")), body) is not None:
        ctl.event(
            snapshot,
            "SuccessfulVirtualMachineSnapshotContentCreate",
            f"Successfully created VirtualMachineSnapshotContent {content_name(snapshot)}",
        )


def take_volume_snapshots(ctl: Controller, world: World, vm: dict, content: dict) -> None:
    """The CSI snapshots of the content's volumes, all of one instant: a running real guest's
    CPUs are stopped around the copies (its disks then hold exactly that instant, as a storage
    snapshot of a running VM is crash-consistent)."""
    namespace = dig(content, "metadata", "namespace")
    vmi = world.vmis.get(nn(vm))
    guest = ctl.hosts.guest_of(str(dig(vmi, "metadata", "uid"))) if vmi else None
    running = guest is not None and guest.state() in ("running", "paused")
    with guest.cpus_stopped() if running else contextlib.nullcontext():
        statuses = [
            _volume_snapshot(ctl, namespace, backup)
            for backup in dig(content, "spec", "volumeBackups", default=[]) or []
        ]
    errors = [
        f"VolumeSnapshot {s['volumeSnapshotName']} error: {s['error']['message']}"
        for s in statuses
        if s.get("error")
    ]
    ready = not errors
    status = {
        "readyToUse": ready,
        "creationTime": now_iso() if ready else None,
        "volumeSnapshotStatus": statuses or None,
        "error": {"time": now_iso(), "message": errors[0]} if errors else None,
    }
    path = SNAPSHOT_CONTENT.path(*nn(content))
    ctl.patch(path, content, {"status": status}, status=True)


def _volume_snapshot(ctl: Controller, namespace: str, backup: dict) -> dict:
    name = backup.get("volumeSnapshotName")
    claim = dig(backup, "persistentVolumeClaim", "metadata", "name")
    try:
        size = ctl.storage.take_snapshot(namespace, claim, name)
    except LookupError as error:  # the claim is not (yet) bound to a thin volume
        return {
            "volumeSnapshotName": name,
            "readyToUse": False,
            "error": {"time": now_iso(), "message": str(error)},
        }
    return {
        "volumeSnapshotName": name,
        "creationTime": now_iso(),
        "readyToUse": True,
        "restoreSize": format_bytes(size),
    }


def complete(ctl: Controller, world: World, snapshot: dict, vm: dict) -> None:
    namespace, name = nn(vm)
    content = world.snapshot_contents.get((namespace, content_name(snapshot)))
    if content is None:
        create_content(ctl, world, snapshot, vm)
        return
    if dig(content, "status", "readyToUse") is not True:
        take_volume_snapshots(ctl, world, vm, content)
        return
    if not _unlock(ctl, world, vm):
        return
    backups = dig(content, "spec", "volumeBackups", default=[]) or []
    included = [b.get("volumeName") for b in backups]
    excluded = [
        v.get("name")
        for v in dig(vm, "spec", "template", "spec", "volumes", default=[]) or []
        if v.get("name") not in included
    ]
    status = {
        "phase": "Succeeded",
        "readyToUse": True,
        "creationTime": dig(content, "status", "creationTime") or now_iso(),
        "virtualMachineSnapshotContentName": content_name(snapshot),
        "snapshotVolumes": {
            "includedVolumes": included or None,
            "excludedVolumes": excluded or None,
        },
        "conditions": conditions(snapshot, False, True, "Operation complete"),
    }
    if ctl.patch(SNAPSHOT.path(*nn(snapshot)), snapshot, {"status": status}, status=True):
        ctl.event(
            snapshot,
            "SuccessfulVirtualMachineSnapshotCreate",
            f"Successfully created snapshot of {name}",
        )


# --- content -------------------------------------------------------------------------------


def reconcile_content(ctl: Controller, world: World, content: dict) -> None:
    """A deleted content: its volume snapshots' copies deleted (the VolumeSnapshots it owns
    go with it on a cluster, and with them the CSI snapshots), then its finalizer dropped."""
    if not dig(content, "metadata", "deletionTimestamp"):
        return
    if CONTENT_FINALIZER not in finalizers(content):
        return
    namespace = dig(content, "metadata", "namespace")
    for backup in dig(content, "spec", "volumeBackups", default=[]) or []:
        ctl.storage.delete_snapshot(namespace, backup.get("volumeSnapshotName"))
    drop_finalizer(ctl, SNAPSHOT_CONTENT.path(*nn(content)), content, CONTENT_FINALIZER)
