"""The agent gateway: verified agent reports become Partition status.

It runs in the operator process only while this replica leads (``runtime.manager`` starts it
next to kopf): then one process writes Partition status, one directory and one nonce cache see
every report, and the Service reaches it because /readyz passes only on the leader.

The gateway knows Partitions from the operator's own watch: ``runtime.manager`` makes one
``PartitionDirectory``, hands it to the gateway and to kopf's memo, and the handlers at the end
keep it current. A report is written at most once a second per Partition (the ``Coalescer``),
and its signed time becomes the heartbeat, so a replay can never move it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import Counter

from lparkube import metrics
from lparkube.adapters.agent_gateway import (
    Coalescer,
    Listener,
    MalformedReportError,
    ReportGateway,
    Verifiers,
)
from lparkube.adapters.agent_identity import AgentIdentity, OperatorCredentials
from lparkube.adapters.kube import PARTITION, Kube
from lparkube.config import Settings
from lparkube.controllers.partition import RESOURCE, write_status
from lparkube.domain import failover
from lparkube.domain import partition as domain
from lparkube.domain import partition_status as status_rules
from lparkube.domain.agent_report import AgentReport, parse_report
from lparkube.domain.clock import rfc3339
from lparkube.domain.conditions import TRUE
from lparkube.domain.partition_directory import (
    DirectoryEntry,
    PartitionDirectory,
    entry_of,
    is_newer,
    last_report_time,
)

logger = logging.getLogger(__name__)
KUBE_WORKERS = 8
REPORT_WINDOW_SECONDS = 1.0  # at most one status write per Partition per window
PARTITION_CRD = f"{PARTITION.plural}.{PARTITION.group}"

REPORTS = Counter(
    "lparkube_agent_reports",
    "Guest agent reports at the gateway, by result: accepted, or why it was refused "
    "(unsigned, bad-signature, unknown-partition, wrong-partition, stale, replayed, "
    "oversized, malformed, unavailable, ...).",
    ["result"],
    registry=metrics.REGISTRY,
)
KEY_LOOKUPS = Counter(
    "lparkube_agent_key_lookups",
    "Partition keys the gateway looked up (derived from the operator's root secret and the "
    "Partition's uid; cached); a report naming an unknown Partition never causes one.",
    registry=metrics.REGISTRY,
)
REPORT_WRITES = Counter(
    "lparkube_agent_report_writes",
    "Partition status updates for accepted reports: at most one per Partition per second, "
    "each carrying the latest of the reports that arrived meanwhile.",
    registry=metrics.REGISTRY,
)


def _now() -> datetime:
    return datetime.now(UTC)


def status_after_report(
    partition: dict,
    entry: DirectoryEntry,
    report: AgentReport,
    signed_at: int,
    now: datetime,
    *,
    lease: failover.LeaseAnswer | None = None,
) -> dict[str, Any]:
    """The status a report makes; unchanged unless it is signed after the stored heartbeat
    (and the Partition is still the one whose agent signed it). With ``lease``, the lease its
    answer grants is recorded in the same write, before the answer goes out."""
    status = partition.get("status") or {}
    if partition["metadata"].get("uid") != entry.uid:
        return {}
    if not is_newer(signed_at, last_report_time(status)):
        return {}
    heartbeat = datetime.fromtimestamp(signed_at, UTC)
    after = status_rules.status_with_report(partition, report.status(heartbeat), now)
    if lease is not None:
        after.update(failover.status_with_lease(partition, lease, now))
    return after


class _Answer:
    """The lease decided by the last computation of a status write (it may be recomputed
    after a conflict); a grant only if that write recorded it."""

    def __init__(self) -> None:
        self.lease = failover.LeaseAnswer()

    def compute(
        self, partition: dict, entry: DirectoryEntry, report: AgentReport, signed_at: int
    ) -> dict[str, Any]:
        now = _now()
        self.lease = failover.lease_answer(partition)
        after = status_after_report(partition, entry, report, signed_at, now, lease=self.lease)
        if not after:
            self.lease = failover.LeaseAnswer()  # nothing written: no grant
        return after


async def record_report(
    kube: Kube,
    directory: PartitionDirectory,
    entry: DirectoryEntry,
    report: AgentReport,
    *,
    signed_at: int,
    identity: str,
) -> dict[str, Any] | None:
    """Write a verified report into status.agent and AgentConnected (and the lease granted, in
    status.failover); event on (re)connect. Returns the answer's body: the lease, a disarm,
    or None."""
    namespace, name = entry.namespace, entry.name
    REPORT_WRITES.inc()
    answer = _Answer()
    before, after = await write_status(
        kube, namespace, name, lambda p: answer.compute(p, entry, report, signed_at)
    )
    if before is None:  # gone, and the watch did not say so yet
        directory.forget(entry.partition, entry.uid)
        return None
    if status_rules.transition(before, after, status_rules.AGENT_CONNECTED) == TRUE:
        message = f"Guest agent {report.version or '?'} reported (kernel {report.kernel_release})"
        await post_event(
            kube, namespace, name, reason="AgentConnected", message=message, identity=identity
        )
    return answer.lease.body()


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
    """A running gateway: its listener, its pending writes and its own API client."""

    listener: Listener
    writes: Coalescer
    kube: Kube

    async def stop(self) -> None:
        await self.listener.close()
        await self.writes.close()
        self.kube.close()


def build_gateway(
    kube: Kube, keys: AgentIdentity, directory: PartitionDirectory, identity: str
) -> tuple[ReportGateway, Coalescer]:
    async def key(entry: DirectoryEntry) -> bytes:
        """The one place the gateway gets a Partition's key from (cached by ``Verifiers``)."""
        KEY_LOOKUPS.inc()
        return keys.partition_key(entry.namespace, entry.name, entry.uid)

    verifiers = Verifiers(key)

    async def write(_: str, item: tuple[DirectoryEntry, AgentReport, int]) -> dict | None:
        entry, report, signed_at = item
        return await record_report(
            kube, directory, entry, report, signed_at=signed_at, identity=identity
        )

    writes: Coalescer[tuple[DirectoryEntry, AgentReport, int]] = Coalescer(
        write, REPORT_WINDOW_SECONDS
    )

    def parse(body: bytes) -> AgentReport:
        try:
            return parse_report(body)
        except ValueError as exc:
            raise MalformedReportError(str(exc)) from exc

    async def sink(entry: DirectoryEntry, signed_at: int, report: AgentReport) -> dict | None:
        return await writes.submit(entry.partition, (entry, report, signed_at))

    def valid(partition: str) -> bool:
        return domain.parse_partition_id(partition) is not None

    counter = functools.cache(REPORTS.labels)  # the results are a few fixed words

    def record(result: str) -> None:
        counter(result).inc()

    return ReportGateway(directory, verifiers, parse, sink, valid, record=record), writes


async def start(
    settings: Settings, credentials: OperatorCredentials, directory: PartitionDirectory
) -> Gateway | None:
    """Listen on ``--agent-gateway-address`` over TLS (the operator's certificate; a client
    certificate issued to the partition required); None when it is disabled. Raises
    OSError."""
    address = settings.agent_gateway_address
    if address is None:
        return None
    kube = Kube.connect(settings.kubeconfig, workers=KUBE_WORKERS)
    try:
        gateway, writes = build_gateway(kube, credentials.identity, directory, settings.identity)
        listener = gateway.listen(address.host, address.port, credentials.server_context())
    except BaseException:
        kube.close()
        raise
    logger.info("Serving agent gateway on %s", address)
    return Gateway(listener, writes, kube)


# --- kopf handlers: the directory follows the Partition watch --------------------------------


def _directory(memo: Any) -> PartitionDirectory | None:
    """The directory ``lparkube run`` shares with its gateway; None under a bare kopf run."""
    directory = getattr(memo, "partition_directory", None)
    return directory if isinstance(directory, PartitionDirectory) else None


# Coroutines, so that kopf runs them on the event loop the gateway serves from (it runs plain
# functions in threads), and the directory needs no lock.


@kopf.index(*RESOURCE)
async def partition_observe(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Every Partition event updates its entry. An index handler, because kopf runs every
    index handler on the initial listing before any other handler."""
    directory = _directory(memo)
    if directory is not None:
        directory.observe(entry_of(body))


def _is_deleted(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


@kopf.on.event(*RESOURCE, when=_is_deleted)
async def partition_forget(body: kopf.Body, memo: Any, **_: Any) -> None:
    directory = _directory(memo)
    if directory is not None:
        meta = body.metadata
        directory.forget(f"{meta.namespace}/{meta.name}", meta.uid or "")


def _is_partition_crd(name: str, **_: Any) -> bool:
    return name == PARTITION_CRD


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=_is_partition_crd)
async def partition_directory_synced(memo: Any, **_: Any) -> None:
    """kopf holds every non-index handler until the index handlers have seen the whole initial
    listing, so once this one runs (on the Partition CRD's own listing, whether or not any
    Partition exists) the directory holds every Partition: unknown now means unknown."""
    directory = _directory(memo)
    if directory is not None and not directory.synced:
        directory.mark_synced()
        logger.info("The agent gateway knows %d Partitions", len(directory))
