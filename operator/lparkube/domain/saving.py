"""SaveEvent decisions as pure functions: who is targeted, what each agent is told, how results
are recorded, when the event is complete, and what is left to do after an operator restart.

Everything here works on plain dicts shaped like the SaveEvent status (docs/api.md), so the
controller only moves data between the API server, the agents and these functions.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lparkube.domain.clock import parse_duration, parse_time, rfc3339
from lparkube.domain.conditions import FALSE, TRUE, UNKNOWN, Condition

PENDING = "Pending"
INSTRUCTED = "Instructed"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TIMED_OUT = "TimedOut"
UNREACHABLE = "Unreachable"
FINAL = frozenset({SUCCEEDED, FAILED, TIMED_OUT, UNREACHABLE})
UNFINISHED = frozenset({PENDING, INSTRUCTED})

SAVED = "Saved"
SKIPPED = "Skipped"
APP_OUTCOMES = frozenset({SAVED, "Failed", "TimedOut", SKIPPED})
APP_FAILURES = frozenset({"Failed", "TimedOut"})
METHODS = frozenset({"Signal", "Command", "HTTP", "UnixSocket", "SimulatedInput"})

COMPLETE = "Complete"
SUCCEEDED_CONDITION = "Succeeded"
REFUSED = "Refused"
NO_TARGETS = "NoTargets"
DEADLINE_EXCEEDED = "DeadlineExceeded"
PARTIALLY_SUCCEEDED = "PartiallySucceeded"
IN_PROGRESS = "InProgress"
SUCCESSES = frozenset({SUCCEEDED, NO_TARGETS})  # completion reasons with Succeeded=True

MAX_APPLICATIONS = 128
MAX_MESSAGE = 1024
# One SaveEvent must stay well inside etcd's 1.5 MiB object limit, and managedFields repeat
# every list key: so at most MAX_TARGETS partitions, and their results share a byte budget.
MAX_TARGETS = 1500
RESULTS_BUDGET_BYTES = 750_000
SHORT_MESSAGE = 80
DEFAULT_DEADLINE = "5m"
DEFAULT_APPLICATION_TIMEOUT = "30s"
DEFAULT_SYSTEM_NAMESPACE = "lparkube-system"


def clip(text: Any, limit: int = MAX_MESSAGE) -> str:
    """Status strings have schema limits; long agent messages are cut, not rejected."""
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- label selectors ---------------------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """metav1.LabelSelector semantics: matchLabels and matchExpressions all hold; an empty
    selector matches everything."""
    labels = labels or {}
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_expression_holds(e, labels) for e in selector.get("matchExpressions") or [])


def _expression_holds(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression.get("key", ""), expression.get("operator", "")
    values = set(expression.get("values") or [])
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    return False


def selector_text(selector: Mapping[str, Any]) -> str:
    """A LabelSelector as kubectl writes one: ``tier=web,zone in (a,b),!legacy``."""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    terms += [_expression_text(e) for e in selector.get("matchExpressions") or []]
    return ",".join(terms) or "{} (every Partition)"


def _expression_text(expression: Mapping[str, Any]) -> str:
    key, operator = expression.get("key", ""), expression.get("operator", "")
    values = ",".join(expression.get("values") or [])
    if operator == "In":
        return f"{key} in ({values})"
    if operator == "NotIn":
        return f"{key} notin ({values})"
    return key if operator == "Exists" else f"!{key}"


# --- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What the controller needs to reach one partition's agent."""

    namespace: str
    name: str
    node_name: str = ""
    vm_name: str = ""
    endpoint: str = ""
    uid: str = ""
    connected: bool = False
    connected_message: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def target_fields(partition: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a Partition that ``select`` and ``target_of`` read, to keep in a cache."""
    meta = partition.get("metadata") or {}
    spec = partition.get("spec") or {}
    status = partition.get("status") or {}
    return {
        "metadata": {k: meta[k] for k in ("namespace", "name", "uid", "labels") if k in meta},
        "spec": {k: spec[k] for k in ("vmName", "agent") if k in spec},
        "status": {
            **{k: status[k] for k in ("nodeName", "vmName", "agent") if k in status},
            "conditions": [
                c for c in status.get("conditions") or [] if c.get("type") == "AgentConnected"
            ],
        },
    }


def target_of(partition: Mapping[str, Any]) -> Target:
    """Read a Partition object's status into a Target."""
    meta = partition.get("metadata") or {}
    spec = partition.get("spec") or {}
    status = partition.get("status") or {}
    agent = status.get("agent") or {}
    connected = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "AgentConnected"), {}
    )
    name = meta.get("name", "")
    return Target(
        namespace=meta.get("namespace", ""),
        name=name,
        node_name=status.get("nodeName") or "",
        vm_name=status.get("vmName") or spec.get("vmName") or name,
        endpoint=agent.get("endpoint") or "",
        uid=meta.get("uid", ""),
        connected=connected.get("status") == TRUE,
        connected_message=connected.get("message") or connected.get("reason") or "",
    )


def refusal(namespace: str, system_namespace: str, targets: Mapping[str, Any]) -> str | None:
    """Why a SaveEvent may not run, or None: only the system namespace may reach others'."""
    if targets.get("allNamespaces") and namespace != system_namespace:
        return (
            f"targets.allNamespaces is honoured only in the operator's system namespace "
            f"{system_namespace!r}; create the SaveEvent there or drop allNamespaces"
        )
    return None


def list_scope(namespace: str, system_namespace: str, targets: Mapping[str, Any]) -> str | None:
    """The namespace to list partitions in; None means every namespace."""
    wide = targets.get("allNamespaces") and namespace == system_namespace
    return None if wide else namespace


def select(targets: Mapping[str, Any], partitions: Iterable[Mapping[str, Any]]) -> list[Target]:
    """The listed partitions that the targets name, sorted by namespace and name."""
    found = [target_of(p) for p in partitions]
    if names := targets.get("partitions"):
        wanted = set(names)
        chosen = [t for t in found if t.name in wanted]
    elif (selector := targets.get("selector")) is not None:
        chosen = [
            t
            for t, p in zip(found, partitions, strict=True)
            if selector_matches(selector, (p.get("metadata") or {}).get("labels"))
        ]
    elif node := targets.get("nodeName"):
        chosen = [t for t in found if t.node_name == node]
    elif targets.get("all"):
        chosen = found
    else:
        chosen = []
    return sorted(chosen, key=lambda t: t.key)


def describe_targets(targets: Mapping[str, Any], scope: str | None) -> str:
    """What a SaveEvent targets, for messages: ``selector tier=web in namespace shop``.
    ``scope`` is the namespace searched (``list_scope``); None is every namespace."""
    if names := targets.get("partitions"):
        what = f"partitions {', '.join(names)}"
    elif (selector := targets.get("selector")) is not None:
        what = f"selector {selector_text(selector)}"
    elif node := targets.get("nodeName"):
        what = f"nodeName {node}"
    else:
        what = "all"
    return f"{what} in {'every namespace' if scope is None else f'namespace {scope}'}"


def missing_names(
    targets: Mapping[str, Any], chosen: Iterable[Target], namespace: str
) -> list[str]:
    """Names in targets.partitions that matched no Partition (recorded as Failed)."""
    present = {t.name for t in chosen if t.namespace == namespace}
    return sorted(set(targets.get("partitions") or []) - present)


def unreachable_reason(target: Target) -> str | None:
    """Why the agent cannot be instructed now, or None. Known-disconnected agents are not
    retried: the event must finish by its deadline, and a save is urgent, not eventual."""
    if not target.endpoint:
        return "the Partition has no agent endpoint yet (is its VM running?)"
    if not target.connected:
        detail = f": {target.connected_message}" if target.connected_message else ""
        return f"the guest agent is not connected (AgentConnected is not True){detail}"
    return None


# --- per-partition entries ---------------------------------------------------------------------


def entry(target: Target, outcome: str = PENDING, **fields: Any) -> dict[str, Any]:
    """A status.partitions[] item."""
    item = {
        "namespace": target.namespace,
        "name": target.name,
        "nodeName": target.node_name,
        "outcome": outcome,
    }
    item.update({k: v for k, v in fields.items() if v is not None})
    if not item["nodeName"]:
        del item["nodeName"]
    return item


def initial_entries(
    targets: Iterable[Target], missing: Iterable[str], namespace: str, now: datetime
) -> list[dict[str, Any]]:
    """The first status.partitions: reachable targets Instructed (written BEFORE anything is
    sent, so a restart re-attaches instead of re-instructing), others already final."""
    stamp = rfc3339(now)
    items = []
    for target in targets:
        reason = unreachable_reason(target)
        if reason is None:
            items.append(entry(target, INSTRUCTED, instructedTime=stamp))
        else:
            items.append(entry(target, UNREACHABLE, completionTime=stamp, message=reason))
    for name in missing:
        items.append(
            entry(
                Target(namespace, name),
                FAILED,
                completionTime=stamp,
                message="no Partition with this name in the namespace",
            )
        )
    return sorted(items, key=entry_key)


def entry_key(item: Mapping[str, Any]) -> tuple[str, str]:
    return (item.get("namespace", ""), item.get("name", ""))


def is_final(item: Mapping[str, Any]) -> bool:
    return item.get("outcome") in FINAL


@dataclass(frozen=True)
class ResumePlan:
    """After a restart: which partitions to send to (again, with the same id) and which to
    leave alone. Pending ones must be marked Instructed before they are sent."""

    attach: tuple[tuple[str, str], ...]
    pending: tuple[tuple[str, str], ...]
    finished: tuple[tuple[str, str], ...]


def resume_plan(items: Iterable[Mapping[str, Any]]) -> ResumePlan:
    attach, pending, finished = [], [], []
    for item in items:
        outcome = item.get("outcome")
        bucket = finished if outcome in FINAL else attach if outcome == INSTRUCTED else pending
        bucket.append(entry_key(item))
    return ResumePlan(tuple(attach), tuple(pending), tuple(finished))


def mark_instructed(item: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    return {**item, "outcome": INSTRUCTED, "instructedTime": rfc3339(now)}


def application_result(app: Mapping[str, Any]) -> dict[str, Any]:
    """One agent-reported application, clamped to the status schema."""
    result: dict[str, Any] = {"name": clip(app.get("name") or "?", 253)}
    for key, low in (("pid", 0), ("order", 1), ("durationMillis", 0)):
        value = app.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            result[key] = max(low, value)
    priority = app.get("priority")
    if isinstance(priority, int) and not isinstance(priority, bool):
        result["priority"] = max(-(2**31), min(2**31 - 1, priority))
    if app.get("method") in METHODS:
        result["method"] = app["method"]
    outcome = app.get("outcome")
    result["outcome"] = outcome if outcome in APP_OUTCOMES else "Failed"
    message = app.get("message") or ("" if outcome in APP_OUTCOMES else f"outcome {outcome!r}")
    if message:
        result["message"] = clip(message)
    return result


def application_results(agent_result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The agent's applications in the order they ran (priority group, then name)."""
    apps = [application_result(a) for a in agent_result.get("applications") or []]
    apps.sort(key=lambda a: (a.get("order", 0), a.get("priority", 0), a["name"]))
    return apps[:MAX_APPLICATIONS]


def partition_verdict(apps: list[Mapping[str, Any]]) -> tuple[str, str]:
    """Succeeded when no application failed or timed out; Skipped ones (gone away) are fine."""
    bad = [a for a in apps if a.get("outcome") in APP_FAILURES]
    if not apps:
        return SUCCEEDED, "no applications were registered"
    if not bad:
        saved = sum(1 for a in apps if a.get("outcome") == SAVED)
        return SUCCEEDED, f"{saved} of {len(apps)} applications saved"
    names = ", ".join(f"{a['name']} ({a['outcome']})" for a in bad[:10])
    return FAILED, clip(f"{len(bad)} of {len(apps)} applications did not save: {names}")


def with_agent_result(
    item: Mapping[str, Any], agent_result: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """Fold an agent answer in: partial results while it runs, the verdict once completed."""
    apps = application_results(agent_result)
    updated = {**item, "applications": apps}
    if agent_result.get("state") != "Completed":
        return updated
    outcome, message = partition_verdict(apps)
    return {**updated, "outcome": outcome, "message": message, "completionTime": rfc3339(now)}


def with_failure(item: Mapping[str, Any], outcome: str, message: str, now: datetime) -> dict:
    return {**item, "outcome": outcome, "message": clip(message), "completionTime": rfc3339(now)}


def at_deadline(
    item: Mapping[str, Any], reached: bool, now: datetime, last_error: str = ""
) -> dict:
    """An unfinished partition when the deadline passes: TimedOut if its agent took the
    instruction, Unreachable if it never answered; the message names the last failed
    attempt, if any, so a retried connection error is not lost."""
    if is_final(item):
        return dict(item)
    outcome = TIMED_OUT if reached else UNREACHABLE
    return with_failure(item, outcome, deadline_message(reached, last_error), now)


def deadline_message(reached: bool, last_error: str = "") -> str:
    """Why a partition did not finish by the deadline, with the last error it was retried on."""
    if reached:
        message = "the deadline passed before it finished"
    else:
        message = "the agent never answered before the deadline"
    return f"{message}; last attempt: {last_error}" if last_error else message


# --- instruction and timing -------------------------------------------------------------------


def deadline_of(meta: Mapping[str, Any], spec: Mapping[str, Any]) -> datetime:
    """creationTimestamp + spec.deadline: fixed, so a restart keeps the same deadline."""
    created = parse_time(meta.get("creationTimestamp")) or datetime.now(UTC)
    return created + parse_duration(spec.get("deadline"), DEFAULT_DEADLINE)


def instruction(
    uid: str,
    spec: Mapping[str, Any],
    deadline: datetime,
    now: datetime,
    wait: float,
) -> dict[str, Any]:
    """The body of POST /v1/save; the same id every time, so the agent saves once."""
    app_timeout = parse_duration(spec.get("applicationTimeout"), DEFAULT_APPLICATION_TIMEOUT)
    remaining = max(0.0, (deadline - now).total_seconds())
    return {
        "id": uid,
        "reason": spec.get("reason", "Other"),
        "applicationTimeoutSeconds": max(1, round(app_timeout.total_seconds())),
        "deadline": rfc3339(deadline),
        "waitSeconds": int(max(0.0, min(wait, remaining))),
    }


# --- summary and conditions -------------------------------------------------------------------


def summary(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(
        (
            "partitions",
            "pending",
            "succeeded",
            "failed",
            "applications",
            "applicationsSaved",
            "applicationsFailed",
        ),
        0,
    )
    for item in items:
        counts["partitions"] += 1
        outcome = item.get("outcome")
        key = (
            "pending"
            if outcome in UNFINISHED
            else "succeeded"
            if outcome == SUCCEEDED
            else "failed"
        )
        counts[key] += 1
        for outcome, number in application_outcomes(item).items():
            counts["applications"] += number
            if outcome == SAVED:
                counts["applicationsSaved"] += number
            elif outcome in APP_FAILURES:
                counts["applicationsFailed"] += number
    return counts


def application_outcomes(item: Mapping[str, Any]) -> dict[str, int]:
    """How many of a partition's applications ended how, listed or omitted."""
    counts = {outcome: int(n) for outcome, n in (item.get("omittedApplications") or {}).items()}
    for app in item.get("applications") or []:
        outcome = app.get("outcome", "")
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


# --- result size --------------------------------------------------------------------------------


def entry_budget(partitions: int) -> int:
    """Bytes one partition's result may take so that all of them fit the object."""
    return RESULTS_BUDGET_BYTES // max(1, partitions)


def too_many_targets(count: int) -> str | None:
    if count <= MAX_TARGETS:
        return None
    return (
        f"{count} partitions match the targets; one SaveEvent saves at most {MAX_TARGETS}. "
        "Split it by namespace or label selector"
    )


def fit_entry(item: Mapping[str, Any], budget: int) -> dict[str, Any]:
    """The result within ``budget`` bytes: messages shortened first, then the applications
    that saved folded into counts, then all of them; failures stay listed longest."""
    entry = dict(item)
    if _size(entry) <= budget:
        return entry
    if "message" in entry:
        entry["message"] = clip(entry["message"], SHORT_MESSAGE * 2)
    entry["applications"] = [
        {**a, "message": clip(a["message"], SHORT_MESSAGE)} if "message" in a else a
        for a in entry.get("applications") or []
    ]
    for keep in (lambda a: a.get("outcome") in APP_FAILURES, lambda a: False):
        if _size(entry) <= budget:
            break
        entry = _omit_applications(entry, keep)
    if not entry.get("applications"):
        entry.pop("applications", None)
    return entry


def _omit_applications(entry: dict[str, Any], keep: Callable[[dict], bool]) -> dict[str, Any]:
    kept, omitted = [], dict(entry.get("omittedApplications") or {})
    for app in entry.get("applications") or []:
        if keep(app):
            kept.append(app)
        else:
            omitted[app["outcome"]] = omitted.get(app["outcome"], 0) + 1
    return {**entry, "applications": kept, "omittedApplications": omitted}


def _size(entry: Mapping[str, Any]) -> int:
    return len(json.dumps(entry, separators=(",", ":")))


def pods_failed(pods: Iterable[Mapping[str, Any]]) -> int:
    return sum(1 for p in pods if p.get("outcome") in APP_FAILURES)


def completion_reason(
    counts: Mapping[str, int], items: Iterable[Mapping[str, Any]], pods_bad: int
) -> str:
    """Succeeded, PartiallySucceeded, Failed, DeadlineExceeded or NoTargets (no Partition
    matched and no pod hook failed: nothing to save is not a failure), once nothing is
    pending."""
    if any(i.get("outcome") == TIMED_OUT for i in items):
        return DEADLINE_EXCEEDED
    failed = counts["failed"] + pods_bad
    if failed == 0:
        return SUCCEEDED if counts["partitions"] else NO_TARGETS
    return PARTIALLY_SUCCEEDED if counts["succeeded"] else FAILED


def running_conditions(counts: Mapping[str, int]) -> list[Condition]:
    message = f"{counts['pending']} of {counts['partitions']} partitions still saving"
    return [
        Condition(COMPLETE, FALSE, IN_PROGRESS, message),
        Condition(SUCCEEDED_CONDITION, UNKNOWN, IN_PROGRESS, message),
    ]


def no_match_message(targets_text: str) -> str:
    """The message of a SaveEvent whose targets matched no Partition."""
    return f"no Partition matched the targets ({targets_text}); nothing was instructed"


def final_conditions(
    reason: str, counts: Mapping[str, int], pods_bad: int = 0, targets_text: str = ""
) -> list[Condition]:
    """Complete=True and Succeeded, with counts, or, when no Partition matched, a message
    that says so and names the targets (``describe_targets``)."""
    if counts["partitions"]:
        message = (
            f"{counts['succeeded']} of {counts['partitions']} partitions saved, "
            f"{counts['failed']} failed; {counts['applicationsSaved']} of "
            f"{counts['applications']} applications saved"
        )
    else:
        message = no_match_message(targets_text)
    if pods_bad:
        message += f"; {pods_bad} pod save hooks failed"
    return [
        Condition(COMPLETE, TRUE, reason, message),
        Condition.of(SUCCEEDED_CONDITION, reason in SUCCESSES, reason, message),
    ]


def refused_conditions(message: str) -> list[Condition]:
    """A refused SaveEvent is finished, as a failed Job is: Complete=True (so ``kubectl wait
    --for=condition=Complete`` returns) and Succeeded=False, both with reason Refused."""
    return [
        Condition(COMPLETE, TRUE, REFUSED, message),
        Condition(SUCCEEDED_CONDITION, FALSE, REFUSED, message),
    ]


def finished(status: Mapping[str, Any] | None) -> bool:
    """No more work: Complete=True; or Complete=False with reason Refused, the shape refused
    SaveEvents had before they became Complete=True (still stored in clusters)."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == COMPLETE:
            return condition.get("status") == TRUE or condition.get("reason") == REFUSED
    return False


# --- pod save hooks ----------------------------------------------------------------------------

SAVE_HOOK_ANNOTATION = "lparkube.io/save-hook"
_HTTP_HOOK = re.compile(r"^http://:(\d{1,5})(/[^\s]*)?$")


@dataclass(frozen=True)
class SaveHook:
    """A pod's save hook: POST to http://<pod IP>:port/path.

    There are no exec hooks by design: running a command in a pod takes ``create pods/exec``
    on every pod the hooks may be in, which is code execution across the cluster; a pod that
    has nothing to listen with gets a small sidecar that does.
    """

    port: int = 0
    path: str = "/"
    error: str = ""


def parse_save_hook(annotation: str) -> SaveHook:
    text = annotation.strip()
    if match := _HTTP_HOOK.match(text):
        port = int(match.group(1))
        if 0 < port < 65536:
            return SaveHook(port, match.group(2) or "/")
    if text.startswith("exec:"):
        return SaveHook(
            error="exec save hooks are not supported (they would need pods/exec on every pod); "
            "serve http://:PORT/PATH from the pod or a sidecar"
        )
    return SaveHook(error=f"unrecognised {SAVE_HOOK_ANNOTATION} {clip(text, 100)!r}")


def pod_entry(pod: Mapping[str, Any], outcome: str, millis: int, message: str) -> dict:
    meta = pod.get("metadata") or {}
    item = {
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "nodeName": (pod.get("spec") or {}).get("nodeName") or "",
        "outcome": outcome,
        "durationMillis": max(0, millis),
    }
    if message:
        item["message"] = clip(message)
    return item


# --- snapshots ----------------------------------------------------------------------------------


def snapshot_name(save_event: str, vm_name: str) -> str:
    """Deterministic, so a retry or restart finds the snapshot it already created."""
    base = f"{vm_name}-{save_event}"
    if len(base) <= 253:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:10]
    return f"{base[:242].rstrip('-.')}-{digest}"


def label_value(text: str) -> str:
    """A label value (at most 63 characters, alphanumeric at both ends) naming an object."""
    if len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[:54].rstrip('-._')}-{digest}"


def snapshot_body(name: str, partition: str, vm_name: str, save_event: str) -> dict[str, Any]:
    labels = {
        "lparkube.io/partition": label_value(partition),
        "lparkube.io/save-event": label_value(save_event),
    }
    return {
        "kind": "VirtualMachineSnapshot",
        "metadata": {"name": name, "labels": labels},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm_name}},
    }


def snapshot_entry(namespace: str, partition: str, name: str, ready: bool) -> dict[str, Any]:
    return {"namespace": namespace, "partition": partition, "name": name, "readyToUse": ready}
