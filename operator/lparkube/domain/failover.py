"""Failover decisions (seed 002) as pure functions: the settings, the lease the gateway grants
the guest agent, the failure a pass observes, the image it restarts from (escalation), the
proof that the old instance can no longer run, and the consistency images' schedule.

A failure is decided once, from what one pass read (the VM, its VMI, the VMI's node, the
agent's report, the VMI's events); the controller records it before it acts, so a restarted
operator goes on with the same decision. Nothing restarts elsewhere before a fence proof: the
node carries the out-of-service taint, the instance is gone from a node that answers, or the
guest fenced itself (its watchdog powered it off once the last lease and the watchdog timeout
ran out, plus a margin).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from lparkube.api.v1alpha1 import failover as api
from lparkube.api.v1alpha1.partition import PAGING_DISK
from lparkube.api.v1alpha1.remoterestart import OUT_OF_SERVICE_TAINT
from lparkube.domain.clock import parse_duration, parse_time, rfc3339
from lparkube.domain.hibernation import FINAL_VMI_PHASES
from lparkube.domain.vios_cluster import node_ready

UNFINISHED_PHASES = frozenset(
    {api.DETECTED, api.FENCING, api.RESTORING, api.RESTARTING, api.RECONNECTING}
)
FENCING_PHASES = frozenset({api.DETECTED, api.FENCING, api.RESTORING, api.RESTARTING})
RUNNING_STRATEGIES = frozenset({"Always", "RerunOnFailure", "Once", "Manual"})


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """spec.failover with its defaults (the API server applies them; these cover old objects)."""

    enabled: bool = False
    interval: timedelta = timedelta(hours=1)
    keep: int = 3
    boot_image: Mapping[str, Any] = field(default_factory=dict)
    window: timedelta = timedelta(minutes=15)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    self_fence: bool = True
    lease: timedelta = timedelta(seconds=10)
    watchdog_timeout: timedelta = timedelta(seconds=10)

    @property
    def fencing_by_watchdog(self) -> bool:
        return self.enabled and self.self_fence


def _duration(text: Any, default: str) -> timedelta:
    try:
        return parse_duration(text if isinstance(text, str) else None, default)
    except ValueError:
        return parse_duration(None, default)


def settings_of(partition: Mapping[str, Any]) -> Settings:
    """The partition's failover settings; an odd value falls back to its default."""
    spec = _get(partition, "spec", "failover") or {}
    images = spec.get("consistencyImage") or {}
    fence = spec.get("selfFence") or {}
    keep = images.get("keep")
    return Settings(
        enabled=spec.get("enabled") is True,
        interval=_duration(images.get("interval"), "1h"),
        keep=keep if isinstance(keep, int) and 1 <= keep <= api.MAX_IMAGES else 3,
        boot_image=spec.get("bootImage") or {},
        window=_duration(spec.get("escalationWindow"), "15m"),
        node_selector=spec.get("nodeSelector") or {},
        self_fence=fence.get("enabled") is not False,
        lease=_duration(fence.get("lease"), "10s"),
        watchdog_timeout=_duration(fence.get("watchdogTimeout"), "10s"),
    )


def failover_status(partition: Mapping[str, Any]) -> Mapping[str, Any]:
    return _get(partition, "status", "failover") or {}


def current_failure(partition: Mapping[str, Any]) -> Mapping[str, Any]:
    return failover_status(partition).get("current") or {}


def failing_over(partition: Mapping[str, Any]) -> bool:
    """A recorded failure is not Done or Stopped yet."""
    return current_failure(partition).get("phase") in UNFINISHED_PHASES


# --- the lease the gateway grants with a heartbeat answer ------------------------------------


@dataclass(frozen=True)
class LeaseAnswer:
    """What the gateway answers a verified report: a lease (the agent may pet its watchdog
    until it runs out), a disarm (self-fence is off: the agent stops its watchdog), or nothing
    (the lease it holds runs out: during a failover)."""

    seconds: int = 0
    watchdog_seconds: int = 0
    renew_seconds: int = 0
    disarm: bool = False

    @property
    def grants(self) -> bool:
        return self.seconds > 0

    def body(self) -> dict[str, Any] | None:
        if self.grants:
            lease = {
                "seconds": self.seconds,
                "watchdogTimeoutSeconds": self.watchdog_seconds,
                "renewSeconds": self.renew_seconds,
            }
            return {"lease": lease}
        return {"disarm": True} if self.disarm else None


def lease_answer(partition: Mapping[str, Any]) -> LeaseAnswer:
    """A lease while self-fence is on and no failover is fencing this partition (the agent's
    current lease must run out then); a disarm when it is off and the agent armed a watchdog."""
    settings = settings_of(partition)
    if not settings.fencing_by_watchdog:
        armed = _get(partition, "status", "agent", "watchdog", "armed") is True
        return LeaseAnswer(disarm=armed)
    if current_failure(partition).get("phase") in FENCING_PHASES:
        return LeaseAnswer()
    seconds = max(1, int(settings.lease.total_seconds()))
    return LeaseAnswer(
        seconds=seconds,
        watchdog_seconds=max(1, int(settings.watchdog_timeout.total_seconds())),
        renew_seconds=max(1, seconds // 3),
    )


def lease_expiry(answer: LeaseAnswer, now: datetime) -> str | None:
    """status.failover.leaseExpiry for a grant made at ``now``, rounded up to the second (the
    agent counts its lease from before it sent the report, so it ends no later than this)."""
    if not answer.grants:
        return None
    moment = now + timedelta(seconds=answer.seconds)
    return rfc3339(datetime.fromtimestamp(math.ceil(moment.timestamp()), UTC))


def status_with_lease(
    partition: Mapping[str, Any], answer: LeaseAnswer, now: datetime
) -> dict[str, Any]:
    """The failover status fields a report's write adds: the lease it grants (never earlier
    than one recorded before)."""
    expiry = lease_expiry(answer, now)
    if expiry is None:
        return {}
    recorded = parse_time(failover_status(partition).get("leaseExpiry"))
    if recorded is not None and recorded >= parse_time(expiry):
        return {}
    return {"failover": {"leaseExpiry": expiry}}


# --- the guest's own fence -------------------------------------------------------------------


def watchdog_powers_off(vmi_spec: Mapping[str, Any] | None) -> bool:
    """The instance runs with KubeVirt's i6300esb watchdog, action poweroff."""
    watchdog = _get(vmi_spec, "domain", "devices", "watchdog") or {}
    return _get(watchdog, "i6300esb", "action") == "poweroff"


def self_fence_time(
    partition: Mapping[str, Any], vmi: Mapping[str, Any] | None
) -> tuple[datetime | None, str]:
    """When the guest has certainly powered itself off (the last lease granted + the
    watchdog's timeout + a margin), or None and why its own fence cannot be counted on."""
    settings = settings_of(partition)
    expiry = parse_time(failover_status(partition).get("leaseExpiry"))
    watchdog = _get(partition, "status", "agent", "watchdog") or {}
    timeout = watchdog.get("timeoutSeconds")
    limit = settings.watchdog_timeout.total_seconds()
    if not settings.fencing_by_watchdog:
        return None, "selfFence is off"
    if expiry is None:
        return None, "no lease was granted to the guest agent"
    if not watchdog_powers_off(_get(vmi, "spec")):
        return None, "the instance runs without an i6300esb watchdog with action poweroff"
    if watchdog.get("armed") is not True or not isinstance(timeout, int):
        return None, f"the guest agent did not arm its watchdog ({watchdog.get('message') or '?'})"
    if not 0 < timeout <= limit:
        return None, f"the guest's watchdog timeout {timeout}s is not within {limit:g}s"
    return expiry + timedelta(seconds=timeout + api.FENCE_MARGIN_SECONDS), ""


# --- failure detection -----------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What one pass read about a partition with failover enabled."""

    partition: Mapping[str, Any]
    vm: Mapping[str, Any] | None
    vmi: Mapping[str, Any] | None
    node: Mapping[str, Any] | None  # the VMI's node, None when gone (or no VMI)
    now: datetime
    panicked: bool = False  # a GuestPanicked event names this VMI
    crash_dumps: bool = False  # spec.crashDump.enabled: crash dumps handle a panic

    @property
    def phase(self) -> str:
        return _get(self.vmi, "status", "phase") or ""

    @property
    def node_name(self) -> str:
        return _get(self.vmi, "status", "nodeName") or ""


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str


def fenced(node: Mapping[str, Any] | None) -> bool:
    """The node carries node.kubernetes.io/out-of-service: nothing runs there any more."""
    return any(t.get("key") == OUT_OF_SERVICE_TAINT for t in _get(node, "spec", "taints") or [])


def user_stopped(vm: Mapping[str, Any] | None) -> bool:
    """The user does not want the VM to run: it is Halted, or a stop is pending."""
    requests = _get(vm, "status", "stateChangeRequests") or []
    stopping = any(r.get("action") == "Stop" for r in requests if isinstance(r, Mapping))
    return _run_strategy(vm) not in RUNNING_STRATEGIES or stopping


def _started_at(vmi: Mapping[str, Any] | None) -> datetime | None:
    return parse_time(_get(vmi, "metadata", "creationTimestamp"))


def _vmi_failed(obs: Observed) -> Failure | None:
    if obs.phase != "Failed":
        return None
    reason = _get(obs.vmi, "status", "reason") or "Failed"
    if obs.panicked:
        return Failure(api.GUEST_PANICKED, f"the guest kernel panicked on node {obs.node_name}")
    return Failure(api.VMI_FAILED, f"VMI failed on node {obs.node_name or '?'} ({reason})")


def _node_lost(obs: Observed) -> Failure | None:
    if obs.phase in FINAL_VMI_PHASES or not obs.node_name or fenced(obs.node):
        return None
    if obs.node is None:
        return Failure(api.NODE_LOST, f"node {obs.node_name} is gone")
    if not node_ready(obs.node):
        return Failure(api.NODE_LOST, f"node {obs.node_name} is not Ready")
    return None


def _agent_lost(obs: Observed) -> Failure | None:
    """The VMI claims to run but its agent went silent: its lease ran out (self-fence), or
    (without self-fence) its heartbeat is older than heartbeatTimeout. Only an agent that
    reported for this instance counts: a booting guest has not lost anything."""
    if obs.phase != "Running" or _paused(obs.vmi):
        return None
    started = _started_at(obs.vmi)
    agent = _get(obs.partition, "status", "agent") or {}
    heartbeat = parse_time(agent.get("lastHeartbeatTime"))
    if heartbeat is None or (started is not None and heartbeat < started):
        return None
    if settings_of(obs.partition).fencing_by_watchdog:
        expiry = parse_time(failover_status(obs.partition).get("leaseExpiry"))
        if expiry is not None and obs.now > expiry and (started is None or expiry > started):
            return Failure(api.AGENT_LOST, f"the guest agent's lease ran out at {rfc3339(expiry)}")
        return None
    timeout = _duration(_get(obs.partition, "spec", "agent", "heartbeatTimeout"), "90s")
    if obs.now - heartbeat > timeout:
        since = rfc3339(heartbeat)
        return Failure(api.AGENT_LOST, f"no heartbeat from the guest agent since {since}")
    return None


def _paused(vmi: Mapping[str, Any] | None) -> bool:
    conditions = _get(vmi, "status", "conditions") or []
    return any(c.get("type") == "Paused" and c.get("status") == "True" for c in conditions)


FAILURE_CHECKS = (_vmi_failed, _node_lost, _agent_lost)


def _ignored(obs: Observed) -> bool:
    """Nothing to decide: failover off, a failover already under way, a VM the user stopped,
    no instance, one being deleted (a stop), or the instance a failure was recorded for."""
    if not settings_of(obs.partition).enabled or failing_over(obs.partition):
        return True
    if obs.vm is None or obs.vmi is None or user_stopped(obs.vm):
        return True
    deleting = _get(obs.vmi, "metadata", "deletionTimestamp") and obs.phase not in FINAL_VMI_PHASES
    return bool(deleting) or _recorded_for(obs.partition, obs.vmi)


def detect_failure(obs: Observed) -> Failure | None:
    """The failure this pass observed (the first of FAILURE_CHECKS), or None: nothing to
    decide, nothing wrong, or a panic that crash dumps handle."""
    if _ignored(obs):
        return None
    failure = next((f for f in (check(obs) for check in FAILURE_CHECKS) if f), None)
    if failure is not None and failure.reason == api.GUEST_PANICKED and obs.crash_dumps:
        return None
    return failure


def _recorded_for(partition: Mapping[str, Any], vmi: Mapping[str, Any]) -> bool:
    """The last failure recorded was this very instance's (a Stopped failover leaves its
    Failed VMI behind: it is not a new failure)."""
    uid = _get(vmi, "metadata", "uid")
    return bool(uid) and current_failure(partition).get("instanceUid") == uid


# --- escalation (seed 002) -------------------------------------------------------------------


@dataclass(frozen=True)
class ImageChoice:
    image: str | None  # Consistency, Boot, or None: stop (repeated failures)
    reason: str


def choose_image(partition: Mapping[str, Any], now: datetime) -> ImageChoice:
    """The first failure restarts from the newest consistency image (the boot image when
    there is none yet); one within escalationWindow of the previous failure, after a
    consistency restart, from the boot image; one more within the window stops. After a
    stop, a failure of the instance the user started again begins anew."""
    settings = settings_of(partition)
    status = failover_status(partition)
    last = parse_time(status.get("lastFailureTime"))
    if current_failure(partition).get("phase") == api.STOPPED:
        last = None  # the user started it again after a stop: a new chain of failures
    window = settings.window
    if last is not None and now - last <= window:
        if status.get("lastImage") == api.BOOT_IMAGE:
            return ImageChoice(None, f"failed again within {_text(window)} of a boot-image restart")
        return ImageChoice(
            api.BOOT_IMAGE, f"a second failure within {_text(window)}: escalated to the boot image"
        )
    if not newest_image(partition):
        return ImageChoice(api.BOOT_IMAGE, "no consistency image yet")
    return ImageChoice(api.CONSISTENCY_IMAGE, "the newest consistency image")


def _text(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def newest_image(partition: Mapping[str, Any]) -> Mapping[str, Any] | None:
    images = failover_status(partition).get("consistencyImages") or []
    return images[-1] if images else None


# --- the fence: the old instance can no longer run -------------------------------------------


@dataclass(frozen=True)
class FenceView:
    """What the proof reads: the partition (its lease, the agent's watchdog), the old
    instance's VMI and node, and the VM's launcher pods."""

    partition: Mapping[str, Any]
    node_name: str  # where the failed instance ran
    vmi: Mapping[str, Any] | None  # the current VMI, if any
    node: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]] = ()
    instance_spec: Mapping[str, Any] | None = None  # the failed VMI's spec, recorded
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Fence:
    by: str | None  # NodeFenced, InstanceGone, SelfFenced; None: not yet
    at: datetime | None
    message: str


def _live_pods(view: FenceView) -> list[Mapping[str, Any]]:
    return [p for p in view.pods if _get(p, "status", "phase") not in ("Succeeded", "Failed")]


def fence_proof(view: FenceView) -> Fence:
    """NodeFenced when the node carries the out-of-service taint; InstanceGone when the VMI
    ended (or is gone) and no launcher pod is left on a node that is Ready (a lost node's
    pods prove nothing); SelfFenced once the self-fence time has passed. Else not yet, and
    what it waits for."""
    node = view.node_name or "?"
    if fenced(view.node):
        return Fence(api.NODE_FENCED, view.now, f"node {node} carries {OUT_OF_SERVICE_TAINT}")
    gone = view.vmi is None or _get(view.vmi, "status", "phase") in FINAL_VMI_PHASES
    reachable = view.node is not None and node_ready(view.node)
    if gone and reachable and not _live_pods(view):
        return Fence(api.INSTANCE_GONE, view.now, f"the instance on node {node} ended")
    spec = view.instance_spec or _get(view.vmi, "spec")
    at, why = self_fence_time(view.partition, {"spec": spec})
    if at is not None and view.now >= at:
        return Fence(api.SELF_FENCED, at, f"the guest's watchdog powered it off by {rfc3339(at)}")
    waits = f"the guest powers itself off by {rfc3339(at)}" if at else why
    what = "ended" if gone else "may still run"
    return Fence(
        None,
        at,
        f"the instance on node {node} {what}; waiting for the node to be fenced "
        f"({OUT_OF_SERVICE_TAINT}) or the instance to end on a Ready node; {waits}",
    )


# --- consistency images ----------------------------------------------------------------------


def consistency_image_due(partition: Mapping[str, Any], now: datetime) -> bool:
    """Failover is on, no failover is under way, and the interval has passed (the VM and its
    agent: consistency_images.may_start)."""
    if not settings_of(partition).enabled or failing_over(partition):
        return False
    due = parse_time(failover_status(partition).get("nextConsistencyImageTime"))
    return due is None or now >= due


def next_image_time(partition: Mapping[str, Any], now: datetime) -> str:
    return rfc3339(now + settings_of(partition).interval)


def consistency_of(snapshot: Mapping[str, Any]) -> str:
    """Application when KubeVirt's snapshot says the guest agent froze the file systems."""
    indications = _get(snapshot, "status", "indications") or []
    return api.APPLICATION_CONSISTENT if "GuestAgent" in indications else api.CRASH_CONSISTENT


def images_after(
    images: Sequence[Mapping[str, Any]], new: Mapping[str, Any], keep: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """The images kept with ``new`` added (oldest first) and the names of those to delete."""
    ordered = [dict(i) for i in images if i.get("name") != new.get("name")] + [dict(new)]
    cut = max(0, len(ordered) - keep)
    return ordered[cut:], [str(i.get("name")) for i in ordered[:cut]]


# --- boot image and watchdog in the VM -------------------------------------------------------


BOOT_SOURCES = ("containerDisk", "persistentVolumeClaim", "dataVolume")


def boot_disk(vm_spec: Mapping[str, Any]) -> str | None:
    """The VM's boot disk: the lowest bootOrder, else the first disk, among the disks that a
    system can boot from (a container disk, a claim, a DataVolume; never the paging LU, nor
    the key, cloud-init or config disks)."""
    pod = _get(vm_spec, "template", "spec") or {}
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    disks = [
        d
        for d in _get(pod, "domain", "devices", "disks") or []
        if d.get("name") != PAGING_DISK
        and any(k in volumes.get(d.get("name"), {}) for k in BOOT_SOURCES)
    ]
    ordered = [d for d in disks if isinstance(d.get("bootOrder"), int)]
    if ordered:
        return min(ordered, key=lambda d: d["bootOrder"]).get("name")
    return disks[0].get("name") if disks else None


def boot_volume(boot_image: Mapping[str, Any], vm_name: str, failure_id: str) -> dict[str, Any]:
    """The volume source the boot disk gets at an escalation."""
    if boot_image.get("pvcName"):
        return {"persistentVolumeClaim": {"claimName": boot_image["pvcName"]}}
    if boot_image.get("containerDisk"):
        return {"containerDisk": dict(boot_image["containerDisk"])}
    return {"dataVolume": {"name": boot_data_volume_name(vm_name, failure_id)}}


def boot_data_volume_name(vm_name: str, failure_id: str) -> str:
    return f"{vm_name[:40]}-boot-{failure_id[:8]}"


def with_watchdog(vm_spec: dict[str, Any]) -> dict[str, Any]:
    """The VM spec with the self-fence watchdog (KubeVirt's i6300esb, action poweroff) unless
    it already names a watchdog."""
    devices = vm_spec.setdefault("template", {}).setdefault("spec", {}).setdefault("domain", {})
    devices = devices.setdefault("devices", {})
    devices.setdefault(
        "watchdog", {"name": api.WATCHDOG_DEVICE, "i6300esb": {"action": "poweroff"}}
    )
    return vm_spec


def self_fenced_on(
    partition: Mapping[str, Any], vmi: Mapping[str, Any] | None, node_name: str, now: datetime
) -> bool:
    """The guest that ran on ``node_name`` has fenced itself: the failover under way proved it
    (its fence is SelfFenced there), or the self-fence time of the running instance passed."""
    current = current_failure(partition)
    fence = current.get("fence") or {}
    if fence.get("by") == api.SELF_FENCED and current.get("nodeName") == node_name:
        return True
    if vmi is None or _get(vmi, "status", "nodeName") != node_name:
        return False
    at, _ = self_fence_time(partition, vmi)
    return at is not None and now >= at


# --- failover owns the restarts -------------------------------------------------------------

RESTARTING_STRATEGIES = ("Always", "RerunOnFailure")


def _run_strategy(vm: Mapping[str, Any] | None) -> str:
    strategy = _get(vm, "spec", "runStrategy")
    return strategy or ("Always" if _get(vm, "spec", "running") else "Halted")


def user_run_strategy(vm: Mapping[str, Any] | None) -> str:
    """The runStrategy the user gave the VM: recorded when failover made it Manual."""
    recorded = (_get(vm, "metadata", "annotations") or {}).get(api.RUN_STRATEGY_ANNOTATION)
    return recorded or _run_strategy(vm)


def take_restarts_patch(
    partition: Mapping[str, Any], vm: Mapping[str, Any] | None, vmi: Mapping[str, Any] | None
) -> list[dict[str, Any]] | None:
    """The guarded JSON patch that makes a running VM's restarts failover's (runStrategy
    Manual, the user's recorded), or None: failover off or under way, no running VMI, or a
    strategy KubeVirt does not restart by itself."""
    strategy = _run_strategy(vm)
    if vm is None or strategy not in RESTARTING_STRATEGIES or failing_over(partition):
        return None
    if not settings_of(partition).enabled or _get(vmi, "status", "phase") != "Running":
        return None
    meta = vm.get("metadata") or {}
    key = api.RUN_STRATEGY_ANNOTATION.replace("/", "~1")
    note = (
        {"op": "add", "path": f"/metadata/annotations/{key}", "value": strategy}
        if meta.get("annotations")
        else {
            "op": "add",
            "path": "/metadata/annotations",
            "value": {api.RUN_STRATEGY_ANNOTATION: strategy},
        }
    )
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
        note,
        {"op": "add", "path": "/spec/runStrategy", "value": "Manual"},
    ]
    if "running" in (vm.get("spec") or {}):
        ops.append({"op": "remove", "path": "/spec/running"})
    return ops


def give_back_restarts_patch(vm: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Failover turned off: the merge patch that gives the VM back the runStrategy the user
    had (a VM still Manual), and drops the record; None when there is none."""
    recorded = (_get(vm, "metadata", "annotations") or {}).get(api.RUN_STRATEGY_ANNOTATION)
    if vm is None or not recorded:
        return None
    patch: dict[str, Any] = {"metadata": {"annotations": {api.RUN_STRATEGY_ANNOTATION: None}}}
    if _run_strategy(vm) == "Manual":
        patch["spec"] = {"runStrategy": recorded}
    return patch


# --- the record of a failure -----------------------------------------------------------------


def new_failure(obs: Observed, failure: Failure, choice: ImageChoice, ident: str) -> dict:
    """status.failover.current for a failure just observed (written before anything acts)."""
    record = {
        "id": ident,
        "reason": failure.reason,
        "message": failure.message,
        "detectedAt": rfc3339(obs.now),
        "phase": api.DETECTED,
        "image": choice.image,
        "imageReason": choice.reason,
        "nodeName": obs.node_name,
        "instanceUid": _get(obs.vmi, "metadata", "uid"),
        "instanceWatchdog": watchdog_powers_off(_get(obs.vmi, "spec")),
        "bootId": _get(obs.partition, "status", "agent", "bootId"),
        "runStrategy": user_run_strategy(obs.vm),
    }
    return {k: v for k, v in record.items() if v is not None}


def instance_spec(current: Mapping[str, Any]) -> dict[str, Any]:
    """What the fence proof needs of the failed instance's spec once its VMI is gone."""
    if not current.get("instanceWatchdog"):
        return {}
    return {"domain": {"devices": {"watchdog": {"i6300esb": {"action": "poweroff"}}}}}


def history_after(
    history: Sequence[Mapping[str, Any]], current: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The history with a finished failure appended (newest last, at most MAX_HISTORY)."""
    keys = ("id", "reason", "message", "detectedAt", "image", "imageReason", "completedAt")
    entry = {k: current[k] for k in keys if current.get(k) is not None}
    entry["result"] = current.get("phase")
    kept = [dict(h) for h in history if h.get("id") != entry.get("id")]
    return [*kept, entry][-api.MAX_HISTORY :]


def restart_name(partition_name: str, ident: str) -> str:
    return f"{partition_name[:40]}-failover-{ident[:8]}"


def restore_patch_target(vm_name: str) -> dict[str, str]:
    return {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm_name}
