"""Pure decisions of the stand-in (no I/O): scheduling, addresses, phases, conditions, statuses.

Everything here takes and returns plain dicts and strings so it can be unit-tested directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from kubernetes.utils import parse_quantity

from ..vmi_spec import dig, networks_of, stable_digest

FINAL_PHASES = ("Succeeded", "Failed")
VMI_STEPS = {
    "": "Pending",
    "Pending": "Scheduling",
    "Scheduling": "Scheduled",
    "Scheduled": "Running",
}
DRAIN_TAINT = "kubevirt.io/drain"
SCHEDULABLE_LABEL = "kubevirt.io/schedulable"
POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")


# --- small accessors ---------------------------------------------------------------------------


def phase(vmi: Mapping | None) -> str:
    return str(dig(vmi, "status", "phase", default="") or "")


def is_final(vmi: Mapping | None) -> bool:
    return phase(vmi) in FINAL_PHASES


def get_condition(obj: Mapping | None, kind: str) -> dict | None:
    for cond in dig(obj, "status", "conditions", default=[]) or []:
        if isinstance(cond, Mapping) and cond.get("type") == kind:
            return dict(cond)
    return None


def condition_true(obj: Mapping | None, kind: str) -> bool:
    cond = get_condition(obj, kind)
    return bool(cond) and cond.get("status") == "True"


def set_condition(
    conditions: list[dict] | None,
    kind: str,
    status: str,
    now: str,
    *,
    reason: str = "",
    message: str = "",
) -> list[dict]:
    """conditions with `kind` set; lastTransitionTime moves only when the status changes."""
    result, previous = [], None
    for cond in conditions or []:
        if isinstance(cond, Mapping) and cond.get("type") == kind:
            previous = cond
        elif isinstance(cond, Mapping):
            result.append(dict(cond))
    changed = previous is None or previous.get("status") != status
    new = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": now if changed else previous.get("lastTransitionTime", now),
    }
    if reason:
        new["reason"] = reason
    if message:
        new["message"] = message
    result.append(new)
    return result


def remove_condition(conditions: list[dict] | None, kind: str) -> list[dict]:
    return [dict(c) for c in conditions or [] if isinstance(c, Mapping) and c.get("type") != kind]


# --- VM ----------------------------------------------------------------------------------------


def run_strategy(vm: Mapping) -> str:
    """Effective run strategy: spec.runStrategy, else spec.running mapped, else Halted."""
    spec = dig(vm, "spec", default={}) or {}
    strategy = spec.get("runStrategy")
    if strategy:
        return str(strategy)
    running = spec.get("running")
    return "Always" if running is True else "Halted"


def vm_action(strategy: str, vmi: Mapping | None, *, started_once: bool) -> str | None:
    """What the VM controller does about its VMI: create, stop, restart or nothing.

    ``stop`` ends a live VMI (Succeeded, then deleted) or deletes a finished one; ``restart``
    deletes a finished VMI so that a new one is created on the next pass. Manual and
    WaitAsReceiver act only on explicit start/stop requests.
    """
    if vmi is None:
        creates = strategy in ("Always", "RerunOnFailure") or (
            strategy == "Once" and not started_once
        )
        return "create" if creates else None
    if strategy == "Halted":
        return "stop"
    restart_on = {"Always": FINAL_PHASES, "RerunOnFailure": ("Failed",)}.get(strategy, ())
    return "restart" if phase(vmi) in restart_on else None


def printable_status(vm: Mapping, vmi: Mapping | None, strategy: str) -> str:
    """KubeVirt's human-readable VM status (the STATUS column of kubectl get vm)."""
    if dig(vm, "metadata", "deletionTimestamp"):
        return "Terminating"
    if vmi is None or is_final(vmi):
        return "Stopped"
    if dig(vmi, "metadata", "deletionTimestamp") or strategy == "Halted":
        return "Stopping"
    current = phase(vmi)
    if current == "Running":
        return _running_status(vmi)
    return "Unknown" if current == "Unknown" else _starting_status(vmi)


def _running_status(vmi: Mapping) -> str:
    if condition_true(vmi, "Paused"):
        return "Paused"
    state = dig(vmi, "status", "migrationState") or {}
    migrating = bool(state) and not state.get("completed") and not state.get("failed")
    return "Migrating" if migrating else "Running"


def _starting_status(vmi: Mapping) -> str:
    scheduled = get_condition(vmi, "PodScheduled") or {}
    if scheduled.get("status") != "False":
        return "Starting"
    return "ErrorPvcNotFound" if scheduled.get("reason") == "PvcNotFound" else "ErrorUnschedulable"


def snapshot_support(volume: Mapping) -> tuple[bool, str]:
    """Whether a volume can be snapshotted (PVC-backed volumes only), and why not."""
    if "persistentVolumeClaim" in volume or "dataVolume" in volume:
        return True, ""
    source = next((k for k in volume if k != "name"), "unknown")
    return False, f"Snapshot is not supported for this volumeSource type [{source}]"


# --- nodes and scheduling -----------------------------------------------------------------------


def node_ready(node: Mapping | None) -> bool:
    return condition_true(node, "Ready")


def taints(node: Mapping) -> list[dict]:
    return [t for t in dig(node, "spec", "taints", default=[]) or [] if isinstance(t, Mapping)]


def node_draining(node: Mapping) -> bool:
    """Cordoned, or tainted with kubevirt.io/drain (KubeVirt's drain taint key)."""
    if dig(node, "spec", "unschedulable"):
        return True
    return any(
        t.get("key") == DRAIN_TAINT and t.get("effect") == "NoSchedule" for t in taints(node)
    )


def tolerates(tolerations: Iterable[Mapping], taint: Mapping) -> bool:
    for tol in tolerations:
        if not isinstance(tol, Mapping):
            continue
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol.get("key") == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and (tol.get("value") or "") == (
            taint.get("value") or ""
        ):
            return True
    return False


def _compare(value: str | None, values: list[str], sign: int) -> bool:
    try:
        return value is not None and bool(values) and (int(value) - int(values[0])) * sign > 0
    except ValueError:
        return False


def matches_expression(labels: Mapping[str, str], expression: Mapping) -> bool:
    """One node selector requirement (In, NotIn, Exists, DoesNotExist, Gt, Lt)."""
    value = labels.get(expression.get("key"))
    values = [str(v) for v in expression.get("values") or []]
    checks = {
        "In": lambda: value is not None and value in values,
        "NotIn": lambda: value is None or value not in values,
        "Exists": lambda: value is not None,
        "DoesNotExist": lambda: value is None,
        "Gt": lambda: _compare(value, values, 1),
        "Lt": lambda: _compare(value, values, -1),
    }
    check = checks.get(expression.get("operator"))
    return bool(check and check())


def affinity_allows(labels: Mapping[str, str], spec: Mapping) -> bool:
    terms = dig(
        spec,
        "affinity",
        "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
        "nodeSelectorTerms",
        default=None,
    )
    if not terms:
        return True
    return any(
        all(matches_expression(labels, e) for e in (t.get("matchExpressions") or []))
        for t in terms
        if isinstance(t, Mapping)
    )


def node_fits(
    node: Mapping, spec: Mapping, extra_selector: Mapping[str, str] | None = None
) -> bool:
    """Could virt-launcher's pod for this VMI spec be scheduled on node?"""
    labels = dig(node, "metadata", "labels", default={}) or {}
    if not node_ready(node) or dig(node, "spec", "unschedulable"):
        return False
    if labels.get(SCHEDULABLE_LABEL, "true") != "true":
        return False
    tolerations = dig(spec, "tolerations", default=[]) or []
    for taint in taints(node):
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return False
    wanted = {**(dig(spec, "nodeSelector", default={}) or {}), **(extra_selector or {})}
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    return affinity_allows(labels, spec)


def choose_node(
    nodes: Iterable[Mapping],
    spec: Mapping,
    load: Mapping[str, int],
    *,
    exclude: Iterable[str] = (),
    extra_selector: Mapping[str, str] | None = None,
) -> str | None:
    """The least-loaded node that fits (ties broken by name), or None."""
    excluded = set(exclude)
    names = [
        dig(n, "metadata", "name")
        for n in nodes
        if node_fits(n, spec, extra_selector) and dig(n, "metadata", "name") not in excluded
    ]
    names = [n for n in names if n]
    if not names:
        return None
    return min(names, key=lambda name: (load.get(name, 0), name))


# --- addresses ---------------------------------------------------------------------------------


def allocate_ip(seed: str, used: Iterable[str], network=POD_NETWORK) -> str:
    """A stable fake pod IP for seed (a VMI UID): hash into the range, probe past used ones.

    Host numbers ending in .0 or .255 are skipped so the addresses look ordinary.
    """
    taken = set(used)
    size = network.num_addresses
    start = stable_digest(seed) % size
    for step in range(size):
        candidate = network.network_address + (start + step) % size
        if int(candidate) & 0xFF in (0, 255) or str(candidate) in taken:
            continue
        return str(candidate)
    raise RuntimeError(f"no free address left in {network}")


# --- VMI phases --------------------------------------------------------------------------------


def next_phase(current: str) -> str | None:
    """The next step of a starting VMI (Pending -> Scheduling -> Scheduled -> Running)."""
    return VMI_STEPS.get(current)


def eviction_strategy(vmi: Mapping, vm: Mapping | None, default: str = "None") -> str:
    """VMI spec first, then the owning VM's template, then the cluster default."""
    return str(
        dig(vmi, "spec", "evictionStrategy")
        or dig(vm, "spec", "template", "spec", "evictionStrategy")
        or default
    )


def live_migratable(
    spec: Mapping, claim_access_modes: Mapping[str, list[str]]
) -> tuple[bool, str, str]:
    """(migratable, reason, message) like KubeVirt's LiveMigratable condition.

    Bridge binding on the pod network and PVCs without ReadWriteMany block live migration.
    """
    pod_networks = {n["name"] for n in networks_of(spec) if "pod" in n}
    for iface in dig(spec, "domain", "devices", "interfaces", default=[]) or []:
        if isinstance(iface, Mapping) and "bridge" in iface and iface.get("name") in pod_networks:
            message = (
                "cannot migrate VMI which does not use masquerade to connect to the pod network"
            )
            return False, "InterfaceNotLiveMigratable", message
    for volume in dig(spec, "volumes", default=[]) or []:
        if not isinstance(volume, Mapping):
            continue
        claim = dig(volume, "persistentVolumeClaim", "claimName") or dig(
            volume, "dataVolume", "name"
        )
        modes = claim_access_modes.get(claim) if claim else None
        if modes is not None and "ReadWriteMany" not in modes:
            message = (
                f"cannot migrate VMI: PVC {claim} is not shared, live migration requires "
                "that all PVCs must be shared (using ReadWriteMany access mode)"
            )
            return False, "DisksNotLiveMigratable", message
    return True, "", ""


def missing_claims(spec: Mapping, existing: Iterable[str]) -> list[str]:
    """PVCs named by persistentVolumeClaim volumes that do not exist."""
    have = set(existing)
    claims = [
        dig(v, "persistentVolumeClaim", "claimName")
        for v in dig(spec, "volumes", default=[]) or []
        if isinstance(v, Mapping)
    ]
    return [c for c in claims if c and c not in have]


def disk_target(index: int) -> str:
    """vda, vdb, ... as the guest sees virtio disks."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return "vd" + letters


def memory_dump_file(vm_name: str, claim: str, stamp: str) -> str:
    """KubeVirt's dump file name: <vm>-<claim>-<YYYYMMDD-HHMMSS>.memory.dump."""
    digits = stamp.replace("-", "").replace(":", "").rstrip("Z")
    date, _, clock = digits.partition("T")
    return f"{vm_name}-{claim}-{date}-{clock}.memory.dump"


MEMORY_DUMP_OVERHEAD = 100 * 1024 * 1024  # KubeVirt pkg/util CalcExpectedMemoryDumpSize
DEFAULT_FS_OVERHEAD = 0.055  # CDI's default filesystem overhead (pkg/storage/types/cdi.go)
MIB = 1024 * 1024


def guest_memory_bytes(spec: Mapping) -> int:
    """The memory request of a VMI spec (virt-api defaults it to memory.guest), in bytes."""
    domain = spec.get("domain") or {}
    value = dig(domain, "resources", "requests", "memory") or dig(domain, "memory", "guest")
    return int(parse_quantity(value)) if value is not None else 0


def memory_dump_claim_refusal(spec: Mapping, pvc: Mapping) -> str | None:
    """Why virt-api refuses this PVC for a memory dump of a VMI with `spec`, or None.

    As `validateMemoryDumpClaim` in KubeVirt's pkg/virt-api/rest/memorydump.go: a Filesystem
    PVC, writable, whose request holds memory + 100 MiB plus the file system overhead
    (rounded up to a MiB); the messages are KubeVirt's.
    """
    claim_spec = pvc.get("spec") or {}
    if claim_spec.get("volumeMode") == "Block":
        return "pvc should be filesystem pvc"
    modes = claim_spec.get("accessModes") or []
    if modes and all(mode == "ReadOnlyMany" for mode in modes):
        return "pvc access mode can't be read only"
    requested = dig(claim_spec, "resources", "requests", "storage") or 0
    size_kb = -(-int(parse_quantity(requested)) // 1000) * 1000
    needed = (1 + DEFAULT_FS_OVERHEAD) * (guest_memory_bytes(spec) + MEMORY_DUMP_OVERHEAD)
    needed_bytes = -(-int(needed) // MIB) * MIB
    if size_kb < needed_bytes:
        return f"pvc size [{size_kb}] should be bigger then [{needed_bytes}]"
    return None
