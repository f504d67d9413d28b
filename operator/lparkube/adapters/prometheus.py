"""The Prometheus HTTP API, as far as ConditionProfile rules need it: instant queries."""

from __future__ import annotations

import aiohttp

from lparkube.adapters import net_errors


class PrometheusError(Exception):
    """A query could not be answered; the message says why."""


async def query(
    session: aiohttp.ClientSession, base_url: str, promql: str, timeout: float
) -> list[dict]:
    """GET /api/v1/query: the result series (``{"metric": {...}, "value": [...]}``)."""
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        async with session.get(
            url, params={"query": promql}, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as reply:
            if reply.status != 200:
                raise PrometheusError(f"{url}: HTTP {reply.status}")
            payload = await reply.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise PrometheusError(f"{url}: {net_errors.reason(error)}") from error
    if payload.get("status") != "success":
        raise PrometheusError(f"{url}: {payload.get('errorType')}: {payload.get('error')}")
    data = payload.get("data") or {}
    if data.get("resultType") not in ("vector", "matrix"):
        raise PrometheusError(f"{url}: query must return a vector, got {data.get('resultType')}")
    return [s for s in data.get("result") or [] if isinstance(s, dict)]
