"""Every Prometheus metric lparkube exports, and the helpers controllers record them with.

Metrics live in one private registry so tests and embedders never collide with the process
default one; ``metrics_app`` serves it. Controllers wrap kopf handlers with ``instrumented``::

    @kopf.on.create("lparkube.io", "partitions")
    @metrics.instrumented("partitions")
    async def partition_create(spec, **_): ...
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import kopf
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

Outcome = Literal["success", "retry", "error"]
F = TypeVar("F", bound=Callable[..., Any])

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

BUILD_INFO = Gauge(
    "lparkube_build_info",
    "Always 1; labels identify the running build.",
    ["version"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "lparkube_leader",
    "1 while this replica holds the operator Lease and runs handlers, else 0.",
    ["identity"],
    registry=REGISTRY,
)
HANDLER_RUNS = Counter(
    "lparkube_handler_runs",
    "kopf handler invocations by outcome (success, retry = kopf.TemporaryError, error).",
    ["resource", "handler", "outcome"],
    registry=REGISTRY,
)
HANDLER_DURATION = Histogram(
    "lparkube_handler_duration_seconds",
    "Wall-clock time of kopf handler invocations.",
    ["resource", "handler"],
    registry=REGISTRY,
)


def set_build_info(version: str) -> None:
    BUILD_INFO.labels(version=version).set(1)


def set_leader(identity: str, leading: bool) -> None:
    LEADER.labels(identity=identity).set(1 if leading else 0)


def outcome_of(error: BaseException | None) -> Outcome:
    """Classify a handler's exit the way kopf will treat it."""
    if error is None:
        return "success"
    if isinstance(error, kopf.TemporaryError):
        return "retry"
    return "error"


def record_handler_run(resource: str, handler: str, outcome: Outcome, seconds: float) -> None:
    HANDLER_RUNS.labels(resource=resource, handler=handler, outcome=outcome).inc()
    HANDLER_DURATION.labels(resource=resource, handler=handler).observe(seconds)


@contextmanager
def handler_run(resource: str, handler: str) -> Iterator[None]:
    """Count and time one handler invocation; exceptions pass through unchanged."""
    started = time.monotonic()
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        record_handler_run(resource, handler, outcome_of(error), time.monotonic() - started)


def instrumented(resource: str, handler: str | None = None) -> Callable[[F], F]:
    """Decorate a sync or async kopf handler so each run lands in the handler metrics.

    ``functools.wraps`` keeps the function's name, so kopf's default handler id is unchanged.
    """

    def decorate(fn: F) -> F:
        name = handler or fn.__name__
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with handler_run(resource, name):
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            with handler_run(resource, name):
                return fn(*args, **kwargs)

        return run_sync  # type: ignore[return-value]

    return decorate


def metrics_app() -> web.Application:
    """An aiohttp app serving ``/metrics`` in the format the scraper asks for."""

    async def scrape(request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(REGISTRY), headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


# --- saving (SaveEvent, ConditionProfile, evacuation) ---------------------------------------

SAVES = Counter(
    "lparkube_saves",
    "Partitions that finished a save, by SaveEvent reason and partition outcome "
    "(Succeeded, Failed, TimedOut, Unreachable).",
    ["reason", "outcome"],
    registry=REGISTRY,
)
SAVE_EVENTS = Counter(
    "lparkube_save_events",
    "SaveEvents completed, by reason and Complete reason (Succeeded, PartiallySucceeded, "
    "Failed, DeadlineExceeded, NoTargets, Refused).",
    ["reason", "result"],
    registry=REGISTRY,
)
SAVE_DURATION = Histogram(
    "lparkube_save_duration_seconds",
    "From sending a partition its save instruction to its agent's final result.",
    ["reason"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
SAVE_FANOUT_LATENCY = Histogram(
    "lparkube_save_fanout_latency_seconds",
    "From a SaveEvent's creation to its instruction being sent to one partition's agent.",
    ["reason"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
SAVE_STATUS_WRITES = Counter(
    "lparkube_save_status_writes",
    "Status patches written for SaveEvents (coalesced: many results per patch).",
    registry=REGISTRY,
)
AGENTS_CONNECTED = Gauge(
    "lparkube_agents_connected",
    "Partitions whose guest agent is connected (condition AgentConnected=True).",
    registry=REGISTRY,
)
AGENTS_LOST = Gauge(
    "lparkube_agents_lost",
    "Partitions whose VM runs but whose guest agent stopped reporting (AgentConnected=False, "
    "HeartbeatTimeout, with VMReady=True): these guests cannot be told to save.",
    registry=REGISTRY,
)
TRIGGER_FIRINGS = Counter(
    "lparkube_trigger_firings",
    "SaveEvents created by triggers: ConditionProfile rules and evacuations.",
    ["trigger", "reason"],
    registry=REGISTRY,
)

REMOTE_RESTARTS = Counter(
    "lparkube_remote_restarts",
    "RemoteRestarts that reached a termination state, by result (RestartSucceeded, RestartFailed).",
    ["result"],
    registry=REGISTRY,
)
FAILURES = Counter(
    "lparkube_failures",
    "Partition failures failover recorded, by reason (VMIFailed, GuestPanicked, NodeLost, "
    "AgentLost).",
    ["reason"],
    registry=REGISTRY,
)
FAILOVERS = Counter(
    "lparkube_failovers",
    "Failovers that ended, by image (Consistency, Boot, or none) and result (Done, Stopped).",
    ["image", "result"],
    registry=REGISTRY,
)
FAILOVER_RESTART_REQUEST_SECONDS = Histogram(
    "lparkube_failover_restart_request_seconds",
    "Time from a failure's detection to its RemoteRestart's creation, by fence (NodeFenced, "
    "InstanceGone, SelfFenced).",
    ["fence"],
    buckets=(1, 2.5, 5, 10, 15, 20, 30, 45, 60, 120, 300, 900),
    registry=REGISTRY,
)
CONSISTENCY_IMAGES = Counter(
    "lparkube_consistency_images",
    "Consistency images taken, by consistency (Application, Crash), and skipped (a failed save).",
    ["consistency"],
    registry=REGISTRY,
)
REMOTE_RESTART_STEP_SECONDS = Histogram(
    "lparkube_remote_restart_step_seconds",
    "Time from a RemoteRestart step's start to its end, by step.",
    ["step"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
    registry=REGISTRY,
)
