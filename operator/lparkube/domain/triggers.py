"""ConditionProfile rules as pure functions: does a rule's trigger hold on a node, and when
does it fire.

Each (rule, node) pair is a small state machine whose state lives in the profile's status, so
``for`` and ``cooldown`` survive an operator restart:

* the trigger starts holding: ``pendingSince`` = now;
* it has held for ``for``, the rule has not fired in this episode, and ``cooldown`` has passed
  since the last firing: it fires (``lastFiredTime``, ``saveEvent``);
* the trigger stops holding: ``pendingSince`` is cleared, ending the episode.

A rule fires once per episode: a condition that stays on does not repeat its save, and one
that flaps is silent for ``cooldown``. The firing time is computed from the stored state, so
the SaveEvent's name is the same on every retry and a restart cannot create a second one.
Cluster-scoped rules keep one state, under node ``*``, held while any node holds.

The built-in drain trigger (a VMI with ``evictionStrategy: External`` getting
``status.evacuationNodeName``) is here too.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from lparkube.domain.clock import parse_duration, parse_time, rfc3339
from lparkube.domain.conditions import FALSE, Condition
from lparkube.domain.saving import label_value, selector_matches

CLUSTER = "*"
NODE_SCOPE = "Node"
CLUSTER_SCOPE = "Cluster"
PROFILE_LABEL = "lparkube.io/condition-profile"
RULE_LABEL = "lparkube.io/rule"
NODE_LABEL = "lparkube.io/node"
EVACUATION_LABEL = "lparkube.io/evacuation-of"

READY = "Ready"
EVALUATED = "Evaluated"
PROMETHEUS_UNREACHABLE = "PrometheusUnreachable"
PROMETHEUS_REACHABLE = "PrometheusReachable"  # the Event when queries answer again

_COMPARE = {
    "GreaterThan": lambda a, b: a > b,
    "GreaterThanOrEqual": lambda a, b: a >= b,
    "LessThan": lambda a, b: a < b,
    "LessThanOrEqual": lambda a, b: a <= b,
    "Equal": lambda a, b: a == b,
    "NotEqual": lambda a, b: a != b,
}


# --- does a trigger hold on a node? ------------------------------------------------------------


def condition_holds(trigger: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    wanted = trigger.get("status") or "True"
    return any(
        c.get("type") == trigger.get("type") and c.get("status") == wanted
        for c in (node.get("status") or {}).get("conditions") or []
    )


def taint_holds(trigger: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("key") != trigger.get("key"):
            continue
        if "value" in trigger and (taint.get("value") or "") != trigger["value"]:
            continue
        if trigger.get("effect") and taint.get("effect") != trigger["effect"]:
            continue
        return True
    return False


def sensor_reading(trigger: Mapping[str, Any], node: Mapping[str, Any]) -> float | None:
    """The numeric reading the sensor names; None when absent or not a number."""
    meta = node.get("metadata") or {}
    if "label" in trigger:
        raw = (meta.get("labels") or {}).get(trigger["label"])
    else:
        raw = (meta.get("annotations") or {}).get(trigger.get("annotation", ""))
    if raw is None:
        return None
    try:
        value = float(str(raw).strip().removesuffix("%"))
    except ValueError:
        return None
    return None if math.isnan(value) else value  # NaN never compares true


def sensor_holds(trigger: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    reading = sensor_reading(trigger, node)
    compare = _COMPARE.get(trigger.get("operator", ""))
    return reading is not None and compare is not None and compare(reading, trigger["value"])


def rule_holds(rule: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Whether a node-state trigger holds on the node (prometheus rules are not node state)."""
    if "nodeCondition" in rule:
        return condition_holds(rule["nodeCondition"], node)
    if "taint" in rule:
        return taint_holds(rule["taint"], node)
    if rule.get("cordon"):
        return bool((node.get("spec") or {}).get("unschedulable"))
    if "sensor" in rule:
        return sensor_holds(rule["sensor"], node)
    return False


def describe(rule: Mapping[str, Any]) -> str:
    """What the rule watches, for messages."""
    if trigger := rule.get("nodeCondition"):
        return f"node condition {trigger.get('type')}={trigger.get('status') or 'True'}"
    if trigger := rule.get("taint"):
        return f"taint {trigger.get('key')}"
    if rule.get("cordon"):
        return "node cordoned"
    if trigger := rule.get("sensor"):
        source = trigger.get("label") or trigger.get("annotation")
        return f"sensor {source} {trigger.get('operator')} {trigger.get('value')}"
    if trigger := rule.get("prometheus"):
        return f"prometheus query {trigger.get('query')!r}"
    return "unknown trigger"


def prometheus_nodes(series: Iterable[Mapping[str, Any]], node_label: str) -> set[str]:
    """The nodes a query result names; ``*`` for series without the node label."""
    return {(s.get("metric") or {}).get(node_label) or CLUSTER for s in series}


# --- the (rule, node) state machine -------------------------------------------------------------


@dataclass(frozen=True)
class NodeState:
    node: str
    pending_since: datetime | None = None
    last_fired: datetime | None = None
    save_event: str = ""

    @classmethod
    def load(cls, item: Mapping[str, Any]) -> NodeState:
        return cls(
            node=item.get("node", ""),
            pending_since=parse_time(item.get("pendingSince")),
            last_fired=parse_time(item.get("lastFiredTime")),
            save_event=item.get("saveEvent") or "",
        )

    def dump(self) -> dict[str, Any]:
        item: dict[str, Any] = {"node": self.node}
        if self.pending_since:
            item["pendingSince"] = rfc3339(self.pending_since)
        if self.last_fired:
            item["lastFiredTime"] = rfc3339(self.last_fired)
        if self.save_event:
            item["saveEvent"] = self.save_event
        return item


@dataclass(frozen=True)
class Timing:
    hold_for: timedelta
    cooldown: timedelta

    @classmethod
    def of(cls, rule: Mapping[str, Any]) -> Timing:
        return cls(
            parse_duration(rule.get("for"), "0s"), parse_duration(rule.get("cooldown"), "10m")
        )


def due_time(state: NodeState, timing: Timing) -> datetime | None:
    """When this episode may fire (held long enough, cooldown over); None if it cannot."""
    if state.pending_since is None:
        return None
    if state.last_fired is not None and state.last_fired >= state.pending_since:
        return None  # already fired in this episode
    due = state.pending_since + timing.hold_for
    if state.last_fired is not None:
        due = max(due, state.last_fired + timing.cooldown)
    return due


def advance(state: NodeState, holding: bool, now: datetime) -> NodeState:
    """Start or end the episode; firing is decided separately by ``due_time``."""
    if not holding:
        return replace(state, pending_since=None)
    if state.pending_since is None:
        return replace(state, pending_since=now.replace(microsecond=0))
    return state


def keep(state: NodeState, timing: Timing, now: datetime) -> bool:
    """Whether the state still matters (bounded status: idle nodes past cooldown are dropped)."""
    if state.pending_since is not None:
        return True
    return state.last_fired is not None and now < state.last_fired + timing.cooldown


# --- evaluating a whole profile -----------------------------------------------------------------


@dataclass(frozen=True)
class Firing:
    """One rule firing for one node (or ``*``): the SaveEvent to create."""

    rule: str
    node: str
    at: datetime
    name: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    rules: dict[str, dict[str, NodeState]]  # rule -> node -> state, before any firing
    firings: list[Firing]
    wake_at: datetime | None  # when a pending `for` or cooldown ends next


def load_states(status: Mapping[str, Any] | None) -> dict[str, dict[str, NodeState]]:
    return {
        rule.get("name", ""): {
            item.get("node", ""): NodeState.load(item) for item in rule.get("nodes") or []
        }
        for rule in (status or {}).get("rules") or []
    }


def dump_states(rules: Mapping[str, Mapping[str, NodeState]]) -> list[dict[str, Any]]:
    return [
        {"name": name, "nodes": [s.dump() for _, s in sorted(nodes.items())]}
        for name, nodes in sorted(rules.items())
    ]


def holding_nodes(
    rule: Mapping[str, Any],
    nodes: Mapping[str, Mapping[str, Any]],
    query_result: set[str] | None,
) -> set[str] | None:
    """The nodes on which the rule's trigger holds; None when unknown (a failed query)."""
    if "prometheus" in rule:
        if query_result is None:
            return None
        return {n for n in query_result if n == CLUSTER or n in nodes or not nodes}
    return {name for name, node in nodes.items() if rule_holds(rule, node)}


def evaluate(
    profile: Mapping[str, Any],
    nodes: Mapping[str, Mapping[str, Any]],
    query_results: Mapping[str, set[str] | None],
    system_namespace: str,
    now: datetime,
) -> Evaluation:
    """Advance every (rule, node) state and list the firings that are due now.

    ``nodes`` are all nodes by name; the profile's nodeSelector is applied here.
    ``query_results`` maps prometheus rules to the nodes their query returned.
    """
    spec = profile.get("spec") or {}
    selected = {
        name: node
        for name, node in nodes.items()
        if selector_matches(spec.get("nodeSelector"), (node.get("metadata") or {}).get("labels"))
    }
    stored = load_states(profile.get("status"))
    rules: dict[str, dict[str, NodeState]] = {}
    firings: list[Firing] = []
    wakes: list[datetime] = []
    for rule in spec.get("rules") or []:
        name = rule.get("name", "")
        timing = Timing.of(rule)
        holding = holding_nodes(rule, selected, query_results.get(name))
        states = dict(stored.get(name, {}))
        if holding is not None:
            states = _advance_rule(rule, states, holding, now)
        for node, state in sorted(states.items()):
            due = due_time(state, timing) if holding is not None else None
            if due is not None and due <= now:
                firings.append(
                    _firing(
                        profile,
                        rule=rule,
                        state=state,
                        at=due,
                        holding=sorted(holding or []),
                        system_namespace=system_namespace,
                    )
                )
            elif due is not None:
                wakes.append(due)
            if not keep(state, timing, now):
                del states[node]
        rules[name] = states
    return Evaluation(rules, firings, min(wakes, default=None))


def _advance_rule(
    rule: Mapping[str, Any], states: dict[str, NodeState], holding: set[str], now: datetime
) -> dict[str, NodeState]:
    if rule.get("scope", NODE_SCOPE) == CLUSTER_SCOPE:
        keys = {CLUSTER: bool(holding)}
    else:
        keys = {node: node in holding for node in set(states) | holding}
    for key, holds in keys.items():
        states[key] = advance(states.get(key, NodeState(key)), holds, now)
    return states


# --- the SaveEvent a firing creates -------------------------------------------------------------

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def dns_name(*parts: str, salt: str, limit: int = 253) -> str:
    """A readable DNS subdomain name from parts plus a hash of ``salt``: same input, same name."""
    digest = hashlib.sha256(salt.encode()).hexdigest()[:10]
    readable = _NOT_DNS.sub("-", "-".join(parts).lower()).strip("-")
    readable = re.sub(r"-{2,}", "-", readable)[: limit - len(digest) - 1].strip("-")
    return f"{readable}-{digest}" if readable else digest


def save_event_name(profile: str, rule: str, node: str, at: datetime) -> str:
    where = "cluster" if node == CLUSTER else node
    return dns_name(
        profile, rule, where, salt=f"{profile}\n{rule}\n{node}\n{rfc3339(at)}", limit=63
    )


def _firing(
    profile: Mapping[str, Any],
    *,
    rule: Mapping[str, Any],
    state: NodeState,
    at: datetime,
    holding: list[str],
    system_namespace: str,
) -> Firing:
    profile_name = (profile.get("metadata") or {}).get("name", "")
    node = state.node
    name = save_event_name(profile_name, rule.get("name", ""), node, at)
    cluster = rule.get("scope", NODE_SCOPE) == CLUSTER_SCOPE or node == CLUSTER
    targets: dict[str, Any] = (
        {"all": True, "allNamespaces": True}
        if cluster
        else {"nodeName": node, "allNamespaces": True}
    )
    trigger_node = (
        node if node != CLUSTER else (holding[0] if holding and holding[0] != CLUSTER else "")
    )
    trigger = {"type": "ConditionProfile", "profile": profile_name, "rule": rule.get("name", "")}
    if trigger_node:
        trigger["nodeName"] = trigger_node
    where = f"node {trigger_node}" if trigger_node else "the cluster"
    body = {
        "kind": "SaveEvent",
        "metadata": {
            "name": name,
            "namespace": system_namespace,
            "labels": {
                PROFILE_LABEL: label_value(profile_name),
                RULE_LABEL: label_value(rule.get("name", "")),
                NODE_LABEL: label_value("cluster" if node == CLUSTER else node),
            },
        },
        "spec": {
            "reason": rule.get("reason", "Other"),
            "message": f"ConditionProfile {profile_name} rule {rule.get('name')}: "
            f"{describe(rule)} on {where}"[:1024],
            "targets": targets,
            "deadline": rule.get("deadline") or "5m",
            "trigger": trigger,
        },
    }
    return Firing(rule.get("name", ""), node, at, name, body)


def after_firing(
    rules: dict[str, dict[str, NodeState]], firing: Firing, namespace: str
) -> dict[str, dict[str, NodeState]]:
    """The states once the firing's SaveEvent exists: lastFiredTime and saveEvent recorded."""
    states = dict(rules.get(firing.rule, {}))
    state = states.get(firing.node, NodeState(firing.node))
    states[firing.node] = replace(
        state, last_fired=firing.at, save_event=f"{namespace}/{firing.name}"
    )
    return {**rules, firing.rule: states}


def ready_condition(failed_queries: Mapping[str, str]) -> Condition:
    if failed_queries:
        detail = "; ".join(f"{rule}: {error}" for rule, error in sorted(failed_queries.items()))
        return Condition.of(READY, False, PROMETHEUS_UNREACHABLE, detail[:1024])
    return Condition.of(READY, True, EVALUATED, "rules are evaluated on every node change")


@dataclass(frozen=True)
class Notice:
    """An Event (and log line) to post about a profile."""

    type: str  # Normal or Warning
    reason: str
    message: str


def ready_notice(stored: Mapping[str, Any] | None, ready: Condition) -> Notice | None:
    """What a change of Ready is worth saying, once per transition, not on every poll: a
    Warning when the queries start failing, a Normal when they answer again after failing;
    None while Ready keeps its status (also across an operator restart, as it is stored) and
    for a profile's first Ready=True."""
    before = (stored or {}).get("status")
    if ready.status == before:
        return None
    if ready.status == FALSE:
        return Notice("Warning", ready.reason, f"Prometheus queries fail: {ready.message}")
    if before == FALSE:
        return Notice("Normal", PROMETHEUS_REACHABLE, "Prometheus answers the queries again")
    return None


# --- drain: KubeVirt evacuation ------------------------------------------------------------------


def evacuation_node(vmi: Mapping[str, Any]) -> str | None:
    """The node a VMI with evictionStrategy External is being evacuated from, if any."""
    if (vmi.get("spec") or {}).get("evictionStrategy") != "External":
        return None
    return (vmi.get("status") or {}).get("evacuationNodeName") or None


def evacuation_save_event(
    vmi: Mapping[str, Any], partition: Mapping[str, Any], node: str
) -> dict[str, Any] | None:
    """The Migration SaveEvent for one evacuation, or None if the partition opted out.

    Its name hashes the VMI uid, the node and the VMI's last migration, so every event about
    the same evacuation maps to one SaveEvent, and a later evacuation gets a new one.
    """
    if (partition.get("spec") or {}).get("saveOnEvacuation") is False:
        return None
    meta = vmi.get("metadata") or {}
    part_meta = partition.get("metadata") or {}
    last_migration = ((vmi.get("status") or {}).get("migrationState") or {}).get("migrationUid", "")
    salt = f"{meta.get('uid', '')}\n{node}\n{last_migration}"
    name = dns_name("evacuation", part_meta.get("name", ""), salt=salt, limit=63)
    return {
        "kind": "SaveEvent",
        "metadata": {
            "name": name,
            "namespace": part_meta.get("namespace", ""),
            "labels": {EVACUATION_LABEL: label_value(part_meta.get("name", ""))},
        },
        "spec": {
            "reason": "Migration",
            "message": f"KubeVirt is evacuating VMI {meta.get('name')} from node {node}",
            "targets": {"partitions": [part_meta.get("name", "")]},
            "trigger": {"type": "Evacuation", "nodeName": node},
        },
    }


def partition_for_vmi(
    vmi: Mapping[str, Any], partitions: Iterable[Mapping[str, Any]]
) -> dict | None:
    """The Partition managing a VMI: by the lparkube.io/partition label, else by VM name."""
    meta = vmi.get("metadata") or {}
    labelled = (meta.get("labels") or {}).get("lparkube.io/partition")
    for partition in partitions:
        pmeta = partition.get("metadata") or {}
        if pmeta.get("namespace") != meta.get("namespace"):
            continue
        vm_name = (
            (partition.get("status") or {}).get("vmName")
            or (partition.get("spec") or {}).get("vmName")
            or pmeta.get("name")
        )
        if pmeta.get("name") == labelled or vm_name == meta.get("name"):
            return dict(partition)
    return None
