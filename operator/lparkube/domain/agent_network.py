"""Who may reach a guest agent: the NetworkPolicy the operator keeps for each Partition, as pure
functions of the Partition, its VM and VMI, and the other NetworkPolicies of its namespace.

NetworkPolicies only ever allow. A pod that no policy selects for Ingress accepts everything;
once one does, the pod accepts only what some policy allows. So the agent policy of a Partition
selects the VM's virt-launcher pod and admits the agent port from the operator's pods; and,
only while no other policy of the namespace selects that pod for Ingress, every other port from
anywhere. An open VM stays open (its web server too), a VM its tenant isolated keeps exactly
the tenant's rules plus the operator's one port, and nobody else reaches the agent either way
(docs/agent-network.md says why, and what NetworkPolicies cannot express).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lparkube.domain import vm_ownership
from lparkube.domain.partition import (
    PARTITION_LABEL,
    agent_spec,
    controlled_by,
    owner_reference,
)

POLICY_SUFFIX = "-agent-ingress"
POLICY_CONFLICT = "AgentPolicyConflict"  # VMReady=False reason: the policy's name is taken
# KubeVirt labels every virt-launcher pod kubevirt.io=virt-launcher and vm.kubevirt.io/name=<the
# VMI's hostname> (pkg/virt-controller/services/template.go, dns.SanitizeHostname).
LAUNCHER_LABEL = "kubevirt.io"
LAUNCHER = "virt-launcher"
HOSTNAME_LABEL = "vm.kubevirt.io/name"
KUBEVIRT_DOMAIN = "kubevirt.io"
MAX_HOSTNAME = 63
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
MAX_PORT = 65535

Match = bool | None  # None: it depends on a label whose value only KubeVirt knows


@dataclass(frozen=True)
class OperatorPods:
    """The pods that may reach every agent: the operator's, by namespace and pod labels."""

    namespace: str
    labels: tuple[tuple[str, str], ...]

    def peer(self) -> dict[str, Any]:
        """A NetworkPolicy peer: those pods, in that namespace only."""
        return {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: self.namespace}},
            "podSelector": {"matchLabels": dict(self.labels)},
        }


def policy_name(partition_name: str) -> str:
    return f"{partition_name}{POLICY_SUFFIX}"


# --- the virt-launcher pod's labels -----------------------------------------------------------


def launcher_hostname(vm: dict[str, Any], vmi: dict[str, Any] | None) -> str:
    """KubeVirt's ``vm.kubevirt.io/name`` value: the VMI's ``spec.hostname`` when set, else
    its name (the VM's) up to the first dot, at most 63 characters."""
    hostname = (_launcher_source(vm, vmi).get("spec") or {}).get("hostname")
    return hostname or vm["metadata"]["name"].split(".", 1)[0][:MAX_HOSTNAME]


def launcher_labels(vm: dict[str, Any], vmi: dict[str, Any] | None) -> dict[str, str]:
    """The labels the VM's virt-launcher pod carries, as far as they can be known.

    KubeVirt copies the VMI's labels (the VM template's) onto the pod and sets its own. Of the
    labels in KubeVirt's domain only the two computed here are known: the others (the VMI's
    uid, its node, newer releases' own) are left out, and ``selector_matches`` treats them as
    unknown rather than absent.
    """
    copied = (_launcher_source(vm, vmi).get("metadata") or {}).get("labels") or {}
    labels = {k: v for k, v in copied.items() if not _kubevirt_key(k)}
    labels[LAUNCHER_LABEL] = LAUNCHER
    labels[HOSTNAME_LABEL] = launcher_hostname(vm, vmi)
    return labels


def _launcher_source(vm: dict[str, Any], vmi: dict[str, Any] | None) -> dict[str, Any]:
    """What the pod is made from: the VMI once it exists, else the VM's template for it."""
    return vmi if vmi is not None else ((vm.get("spec") or {}).get("template") or {})


def _kubevirt_key(key: str) -> bool:
    prefix = key.split("/", 1)[0]
    return prefix == KUBEVIRT_DOMAIN or prefix.endswith(f".{KUBEVIRT_DOMAIN}")


# --- label selectors and NetworkPolicy selection ---------------------------------------------


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> Match:
    """A label selector (``matchLabels`` and ``matchExpressions``, all of them must hold) on a
    pod's labels: True, False, or None when the answer depends on a KubeVirt label not in
    ``labels``. The empty selector matches every pod."""
    requirements = [(k, "In", [v]) for k, v in (selector.get("matchLabels") or {}).items()]
    requirements += [
        (e.get("key", ""), e.get("operator", ""), e.get("values") or [])
        for e in selector.get("matchExpressions") or []
    ]
    results = [_requirement(labels, *requirement) for requirement in requirements]
    if False in results:
        return False
    return None if None in results else True


def _requirement(labels: Mapping[str, str], key: str, operator: str, values: list[str]) -> Match:
    if key not in labels and _kubevirt_key(key):
        return None
    present, value = key in labels, labels.get(key)
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    return None  # no other operator passes the API server's validation


def selects_for_ingress(policy: Mapping[str, Any], labels: Mapping[str, str]) -> Match:
    """Whether a NetworkPolicy isolates the pod for Ingress: its podSelector matches and its
    policyTypes include Ingress (without policyTypes, every policy does)."""
    spec = policy.get("spec") or {}
    types = spec.get("policyTypes") or ["Ingress"]
    if "Ingress" not in types:
        return False
    return selector_matches(spec.get("podSelector") or {}, labels)


def agent_policy_partition(policy: dict[str, Any]) -> str | None:
    """The Partition whose agent policy this is (the one that controls it), or None: any
    other policy, a tenant's restriction."""
    claim = vm_ownership.claim_of(policy)
    return claim.partition if claim is not None and claim.created else None


def isolated_by_namespace(policies: Iterable[dict[str, Any]], labels: Mapping[str, str]) -> bool:
    """Whether a policy other than the Partitions' own selects the pod for Ingress, or might
    (an unknown answer counts as yes: never open what a tenant may have closed)."""
    return any(
        selects_for_ingress(p, labels) is not False
        for p in policies
        if agent_policy_partition(p) is None
    )


# --- the policy ------------------------------------------------------------------------------


def other_ports(port: int) -> list[dict[str, Any]]:
    """Every TCP port but ``port``, every UDP and SCTP port (no port: all of them)."""
    tcp = [(1, port - 1), (port + 1, MAX_PORT)]
    ranges = [_port_range(first, last) for first, last in tcp if first <= last]
    return [*ranges, {"protocol": "UDP"}, {"protocol": "SCTP"}]


def _port_range(first: int, last: int) -> dict[str, Any]:
    found: dict[str, Any] = {"protocol": "TCP", "port": first}
    if last > first:
        found["endPort"] = last
    return found


def agent_policy(
    partition: dict[str, Any],
    vm: dict[str, Any] | None,
    vmi: dict[str, Any] | None,
    policies: Iterable[dict[str, Any]],
    operator: OperatorPods | None,
) -> dict[str, Any] | None:
    """The NetworkPolicy the Partition should have, or None for none: policies are off
    (``operator`` None), or there is no VM that is this Partition's (missing, another
    Partition's, or not adopted yet) and so no pod to protect."""
    meta = partition["metadata"]
    if operator is None or vm is None or not vm_ownership.claimed_by(vm, meta["name"], meta["uid"]):
        return None
    port = agent_spec(meta["name"], partition.get("spec") or {}).port
    labels = launcher_labels(vm, vmi)
    rules: list[dict[str, Any]] = [
        {"from": [operator.peer()], "ports": [{"protocol": "TCP", "port": port}]}
    ]
    if not isolated_by_namespace(policies, labels):
        rules.append({"ports": other_ports(port)})
    selector = {LAUNCHER_LABEL: LAUNCHER, HOSTNAME_LABEL: labels[HOSTNAME_LABEL]}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {PARTITION_LABEL: meta["name"]},
            "ownerReferences": [owner_reference(partition, controller=True)],
        },
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


# --- what to change --------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    policy: dict[str, Any]


@dataclass(frozen=True)
class Patch:
    """A JSON patch that applies only to the version read (its first operation tests the
    resourceVersion), so a policy changed meanwhile is read and planned again."""

    name: str
    operations: list[dict[str, Any]]


@dataclass(frozen=True)
class Delete:
    name: str
    uid: str


@dataclass(frozen=True)
class Conflict:
    message: str


PolicyChange = Create | Patch | Delete | Conflict


def find_policy(policies: Iterable[Mapping[str, Any]], name: str) -> dict[str, Any] | None:
    return next((dict(p) for p in policies if (p.get("metadata") or {}).get("name") == name), None)


def policy_change(
    partition: dict[str, Any],
    desired: dict[str, Any] | None,
    existing: dict[str, Any] | None,
    *,
    enabled: bool,
) -> PolicyChange | None:
    """What turns ``existing`` (the policy of that name, if any) into ``desired``; None when
    nothing needs doing. A policy of that name that is not this Partition's is never touched,
    and while the policies are ``enabled`` it is a conflict even before the VM exists (the
    Partition then makes no VM whose agent nothing would restrict)."""
    meta = partition["metadata"]
    name = policy_name(meta["name"])
    if existing is not None and not controlled_by(existing, meta["uid"]):
        if not enabled:
            return None
        return Conflict(
            f"NetworkPolicy {name} exists and is not this Partition's: rename or delete it "
            "(until then nothing restricts who reaches the guest agent's port)"
        )
    if desired is None:
        return None if existing is None else Delete(name, existing["metadata"]["uid"])
    if existing is None:
        return Create(desired)
    current_meta = existing.get("metadata") or {}
    labels = current_meta.get("labels") or {}
    operations: list[dict[str, Any]] = []
    if existing.get("spec") != desired["spec"]:
        operations.append({"op": "replace", "path": "/spec", "value": desired["spec"]})
    if not desired["metadata"]["labels"].items() <= labels.items():
        value = {**labels, **desired["metadata"]["labels"]}
        operations.append({"op": "add", "path": "/metadata/labels", "value": value})
    if not operations:
        return None
    version = {"op": "test", "path": "/metadata/resourceVersion"}
    return Patch(name, [{**version, "value": current_meta["resourceVersion"]}, *operations])
