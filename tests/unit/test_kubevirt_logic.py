"""Pure decisions of the KubeVirt stand-in: scheduling, addresses, phases and statuses."""

from __future__ import annotations

import ipaddress

import pytest

from lparkube_devenv import vmi_spec
from lparkube_devenv.kubevirt import logic
from lparkube_devenv.kubevirt.nodes import lifecycle_taints


def node(name: str, ready: str = "True", **spec) -> dict:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": name[-1]}},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def vmi(phase: str = "", **status) -> dict:
    return {"metadata": {"name": "v", "uid": "u1"}, "status": {"phase": phase, **status}}


# --- scheduling --------------------------------------------------------------------------------


def test_least_loaded_ready_node_wins_ties_by_name() -> None:
    nodes = [node("node-c"), node("node-a"), node("node-b")]
    assert logic.choose_node(nodes, {}, {}) == "node-a"
    assert logic.choose_node(nodes, {}, {"node-a": 2, "node-b": 1, "node-c": 1}) == "node-b"


def test_unready_cordoned_and_unlabelled_nodes_are_skipped() -> None:
    unlabelled = node("node-c")
    unlabelled["metadata"]["labels"][logic.SCHEDULABLE_LABEL] = "false"
    nodes = [node("node-a", ready="False"), node("node-b", unschedulable=True), unlabelled]
    assert logic.choose_node(nodes, {}, {}) is None
    assert logic.choose_node([*nodes, node("node-d", ready="Unknown")], {}, {}) is None


def test_taints_need_tolerations() -> None:
    tainted = node("node-a", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    assert logic.choose_node([tainted], {}, {}) is None
    equal = {"tolerations": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}
    exists = {"tolerations": [{"operator": "Exists"}]}
    wrong = {"tolerations": [{"key": "dedicated", "value": "web"}]}
    assert logic.choose_node([tainted], equal, {}) == "node-a"
    assert logic.choose_node([tainted], exists, {}) == "node-a"
    assert logic.choose_node([tainted], wrong, {}) is None
    soft = node("node-b", taints=[{"key": "x", "effect": "PreferNoSchedule"}])
    assert logic.choose_node([soft], {}, {}) == "node-b"


def test_node_selector_affinity_and_exclusions() -> None:
    nodes = [node("node-a"), node("node-b"), node("node-c")]
    assert logic.choose_node(nodes, {"nodeSelector": {"zone": "b"}}, {}) == "node-b"
    required = {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a", "b"]}]}
        ]
    }
    spec = {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    }
    assert logic.choose_node(nodes, spec, {}) == "node-c"
    assert logic.choose_node(nodes, {}, {}, exclude=["node-a"]) == "node-b"
    assert logic.choose_node(nodes, {}, {}, extra_selector={"zone": "c"}) == "node-c"


@pytest.mark.parametrize(
    ("operator", "values", "expected"),
    [
        ("In", ["b"], True),
        ("NotIn", ["b"], False),
        ("Exists", [], True),
        ("DoesNotExist", [], False),
        ("Gt", ["3"], True),
        ("Lt", ["3"], False),
        ("Bogus", [], False),
    ],
)
def test_match_expressions(operator: str, values: list[str], expected: bool) -> None:
    labels = {"k": "b", "n": "5"}
    key = "n" if operator in ("Gt", "Lt") else "k"
    expression = {"key": key, "operator": operator, "values": values}
    assert logic.matches_expression(labels, expression) is expected


def test_draining_means_cordoned_or_drain_taint() -> None:
    assert logic.node_draining(node("a", unschedulable=True))
    assert logic.node_draining(
        node("a", taints=[{"key": logic.DRAIN_TAINT, "effect": "NoSchedule"}])
    )
    assert not logic.node_draining(node("a", taints=[{"key": "other", "effect": "NoSchedule"}]))


def test_node_taints_follow_ready_condition() -> None:
    fresh = node("a")
    fresh["spec"]["taints"] = [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]
    assert lifecycle_taints(fresh) == []
    assert lifecycle_taints(node("a")) is None
    lost = lifecycle_taints(
        node("a", ready="False", taints=[{"key": "keep", "effect": "NoSchedule"}])
    )
    assert lost == [
        {"key": "keep", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
    ]
    assert (
        lifecycle_taints(node("a", ready="Unknown"))[0]["key"] == "node.kubernetes.io/unreachable"
    )


# --- addresses ---------------------------------------------------------------------------------


def test_ip_is_stable_inside_the_pod_network_and_avoids_used() -> None:
    first = logic.allocate_ip("uid-1", set())
    assert first == logic.allocate_ip("uid-1", set())
    assert ipaddress.ip_address(first) in ipaddress.ip_network("10.244.0.0/16")
    assert not first.endswith((".0", ".255"))
    second = logic.allocate_ip("uid-1", {first})
    assert second != first
    assert logic.allocate_ip("uid-2", set()) != first


def test_ip_allocation_exhausts_a_tiny_range() -> None:
    tiny = ipaddress.ip_network("10.0.0.0/30")
    taken = {logic.allocate_ip(str(i), set(), tiny) for i in range(5)}
    assert taken == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    with pytest.raises(RuntimeError):
        logic.allocate_ip("x", taken, tiny)


def test_mac_is_local_unicast_and_stable() -> None:
    mac = vmi_spec.mac_address("uid/default")
    assert mac == vmi_spec.mac_address("uid/default") and mac.startswith("02:")
    assert len(mac.split(":")) == 6


# --- phases and run strategies -------------------------------------------------------------------


def test_vmi_phase_steps() -> None:
    steps, phase = [], ""
    while (phase := logic.next_phase(phase)) is not None:
        steps.append(phase)
    assert steps == ["Pending", "Scheduling", "Scheduled", "Running"]
    assert logic.next_phase("Succeeded") is None


@pytest.mark.parametrize(
    ("strategy", "current", "started", "action"),
    [
        ("Always", None, False, "create"),
        ("Always", vmi("Running"), True, None),
        ("Always", vmi("Failed"), True, "restart"),
        ("Always", vmi("Succeeded"), True, "restart"),
        ("RerunOnFailure", None, False, "create"),
        ("RerunOnFailure", vmi("Failed"), True, "restart"),
        ("RerunOnFailure", vmi("Succeeded"), True, None),
        ("Halted", None, False, None),
        ("Halted", vmi("Running"), True, "stop"),
        ("Halted", vmi("Succeeded"), True, "stop"),
        ("Once", None, False, "create"),
        ("Once", None, True, None),
        ("Once", vmi("Failed"), True, None),
        ("Manual", None, False, None),
        ("Manual", vmi("Failed"), True, None),
        ("WaitAsReceiver", None, False, None),
    ],
)
def test_vm_actions(strategy: str, current: dict | None, started: bool, action: str | None) -> None:
    assert logic.vm_action(strategy, current, started_once=started) == action


def test_run_strategy_from_running_flag() -> None:
    assert logic.run_strategy({"spec": {"running": True}}) == "Always"
    assert logic.run_strategy({"spec": {"running": False}}) == "Halted"
    assert logic.run_strategy({"spec": {}}) == "Halted"
    assert logic.run_strategy({"spec": {"runStrategy": "Manual"}}) == "Manual"


def _cond(kind: str, status: str, reason: str = "") -> dict:
    return {"type": kind, "status": status, "reason": reason}


@pytest.mark.parametrize(
    ("current", "strategy", "printable"),
    [
        (None, "Always", "Stopped"),
        (vmi("Pending"), "Always", "Starting"),
        (vmi("Running"), "Always", "Running"),
        (vmi("Running"), "Halted", "Stopping"),
        (vmi("Succeeded"), "Halted", "Stopped"),
        (vmi("Failed"), "Always", "Stopped"),
        (vmi("Unknown"), "Always", "Unknown"),
        (vmi("Running", conditions=[_cond("Paused", "True")]), "Always", "Paused"),
        (vmi("Running", migrationState={"targetNode": "b"}), "Always", "Migrating"),
        (vmi("Running", migrationState={"completed": True}), "Always", "Running"),
        (
            vmi("Scheduling", conditions=[_cond("PodScheduled", "False", "Unschedulable")]),
            "Always",
            "ErrorUnschedulable",
        ),
        (
            vmi("Scheduling", conditions=[_cond("PodScheduled", "False", "PvcNotFound")]),
            "Always",
            "ErrorPvcNotFound",
        ),
    ],
)
def test_printable_status(current: dict | None, strategy: str, printable: str) -> None:
    assert logic.printable_status({"metadata": {}}, current, strategy) == printable


def test_deleted_vm_is_terminating() -> None:
    vm = {"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}
    assert logic.printable_status(vm, vmi("Running"), "Always") == "Terminating"


# --- conditions, eviction, migratability ----------------------------------------------------------


def test_condition_transition_time_moves_only_on_change() -> None:
    conditions = logic.set_condition([], "Ready", "True", "t1")
    conditions = logic.set_condition(conditions, "Ready", "True", "t2", reason="Still")
    assert conditions[0]["lastTransitionTime"] == "t1" and conditions[0]["reason"] == "Still"
    conditions = logic.set_condition(conditions, "Ready", "False", "t3")
    assert conditions[0]["lastTransitionTime"] == "t3"
    assert logic.remove_condition(conditions, "Ready") == []


def test_eviction_strategy_precedence() -> None:
    own = {"spec": {"evictionStrategy": "External"}}
    template = {"spec": {"template": {"spec": {"evictionStrategy": "LiveMigrate"}}}}
    assert logic.eviction_strategy(own, template) == "External"
    assert logic.eviction_strategy({"spec": {}}, template) == "LiveMigrate"
    assert (
        logic.eviction_strategy({"spec": {}}, None, "LiveMigrateIfPossible")
        == "LiveMigrateIfPossible"
    )


def test_live_migratable_rules() -> None:
    assert logic.live_migratable({}, {}) == (True, "", "")
    bridge = {"domain": {"devices": {"interfaces": [{"name": "default", "bridge": {}}]}}}
    assert logic.live_migratable(bridge, {})[1] == "InterfaceNotLiveMigratable"
    rwo = {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}]}
    assert logic.live_migratable(rwo, {"c": ["ReadWriteOnce"]})[1] == "DisksNotLiveMigratable"
    assert logic.live_migratable(rwo, {"c": ["ReadWriteMany"]})[0] is True


def test_default_pod_network_and_missing_claims() -> None:
    assert vmi_spec.networks_of({}) == [{"name": "default", "pod": {}}]
    off = {"domain": {"devices": {"autoattachPodInterface": False}}}
    assert vmi_spec.networks_of(off) == []
    spec = {"volumes": [{"name": "a", "persistentVolumeClaim": {"claimName": "x"}}]}
    assert logic.missing_claims(spec, ["y"]) == ["x"]
    assert logic.missing_claims(spec, ["x"]) == []


def test_small_helpers() -> None:
    assert [logic.disk_target(i) for i in (0, 1, 25, 26)] == ["vda", "vdb", "vdz", "vdaa"]
    name = logic.memory_dump_file("vm", "pvc", "2024-03-05T06:07:08Z")
    assert name == "vm-pvc-20240305-060708.memory.dump"
    assert logic.snapshot_support({"name": "r", "containerDisk": {}}) == (
        False,
        "Snapshot is not supported for this volumeSource type [containerDisk]",
    )
    assert vmi_spec.dig({"a": [1]}, "a", "b", default="x") == "x"
