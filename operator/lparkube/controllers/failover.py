"""Failover controller (seed 002): one kopf daemon per Partition with failover enabled runs
``failover_run.FailoverRun`` pass after pass. kopf starts it again after an operator restart,
and the run goes on from status.failover."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kopf

from lparkube import metrics
from lparkube.adapters.kube import VIRTUAL_MACHINE
from lparkube.api.resource import GROUP, VERSION
from lparkube.controllers.failover_run import FailoverRun
from lparkube.domain import failover as fo


def failover_enabled(spec: Mapping[str, Any], **_: Any) -> bool:
    return ((spec or {}).get("failover") or {}).get("enabled") is True


def failover_daemon(handler: Callable[..., Any]) -> Callable[..., Any]:
    """A kopf daemon per Partition with failover enabled (the failover run, the consistency
    images): started again after a restart, stopped when failover is turned off."""
    return kopf.daemon(
        GROUP,
        VERSION,
        "partitions",
        when=failover_enabled,
        backoff=3.0,
        cancellation_backoff=5.0,
        cancellation_timeout=10.0,
    )(handler)


@failover_daemon
async def partition_failover(
    body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Watch one Partition for failures and fail it over, until failover is turned off."""
    meta = body.metadata
    with metrics.handler_run("partitions", "partition_failover"):
        await FailoverRun(memo.kube, meta.namespace, meta.name).execute(stopped)


@kopf.on.field(GROUP, VERSION, "partitions", field="spec.failover.enabled")
async def partition_failover_disabled(body: kopf.Body, new: Any, memo: Any, **_: Any) -> None:
    """Failover turned off (or the Partition made without it): the VM gets back the
    runStrategy the user gave it, so KubeVirt restarts it again as before."""
    if new is True:
        return
    meta = body.metadata
    vm_name = (body.status or {}).get("vmName") or meta.name
    vm = await memo.kube.get(VIRTUAL_MACHINE, meta.namespace, vm_name)
    patch = fo.give_back_restarts_patch(vm)
    if patch is not None:
        await memo.kube.patch(VIRTUAL_MACHINE, meta.namespace, vm_name, patch)
