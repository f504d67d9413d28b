"""ConditionProfile rules: trigger matching, for/cooldown state machine, firing, evacuation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lparkube.domain import triggers
from lparkube.domain.triggers import NodeState, Timing

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
SYSTEM = "lparkube-system"


def node(
    name: str,
    *,
    conditions: dict[str, str] | None = None,
    taints: list[dict] | None = None,
    cordoned: bool = False,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict:
    return {
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"taints": taints or [], "unschedulable": cordoned},
        "status": {"conditions": [{"type": t, "status": s} for t, s in (conditions or {}).items()]},
    }


def profile(*rules: dict, status: dict | None = None, selector: dict | None = None) -> dict:
    spec: dict = {"rules": list(rules)}
    if selector:
        spec["nodeSelector"] = selector
    return {"metadata": {"name": "dc"}, "spec": spec, "status": status or {}}


THERMAL = {"name": "thermal", "reason": "Thermal", "nodeCondition": {"type": "ThermalPressure"}}


def test_node_condition_trigger() -> None:
    hot = node("a", conditions={"ThermalPressure": "True"})
    assert triggers.rule_holds(THERMAL, hot)
    assert not triggers.rule_holds(THERMAL, node("a", conditions={"ThermalPressure": "False"}))
    unknown = {**THERMAL, "nodeCondition": {"type": "Ready", "status": "Unknown"}}
    assert triggers.rule_holds(unknown, node("a", conditions={"Ready": "Unknown"}))


def test_taint_trigger_matches_key_value_and_effect() -> None:
    tainted = node("a", taints=[{"key": "power", "value": "ups", "effect": "NoSchedule"}])
    assert triggers.rule_holds({"taint": {"key": "power"}}, tainted)
    assert triggers.rule_holds({"taint": {"key": "power", "value": "ups"}}, tainted)
    assert not triggers.rule_holds({"taint": {"key": "power", "value": "grid"}}, tainted)
    assert not triggers.rule_holds({"taint": {"key": "power", "effect": "NoExecute"}}, tainted)
    assert not triggers.rule_holds({"taint": {"key": "other"}}, tainted)


def test_cordon_trigger() -> None:
    assert triggers.rule_holds({"cordon": True}, node("a", cordoned=True))
    assert not triggers.rule_holds({"cordon": True}, node("a"))


@pytest.mark.parametrize(
    ("sensor", "reading", "holds"),
    [
        ({"label": "temp", "operator": "GreaterThanOrEqual", "value": 95}, "95", True),
        ({"label": "temp", "operator": "GreaterThanOrEqual", "value": 95}, "94.9", False),
        ({"label": "temp", "operator": "GreaterThan", "value": 95}, "95", False),
        ({"annotation": "battery", "operator": "LessThanOrEqual", "value": 2}, "2%", True),
        ({"annotation": "battery", "operator": "LessThan", "value": 2}, "2", False),
        ({"annotation": "battery", "operator": "Equal", "value": 2}, "2.0", True),
        ({"annotation": "battery", "operator": "NotEqual", "value": 2}, "3", True),
        ({"label": "temp", "operator": "GreaterThan", "value": 1}, "hot", False),
        ({"label": "temp", "operator": "GreaterThan", "value": 1}, "nan", False),
        ({"label": "temp", "operator": "GreaterThan", "value": 1}, None, False),
    ],
)
def test_sensor_trigger(sensor: dict, reading: str | None, holds: bool) -> None:
    values = {} if reading is None else {sensor.get("label") or sensor["annotation"]: reading}
    n = node("a", labels=values, annotations=values)
    assert triggers.rule_holds({"sensor": sensor}, n) is holds


def test_prometheus_result_names_nodes() -> None:
    series = [{"metric": {"node": "a"}}, {"metric": {"instance": "x"}}]
    assert triggers.prometheus_nodes(series, "node") == {"a", "*"}


def test_state_machine_for_and_once_per_episode() -> None:
    timing = Timing(timedelta(seconds=30), timedelta(minutes=10))
    state = triggers.advance(NodeState("a"), True, T0)
    assert state.pending_since == T0
    assert triggers.due_time(state, timing) == T0 + timedelta(seconds=30)
    fired = NodeState("a", T0, T0 + timedelta(seconds=30), "ns/x")
    assert triggers.due_time(fired, timing) is None  # same episode never fires twice
    ended = triggers.advance(fired, False, T0 + timedelta(minutes=1))
    assert ended.pending_since is None and ended.last_fired == fired.last_fired


def test_cooldown_delays_a_new_episode() -> None:
    timing = Timing(timedelta(0), timedelta(minutes=10))
    fired_at = T0
    again = NodeState("a", T0 + timedelta(minutes=2), fired_at)
    assert triggers.due_time(again, timing) == T0 + timedelta(minutes=10)


def test_idle_states_are_dropped_after_cooldown() -> None:
    timing = Timing(timedelta(0), timedelta(minutes=10))
    idle = NodeState("a", None, T0)
    assert triggers.keep(idle, timing, T0 + timedelta(minutes=5))
    assert not triggers.keep(idle, timing, T0 + timedelta(minutes=10))
    assert not triggers.keep(NodeState("a"), timing, T0)


def test_evaluate_fires_once_for_the_hot_node_only() -> None:
    nodes = {
        "a": node("a", conditions={"ThermalPressure": "True"}),
        "b": node("b", conditions={"ThermalPressure": "False"}),
    }
    result = triggers.evaluate(profile(THERMAL), nodes, {}, SYSTEM, T0)
    (firing,) = result.firings
    assert firing.node == "a"
    assert firing.at == T0
    body = firing.body
    assert body["metadata"]["namespace"] == SYSTEM
    assert body["spec"]["targets"] == {"nodeName": "a", "allNamespaces": True}
    assert body["spec"]["trigger"] == {
        "type": "ConditionProfile",
        "profile": "dc",
        "rule": "thermal",
        "nodeName": "a",
    }
    assert body["spec"]["reason"] == "Thermal"
    assert len(firing.name) <= 63
    assert set(result.rules["thermal"]) == {"a"}

    # Recorded: the same evaluation later fires nothing (same episode).
    rules = triggers.after_firing(result.rules, firing, SYSTEM)
    status = {"rules": triggers.dump_states(rules)}
    later = triggers.evaluate(profile(THERMAL, status=status), nodes, {}, SYSTEM, T0 + timedelta(1))
    assert later.firings == []


def test_firing_name_is_stable_across_retries() -> None:
    rule = {**THERMAL, "for": "30s"}
    nodes = {"a": node("a", conditions={"ThermalPressure": "True"})}
    first = triggers.evaluate(profile(rule), nodes, {}, SYSTEM, T0)
    assert first.firings == []
    assert first.wake_at == T0 + timedelta(seconds=30)
    status = {"rules": triggers.dump_states(first.rules)}
    names = {
        triggers.evaluate(profile(rule, status=status), nodes, {}, SYSTEM, T0 + delay)
        .firings[0]
        .name
        for delay in (timedelta(seconds=30), timedelta(seconds=31), timedelta(minutes=5))
    }
    assert len(names) == 1


def test_flip_within_cooldown_does_not_fire_again() -> None:
    hot = {"a": node("a", conditions={"ThermalPressure": "True"})}
    cool = {"a": node("a", conditions={"ThermalPressure": "False"})}
    first = triggers.evaluate(profile(THERMAL), hot, {}, SYSTEM, T0)
    rules = triggers.after_firing(first.rules, first.firings[0], SYSTEM)
    t = T0
    for nodes in (cool, hot, cool, hot):
        t += timedelta(seconds=20)
        result = triggers.evaluate(
            profile(THERMAL, status={"rules": triggers.dump_states(rules)}), nodes, {}, SYSTEM, t
        )
        assert result.firings == []
        rules = result.rules
    # Still hot when the cooldown ends: the new episode fires then.
    assert result.wake_at == T0 + timedelta(minutes=10)
    late = triggers.evaluate(
        profile(THERMAL, status={"rules": triggers.dump_states(rules)}),
        hot,
        {},
        SYSTEM,
        T0 + timedelta(minutes=10),
    )
    assert len(late.firings) == 1


def test_node_selector_limits_nodes() -> None:
    nodes = {
        "a": node("a", conditions={"ThermalPressure": "True"}, labels={"rack": "1"}),
        "b": node("b", conditions={"ThermalPressure": "True"}, labels={"rack": "2"}),
    }
    p = profile(THERMAL, selector={"matchLabels": {"rack": "2"}})
    assert [f.node for f in triggers.evaluate(p, nodes, {}, SYSTEM, T0).firings] == ["b"]


def test_cluster_scope_fires_once_for_all_nodes() -> None:
    rule = {**THERMAL, "scope": "Cluster", "reason": "Power"}
    nodes = {n: node(n, conditions={"ThermalPressure": "True"}) for n in ("a", "b")}
    (firing,) = triggers.evaluate(profile(rule), nodes, {}, SYSTEM, T0).firings
    assert firing.node == "*"
    assert firing.body["spec"]["targets"] == {"all": True, "allNamespaces": True}
    assert firing.body["spec"]["trigger"]["nodeName"] == "a"


def test_prometheus_rules_use_query_results_and_keep_state_when_it_fails() -> None:
    rule = {"name": "q", "reason": "Power", "prometheus": {"query": "up"}, "for": "1m"}
    nodes = {"a": node("a")}
    first = triggers.evaluate(profile(rule), nodes, {"q": {"a"}}, SYSTEM, T0)
    assert first.rules["q"]["a"].pending_since == T0
    status = {"rules": triggers.dump_states(first.rules)}
    failed = triggers.evaluate(
        profile(rule, status=status), nodes, {"q": None}, SYSTEM, T0 + timedelta(minutes=2)
    )
    assert failed.firings == []
    assert failed.rules["q"]["a"].pending_since == T0
    ok = triggers.evaluate(
        profile(rule, status=status), nodes, {"q": {"a"}}, SYSTEM, T0 + timedelta(minutes=2)
    )
    assert [f.node for f in ok.firings] == ["a"]


def test_unlabelled_prometheus_series_fire_cluster_wide() -> None:
    rule = {"name": "q", "reason": "Power", "prometheus": {"query": "up"}}
    (firing,) = triggers.evaluate(profile(rule), {}, {"q": {"*"}}, SYSTEM, T0).firings
    assert firing.body["spec"]["targets"] == {"all": True, "allNamespaces": True}
    assert "nodeName" not in firing.body["spec"]["trigger"]


def test_ready_condition() -> None:
    assert triggers.ready_condition({}).status == "True"
    bad = triggers.ready_condition({"q": "connection refused"})
    assert (bad.status, bad.reason) == ("False", "PrometheusUnreachable")


def test_ready_is_told_once_per_transition() -> None:
    bad = triggers.ready_condition({"q": "http://prom:9090/api/v1/query: connection refused"})
    good = triggers.ready_condition({})
    stored_bad = {"type": "Ready", "status": "False", "reason": "PrometheusUnreachable"}
    stored_good = {"type": "Ready", "status": "True", "reason": "Evaluated"}
    assert triggers.ready_notice(None, bad) == triggers.Notice(
        "Warning",
        "PrometheusUnreachable",
        "Prometheus queries fail: q: http://prom:9090/api/v1/query: connection refused",
    )
    assert triggers.ready_notice(stored_good, bad) == triggers.ready_notice(None, bad)
    assert triggers.ready_notice(stored_bad, bad) is None  # still failing: said already
    assert triggers.ready_notice(stored_bad, good) == triggers.Notice(
        "Normal", "PrometheusReachable", "Prometheus answers the queries again"
    )
    assert triggers.ready_notice(stored_good, good) is None
    assert triggers.ready_notice(None, good) is None  # a new profile: nothing to tell


def vmi(strategy: str = "External", node_name: str | None = "node-a") -> dict:
    status = {"evacuationNodeName": node_name} if node_name else {}
    return {
        "metadata": {"name": "web-1", "namespace": "t", "uid": "u1"},
        "spec": {"evictionStrategy": strategy},
        "status": status,
    }


def test_evacuation_only_for_external_strategy() -> None:
    assert triggers.evacuation_node(vmi()) == "node-a"
    assert triggers.evacuation_node(vmi("LiveMigrate")) is None
    assert triggers.evacuation_node(vmi(node_name=None)) is None


def test_evacuation_save_event() -> None:
    part = {
        "metadata": {"name": "web", "namespace": "t"},
        "spec": {},
        "status": {"vmName": "web-1"},
    }
    assert triggers.partition_for_vmi(vmi(), [part]) == part
    body = triggers.evacuation_save_event(vmi(), part, "node-a")
    assert body is not None
    assert body["spec"]["reason"] == "Migration"
    assert body["spec"]["targets"] == {"partitions": ["web"]}
    assert body["spec"]["trigger"] == {"type": "Evacuation", "nodeName": "node-a"}
    again = triggers.evacuation_save_event(vmi(), part, "node-a")
    assert again is not None and again["metadata"]["name"] == body["metadata"]["name"]
    moved = vmi()
    moved["status"]["migrationState"] = {"migrationUid": "m1"}
    other = triggers.evacuation_save_event(moved, part, "node-a")
    assert other is not None and other["metadata"]["name"] != body["metadata"]["name"]
    opted_out = {**part, "spec": {"saveOnEvacuation": False}}
    assert triggers.evacuation_save_event(vmi(), opted_out, "node-a") is None


def test_partition_found_by_label() -> None:
    labelled = vmi()
    labelled["metadata"]["labels"] = {"lparkube.io/partition": "p"}
    part = {"metadata": {"name": "p", "namespace": "t"}, "status": {"vmName": "other"}}
    assert triggers.partition_for_vmi(labelled, [part]) == part
    elsewhere = {"metadata": {"name": "p", "namespace": "x"}}
    assert triggers.partition_for_vmi(labelled, [elsewhere]) is None
