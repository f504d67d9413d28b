"""Live migration (VirtualMachineInstanceMigration) and node-drain evacuation.

A migration walks KubeVirt's phases one per pass, Pending -> Scheduling -> Scheduled ->
PreparingTarget -> TargetReady -> Running -> Succeeded, and on success the VMI's nodeName moves
to the target. Drained nodes (cordoned, or tainted kubevirt.io/drain:NoSchedule) get their VMIs
marked with status.evacuationNodeName; LiveMigrate VMIs also get an evacuation migration.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from .api import VMI, VMIM, now_iso, parse_iso
from .logic import (
    choose_node,
    condition_true,
    dig,
    eviction_strategy,
    get_condition,
    node_draining,
    node_ready,
    phase,
)
from .vmi import NODE_LABEL

if TYPE_CHECKING:
    from .controller import Controller, World

EVACUATION_ANNOTATION = "kubevirt.io/evacuationMigration"
VMI_NAME_LABEL = "kubevirt.io/vmi-name"
TARGET_LABEL = "kubevirt.io/migrationTargetNodeName"
STEPS = {
    "": "Pending",
    "Pending": "Scheduling",
    "Scheduled": "PreparingTarget",
    "PreparingTarget": "TargetReady",
    "TargetReady": "Running",
}
RETRY_SECONDS = 10.0


def is_active(migration: dict) -> bool:
    return phase(migration) not in ("Succeeded", "Failed")


def _nn(obj: dict) -> tuple[str, str]:
    return dig(obj, "metadata", "namespace"), dig(obj, "metadata", "name")


def _for_vmi(world: World, namespace: str, name: str) -> list[dict]:
    return [
        m
        for m in world.migrations
        if dig(m, "metadata", "namespace") == namespace and dig(m, "spec", "vmiName") == name
    ]


# --- evacuation ----------------------------------------------------------------------------


def evacuate(ctl: Controller, world: World, _: object = None) -> None:
    abandon_orphans(ctl, world)
    draining = {name for name, node in world.nodes.items() if node_draining(node)}
    for vmi in list(world.vmis.values()):
        node = dig(vmi, "status", "nodeName")
        if (
            node in draining
            and phase(vmi) == "Running"
            and not dig(vmi, "metadata", "deletionTimestamp")
        ):
            _evacuate_vmi(ctl, world, vmi, node)


def _evacuate_vmi(ctl: Controller, world: World, vmi: dict, node: str) -> None:
    namespace, name = _nn(vmi)
    strategy = eviction_strategy(
        vmi, world.vms.get((namespace, name)), ctl.settings.default_eviction_strategy
    )
    if strategy == "LiveMigrateIfPossible":
        strategy = "LiveMigrate" if condition_true(vmi, "LiveMigratable") else "None"
    if strategy not in ("External", "LiveMigrate"):
        return  # None: a real drain would evict (shut down) the VMI; a cordon alone does nothing
    if dig(vmi, "status", "evacuationNodeName") != node:
        if ctl.patch(VMI.path(namespace, name), vmi, {"status": {"evacuationNodeName": node}}):
            ctl.event(vmi, "EvictionRequested", f"Node {node} is being drained")
        return
    if strategy == "LiveMigrate" and _may_start_evacuation(world, namespace, name):
        body = {
            "apiVersion": VMIM.api_version,
            "kind": VMIM.kind,
            "metadata": {
                "generateName": "kubevirt-evacuation-",
                "namespace": namespace,
                "annotations": {EVACUATION_ANNOTATION: node},
                "labels": {VMI_NAME_LABEL: name},
            },
            "spec": {"vmiName": name},
        }
        ctl.create(VMIM.path(namespace), body)


def _may_start_evacuation(world: World, namespace: str, name: str) -> bool:
    """No migration running, and no evacuation failed in the last RETRY_SECONDS (back-off)."""
    for m in _for_vmi(world, namespace, name):
        if is_active(m):
            return False
        created = parse_iso(dig(m, "metadata", "creationTimestamp"))
        evacuation = EVACUATION_ANNOTATION in (dig(m, "metadata", "annotations", default={}) or {})
        recent = created is not None and time.time() - created.timestamp() < RETRY_SECONDS
        if evacuation and phase(m) == "Failed" and recent:
            return False
    return True


def abandon_orphans(ctl: Controller, world: World) -> None:
    """A migration deleted mid-flight is aborted: the VMI's migrationState says so."""
    known = {dig(m, "metadata", "uid") for m in world.migrations if is_active(m)}
    for vmi in list(world.vmis.values()):
        state = dig(vmi, "status", "migrationState") or {}
        if not state or state.get("completed") or state.get("failed"):
            continue
        if state.get("migrationUid") not in known:
            aborted = {
                **state,
                "failed": True,
                "abortStatus": "Succeeded",
                "endTimestamp": now_iso(),
            }
            labels = {TARGET_LABEL: None}
            ctl.patch(
                VMI.path(*_nn(vmi)),
                vmi,
                {"metadata": {"labels": labels}, "status": {"migrationState": aborted}},
            )


# --- migrations ----------------------------------------------------------------------------


def _set_phase(ctl: Controller, migration: dict, new_phase: str, extra: dict | None = None) -> bool:
    now = now_iso()
    stamps = list(dig(migration, "status", "phaseTransitionTimestamps", default=[]) or [])
    stamps.append({"phase": new_phase, "phaseTransitionTimestamp": now})
    status = {"phase": new_phase, "phaseTransitionTimestamps": stamps, **(extra or {})}
    return ctl.patch(VMIM.path(*_nn(migration)), migration, {"status": status}, status=True)


def fail(ctl: Controller, world: World, migration: dict, vmi: dict | None, reason: str) -> None:
    state = {**(dig(migration, "status", "migrationState") or {})}
    state.update({"failed": True, "failureReason": reason, "endTimestamp": now_iso()})
    if vmi is not None and dig(vmi, "status", "migrationState", "migrationUid") == dig(
        migration, "metadata", "uid"
    ):
        vmi_state = {**(dig(vmi, "status", "migrationState") or {}), **state}
        patch = {
            "metadata": {"labels": {TARGET_LABEL: None}},
            "status": {"migrationState": vmi_state},
        }
        if not ctl.patch(VMI.path(*_nn(vmi)), vmi, patch):
            return
    if _set_phase(ctl, migration, "Failed", {"migrationState": state}):
        ctl.event(migration, "FailedMigration", reason, "Warning")


def reconcile(ctl: Controller, world: World, migration: dict) -> None:
    if not is_active(migration) or dig(migration, "metadata", "deletionTimestamp"):
        return
    namespace = dig(migration, "metadata", "namespace")
    vmi = world.vmis.get((namespace, dig(migration, "spec", "vmiName")))
    current = phase(migration)
    if vmi is None or phase(vmi) != "Running":
        fail(ctl, world, migration, vmi, "VMI is not running")
        return
    if current == "":
        if not condition_true(vmi, "LiveMigratable"):
            cond = get_condition(vmi, "LiveMigratable") or {}
            fail(ctl, world, migration, vmi, cond.get("message") or "VMI is not live migratable")
            return
        if any(
            is_active(m) and m is not migration and phase(m) for m in _for_vmi(world, *_nn(vmi))
        ):
            fail(ctl, world, migration, vmi, "in-flight migration detected")
            return
    target = dig(migration, "status", "migrationState", "targetNode")
    if target and not node_ready(world.nodes.get(target)):
        fail(ctl, world, migration, vmi, f"target node {target} is not ready")
    elif current == "Scheduling":
        schedule(ctl, world, migration, vmi)
    elif current == "Running":
        finish(ctl, world, migration, vmi)
    elif current in STEPS:
        _set_phase(ctl, migration, STEPS[current])


def schedule(ctl: Controller, world: World, migration: dict, vmi: dict) -> None:
    source = dig(vmi, "status", "nodeName")
    target = choose_node(
        world.nodes.values(),
        dig(vmi, "spec", default={}) or {},
        world.load(),
        exclude=[source],
        extra_selector=dig(migration, "spec", "addedNodeSelector"),
    )
    if target is None:
        created = parse_iso(dig(migration, "metadata", "creationTimestamp"))
        if created and time.time() - created.timestamp() > ctl.settings.migration_timeout:
            fail(ctl, world, migration, vmi, "no node is available for the migration target")
        return
    name = dig(vmi, "metadata", "name")
    state = {
        "migrationUid": dig(migration, "metadata", "uid"),
        "sourceNode": source,
        "targetNode": target,
        "sourcePod": _pod_name(name),
        "targetPod": _pod_name(name),
        "mode": "PreCopy",
        "startTimestamp": now_iso(),
    }
    labels = {TARGET_LABEL: target}
    if ctl.patch(
        VMI.path(*_nn(vmi)),
        vmi,
        {"metadata": {"labels": labels}, "status": {"migrationState": state}},
    ):
        _set_phase(ctl, migration, "Scheduled", {"migrationState": state})


def _pod_name(vmi_name: str) -> str:
    return f"virt-launcher-{vmi_name}-{uuid.uuid4().hex[:5]}"


def finish(ctl: Controller, world: World, migration: dict, vmi: dict) -> None:
    """The guest now runs on the target node."""
    state = dig(migration, "status", "migrationState") or {}
    target, now = state.get("targetNode"), now_iso()
    done = {
        **state,
        "completed": True,
        "endTimestamp": now,
        "targetNodeDomainDetected": True,
        "targetNodeDomainReadyTimestamp": now,
    }
    patch = {
        "metadata": {"labels": {NODE_LABEL: target, TARGET_LABEL: None}},
        "status": {
            "nodeName": target,
            "migrationState": done,
            "evacuationNodeName": None,
            "activePods": {str(uuid.uuid4()): target},
        },
    }
    if ctl.patch(VMI.path(*_nn(vmi)), vmi, patch):
        _set_phase(ctl, migration, "Succeeded", {"migrationState": done})
        message = f"The VirtualMachineInstance migrated to node {target}."
        ctl.event(vmi, "Migrated", message)
        ctl.event(migration, "SuccessfulMigration", message)
