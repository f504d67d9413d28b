"""Operator settings: one immutable value built from the command line and environment.

Controllers receive it as ``memo.config`` in every kopf handler, so they read the same
identity, namespaces and lease parameters the runtime uses.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DEFAULT_LEASE_NAMESPACE = "lparkube-system"
DEFAULT_LEASE_NAME = "lparkube-operator"
DEFAULT_IDENTITY_SECRET = "lparkube-identity"
AGENT_GATEWAY_SERVICE = "lparkube-agent-gateway"
AGENT_GATEWAY_PORT = 8081

LogFormat = Literal["json", "text"]
Labels = tuple[tuple[str, str], ...]

_LABEL_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"{_LABEL_NAME}?")


@dataclass(frozen=True)
class Address:
    """A host:port to listen on; an empty host means every interface."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class LeaseConfig:
    """Leader-election timing, in seconds, with client-go's defaults scaled to 15s leases.

    ``renew_deadline`` is how long a leader keeps trying to renew before it steps down; it is
    shorter than ``duration`` so the old leader stops before a standby may take over.
    """

    namespace: str = DEFAULT_LEASE_NAMESPACE
    name: str = DEFAULT_LEASE_NAME
    identity: str = ""
    duration: float = 15.0
    renew_interval: float = 5.0
    renew_deadline: float = 10.0
    retry_interval: float = 2.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("lease identity must not be empty")
        if not 0 < self.renew_interval < self.renew_deadline < self.duration:
            raise ValueError(
                "lease timing must satisfy 0 < renew interval < renew deadline < duration, "
                f"got {self.renew_interval} < {self.renew_deadline} < {self.duration}"
            )
        if self.retry_interval <= 0:
            raise ValueError("lease retry interval must be positive")


@dataclass(frozen=True)
class Settings:
    """Everything ``lparkube run`` was asked to do."""

    lease: LeaseConfig
    kubeconfig: Path | None = None
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    health_address: Address | None = field(default_factory=lambda: Address("", 8080))
    metrics_address: Address | None = field(default_factory=lambda: Address("", 9090))
    log_level: str = "info"
    log_format: LogFormat = "json"
    # The agent gateway listens only when asked (the CLI asks by default, on :8081).
    agent_gateway_address: Address | None = None
    agent_gateway_url: str = ""  # written into each agent's config; "": the in-cluster Service
    # The Secret (in the lease namespace) holding the root every agent key and TLS identity
    # derives from (adapters/agent_identity.py).
    identity_secret: str = DEFAULT_IDENTITY_SECRET
    # A NetworkPolicy per Partition admits only the operator's pods (these labels, in the lease
    # namespace) to the agent's port (docs/agent-network.md).
    agent_network_policy: bool = False
    operator_pod_labels: Labels = ()

    @property
    def clusterwide(self) -> bool:
        """Watch every namespace when none was named."""
        return not self.namespaces

    @property
    def identity(self) -> str:
        return self.lease.identity


def parse_address(text: str) -> Address | None:
    """Parse ``host:port``, ``:port`` or ``[v6]:port``; ``0`` disables the listener."""
    text = text.strip()
    if text == "0":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, :PORT or 0, got {text!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return Address(host.removeprefix("[").removesuffix("]"), number)


def parse_labels(text: str) -> Labels:
    """``key=value[,key=value...]`` as Kubernetes label pairs; ValueError names a bad one."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ValueError(f"expected KEY=VALUE labels, got {item!r}")
        pairs.append((key, value))
    return tuple(dict(pairs).items())


def default_lease_namespace(environ: Mapping[str, str] = os.environ) -> str:
    """Use the pod's own namespace (downward API) so the Lease sits beside the Deployment."""
    return environ.get("POD_NAMESPACE") or DEFAULT_LEASE_NAMESPACE


def default_gateway_url(namespace: str | None) -> str:
    """The gateway's in-cluster Service URL, in the operator's (the Lease's) namespace."""
    namespace = namespace or DEFAULT_LEASE_NAMESPACE
    return f"https://{AGENT_GATEWAY_SERVICE}.{namespace}.svc:{AGENT_GATEWAY_PORT}"


def default_identity() -> str:
    """hostname-pid: the pod name in a cluster, unique per process on a workstation."""
    return f"{socket.gethostname()}-{os.getpid()}"
