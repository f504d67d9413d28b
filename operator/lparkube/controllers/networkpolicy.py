"""NetworkPolicy controller: the namespace's policies decide each Partition's agent policy
(``domain/agent_network``), so they are watched.

A tenant's policy appearing, changing or going reconciles every Partition of its namespace (a
new restriction on a VM's pod drops the agent policy's "every other port" rule; the last one
going brings it back). A change to an agent policy itself (edited or deleted by someone else,
or just written by the operator) reconciles its own Partition, which puts it back as it should
be and otherwise writes nothing.
"""

from __future__ import annotations

from typing import Any

import kopf

from lparkube.controllers.partition import reconcile_by_name
from lparkube.controllers.partition_network import operator_pods
from lparkube.domain import agent_network


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies")
async def networkpolicy_changed(
    type: str | None,
    body: kopf.Body,
    namespace: str,
    memo: Any,
    partition_by_vm: kopf.Index,
    **_: Any,
) -> None:
    if type is None or operator_pods(memo) is None:
        return  # the initial listing (every Partition resumes anyway), or the policies are off
    owner = agent_network.agent_policy_partition(dict(body))
    names = [owner] if owner else partitions_in(partition_by_vm, namespace)
    for name in names:
        await reconcile_by_name(memo, namespace, name)


def partitions_in(partition_by_vm: kopf.Index, namespace: str) -> list[str]:
    """The namespace's Partitions, from the index of which Partition manages which VM (copied
    first: kopf changes its index while the reconciles await)."""
    found = (names for (ns, _), names in list(partition_by_vm.items()) if ns == namespace)
    return sorted({name for names in found for name in list(names)})
