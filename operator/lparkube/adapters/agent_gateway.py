"""The agent gateway's HTTP side: where guest agents POST their signed reports.

Everything that can be refused is refused here, cheapest check first and before the body is
parsed: size, then headers (no API call for unsigned noise), then the partition's key (cached,
one verifier per key so replayed nonces are caught), then signature, freshness and nonce.
Only a verified body reaches the sink, which may still refuse it as malformed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from lparkube_agent import protocol

logger = logging.getLogger(__name__)

REPORTS_PATH = "/v1/reports"
STATUS_OF = {
    "oversized": 413,
    "unsigned": 401,
    "malformed": 400,
    "wrong-partition": 401,
    "bad-signature": 401,
    "stale": 401,
    "replayed": 401,
    "unavailable": 503,
}

KeyLookup = Callable[[str], Awaitable[bytes | None]]
"""The key of a partition (``namespace/name``), None when there is no such partition or key."""
Recorder = Callable[[str], None]
"""Counts outcomes: ``accepted`` or the refusal reason."""
ReportSink = Callable[[str, bytes], Awaitable[None]]
"""Takes a verified report body; raises MalformedReportError to refuse it."""
PartitionCheck = Callable[[str], bool]
"""Whether a header value can name a partition at all (checked before any lookup)."""


class MalformedReportError(ValueError):
    """A verified body that is not a valid report: answered 400, nothing written."""


@dataclass
class _Entry:
    key: bytes | None
    verifier: protocol.Verifier | None
    expires: float


class Verifiers:
    """One Verifier per partition key, looked up at most once per ``ttl``.

    A refreshed entry keeps its Verifier (and so its seen nonces) while the key is unchanged;
    a rotated key gets a new one. Unknown partitions are remembered briefly too, so forged
    headers cannot make every request an API call.
    """

    def __init__(
        self,
        lookup: KeyLookup,
        *,
        ttl: float = 10.0,
        negative_ttl: float = 2.0,
        capacity: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl, self._negative_ttl = ttl, negative_ttl
        self._capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: dict[str, asyncio.Future[_Entry]] = {}

    async def get(self, partition: str) -> tuple[bytes, protocol.Verifier] | None:
        entry = self._entries.get(partition)
        if entry is None or entry.expires <= self._clock():
            entry = await self._refresh(partition, entry)
        if entry.key is None or entry.verifier is None:
            return None
        return entry.key, entry.verifier

    async def _refresh(self, partition: str, old: _Entry | None) -> _Entry:
        pending = self._pending.get(partition)
        if pending is not None:  # one lookup at a time per partition
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._pending[partition] = future
        try:
            key = await self._lookup(partition)
            entry = self._entry(partition, key, old)
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._pending[partition]

    def _entry(self, partition: str, key: bytes | None, old: _Entry | None) -> _Entry:
        now = self._clock()
        if key is None:
            entry = _Entry(None, None, now + self._negative_ttl)
        elif old is not None and old.key == key and old.verifier is not None:
            entry = _Entry(key, old.verifier, now + self._ttl)
        else:
            entry = _Entry(key, protocol.Verifier(key, partition), now + self._ttl)
        self._entries[partition] = entry
        self._entries.move_to_end(partition)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return entry


def _error(
    reason: str,
    message: str,
    *,
    key: bytes | None = None,
    request: protocol.Signed | None = None,
) -> web.Response:
    """The documented JSON error; signed when the request was verified."""
    status = STATUS_OF.get(reason, 400)
    body = json.dumps({"error": reason, "message": message}).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None and request is not None:
        headers.update(protocol.sign_response(key, request, status, body).headers())
    return web.Response(status=status, body=body, headers=headers)


class _RefusedError(Exception):
    """Carries the error response for a request that is refused."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.response = _error(reason, message)


async def _body(request: web.Request) -> bytes:
    limit = protocol.MAX_BODY_BYTES
    body = b""
    if (request.content_length or 0) <= limit:
        body = await request.content.read(limit + 1)
    if (request.content_length or 0) > limit or len(body) > limit:
        raise _RefusedError("oversized", f"body exceeds {limit} bytes")
    return body


async def _verify(
    request: web.Request, body: bytes, verifiers: Verifiers, valid: PartitionCheck
) -> tuple[protocol.Signed, bytes]:
    """The verified headers and the key, or _RefusedError with the documented error."""
    try:
        signed = protocol.read_headers(request.headers)
    except protocol.AuthError as exc:
        raise _RefusedError(exc.reason, str(exc)) from exc
    if not valid(signed.partition):
        message = f"{protocol.HEADER_PARTITION} must be namespace/name"
        raise _RefusedError("malformed", message)
    try:
        found = await verifiers.get(signed.partition)
    except Exception as exc:
        logger.exception("Cannot look up the key of %s", signed.partition)
        message = "the operator cannot read the partition key; retry"
        raise _RefusedError("unavailable", message) from exc
    if found is None:
        message = f"no Partition {signed.partition} with an agent key"
        raise _RefusedError("wrong-partition", message)
    key, verifier = found
    message = protocol.Message(
        protocol.TO_OPERATOR, request.method, request.path_qs, signed.partition, body
    )
    try:
        verifier.verify(message, request.headers)
    except protocol.AuthError as exc:
        logger.info("Refused a report for %s: %s", signed.partition, exc.reason)
        raise _RefusedError(exc.reason, str(exc)) from exc
    return signed, key


def gateway_app(
    verifiers: Verifiers,
    sink: ReportSink,
    valid: PartitionCheck,
    record: Recorder = lambda _: None,
) -> web.Application:
    """The aiohttp app serving ``POST /v1/reports``."""

    async def receive(request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            signed, key = await _verify(request, body, verifiers, valid)
        except _RefusedError as refused:
            record(refused.reason)
            return refused.response
        try:
            await sink(signed.partition, body)
        except MalformedReportError as exc:
            record("malformed")
            return _error("malformed", str(exc), key=key, request=signed)
        except Exception:
            logger.exception("Cannot record the report of %s", signed.partition)
            record("unavailable")
            message = "the report was not recorded; retry"
            return _error("unavailable", message, key=key, request=signed)
        record("accepted")
        headers = protocol.sign_response(key, signed, 204, b"").headers()
        return web.Response(status=204, headers=headers)

    app = web.Application()
    app.router.add_post(REPORTS_PATH, receive)
    return app
