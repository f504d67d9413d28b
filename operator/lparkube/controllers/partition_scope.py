"""One Partition reconcile's scope (cluster-api's pattern): read everything once, let ordered
phases work on it, write status once at the end from what it holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lparkube.domain import partition as domain
from lparkube.domain.agent_network import OperatorPods

if TYPE_CHECKING:
    from lparkube.controllers.partition_objects import KeySecrets
from lparkube.domain.conditions import Condition


@dataclass
class PartitionScope:
    """The Partition, its VM and VMI as read at the start; a phase that patches the VM puts
    the patched VM here, and the first problem a phase meets stops the phases after it."""

    partition: dict[str, Any]
    secrets: KeySecrets | None = None  # None: the Partition is going away, nothing is written
    agent: domain.AgentSpec = field(init=False)
    vm: dict[str, Any] | None = None
    vmi: dict[str, Any] | None = None
    problem: Condition | None = None
    refused: bool = False  # the VM is another Partition's: status shows none of it
    operator_pods: OperatorPods | None = None  # who reaches the agent; None: no agent policy
    # spec.paging: the LU the VM gets as disk lparkube-paging, and PagingReady (None: not
    # evaluated, the stored one stays); without a claim yet a new VM is not created.
    paging_claim: str | None = None
    paging_size: int | None = None
    paging_condition: Condition | None = None
    vm_held: bool = False

    def __post_init__(self) -> None:
        self.agent = domain.agent_spec(self.name, self.spec)

    @property
    def spec(self) -> dict[str, Any]:
        return self.partition.get("spec") or {}

    @property
    def namespace(self) -> str:
        return self.partition["metadata"]["namespace"]

    @property
    def name(self) -> str:
        return self.partition["metadata"]["name"]

    @property
    def uid(self) -> str:
        return self.partition["metadata"]["uid"]

    @property
    def vm_name(self) -> str:
        return domain.vm_name(self.name, self.spec)

    @property
    def adoption(self) -> bool:
        return domain.is_adoption(self.spec)

    def observed(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The VM and VMI status mirrors: none of a VM that is another Partition's."""
        return (None, None) if self.refused else (self.vm, self.vmi)
