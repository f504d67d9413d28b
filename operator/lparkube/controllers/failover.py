"""Failover controller (seed 002): one kopf daemon per Partition with failover enabled runs
``failover_run.FailoverRun`` pass after pass. kopf starts it again after an operator restart,
and the run goes on from status.failover."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from lparkube import metrics
from lparkube.api.resource import GROUP, VERSION
from lparkube.controllers.failover_run import FailoverRun


def failover_enabled(spec: Mapping[str, Any], **_: Any) -> bool:
    return ((spec or {}).get("failover") or {}).get("enabled") is True


@kopf.daemon(
    GROUP,
    VERSION,
    "partitions",
    when=failover_enabled,
    backoff=3.0,
    cancellation_backoff=5.0,
    cancellation_timeout=10.0,
)
async def partition_failover(
    body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Watch one Partition for failures and fail it over, until failover is turned off."""
    meta = body.metadata
    with metrics.handler_run("partitions", "partition_failover"):
        await FailoverRun(memo.kube, meta.namespace, meta.name).execute(stopped)
