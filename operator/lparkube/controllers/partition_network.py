"""The Partition reconcile's agent-policy phase: read the namespace's NetworkPolicies, let
``domain/agent_network`` decide the Partition's own, and create, patch or delete it.

Off (``--agent-network-policy`` not given), the phase only deletes a policy the Partition made
while it was on: left behind, its "every other port" rule would widen a restriction the tenant
adds later, and nothing would take it back.
"""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lparkube.adapters.kube import Kube
from lparkube.adapters.status_writer import JSON_PATCH
from lparkube.controllers import run_config
from lparkube.controllers.partition_objects import ProblemError
from lparkube.controllers.partition_scope import PartitionScope
from lparkube.domain import agent_network
from lparkube.domain.agent_network import Conflict, Create, Delete, OperatorPods, Patch

ATTEMPTS = 5
# Answers that mean the policy changed since it was read: created by a racing reconcile (409),
# or deleted or changed before a patch, whose resourceVersion test then fails (422).
RETRIED = {Create: (409,), Patch: (404, 409, 422), Delete: ()}


def operator_pods(memo: Any) -> OperatorPods | None:
    """The operator's pods, whom agent policies admit; None when the policies are off."""
    config = run_config(memo)
    if config is None or not config.agent_network_policy:
        return None
    return OperatorPods(config.lease.namespace, config.operator_pod_labels)


async def reconcile_agent_policy(kube: Kube, scope: PartitionScope) -> None:
    """Bring the Partition's agent policy to what the namespace's policies call for. A policy
    created or changed meanwhile (409, or a failed resourceVersion test) means read again."""
    name = agent_network.policy_name(scope.name)
    for _ in range(ATTEMPTS):
        policies = await _list(kube, scope.namespace)
        desired = agent_network.agent_policy(
            scope.partition, scope.vm, scope.vmi, policies, scope.operator_pods
        )
        existing = agent_network.find_policy(policies, name)
        change = agent_network.policy_change(
            scope.partition, desired, existing, enabled=scope.operator_pods is not None
        )
        if change is None:
            return
        if isinstance(change, Conflict):
            raise ProblemError(agent_network.POLICY_CONFLICT, change.message)
        try:
            await _apply(kube, scope.namespace, change)
            return
        except ApiException as error:
            if error.status not in RETRIED[type(change)]:
                raise
    raise kopf.TemporaryError(f"NetworkPolicy {name} kept changing", delay=1)


async def _list(kube: Kube, namespace: str) -> list[dict]:
    found = await kube.call(kube.networking.list_namespaced_network_policy, namespace)
    return kube.api_client.sanitize_for_serialization(found).get("items") or []


async def _apply(kube: Kube, namespace: str, change: Create | Patch | Delete) -> None:
    api = kube.networking
    if isinstance(change, Create):
        await kube.call(api.create_namespaced_network_policy, namespace, change.policy)
    elif isinstance(change, Patch):
        await kube.call(
            api.patch_namespaced_network_policy,
            change.name,
            namespace,
            change.operations,
            _content_type=JSON_PATCH,
        )
    else:
        body = {"preconditions": {"uid": change.uid}}
        try:
            await kube.call(api.delete_namespaced_network_policy, change.name, namespace, body=body)
        except ApiException as error:
            if error.status not in (404, 409):  # gone already, or replaced by another object
                raise
