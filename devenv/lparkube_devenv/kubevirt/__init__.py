"""A KubeVirt stand-in for tests and local runs: KubeVirt's CRDs, a controller that plays
virt-controller and virt-handler, and virt-api's subresource API as an aggregated API server."""

from .api import (
    AGENT_ANNOTATION,
    IP_ANNOTATION,
    POWER_ANNOTATION,
    RESTORE,
    SNAPSHOT,
    VM,
    VMI,
    VMIM,
    Kube,
)
from .controller import Settings
from .standin import StandIn

__all__ = [
    "AGENT_ANNOTATION",
    "IP_ANNOTATION",
    "POWER_ANNOTATION",
    "RESTORE",
    "SNAPSHOT",
    "VM",
    "VMI",
    "VMIM",
    "Kube",
    "Settings",
    "StandIn",
]
