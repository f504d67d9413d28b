"""SaveEvent controller: instruct every target agent concurrently and record each result.

One kopf daemon per unfinished SaveEvent runs it (``save_run.SaveRun``); kopf starts it again
after an operator restart, and it resumes from status: partitions without a final outcome are
sent the same instruction again (same id; the agent, idempotent by id and journaled across its
own restarts, attaches instead of saving twice) and finished ones are never sent again. Targets
come from an index of the Partitions (kopf's watch cache, as controller-runtime reads from its
informers), so instructing starts without a LIST. Status goes through a coalescing writer, so
1,000 partitions do not mean 1,000 patches. Once the status says Complete, the daemon's filter
stops matching and kopf drops the finalizer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from lparkube import metrics
from lparkube.adapters.guest_agent import AgentClient
from lparkube.adapters.kube import Kube
from lparkube.api.resource import GROUP
from lparkube.controllers import run_config
from lparkube.controllers.save_run import SaveRun
from lparkube.domain import partition_status, saving
from lparkube.domain.conditions import is_true

VERSION = "v1alpha1"


def system_namespace(memo: Any) -> str:
    """The operator's system namespace: where the Lease lives and triggers create events."""
    config = run_config(memo)
    return config.lease.namespace if config else saving.DEFAULT_SYSTEM_NAMESPACE


def clients(memo: Any) -> tuple[Kube, AgentClient]:
    """The shared Kubernetes and agent clients the startup handler put in memo."""
    return memo.kube, memo.agents


def _unfinished(status: Mapping[str, Any], **_: Any) -> bool:
    return not saving.finished(status)


# kopf options of the SaveEvent daemon (the save benchmark registers the same handler).
DAEMON_OPTIONS: dict[str, Any] = {
    "when": _unfinished,
    "backoff": 3.0,
    "cancellation_timeout": 10.0,
}


@kopf.index(GROUP, VERSION, "partitions")
def saving_targets(namespace: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Each Partition's fields that targeting and instructing read, by namespace."""
    return {namespace: saving.target_fields(body)}


@kopf.daemon(GROUP, VERSION, "saveevents", **DAEMON_OPTIONS)
async def saveevent_run(
    body: kopf.Body,
    memo: Any,
    logger: logging.Logger | kopf.ObjectLogger,
    saving_targets: kopf.Index | None = None,
    **_: Any,
) -> None:
    """Run (or resume) one SaveEvent until it is complete."""
    kube, agents = clients(memo)
    run = SaveRun(kube, agents, dict(body), system_namespace(memo), logger)
    if saving_targets is not None:
        run.cached = lambda scope: _indexed(saving_targets, scope)
    with metrics.handler_run("saveevents", "saveevent_run"):
        await run.execute()


def _indexed(index: kopf.Index, scope: str | None) -> list[dict[str, Any]]:
    """The indexed Partitions of one namespace (``scope``), or of all when None."""
    if scope is not None:
        return list(index.get(scope, ()))
    return [item for store in index.values() for item in store]


@kopf.on.event(GROUP, VERSION, "partitions")
def partition_agent_count(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Keep the agents-connected and agents-lost gauges in step with every Partition."""
    meta = body.get("metadata") or {}
    key = (meta.get("namespace", ""), meta.get("name", ""))
    conditions = (body.get("status") or {}).get("conditions")
    gone = type == "DELETED"
    _track(memo.agents_connected, key, not gone and is_true(conditions, "AgentConnected"))
    _track(memo.agents_lost, key, not gone and partition_status.agent_lost(conditions))
    metrics.AGENTS_CONNECTED.set(len(memo.agents_connected))
    metrics.AGENTS_LOST.set(len(memo.agents_lost))


def _track(keys: set[tuple[str, str]], key: tuple[str, str], member: bool) -> None:
    if member:
        keys.add(key)
    else:
        keys.discard(key)
