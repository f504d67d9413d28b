"""Metric definitions, the handler instrumentation helper and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import urllib.request

import kopf
import pytest

from lparkube import metrics
from lparkube.config import Address
from lparkube.health import serve


def runs(resource: str, handler: str, outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lparkube_handler_runs_total",
        {"resource": resource, "handler": handler, "outcome": outcome},
    )
    return value or 0.0


def test_instrumented_sync_handler_counts_outcomes() -> None:
    @metrics.instrumented("partitions")
    def partition_create(fail: BaseException | None = None, **_: object) -> str:
        if fail:
            raise fail
        return "done"

    assert partition_create.__name__ == "partition_create"  # kopf's handler id is kept
    assert partition_create() == "done"
    with pytest.raises(kopf.TemporaryError):
        partition_create(fail=kopf.TemporaryError("later"))
    with pytest.raises(ValueError):
        partition_create(fail=ValueError("bad"))

    for outcome in ("success", "retry", "error"):
        assert runs("partitions", "partition_create", outcome) == 1
    duration = metrics.REGISTRY.get_sample_value(
        "lparkube_handler_duration_seconds_count",
        {"resource": "partitions", "handler": "partition_create"},
    )
    assert duration == 3


def test_instrumented_async_handler_stays_a_coroutine_function() -> None:
    @metrics.instrumented("saveevents", handler="custom")
    async def saveevent_update(**_: object) -> int:
        return 7

    assert asyncio.iscoroutinefunction(saveevent_update)
    assert asyncio.run(saveevent_update()) == 7
    assert runs("saveevents", "custom", "success") == 1


def test_permanent_errors_count_as_errors() -> None:
    assert metrics.outcome_of(kopf.PermanentError("no")) == "error"
    assert metrics.outcome_of(None) == "success"


def test_metrics_endpoint_exposes_build_info_and_leader() -> None:
    metrics.set_build_info("1.2.3")
    metrics.set_leader("me", True)
    metrics.set_leader("me", False)

    async def scrape() -> str:
        runner = await serve(metrics.metrics_app(), Address("127.0.0.1", 0), "metrics")
        try:
            host, port = runner.addresses[0][:2]
            url = f"http://{host}:{port}/metrics"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
        finally:
            await runner.cleanup()

    text = asyncio.run(scrape())
    assert 'lparkube_build_info{version="1.2.3"} 1.0' in text
    assert 'lparkube_leader{identity="me"} 0.0' in text
    assert "process_cpu_seconds_total" in text
