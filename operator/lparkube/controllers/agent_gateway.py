"""The agent gateway: verified agent reports become Partition status.

It runs in the operator process only while this replica leads (``runtime.manager`` starts it
next to kopf): then one process writes Partition status, one nonce cache sees every report,
and the Service reaches it because /readyz passes only on the leader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import Counter

from lparkube import health, metrics
from lparkube.adapters.agent_gateway import (
    MalformedReportError,
    Verifiers,
    gateway_app,
)
from lparkube.adapters.agent_identity import AgentIdentity, OperatorCredentials
from lparkube.adapters.kube import PARTITION, Kube
from lparkube.config import Settings
from lparkube.controllers.partition import write_status
from lparkube.domain import partition as domain
from lparkube.domain import partition_status as status_rules
from lparkube.domain.agent_report import parse_report
from lparkube.domain.clock import rfc3339
from lparkube.domain.conditions import TRUE

logger = logging.getLogger(__name__)
KUBE_WORKERS = 8

REPORTS = Counter(
    "lparkube_agent_reports",
    "Guest agent reports at the gateway, by result: accepted, or why it was refused "
    "(unsigned, bad-signature, stale, replayed, oversized, malformed, ...).",
    ["result"],
    registry=metrics.REGISTRY,
)


def _now() -> datetime:
    return datetime.now(UTC)


async def partition_key(kube: Kube, identity: AgentIdentity, partition_id: str) -> bytes | None:
    """The key of a live Partition, derived from the operator's identity and its uid."""
    parsed = domain.parse_partition_id(partition_id)
    if parsed is None:
        return None
    namespace, name = parsed
    partition = await kube.get(PARTITION, namespace, name)
    if partition is None or partition["metadata"].get("deletionTimestamp"):
        return None
    return identity.partition_key(namespace, name, partition["metadata"]["uid"])


async def record_report(kube: Kube, partition_id: str, body: bytes, identity: str) -> None:
    """Write a verified report into status.agent and AgentConnected; event on (re)connect."""
    try:
        report = parse_report(body)
    except ValueError as exc:
        raise MalformedReportError(str(exc)) from exc
    namespace, name = domain.parse_partition_id(partition_id) or ("", "")
    received = _now()
    before, after = await write_status(
        kube,
        namespace,
        name,
        lambda p: status_rules.status_with_report(p, report.status(received), received),
    )
    if status_rules.transition(before, after, status_rules.AGENT_CONNECTED) == TRUE:
        message = f"Guest agent {report.version or '?'} reported (kernel {report.kernel_release})"
        await post_event(
            kube, namespace, name, reason="AgentConnected", message=message, identity=identity
        )


async def post_event(
    kube: Kube, namespace: str, name: str, *, reason: str, message: str, identity: str
) -> None:
    """A Normal Event on the Partition (kopf.event needs a handler's context; this has none)."""
    partition = await kube.get(PARTITION, namespace, name)
    if partition is None:
        return
    meta, stamp = partition["metadata"], rfc3339(_now())
    event = {
        "metadata": {"generateName": "lparkube-", "namespace": namespace},
        "involvedObject": {
            "apiVersion": partition["apiVersion"],
            "kind": partition["kind"],
            "name": name,
            "namespace": namespace,
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": "Normal",
        "source": {"component": "lparkube"},
        "reportingComponent": "lparkube",
        "reportingInstance": identity,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        await kube.call(kube.core.create_namespaced_event, namespace, event)
    except Exception:  # an event is a courtesy; the status already says it
        logger.warning("Cannot post event %s on %s/%s", reason, namespace, name, exc_info=True)


@dataclass
class Gateway:
    """A running gateway: its listener and its own API client."""

    runner: web.AppRunner
    kube: Kube

    async def stop(self) -> None:
        await self.runner.cleanup()
        self.kube.close()


def build_app(kube: Kube, keys: AgentIdentity, identity: str) -> web.Application:
    verifiers = Verifiers(lambda partition: partition_key(kube, keys, partition))

    async def sink(partition: str, body: bytes) -> None:
        await record_report(kube, partition, body, identity)

    def valid(partition: str) -> bool:
        return domain.parse_partition_id(partition) is not None

    return gateway_app(verifiers, sink, valid, lambda result: REPORTS.labels(result).inc())


async def start(settings: Settings, credentials: OperatorCredentials) -> Gateway | None:
    """Listen on ``--agent-gateway-address``; None when it is disabled. Raises OSError."""
    if settings.agent_gateway_address is None:
        return None
    kube = Kube.connect(settings.kubeconfig, workers=KUBE_WORKERS)
    try:
        app = build_app(kube, credentials.identity, settings.identity)
        runner = await health.serve(
            app,
            settings.agent_gateway_address,
            "agent gateway",
            ssl_context=credentials.server_context(),
        )
    except BaseException:
        kube.close()
        raise
    return Gateway(runner, kube)
