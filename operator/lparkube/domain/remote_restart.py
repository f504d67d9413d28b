"""RemoteRestart decisions as pure functions: the step list as data, the validation policy
chain, the target checks and their scoring, the proof that the source is stopped, the RWO
release check, adapter lock names, the VM hold and its rollback, and the conditions.

Seed 001's remote restart: an operation token (the RemoteRestart's uid) on every lock and mark,
source and target adapters locked, the source's adapter configuration gathered, the target
configured and verified, then RestartSucceeded (0) or RestartFailed (1), everything this
operation made undone and every lock released. The controller
(``controllers/remote_restart_run.py``) reads a pass's world once, asks these functions, does
the one thing they name and writes the status they return.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from lparkube.api.v1alpha1 import failover as fo_api
from lparkube.api.v1alpha1 import remoterestart as api
from lparkube.domain import hibernation as h
from lparkube.domain.clock import parse_duration, parse_time, rfc3339
from lparkube.domain.conditions import Condition, is_true
from lparkube.domain.failover import fenced
from lparkube.domain.leadership import LeaseRecord
from lparkube.domain.logical_units import parse_size
from lparkube.domain.saving import selector_matches
from lparkube.domain.vios_cluster import node_ready

Refusal = h.Refusal  # (reason, message): why the operation cannot go on (now)
FINAL_VMI_PHASES = h.FINAL_VMI_PHASES
TERMINATED_POD_PHASES = frozenset({"Succeeded", "Failed"})
SHARED_ACCESS_MODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})
# KubeVirt's default cpuAllocationRatio: a vCPU without a request asks for 1/10 of a CPU.
MILLICPU_PER_VCPU = 100
LAUNCHER_VM_LABEL = "vm.kubevirt.io/name"
MAX_NAME = 63


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _name(obj: Mapping[str, Any] | None) -> str:
    return _get(obj, "metadata", "name") or ""


# --- the steps, as data in status.steps ---------------------------------------------------------


def steps_initial(with_image: bool) -> list[dict[str, Any]]:
    """Every step Pending; RestoringMemory (with an image) or Booting (without) Skipped."""
    unused = api.BOOTING if with_image else api.RESTORING_MEMORY
    return [{"name": s, "status": api.SKIPPED if s == unused else api.PENDING} for s in api.STEPS]


def _set(steps: Sequence[Mapping[str, Any]], name: str, **fields: Any) -> list[dict[str, Any]]:
    return [{**s, **fields} if s["name"] == name else dict(s) for s in steps]


def step_status(steps: Sequence[Mapping[str, Any]], name: str) -> str:
    return next((s["status"] for s in steps if s["name"] == name), api.PENDING)


def start_step(
    steps: Sequence[Mapping[str, Any]], name: str, now: datetime, message: str = ""
) -> list[dict[str, Any]]:
    """The step Running since now (a step already running keeps its start)."""
    current = next((s for s in steps if s["name"] == name), {})
    started = current.get("startTime") or rfc3339(now)
    return _set(steps, name, status=api.RUNNING, startTime=started, message=message)


def note_step(steps: Sequence[Mapping[str, Any]], name: str, message: str) -> list[dict[str, Any]]:
    """What a running step waits for, without changing its status."""
    return _set(steps, name, message=message)


def complete_step(
    steps: Sequence[Mapping[str, Any]], name: str, now: datetime, message: str = ""
) -> list[dict[str, Any]]:
    out = start_step(steps, name, now, message)
    return _set(out, name, status=api.DONE, completionTime=rfc3339(now))


def fail_step(
    steps: Sequence[Mapping[str, Any]], name: str, now: datetime, message: str
) -> list[dict[str, Any]]:
    out = start_step(steps, name, now, message)
    return _set(out, name, status=api.FAILED, completionTime=rfc3339(now))


def next_step(steps: Sequence[Mapping[str, Any]], after: str) -> str | None:
    """The step after `after` that is not Skipped (None: `after` was the last)."""
    names = [s["name"] for s in steps]
    later = names[names.index(after) + 1 :] if after in names else []
    return next((n for n in later if step_status(steps, n) != api.SKIPPED), None)


def advance(
    steps: Sequence[Mapping[str, Any]], name: str, now: datetime, message: str = ""
) -> tuple[list[dict[str, Any]], str | None]:
    """`name` Done and the next step Running: (the new steps, the next step or None)."""
    out = complete_step(steps, name, now, message)
    following = next_step(out, name)
    if following is not None:
        out = start_step(out, following, now)
    return out, following


def progress(steps: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """`status.progress`: steps Done (a Skipped one counts as done) of all of them."""
    done = sum(1 for s in steps if s["status"] in (api.DONE, api.SKIPPED))
    return {"completedSteps": done, "totalSteps": len(steps)}


def target_start_requested(steps: Sequence[Mapping[str, Any]]) -> bool:
    """Whether RestoringMemory or Booting began: from then on the target may run the guest."""
    return any(
        s["name"] in (api.RESTORING_MEMORY, api.BOOTING) and s.get("startTime") for s in steps
    )


# --- validation: reads only; the first refusal ends the operation ------------------------------


@dataclass(frozen=True)
class Input:
    """What the Validating step read (any object may be missing)."""

    restart: Mapping[str, Any]
    partition: Mapping[str, Any] | None = None
    vm: Mapping[str, Any] | None = None
    vmi: Mapping[str, Any] | None = None
    image: Mapping[str, Any] | None = None
    others: Sequence[Mapping[str, Any]] = ()  # the namespace's other RemoteRestarts
    nodes: Sequence[Mapping[str, Any]] = ()
    pods: Sequence[Mapping[str, Any]] = ()  # the non-terminated pods on every node
    pool: Mapping[str, Any] | None = None  # the VIOSCluster (None: none named)
    claims: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)  # by name
    volumes: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)  # PVs
    networks: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)  # ns/name

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.restart.get("spec") or {}

    @property
    def namespace(self) -> str:
        return _get(self.restart, "metadata", "namespace") or ""

    @property
    def vm_spec(self) -> Mapping[str, Any]:
        return _get(self.vm, "spec", "template", "spec") or {}

    @property
    def source_node(self) -> str:
        """Where the partition runs (or ran: a failover restarting it names the node its
        failed instance ran on; or was hibernated)."""
        failed = _get(self.partition, "status", "failover", "current") or {}
        return (
            _get(self.vmi, "status", "nodeName")
            or (failed.get("nodeName") if failed.get("phase") == fo_api.RESTARTING else None)
            or _get(self.partition, "status", "nodeName")
            or _get(self.image, "status", "sourceNodeName")
            or ""
        )

    def node(self, name: str) -> Mapping[str, Any] | None:
        return next((n for n in self.nodes if _name(n) == name), None)


def _partition_exists(inp: Input) -> Refusal | None:
    if inp.partition is None:
        return Refusal(
            api.PARTITION_NOT_FOUND,
            f'Partition "{inp.spec.get("partitionName")}" not found in namespace {inp.namespace}',
        )
    return None


def _vm_exists(inp: Input) -> Refusal | None:
    if inp.vm is None:
        name = _get(inp.partition, "status", "vmName") or inp.spec.get("partitionName")
        return Refusal(api.VM_NOT_FOUND, f'the Partition\'s VirtualMachine "{name}" not found')
    return None


def _order(restart: Mapping[str, Any]) -> tuple[str, str]:
    meta = restart.get("metadata") or {}
    return meta.get("creationTimestamp") or "", meta.get("name") or ""


def unfinished(restart: Mapping[str, Any]) -> bool:
    return not _get(restart, "status", "terminationState")


def _first_of_its_partition(inp: Input) -> Refusal | None:
    partition = inp.spec.get("partitionName")
    older = sorted(
        (
            o
            for o in inp.others
            if _get(o, "spec", "partitionName") == partition
            and _name(o) != _name(inp.restart)
            and unfinished(o)
            and _order(o) < _order(inp.restart)
        ),
        key=_order,
    )
    if older:
        return Refusal(
            api.ANOTHER_RESTART_IN_PROGRESS,
            f'RemoteRestart "{_name(older[0])}" of Partition "{partition}" is in progress',
        )
    return None


def _image_fits(inp: Input) -> Refusal | None:
    wanted = inp.spec.get("hibernationImageName")
    if not wanted:
        return None
    image = inp.image
    if image is None:
        return Refusal(api.IMAGE_NOT_FOUND, f'HibernationImage "{wanted}" not found')
    if _get(image, "spec", "partitionName") != inp.spec.get("partitionName"):
        return Refusal(
            api.IMAGE_OF_ANOTHER_PARTITION,
            f'HibernationImage "{wanted}" is of Partition "{_get(image, "spec", "partitionName")}"',
        )
    if not is_true(_get(image, "status", "conditions"), h.CAPTURED):
        return Refusal(api.IMAGE_NOT_CAPTURED, f'HibernationImage "{wanted}" is not Captured')
    changes = h.configuration_changes(
        _get(image, "status", "adapters") or [], _get(image, "status", "machine") or {}, inp.vm
    )
    if changes:
        return Refusal(
            api.IMAGE_ADAPTERS_DO_NOT_FIT,
            f'the VM no longer has the configuration HibernationImage "{wanted}" was captured '
            f"with ({'; '.join(changes[:8])})",
        )
    return None


def multus_networks(inp: Input) -> list[str]:
    """The `ns/name` of every NetworkAttachmentDefinition the VM's networks name."""
    names = []
    for network in inp.vm_spec.get("networks") or []:
        wanted = _get(network, "multus", "networkName")
        if wanted:
            names.append(wanted if "/" in wanted else f"{inp.namespace}/{wanted}")
    return names


def _networks_exist(inp: Input) -> Refusal | None:
    missing = [n for n in multus_networks(inp) if inp.networks.get(n) is None]
    if missing:
        return Refusal(
            api.NETWORK_NOT_FOUND,
            f"NetworkAttachmentDefinition {', '.join(missing)} not found",
        )
    return None


VALIDATION_CHECKS: tuple[Callable[[Input], Refusal | None], ...] = (
    _partition_exists,
    _vm_exists,
    _first_of_its_partition,
    _image_fits,
    _networks_exist,
)


def validation_refusal(inp: Input) -> Refusal | None:
    """The first reason the restart cannot be done at all (before any target), or None."""
    return next((r for r in (check(inp) for check in VALIDATION_CHECKS) if r), None)


# --- the target: checks, each (Input, node) -> refusal, and the scoring -------------------------


def claim_names(vm_spec: Mapping[str, Any]) -> list[str]:
    """The PVCs the VM's volumes use (a DataVolume's claim has its name)."""
    names = []
    for volume in vm_spec.get("volumes") or []:
        claim = _get(volume, "persistentVolumeClaim", "claimName") or _get(
            volume, "dataVolume", "name"
        )
        if claim:
            names.append(claim)
    return names


def _labels(node: Mapping[str, Any]) -> Mapping[str, str]:
    return _get(node, "metadata", "labels") or {}


def _compare(value: str | None, values: Sequence[str], sign: int) -> bool:
    try:
        return value is not None and bool(values) and (int(value) - int(values[0])) * sign > 0
    except ValueError:
        return False


def requirement_holds(requirement: Mapping[str, Any], value: str | None) -> bool:
    """One NodeSelectorRequirement (In, NotIn, Exists, DoesNotExist, Gt, Lt) on a value."""
    values = [str(v) for v in requirement.get("values") or []]
    operator = requirement.get("operator")
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt"):
        return _compare(value, values, 1 if operator == "Gt" else -1)
    return False


def node_selector_terms_match(terms: Sequence[Mapping[str, Any]], node: Mapping[str, Any]) -> bool:
    """A NodeSelector: any term whose expressions and fields all hold (none: every node)."""
    if not terms:
        return True
    labels, fields = _labels(node), {"metadata.name": _name(node)}
    return any(
        all(requirement_holds(e, labels.get(e.get("key"))) for e in t.get("matchExpressions") or [])
        and all(requirement_holds(e, fields.get(e.get("key"))) for e in t.get("matchFields") or [])
        for t in terms
    )


def tolerated(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
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


def parse_millicpu(text: str | int | float | None) -> int | None:
    """Millicores from a CPU quantity (`500m`, `2`, `1.5`)."""
    if text is None:
        return None
    raw = str(text).strip()
    try:
        if raw.endswith("m"):
            return int(Decimal(raw[:-1]))
        return int(Decimal(raw) * 1000)
    except InvalidOperation:
        return None


def vm_needs(vm_spec: Mapping[str, Any]) -> tuple[int, int]:
    """(memory bytes, millicores) the VM's launcher pod asks for: its requests, else the
    guest memory and vCPUs/10 (KubeVirt's default cpuAllocationRatio)."""
    domain = vm_spec.get("domain") or {}
    requests = _get(domain, "resources", "requests") or {}
    memory = parse_size(requests.get("memory")) or parse_size(_get(domain, "memory", "guest"))
    cpu = domain.get("cpu") or {}
    vcpus = int(cpu.get("sockets") or 1) * int(cpu.get("cores") or 1) * int(cpu.get("threads") or 1)
    millis = parse_millicpu(requests.get("cpu"))
    return memory or 0, millis if millis is not None else vcpus * MILLICPU_PER_VCPU


def node_free(node: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(memory bytes, millicores) allocatable on the node minus what its non-terminated pods
    request."""
    allocatable = _get(node, "status", "allocatable") or {}
    memory = parse_size(allocatable.get("memory")) or 0
    cpu = parse_millicpu(allocatable.get("cpu")) or 0
    for pod in pods:
        if _get(pod, "spec", "nodeName") != _name(node):
            continue
        if _get(pod, "status", "phase") in TERMINATED_POD_PHASES:
            continue
        for container in _get(pod, "spec", "containers") or []:
            requests = _get(container, "resources", "requests") or {}
            memory -= parse_size(requests.get("memory")) or 0
            cpu -= parse_millicpu(requests.get("cpu")) or 0
    return memory, cpu


def _is_source(inp: Input, node: Mapping[str, Any]) -> Refusal | None:
    if _name(node) == inp.source_node:
        return Refusal(api.TARGET_IS_SOURCE, f"node {_name(node)} is where the partition ran")
    return None


def _ready(inp: Input, node: Mapping[str, Any]) -> Refusal | None:
    if not node_ready(node) or _get(node, "spec", "unschedulable"):
        state = "cordoned" if node_ready(node) else "not Ready"
        return Refusal(api.TARGET_NOT_READY, f"node {_name(node)} is {state}")
    return None


def _vios_node(inp: Input, node: Mapping[str, Any]) -> Refusal | None:
    if inp.pool is None:
        return None
    if not selector_matches(_get(inp.pool, "spec", "nodeSelector"), _labels(node)):
        return Refusal(
            api.TARGET_NOT_VIOS_NODE,
            f"node {_name(node)} is not a VIOS node of VIOSCluster {_name(inp.pool)}",
        )
    return None


def _missing_labels(
    node: Mapping[str, Any], wanted: Mapping[str, str], reason: str, what: str
) -> Refusal | None:
    wrong = sorted(k for k, v in wanted.items() if _labels(node).get(k) != v)
    if not wrong:
        return None
    labels = ", ".join(f"{k}={wanted[k]}" for k in wrong)
    return Refusal(reason, f"node {_name(node)} does not have {what} {labels}")


def _node_selector(inp: Input, node: Mapping[str, Any]) -> Refusal | None:
    wanted = inp.vm_spec.get("nodeSelector") or {}
    return _missing_labels(node, wanted, api.NODE_SELECTOR_MISMATCH, "the VM's nodeSelector")


def _affinity(inp: Input, node: Mapping[str, Any]) -> Refusal | None:
    terms = _get(
        inp.vm_spec,
        "affinity",
        "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
        "nodeSelectorTerms",
    )
    if not node_selector_terms_match(terms or [], node):
        return Refusal(
            api.AFFINITY_MISMATCH,
            f"node {_name(node)} does not satisfy the VM's required node affinity",
        )
    return None


def _taints(inp: Input, node: Mapping[str, Any]) -> Refusal | None:
    tolerations = inp.vm_spec.get("tolerations") or []
    for taint in _get(node, "spec", "taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerated(tolerations, taint):
            value = f"={taint['value']}" if taint.get("value") else ""
            return Refusal(
                api.TAINT_NOT_TOLERATED,
                f"the VM does not tolerate node {_name(node)}'s taint "
                f"{taint.get('key')}{value}:{taint.get('effect')}",
            )
    return None


def _target_selector(inp: Input, node: Mapping[str, Any]) -> Refusal | None:
    wanted = inp.spec.get("targetNodeSelector") or {}
    return _missing_labels(node, wanted, api.TARGET_SELECTOR_MISMATCH, "spec.targetNodeSelector")


def _memory(inp: Input, node: Mapping[str, Any]) -> Refusal | None:
    needed, _ = vm_needs(inp.vm_spec)
    free, _ = node_free(node, inp.pods)
    if needed > free:
        return Refusal(
            api.INSUFFICIENT_MEMORY,
            f"node {_name(node)} has {max(free, 0)} bytes of memory to spare, the VM needs "
            f"{needed}",
        )
    return None


def _cpu(inp: Input, node: Mapping[str, Any]) -> Refusal | None:
    _, needed = vm_needs(inp.vm_spec)
    _, free = node_free(node, inp.pods)
    if needed > free:
        return Refusal(
            api.INSUFFICIENT_CPU,
            f"node {_name(node)} has {max(free, 0)}m CPU to spare, the VM needs {needed}m",
        )
    return None


def _claims(inp: Input, node: Mapping[str, Any]) -> Refusal | None:
    for claim in claim_names(inp.vm_spec):
        pvc = inp.claims.get(claim)
        if pvc is None or _get(pvc, "status", "phase") != "Bound":
            state = "not found" if pvc is None else "not Bound"
            return Refusal(api.CLAIM_NOT_REACHABLE, f"PersistentVolumeClaim {claim} is {state}")
        volume = inp.volumes.get(_get(pvc, "spec", "volumeName") or "")
        terms = _get(volume, "spec", "nodeAffinity", "required", "nodeSelectorTerms") or []
        if not node_selector_terms_match(terms, node):
            return Refusal(
                api.CLAIM_NOT_REACHABLE,
                f"PersistentVolumeClaim {claim}'s volume is not reachable from node "
                f"{_name(node)} (its nodeAffinity)",
            )
    return None


TARGET_CHECKS: tuple[Callable[[Input, Mapping[str, Any]], Refusal | None], ...] = (
    _is_source,
    _ready,
    _vios_node,
    _node_selector,
    _affinity,
    _taints,
    _target_selector,
    _memory,
    _cpu,
    _claims,
)


def target_refusal(inp: Input, node: Mapping[str, Any] | None, name: str = "") -> Refusal | None:
    """Why this node cannot take the partition (None: it can)."""
    if node is None:
        return Refusal(api.TARGET_NOT_FOUND, f"node {name} not found")
    return next((r for r in (check(inp, node) for check in TARGET_CHECKS) if r), None)


def target_score(inp: Input, node: Mapping[str, Any]) -> tuple[int, int, str]:
    """Lower is better: most memory to spare, then CPU, then the name."""
    memory, cpu = node_free(node, inp.pods)
    return -memory, -cpu, _name(node)


@dataclass(frozen=True)
class Target:
    """The chosen node, or why there is none."""

    name: str = ""
    refusal: Refusal | None = None


def choose_target(inp: Input) -> Target:
    """spec.targetNodeName checked, or the best-scoring node that passes every check."""
    named = inp.spec.get("targetNodeName")
    if named:
        refusal = target_refusal(inp, inp.node(named), named)
        return Target(named, None) if refusal is None else Target("", refusal)
    refusals = {_name(n): target_refusal(inp, n) for n in inp.nodes}
    fitting = [n for n in inp.nodes if refusals[_name(n)] is None]
    if fitting:
        return Target(_name(min(fitting, key=lambda n: target_score(inp, n))))
    why = "; ".join(f"{r.message} ({r.reason})" for r in refusals.values() if r)
    return Target("", Refusal(api.NO_TARGET_NODE, f"no node can take the partition: {why}"[:2000]))


def validate(inp: Input) -> Target:
    """The whole Validating step: the chain, then the target."""
    refusal = validation_refusal(inp)
    return Target("", refusal) if refusal else choose_target(inp)


# --- the source must be proven stopped before anything starts on the target -------------------


@dataclass(frozen=True)
class SourceView:
    """What the proof reads: the VM's name, the source node, the image (if any), the VMI,
    the VM's launcher pods, and the nodes."""

    vm_name: str
    source_node: str
    vmi: Mapping[str, Any] | None = None
    image: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    nodes: Sequence[Mapping[str, Any]] = ()
    self_fenced: bool = False  # the guest's watchdog has powered it off (domain/failover.py)

    def node(self, name: str) -> Mapping[str, Any] | None:
        return next((n for n in self.nodes if _name(n) == name), None)

    def fenced(self, name: str) -> bool:
        """Nothing of the VM runs on this node: it is fenced, or it is the source node and
        the guest there fenced itself."""
        return fenced(self.node(name)) or (self.self_fenced and name == self.source_node)


def _alive_on(view: SourceView, node_name: str, running: bool) -> bool:
    """Something of the VM may run on this node: it is the source node or it already runs,
    and the node is not fenced."""
    if not node_name or view.fenced(node_name):
        return False
    return running or node_name == view.source_node


def _lost(view: SourceView, node_name: str) -> bool:
    """The node is gone or not Ready, and not fenced: what runs there is unknown."""
    node = view.node(node_name)
    return not view.fenced(node_name) and (node is None or not node_ready(node))


def _stopped_on(view: SourceView, node_name: str) -> bool:
    """The VMI on this node ended cleanly (Succeeded: the guest powered off)."""
    status = _get(view.vmi, "status") or {}
    return status.get("phase") == "Succeeded" and status.get("nodeName") == node_name


def _wait_message(view: SourceView, node_name: str, what: str) -> str:
    node = view.node(node_name)
    fence = f"taint it {api.FENCE_TAINT_TEXT}"
    if node is None:
        return f"{what} on node {node_name}, which is gone and not fenced: recreate it and {fence}"
    if not node_ready(node):
        return f"node {node_name} is NotReady and not fenced: {fence}, or stop VM {view.vm_name}"
    return (
        f"{what} on node {node_name} (Ready): stop VM {view.vm_name} (or hibernate it), or "
        f"fence the node ({fence})"
    )


def source_stop_refusal(view: SourceView) -> Refusal | None:
    """None when the source is proven stopped: hibernated (its image Captured and no VMI), or
    its node Ready or fenced (a lost, unfenced node only when its VMI ended there cleanly), and
    no VMI and no launcher pod of the VM that may still run (on the source node, or running
    elsewhere) on a node that is not fenced. Otherwise WaitingForSourceStop, saying for what."""
    captured = is_true(_get(view.image, "status", "conditions"), h.CAPTURED)
    if view.vmi is None and captured:
        return None
    source = view.source_node
    if source and _lost(view, source) and not _stopped_on(view, source):
        # A lost node's guest may still run (a network partition, a frozen kubelet): a VMI
        # that was deleted or replaced proves nothing; only its clean stop or a fence does.
        what = f"VM {view.vm_name} ran"
        return Refusal(api.WAITING_FOR_SOURCE_STOP, _wait_message(view, source, what))
    vmi_node = _get(view.vmi, "status", "nodeName") or ""
    phase = _get(view.vmi, "status", "phase")
    alive = view.vmi is not None and phase not in FINAL_VMI_PHASES
    if alive and _alive_on(view, vmi_node, phase == "Running"):
        what = f"VMI {view.vm_name} is {phase}"
        return Refusal(api.WAITING_FOR_SOURCE_STOP, _wait_message(view, vmi_node, what))
    for pod in view.pods:
        pod_phase = _get(pod, "status", "phase")
        if pod_phase in TERMINATED_POD_PHASES:
            continue
        node_name = _get(pod, "spec", "nodeName") or ""
        if _alive_on(view, node_name, pod_phase == "Running"):
            what = f"launcher pod {_name(pod)} of VM {view.vm_name} is {pod_phase or 'Pending'}"
            return Refusal(api.WAITING_FOR_SOURCE_STOP, _wait_message(view, node_name, what))
    return None


# --- RWO volumes released by the source before the target takes them ---------------------------


def single_node(pvc: Mapping[str, Any]) -> bool:
    """ReadWriteOnce / ReadWriteOncePod: attached to one node at a time."""
    modes = set(_get(pvc, "spec", "accessModes") or [])
    return not modes & SHARED_ACCESS_MODES


def volume_release_refusal(
    claims: Sequence[Mapping[str, Any]],
    attachments: Sequence[Mapping[str, Any]],
    target: str,
) -> Refusal | None:
    """WaitingForVolumeRelease while a single-node claim's volume has a VolumeAttachment on
    a node other than the target."""
    held = []
    for pvc in claims:
        volume = _get(pvc, "spec", "volumeName")
        if not volume or not single_node(pvc):
            continue
        held += [
            f"{_name(pvc)} on node {_get(a, 'spec', 'nodeName')}"
            for a in attachments
            if _get(a, "spec", "source", "persistentVolumeName") == volume
            and _get(a, "spec", "nodeName") != target
        ]
    if held:
        return Refusal(
            api.WAITING_FOR_VOLUME_RELEASE,
            f"waiting for the source to release {', '.join(sorted(held))}",
        )
    return None


# --- adapters and their locks --------------------------------------------------------------------


def gathered_adapters(
    image: Mapping[str, Any] | None, vm: Mapping[str, Any] | None, vmi: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """The partition's adapters (the image's captured ones, else the VM's), as captured."""
    captured = _get(image, "status", "adapters")
    return [dict(a) for a in captured] if captured else h.capture_adapters(vm, vmi)


def _source_text(adapter: Mapping[str, Any]) -> str:
    source = adapter.get("source") or {}
    return source.get("claimName") or source.get("volume") or source.get("network") or ""


def status_adapters(adapters: Sequence[Mapping[str, Any]], state: str) -> list[dict[str, Any]]:
    """`status.adapters[]`: {id, type, source, target, state}; the target keeps the ids and
    their backing (the same claim, volume or network)."""
    return [
        {
            "id": a["id"],
            "type": a.get("type", "Disk"),
            "source": _source_text(a),
            "target": _source_text(a),
            "state": state,
        }
        for a in adapters
    ]


def with_state(adapters: Sequence[Mapping[str, Any]], state: str) -> list[dict[str, Any]]:
    return [{**a, "state": state} for a in adapters]


def lease_name(partition: str, side: str, adapter_id: str) -> str:
    """rr-<partition>-<source|target>-<adapter id, / as ->, a DNS label; past 63 characters
    cut and ended with a hash of the whole name, so names stay distinct."""
    raw = f"{api.LEASE_PREFIX}{partition}-{side.lower()}-{adapter_id.replace('/', '-')}"
    name = re.sub(r"[^a-z0-9-]", "-", raw.lower()).strip("-")
    if len(name) <= MAX_NAME and name == raw:
        return name
    digest = hashlib.sha256(raw.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 11].rstrip('-')}-{digest}"


@dataclass(frozen=True)
class Lock:
    """One adapter lock to hold: its Lease name, the adapter and the side."""

    lease: str
    adapter_id: str
    side: str


def locks_for(partition: str, adapters: Sequence[Mapping[str, Any]]) -> list[Lock]:
    """One lock per adapter and side (Source, Target)."""
    return [
        Lock(lease_name(partition, side, a["id"]), a["id"], side)
        for a in adapters
        for side in (api.SOURCE, api.TARGET)
    ]


def lease_expiry(record: LeaseRecord) -> datetime | None:
    renewed = record.renew_time or record.acquire_time
    if renewed is None or not record.holder:
        return None
    return renewed + timedelta(seconds=record.duration_seconds)


def lease_live(record: LeaseRecord, now: datetime) -> bool:
    expiry = lease_expiry(record)
    return expiry is not None and now < expiry


CREATE, KEEP, RENEW, TAKE_OVER, REFUSE = "Create", "Keep", "Renew", "TakeOver", "Refuse"


def lock_action(record: LeaseRecord | None, token: str, now: datetime, seconds: float) -> str:
    """What to do with one lock's Lease: Create (none), Keep (ours, fresh), Renew (ours, a
    third of its time gone, or run out with nobody else in it), TakeOver (another holder's
    ran out), Refuse (another holder's is live). Renewing and taking over are a delete as read
    and a create: no Lease is ever updated."""
    if record is None:
        return CREATE
    if record.holder == token:
        renewed = record.renew_time or record.acquire_time
        fresh = renewed is not None and now - renewed < timedelta(seconds=seconds / 3)
        return KEEP if fresh and record.duration_seconds >= round(seconds) else RENEW
    return REFUSE if lease_live(record, now) else TAKE_OVER


def status_locks(locks: Sequence[Lock], expires: datetime) -> list[dict[str, Any]]:
    return [
        {
            "adapterId": lock.adapter_id,
            "leaseName": lock.lease,
            "side": lock.side,
            "expiresTime": rfc3339(expires),
        }
        for lock in locks
    ]


# --- times --------------------------------------------------------------------------------------


def deadline_time(restart: Mapping[str, Any]) -> datetime | None:
    created = parse_time(_get(restart, "metadata", "creationTimestamp"))
    if created is None:
        return None
    return created + parse_duration(_get(restart, "spec", "deadline"), api.DEFAULT_DEADLINE)


def past_deadline(restart: Mapping[str, Any], now: datetime) -> bool:
    deadline = deadline_time(restart)
    return deadline is not None and now >= deadline


def lock_seconds(restart: Mapping[str, Any], pool: Mapping[str, Any] | None) -> float:
    """spec.lockTimeout, else the VIOSCluster's, else its default."""
    text = _get(restart, "spec", "lockTimeout") or _get(pool, "spec", "lockTimeout")
    return parse_duration(text, api.DEFAULT_LOCK_TIMEOUT).total_seconds()


# --- the VM hold: what the VM had, so rollback restores it exactly -----------------------------


@dataclass(frozen=True)
class Hold:
    """The VM annotation lparkube.io/restart-hold."""

    token: str
    run_strategy: str
    node_selector: dict[str, str] | None

    def encode(self) -> str:
        return json.dumps(
            {
                "token": self.token,
                "runStrategy": self.run_strategy,
                "nodeSelector": self.node_selector,
            },
            sort_keys=True,
        )


def run_strategy(vm: Mapping[str, Any] | None) -> str:
    spec = _get(vm, "spec") or {}
    if spec.get("runStrategy"):
        return spec["runStrategy"]
    return "Always" if spec.get("running") else "Halted"


def hold_of(vm: Mapping[str, Any] | None) -> Hold | None:
    """The VM's hold, or None (none, or unreadable)."""
    text = (_get(vm, "metadata", "annotations") or {}).get(api.HOLD_ANNOTATION)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    selector = data.get("nodeSelector")
    return Hold(
        str(data.get("token") or ""),
        str(data.get("runStrategy") or "Halted"),
        dict(selector) if isinstance(selector, dict) else None,
    )


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _map_ops(obj: Mapping[str, Any] | None, path: str, key: str, value: str) -> list[dict]:
    if not obj:
        return [{"op": "add", "path": path, "value": {key: value}}]
    return [{"op": "add", "path": f"{path}/{_pointer(key)}", "value": value}]


def missing_devices(
    vm: Mapping[str, Any], adapters: Sequence[Mapping[str, Any]]
) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(disks, volumes, interfaces, networks) to add back: each gathered adapter the VM lacks,
    with the same name, serial, bus, boot order, MAC and backing."""
    have = {a["id"] for a in h.capture_adapters(vm, None)}
    disks, volumes, nics, networks = [], [], [], []
    for a in adapters:
        if a["id"] in have:
            continue
        source = a.get("source") or {}
        if a.get("type") == "Disk" and source.get("claimName"):
            bus = str(a.get("bus") or "virtio")
            kind, _, bus = bus.rpartition("/") if "/" in bus else ("disk", "", bus)
            disk = {"name": a["name"], kind: {"bus": bus}}
            disk.update({k: a[k] for k in ("serial", "bootOrder") if a.get(k)})
            disks.append(disk)
            claim = {"claimName": source["claimName"]}
            volumes.append({"name": a["name"], "persistentVolumeClaim": claim})
        elif a.get("type") == "Interface" and source.get("network"):
            network = source["network"]
            multus = network.startswith("multus/")
            nic = {"name": a["name"], "bridge" if multus else "masquerade": {}}
            nic.update({k: a[k] for k in ("macAddress", "model") if a.get(k)})
            nics.append(nic)
            backing = {"multus": {"networkName": network[7:]}} if multus else {"pod": {}}
            networks.append({"name": a["name"], **backing})
    return disks, volumes, nics, networks


def source_hold_wanted(view: SourceView, vm: Mapping[str, Any] | None) -> bool:
    """While the operation waits for the source to stop, KubeVirt would start the VM again by
    itself (runStrategy Always or RerunOnFailure) the moment the lost node is fenced, on any
    node: so the VM is held (Halted) as its source adapters are locked. Never a VMI running
    on a Ready node: that one the user stops (the wait message says so)."""
    if vm is None or hold_of(vm) is not None:
        return False
    if run_strategy(vm) not in ("Always", "RerunOnFailure"):
        return False
    status = _get(view.vmi, "status") or {}
    node = view.node(status.get("nodeName") or "")
    running_on_ready = (
        status.get("phase") == "Running"
        and node is not None
        and node_ready(node)
        and not fenced(node)
    )
    return not running_on_ready


def source_hold_patch(vm: Mapping[str, Any], token: str) -> list[dict[str, Any]]:
    """The guarded VM patch that holds it: the hold annotation and token label (recording the
    runStrategy and nodeSelector it had), runStrategy Halted unless it already is. A VM
    already held by this token keeps its hold."""
    meta = vm.get("metadata") or {}
    selector = (_get(vm, "spec", "template", "spec") or {}).get("nodeSelector")
    previous = hold_of(vm)
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")}
    ]
    if previous is None or previous.token != token:
        hold = Hold(token, run_strategy(vm), dict(selector) if selector else None)
        ops += _map_ops(
            meta.get("annotations"), "/metadata/annotations", api.HOLD_ANNOTATION, hold.encode()
        )
        ops += _map_ops(meta.get("labels"), "/metadata/labels", api.OPERATION_TOKEN_LABEL, token)
    if run_strategy(vm) != "Halted":
        ops.append({"op": "add", "path": "/spec/runStrategy", "value": "Halted"})
    if "running" in (vm.get("spec") or {}):
        ops.append({"op": "remove", "path": "/spec/running"})
    return ops


def hold_patch(
    vm: Mapping[str, Any], token: str, target: str, adapters: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The one guarded VM patch of ConfiguringTargetAdapters: the VM held
    (``source_hold_patch``); pinned to the target; MACs pinned; any gathered adapter the VM
    lacks put back."""
    selector = (_get(vm, "spec", "template", "spec") or {}).get("nodeSelector")
    ops = source_hold_patch(vm, token)
    template = "/spec/template/spec"
    ops.append(
        {
            "op": "add",
            "path": f"{template}/nodeSelector",
            "value": {**(selector or {}), api.HOSTNAME_LABEL: target},
        }
    )
    pinned = h.pinned_macs_patch(vm, adapters)
    if pinned is not None:
        ops.append(
            {"op": "replace", "path": f"{template}/domain/devices/interfaces", "value": pinned}
        )
    for path, items in zip(
        ("domain/devices/disks", "volumes", "domain/devices/interfaces", "networks"),
        missing_devices(vm, adapters),
        strict=True,
    ):
        ops += [{"op": "add", "path": f"{template}/{path}/-", "value": item} for item in items]
    return ops


def release_patch(vm: Mapping[str, Any], hold: Hold, run_strategy_: str | None) -> dict[str, Any]:
    """The merge patch that removes the hold: nodeSelector back to the recorded one, the
    annotation and label gone, and (when given) this runStrategy."""
    patch: dict[str, Any] = {
        "metadata": {
            "annotations": {api.HOLD_ANNOTATION: None},
            "labels": {api.OPERATION_TOKEN_LABEL: None},
        },
        "spec": {"template": {"spec": {"nodeSelector": None}}},
    }
    current = _get(vm, "spec", "template", "spec", "nodeSelector") or {}
    if hold.node_selector:
        cleared = {k: None for k in current if k not in hold.node_selector}
        patch["spec"]["template"]["spec"]["nodeSelector"] = {**cleared, **hold.node_selector}
    if run_strategy_ is not None:
        patch["spec"]["runStrategy"] = run_strategy_
    return patch


@dataclass(frozen=True)
class Rollback:
    """What RestartFailed undoes: stop a VMI this operation started; the VM's runStrategy
    back to the hold's unless a target start was requested (then Halted: stopped, never
    running twice)."""

    stop_vmi: bool
    run_strategy: str


def rollback_plan(hold: Hold, steps: Sequence[Mapping[str, Any]]) -> Rollback:
    started = target_start_requested(steps)
    return Rollback(stop_vmi=started, run_strategy="Halted" if started else hold.run_strategy)


def boot_run_strategy(hold: Hold) -> tuple[str, bool]:
    """Booting: (the runStrategy to set, whether to call the start subresource)."""
    if hold.run_strategy in ("Always", "RerunOnFailure"):
        return hold.run_strategy, False
    return "Manual", True


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """`done` (the target runs the partition), a refusal (it failed), or a wait message."""

    done: bool = False
    refusal: Refusal | None = None
    message: str = ""


def verify(
    vmi: Mapping[str, Any] | None,
    partition: Mapping[str, Any] | None,
    target: str,
    started: datetime | None,
    image: Mapping[str, Any] | None = None,
) -> Verification:
    """VMI Running on the target, the agent's first report since the start connected, and for a
    resume the image's boot id. A VMI made before the start (the source's, not yet deleted) is
    not the target's: it is waited out, never judged."""
    created = parse_time(_get(vmi, "metadata", "creationTimestamp"))
    if vmi is not None and started is not None and created is not None and created < started:
        return Verification(message=f"waiting for a new VMI on {target} (the old one is there)")
    phase = _get(vmi, "status", "phase")
    node = _get(vmi, "status", "nodeName")
    if phase == "Failed" or (phase == "Running" and node != target):
        where = f" on node {node}" if node else ""
        return Verification(
            refusal=Refusal(
                api.TARGET_START_FAILED, f"the VMI is {phase}{where}, not Running on {target}"
            )
        )
    if phase != "Running":
        return Verification(message=f"waiting for the VMI to run on {target} ({phase or 'absent'})")
    agent = _get(partition, "status", "agent") or {}
    heard = parse_time(agent.get("lastHeartbeatTime"))
    connected = is_true(_get(partition, "status", "conditions"), "AgentConnected")
    if not connected or heard is None or (started is not None and heard < started):
        return Verification(message="waiting for the guest agent's first report from the target")
    wanted = _get(image, "status", "bootId")
    if image is not None and wanted and agent.get("bootId") != wanted:
        return Verification(
            refusal=Refusal(
                api.BOOT_ID_CHANGED,
                f"the guest booted afresh (boot id {agent.get('bootId')}, the image's is {wanted})",
            )
        )
    return Verification(done=True, message=f"running on {target}, agent connected")


# --- termination and conditions -----------------------------------------------------------------


def termination_cause(restart: Mapping[str, Any], now: datetime, step: str) -> Refusal | None:
    """Why the operation must end RestartFailed now regardless of its step: spec.stop Failed,
    or the deadline (SourceNotStopped while it waited for the source)."""
    if _get(restart, "spec", "stop") == api.STOP_FAILED:
        return Refusal(api.STOPPED_BY_USER, "spec.stop is Failed: stopped by the user")
    if past_deadline(restart, now):
        if step == api.LOCKING_ADAPTERS:
            return Refusal(
                api.SOURCE_NOT_STOPPED, "the source was not proven stopped before the deadline"
            )
        return Refusal(api.DEADLINE_EXCEEDED, f"the deadline passed during {step}")
    return None


def conditions_from(
    steps: Sequence[Mapping[str, Any]],
    termination: str | None = None,
    failure: Refusal | None = None,
    waiting: Refusal | None = None,
) -> list[Condition]:
    """Locked, AdaptersConfigured, Restored and Complete from the steps (and the termination,
    the failure that caused it, or what the running step waits for)."""

    def done(name: str) -> bool:
        return step_status(steps, name) == api.DONE

    unlocked = termination is not None
    if done(api.LOCKING_ADAPTERS) and not unlocked:
        locked = Condition.of(api.LOCKED, True, "AdaptersLocked", "the adapters are locked")
    elif waiting is not None and waiting.reason == api.WAITING_FOR_SOURCE_STOP:
        locked = Condition.of(api.LOCKED, False, waiting.reason, waiting.message)
    elif unlocked:
        locked = Condition.of(api.LOCKED, False, "Unlocked", "every lock is released")
    else:
        locked = Condition.of(api.LOCKED, False, api.IN_PROGRESS, "not locked yet")
    configured = done(api.CONFIGURING_TARGET_ADAPTERS)
    restored = done(api.VERIFYING)
    out = [
        locked,
        Condition.of(
            api.ADAPTERS_CONFIGURED,
            configured,
            "TargetConfigured" if configured else api.IN_PROGRESS,
            "the target's adapters are configured" if configured else "not configured yet",
        ),
        Condition.of(
            api.RESTORED,
            restored,
            "TargetRunning" if restored else api.IN_PROGRESS,
            "the partition runs on the target" if restored else "not restored yet",
        ),
    ]
    if termination == api.RESTART_SUCCEEDED:
        out.append(
            Condition.of(api.COMPLETE, True, api.RESTART_SUCCEEDED, "the partition restarted")
        )
    elif failure is not None:
        out.append(Condition.of(api.COMPLETE, False, failure.reason, failure.message))
    else:
        message = waiting.message if waiting else "the restart is in progress"
        out.append(Condition.of(api.COMPLETE, False, api.IN_PROGRESS, message))
    return out
