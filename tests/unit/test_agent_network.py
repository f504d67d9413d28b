"""The agent NetworkPolicy decision: which pod it selects, who reaches the agent port, and when
the VM's other ports stay open (docs/agent-network.md)."""

from __future__ import annotations

from typing import Any

import pytest

from lparkube.domain import agent_network as net
from lparkube.domain.agent_network import Conflict, Create, Delete, OperatorPods, Patch
from lparkube.domain.partition import API_VERSION

UID = "uid-web-1"
OPERATOR = OperatorPods("lparkube-system", (("app.kubernetes.io/name", "lparkube"),))
OPERATOR_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "lparkube-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "lparkube"}},
}


def partition(port: int | None = None, **spec: Any) -> dict:
    agent = {"port": port} if port else {}
    return {
        "metadata": {"name": "web-1", "namespace": "tenant", "uid": UID},
        "spec": {"agent": agent, **spec},
    }


def vm(name: str = "web-1", labels: dict | None = None, hostname: str | None = None) -> dict:
    """A VM the Partition created (controlled by it), with these template labels."""
    spec = {"hostname": hostname} if hostname else {}
    owner = {"apiVersion": API_VERSION, "kind": "Partition", "uid": UID, "controller": True}
    return {
        "metadata": {"name": name, "namespace": "tenant", "ownerReferences": [owner]},
        "spec": {"template": {"metadata": {"labels": labels or {"tier": "web"}}, "spec": spec}},
    }


def tenant_policy(selector: dict, types: list[str] | None = None, name: str = "t") -> dict:
    spec: dict[str, Any] = {"podSelector": selector, "ingress": [{"from": [{"podSelector": {}}]}]}
    if types is not None:
        spec["policyTypes"] = types
    return {"metadata": {"name": name}, "spec": spec}


def decide(*policies: dict, port: int | None = None, the_vm: dict | None = None) -> dict:
    desired = net.agent_policy(partition(port), the_vm or vm(), None, policies, OPERATOR)
    assert desired is not None
    return desired


def is_open(desired: dict) -> bool:
    """Whether the policy has the "every other port from anywhere" rule."""
    rules = desired["spec"]["ingress"]
    assert rules[0] == {"from": [OPERATOR_PEER], "ports": [{"protocol": "TCP", "port": 8443}]}
    return len(rules) == 2


# --- the pod it selects -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hostname", "expected"),
    [
        ("web-1", None, "web-1"),
        ("web.prod", None, "web"),
        ("v" * 70, None, "v" * 63),
        ("web-1", "db", "db"),
    ],
)
def test_the_hostname_label_is_what_kubevirt_sets(name, hostname, expected) -> None:
    assert net.launcher_hostname(vm(name, hostname=hostname), None) == expected


def test_the_vmi_says_the_hostname_and_labels_once_it_runs() -> None:
    vmi = {"metadata": {"labels": {"tier": "db"}}, "spec": {"hostname": "running"}}
    labels = net.launcher_labels(vm(hostname="template"), vmi)
    assert labels == {
        "tier": "db",
        "kubevirt.io": "virt-launcher",
        "vm.kubevirt.io/name": "running",
    }


def test_labels_kubevirt_sets_itself_are_not_taken_from_the_vmi() -> None:
    """The VMI's node label is set after the pod exists: the pod never has it."""
    vmi = {"metadata": {"labels": {"tier": "web", "kubevirt.io/nodeName": "node-a"}}}
    assert "kubevirt.io/nodeName" not in net.launcher_labels(vm(), vmi)


def test_the_policy_selects_the_launcher_pod_and_is_owned_by_the_partition() -> None:
    desired = decide()
    assert desired["metadata"] == {
        "name": "web-1-agent-ingress",
        "namespace": "tenant",
        "labels": {"lparkube.io/partition": "web-1"},
        "ownerReferences": [
            {
                "apiVersion": "lparkube.io/v1alpha1",
                "kind": "Partition",
                "name": "web-1",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    assert desired["spec"]["podSelector"] == {
        "matchLabels": {"kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": "web-1"}
    }
    assert desired["spec"]["policyTypes"] == ["Ingress"]


# --- label selectors --------------------------------------------------------------------------

POD = {"tier": "web", "app": "shop", "kubevirt.io": "virt-launcher"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),
        ({"matchLabels": {"tier": "web"}}, True),
        ({"matchLabels": {"tier": "web", "app": "other"}}, False),
        ({"matchLabels": {"missing": "x"}}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db", "web"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}, True),
        (
            {
                "matchLabels": {"tier": "web"},
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["other"]}],
            },
            False,
        ),
    ],
)
def test_selector_matching(selector: dict, expected: bool) -> None:
    assert net.selector_matches(selector, POD) is expected


@pytest.mark.parametrize("operator", ["In", "NotIn", "Exists", "DoesNotExist"])
def test_a_kubevirt_label_not_known_is_unknown(operator: str) -> None:
    """kubevirt.io/created-by (the VMI's uid) or a newer release's label: cannot tell."""
    expression = {"key": "kubevirt.io/created-by", "operator": operator, "values": ["u"]}
    assert net.selector_matches({"matchExpressions": [expression]}, POD) is None
    assert net.selector_matches({"matchLabels": {"vmi.kubevirt.io/id": "x"}}, POD) is None


def test_a_false_requirement_decides_even_beside_an_unknown_one() -> None:
    selector = {"matchLabels": {"kubevirt.io/created-by": "u", "tier": "db"}}
    assert net.selector_matches(selector, POD) is False


def test_policy_types_decide_whether_ingress_is_isolated() -> None:
    selects = {"matchLabels": {"tier": "web"}}
    assert net.selects_for_ingress(tenant_policy(selects), POD) is True  # no types: Ingress
    assert net.selects_for_ingress(tenant_policy(selects, ["Egress"]), POD) is False
    assert net.selects_for_ingress(tenant_policy(selects, ["Ingress", "Egress"]), POD) is True
    assert net.selects_for_ingress(tenant_policy({"matchLabels": {"tier": "db"}}), POD) is False


# --- open VM or tenant-isolated VM ------------------------------------------------------------


def allowed_tcp(desired: dict, source_is_operator: bool) -> set[int]:
    """The TCP ports the policy admits from a source (the operator's pods, or any other)."""
    ports: set[int] = set()
    for rule in desired["spec"]["ingress"]:
        if "from" in rule and not source_is_operator:
            continue
        for port in rule["ports"]:
            if port["protocol"] == "TCP":
                ports |= set(range(port["port"], port.get("endPort", port["port"]) + 1))
    return ports


@pytest.mark.parametrize("port", [1024, 8443, 65535])
def test_an_open_vm_stays_open_except_the_agent_port(port: int) -> None:
    desired = net.agent_policy(partition(port), vm(), None, [], OPERATOR)
    assert desired is not None
    everything = set(range(1, 65536))
    assert allowed_tcp(desired, source_is_operator=False) == everything - {port}
    assert allowed_tcp(desired, source_is_operator=True) == everything
    other = desired["spec"]["ingress"][1]
    assert "from" not in other  # from anywhere, as before the policy
    assert {"protocol": "UDP"} in other["ports"] and {"protocol": "SCTP"} in other["ports"]


def test_a_tenant_policy_selecting_the_pod_leaves_only_the_operators_port() -> None:
    desired = decide(tenant_policy({"matchLabels": {"tier": "web"}}))
    assert not is_open(desired)
    assert allowed_tcp(desired, source_is_operator=False) == set()


@pytest.mark.parametrize(
    "policy",
    [
        tenant_policy({}),  # the namespace's default deny
        tenant_policy({"matchLabels": {"vm.kubevirt.io/name": "web-1"}}),
        tenant_policy({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}),
        tenant_policy({"matchLabels": {"kubevirt.io/created-by": "some-uid"}}),  # unknown: closed
    ],
    ids=["default-deny", "by-kubevirt-name", "expression", "unknown-label"],
)
def test_any_policy_that_may_isolate_the_pod_closes_the_other_ports(policy: dict) -> None:
    assert not is_open(decide(policy))


@pytest.mark.parametrize(
    "policy",
    [
        tenant_policy({"matchLabels": {"tier": "db"}}),
        tenant_policy({}, ["Egress"]),
        tenant_policy({"matchLabels": {"vm.kubevirt.io/name": "web-2"}}),
    ],
    ids=["other-pods", "egress-only", "another-vm"],
)
def test_policies_that_do_not_isolate_the_pod_leave_it_open(policy: dict) -> None:
    assert is_open(decide(policy))


def test_other_partitions_agent_policies_are_not_a_tenant_restriction() -> None:
    """Another Partition's agent policy selects another pod; even one that selected every pod
    would not make this VM's decision depend on that Partition's."""
    other = tenant_policy({}, name="web-2-agent-ingress")
    other["metadata"]["ownerReferences"] = [
        {
            "apiVersion": API_VERSION,
            "kind": "Partition",
            "name": "web-2",
            "uid": "u2",
            "controller": True,
        }
    ]
    assert is_open(decide(other))


def test_a_port_change_moves_both_rules() -> None:
    desired = decide(port=9000)
    assert desired["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9000}]
    assert 9000 not in allowed_tcp(desired, source_is_operator=False)
    assert 8443 in allowed_tcp(desired, source_is_operator=False)


def test_an_adopted_vm_gets_a_policy_for_its_own_name() -> None:
    adopted = {
        "metadata": {"name": "legacy", "annotations": {"lparkube.io/adopted-by": "web-1"}},
        "spec": {"template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {}}},
    }
    desired = net.agent_policy(partition(vmName="legacy"), adopted, None, [], OPERATOR)
    assert desired is not None
    assert desired["spec"]["podSelector"]["matchLabels"]["vm.kubevirt.io/name"] == "legacy"


@pytest.mark.parametrize(
    ("the_vm", "operator"),
    [
        (None, OPERATOR),  # no VM: no pod to protect
        ({"metadata": {"name": "web-1"}, "spec": {}}, OPERATOR),  # not (yet) this Partition's
        (vm(), None),  # the policies are off
    ],
    ids=["no-vm", "vm-not-claimed", "off"],
)
def test_no_policy(the_vm: dict | None, operator: OperatorPods | None) -> None:
    assert net.agent_policy(partition(), the_vm, None, [], operator) is None


# --- what to change ---------------------------------------------------------------------------


def stored(desired: dict, version: str = "7") -> dict:
    """The policy as the API server returns it."""
    meta = {**desired["metadata"], "uid": "np-uid", "resourceVersion": version}
    return {"metadata": meta, "spec": desired["spec"]}


def test_a_missing_policy_is_created() -> None:
    desired = decide()
    assert net.policy_change(partition(), desired, None, enabled=True) == Create(desired)


def test_a_current_policy_changes_nothing() -> None:
    desired = decide()
    assert net.policy_change(partition(), desired, stored(desired), enabled=True) is None


def test_a_changed_decision_patches_the_version_read() -> None:
    before, after = decide(), decide(tenant_policy({}))
    change = net.policy_change(partition(), after, stored(before, version="41"), enabled=True)
    assert change == Patch(
        "web-1-agent-ingress",
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": "41"},
            {"op": "replace", "path": "/spec", "value": after["spec"]},
        ],
    )


def test_a_widened_agent_policy_is_put_back_and_its_label_restored() -> None:
    desired = decide(tenant_policy({}))
    tampered = stored(desired)
    tampered["spec"] = {**desired["spec"], "ingress": [{}]}
    tampered["metadata"]["labels"] = {"someone": "else"}
    change = net.policy_change(partition(), desired, tampered, enabled=True)
    assert isinstance(change, Patch)
    assert change.operations[1:] == [
        {"op": "replace", "path": "/spec", "value": desired["spec"]},
        {
            "op": "add",
            "path": "/metadata/labels",
            "value": {"someone": "else", "lparkube.io/partition": "web-1"},
        },
    ]


@pytest.mark.parametrize("enabled", [True, False], ids=["no-vm", "off"])
def test_a_policy_no_longer_wanted_is_deleted(enabled: bool) -> None:
    existing = stored(decide())
    change = net.policy_change(partition(), None, existing, enabled=enabled)
    assert change == Delete("web-1-agent-ingress", "np-uid")
    assert net.policy_change(partition(), None, None, enabled=enabled) is None


def test_a_policy_of_that_name_that_is_not_the_partitions_is_never_touched() -> None:
    foreign = {"metadata": {"name": "web-1-agent-ingress", "uid": "x", "resourceVersion": "1"}}
    assert isinstance(net.policy_change(partition(), decide(), foreign, enabled=True), Conflict)
    # Before the VM exists too: no VM is made whose agent nothing would restrict.
    assert isinstance(net.policy_change(partition(), None, foreign, enabled=True), Conflict)
    assert net.policy_change(partition(), None, foreign, enabled=False) is None  # not ours


def test_which_partition_an_agent_policy_belongs_to() -> None:
    ours = stored(decide())
    assert net.agent_policy_partition(ours) == "web-1"
    assert net.agent_policy_partition(tenant_policy({})) is None
    impostor = {"metadata": {"labels": {"lparkube.io/partition": "web-1"}}}
    assert net.agent_policy_partition(impostor) is None  # a label alone makes no agent policy
    ours["metadata"]["ownerReferences"][0]["controller"] = False
    assert net.agent_policy_partition(ours) is None
