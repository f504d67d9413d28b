"""Each Partition's agent NetworkPolicy on the real API server, kept by the real operator (as the
chart's identity) with the KubeVirt stand-in: created with the rules its namespace calls for,
re-decided when a tenant's own policy starts or stops selecting the VM's pod, put back when
someone widens it, moved with the agent port, garbage-collected with the Partition, never
written over a tenant's policy of the same name, and absent with the opt-out.

The local control plane has no CNI, so nothing here enforces a policy: the kind test
(e2e/test_kind_kubevirt.py) connects to an agent through one and is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import OperatorProcess
from kubernetes import client
from partition_helpers import Partitions, partition_manifest, wait_for

from lparkube_devenv.controlplane import free_port
from lparkube_devenv.kubevirt import StandIn

pytestmark = pytest.mark.usefixtures("operator")

APP = {"app": "shop"}  # the VM template's pod labels in these tests


class NetworkPolicies:
    """The namespace's NetworkPolicies as plain dicts, as the admin (a tenant, say)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.networking = client.NetworkingV1Api(api)
        self.namespace = namespace

    def get(self, name: str) -> dict | None:
        try:
            found = self.networking.read_namespaced_network_policy(name, self.namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return self.api.sanitize_for_serialization(found)

    def names(self) -> list[str]:
        found = self.networking.list_namespaced_network_policy(self.namespace).items
        return sorted(p.metadata.name for p in found)

    def create(self, name: str, spec: dict) -> dict:
        body = {"metadata": {"name": name}, "spec": spec}
        created = self.networking.create_namespaced_network_policy(self.namespace, body)
        return self.api.sanitize_for_serialization(created)

    def patch(self, name: str, patch: dict) -> None:
        self.networking.patch_namespaced_network_policy(name, self.namespace, patch)

    def delete(self, name: str) -> None:
        self.networking.delete_namespaced_network_policy(name, self.namespace)

    def rules(self, name: str) -> list[dict] | None:
        policy = self.get(name)
        return None if policy is None else policy["spec"]["ingress"]


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


@pytest.fixture
def policies(api_client: client.ApiClient, namespace: str) -> NetworkPolicies:
    return NetworkPolicies(api_client, namespace)


def shop_partition(name: str, ip: str, port: int) -> dict:
    body = partition_manifest(name, ip, port)
    body["spec"]["vmTemplate"]["spec"]["template"]["metadata"]["labels"] = APP
    return body


def operator_rule(operator: OperatorProcess, port: int) -> dict:
    """The agent port, from the operator's pods (the labels the suite's operator was given)."""
    peer = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": operator.lease_namespace}
        },
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "lparkube",
                "app.kubernetes.io/component": "operator",
            }
        },
    }
    return {"from": [peer], "ports": [{"protocol": "TCP", "port": port}]}


def other_ports_rule(port: int) -> dict:
    return {
        "ports": [
            {"protocol": "TCP", "port": 1, "endPort": port - 1},
            {"protocol": "TCP", "port": port + 1, "endPort": 65535},
            {"protocol": "UDP"},
            {"protocol": "SCTP"},
        ]
    }


def test_the_agent_policy_follows_the_namespace_policies(
    parts: Partitions, policies: NetworkPolicies, operator: OperatorProcess
) -> None:
    port = free_port()
    created = parts.create(shop_partition("web-1", "127.0.0.31", port))
    parts.wait_condition("web-1", "VMReady", "True")  # from here on nothing else changes
    policy = wait_for(lambda: policies.get("web-1-agent-ingress"), "the agent policy")

    (owner,) = policy["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Partition",
        "web-1",
        created["metadata"]["uid"],
    )
    assert owner["controller"] and owner["blockOwnerDeletion"]
    assert policy["metadata"]["labels"] == {"lparkube.io/partition": "web-1"}
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": "web-1"}
    }
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    open_rules = [operator_rule(operator, port), other_ports_rule(port)]
    assert policy["spec"]["ingress"] == open_rules  # nothing else isolates the VM: it stays open

    # A tenant's policy for other pods changes nothing; one that selects the VM's pod (by its
    # template's labels) makes the agent port the only thing the agent policy adds.
    policies.create("db-only", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]})
    restrict = {
        "podSelector": {"matchLabels": APP},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "buyer"}}}]}],
    }
    policies.create("shop-buyers", restrict)
    only_operator = [operator_rule(operator, port)]
    wait_for(lambda: policies.rules("web-1-agent-ingress") == only_operator, "isolated")
    assert policies.get("shop-buyers")["spec"]["ingress"] == restrict["ingress"]  # untouched
    policies.delete("shop-buyers")
    wait_for(lambda: policies.rules("web-1-agent-ingress") == open_rules, "open again")

    # Someone widens the agent policy to admit everyone: the operator puts it back.
    policies.patch("web-1-agent-ingress", {"spec": {"ingress": [{}]}})
    wait_for(lambda: policies.rules("web-1-agent-ingress") == open_rules, "the policy put back")

    # A new agent port moves both rules.
    new_port = free_port()
    parts.custom.patch_namespaced_custom_object(
        "lparkube.io", "v1alpha1", parts.namespace, "partitions", "web-1",
        {"spec": {"agent": {"port": new_port}}},
    )  # fmt: skip
    moved = [operator_rule(operator, new_port), other_ports_rule(new_port)]
    wait_for(lambda: policies.rules("web-1-agent-ingress") == moved, "the new port")

    # The Partition goes, and the garbage collector takes its policy with it.
    parts.delete("web-1")
    wait_for(lambda: parts.get("web-1") is None, "the Partition gone")
    wait_for(lambda: policies.get("web-1-agent-ingress") is None, "the policy gone", timeout=60)
    assert policies.names() == ["db-only"]


def test_a_tenants_policy_of_that_name_is_never_written_over(
    parts: Partitions, policies: NetworkPolicies
) -> None:
    """Until the name is free the Partition says why and makes no VM: an agent nobody
    restricts is what the policy exists to prevent."""
    mine = policies.create("clash-agent-ingress", {"podSelector": {}, "policyTypes": ["Egress"]})
    parts.create(shop_partition("clash", "127.0.0.32", free_port()))
    problem = wait_for(
        lambda: (
            (c := parts.condition("clash", "VMReady")).get("reason") == "AgentPolicyConflict" and c
        ),
        "VMReady=False AgentPolicyConflict",
    )
    assert problem["status"] == "False"
    assert (
        "NetworkPolicy clash-agent-ingress exists and is not this Partition's"
        in (problem["message"])
    )
    assert parts.vm("clash") is None
    assert (
        policies.get("clash-agent-ingress")["metadata"]["resourceVersion"]
        == (mine["metadata"]["resourceVersion"])
    )

    policies.delete("clash-agent-ingress")
    policy = wait_for(lambda: policies.get("clash-agent-ingress"), "the agent policy")
    assert policy["metadata"]["ownerReferences"][0]["name"] == "clash"
    assert parts.wait_condition("clash", "VMReady", "True")


def test_the_opt_out_makes_no_policy_and_deletes_those_made(
    parts: Partitions,
    policies: NetworkPolicies,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    parts.create(shop_partition("before", "127.0.0.33", free_port()))
    wait_for(lambda: policies.get("before-agent-ingress"), "the agent policy")

    operator.stop()
    off = OperatorProcess(
        operator.kubeconfig,
        operator.lease_namespace,
        operator.identity_secret,
        tmp_path,
        agent_network_policy=False,
    )
    try:
        off.start()
        wait_for(lambda: policies.get("before-agent-ingress") is None, "the policy deleted")
        parts.create(shop_partition("after", "127.0.0.34", free_port()))
        parts.wait_condition("after", "VMReady", "True")
        assert policies.names() == []
    finally:
        off.stop()
        operator.start()
    wait_for(lambda: policies.names() == ["after-agent-ingress", "before-agent-ingress"], "back")
