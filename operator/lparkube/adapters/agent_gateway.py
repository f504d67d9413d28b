"""The agent gateway's HTTP side: where guest agents POST their signed reports.

Connections are bounded before any request is read (``Connections``): each must deliver a
whole request, headers and body, within ``Limits.request_seconds`` of opening or of its
previous answer, and when ``max_connections`` are open a new one evicts the oldest that has not
delivered a verified report. With TLS the handshake has its own deadline.

Then each request is refused as early and as cheaply as possible, and never with an API call
for a name the operator does not know: size, headers, the partition in the operator's
directory (and, over TLS, in the client certificate), its key (one lookup per partition,
cached), signature, freshness, nonce, a well-formed body, and a signed time strictly later
than the last accepted one. An unknown partition is answered exactly as a wrong signature,
after the same work, so the answers tell nobody which partitions exist. Only a verified,
well-formed report reaches the sink, which writes at most once a second per partition
(``Coalescer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web

from lparkube.adapters.agent_identity import peer_partition
from lparkube.domain.partition_directory import DirectoryEntry, PartitionDirectory
from lparkube_agent import protocol

logger = logging.getLogger(__name__)

REPORTS_PATH = "/v1/reports"
STATUS_OF = {
    "oversized": 413,
    "unsigned": 401,
    "malformed": 400,
    "bad-signature": 401,
    "stale": 401,
    "replayed": 401,
    "not-found": 404,
    "unavailable": 503,
}
RETRY_AFTER_SECONDS = 1
# Verifying against a key nobody holds is how an unknown partition gets a wrong key's answer.
_NOBODYS_KEY = secrets.token_bytes(protocol.KEY_BYTES)

KeyLookup = Callable[[DirectoryEntry], Awaitable[bytes | None]]
"""The key of a Partition in the directory; None when it has none (yet)."""
Recorder = Callable[[str], None]
"""Counts outcomes: ``accepted`` or the refusal reason (``unknown-partition`` and
``wrong-partition`` count what is answered as ``bad-signature``)."""
ReportParser = Callable[[bytes], Any]
"""The report in a verified body; raises MalformedReportError to refuse it."""
ReportSink = Callable[[DirectoryEntry, int, Any], Awaitable[None]]
"""Records an accepted report: its Partition, signed time and what the parser made of it."""
PartitionCheck = Callable[[str], bool]
"""Whether a header value can name a partition at all (checked before the directory)."""
T = TypeVar("T")


class MalformedReportError(ValueError):
    """A verified body that is not a valid report: answered 400, nothing written."""


# --- connections -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What connections may cost the gateway."""

    # To deliver a whole request (headers and body), from the connection's start or its
    # previous answer: the header, body and keep-alive idle timeout at once.
    request_seconds: float = 5.0
    max_connections: int = 1024
    handshake_seconds: float = 5.0  # TLS only
    backlog: int = 1024
    sweep_seconds: float = 0.25  # how often overdue connections are looked for


class Connections:
    """The gateway's open connections, each with the time by which its next request is due.

    A connection is *waiting* (for its next request, with a deadline), or *busy* (its request
    is in and being answered). It is *proven* once it delivered a verified report; when the cap
    is reached, a new connection evicts the oldest unproven one, or is refused when there is
    none, so a flood can take neither the agents' reports nor the operator's memory.
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._open: dict[object, asyncio.BaseTransport] = {}
        self._waiting: OrderedDict[object, float] = OrderedDict()  # by deadline
        self._unproven: OrderedDict[object, None] = OrderedDict()  # oldest first
        self.closed_overdue = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, connection: object, transport: asyncio.BaseTransport) -> None:
        if len(self._open) >= self.limits.max_connections and not self._evict():
            transport.abort()
            return
        self._open[connection] = transport
        self._unproven[connection] = None
        self.wait(connection)

    def wait(self, connection: object) -> None:
        """It waits for its next request, due within ``request_seconds``."""
        if connection in self._open:
            self._waiting[connection] = self._clock() + self.limits.request_seconds
            self._waiting.move_to_end(connection)

    def busy(self, connection: object) -> None:
        """Its request is in: no deadline while the gateway answers."""
        self._waiting.pop(connection, None)

    def proven(self, connection: object) -> None:
        """It delivered a verified report: never evicted for a newcomer."""
        self._unproven.pop(connection, None)

    def closed(self, connection: object) -> None:
        self._open.pop(connection, None)
        self._waiting.pop(connection, None)
        self._unproven.pop(connection, None)

    def expire(self) -> None:
        """Close every connection whose request is overdue."""
        now = self._clock()
        while self._waiting:
            connection, deadline = next(iter(self._waiting.items()))
            if deadline > now:
                return
            self.closed_overdue += 1
            self._drop(connection)

    def _evict(self) -> bool:
        if not self._unproven:
            return False
        self.evicted += 1
        self._drop(next(iter(self._unproven)))
        return True

    def _drop(self, connection: object) -> None:
        transport = self._open[connection]
        self.closed(connection)
        transport.abort()


class _TrackedServer(web.Server):
    """aiohttp's low-level server, telling ``Connections`` of every connection."""

    def __init__(self, handler: Any, connections: Connections, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._tracked = connections

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._tracked.opened(handler, transport)

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        self._tracked.closed(handler)
        super().connection_lost(handler, exc)


@dataclass
class Listener:
    """A listening gateway; ``close()`` stops it and closes its connections."""

    server: asyncio.Server
    http: web.Server
    sweeper: asyncio.Task

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.sweeper.cancel()
        self.server.close()
        self.http.pre_shutdown()
        await self.http.shutdown(1.0)
        await self.server.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sweeper


async def _sweep(connections: Connections) -> None:
    while True:
        await asyncio.sleep(connections.limits.sweep_seconds)
        connections.expire()


# --- keys ------------------------------------------------------------------------------------


@dataclass
class _Key:
    uid: str
    key: bytes | None
    verifier: protocol.Verifier | None
    expires: float


class Verifiers:
    """One Verifier per Partition key, looked up at most once per ``ttl`` per Partition.

    A refreshed entry keeps its Verifier (and so its seen nonces) while the key is unchanged; a
    rotated key or a new uid gets a new one. A Partition without a key is remembered for
    ``negative_ttl``. Only Partitions in the directory are looked up, so the cache is bounded by
    their number.
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
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        self._pending: dict[str, asyncio.Future[_Key]] = {}

    async def get(self, entry: DirectoryEntry) -> tuple[bytes, protocol.Verifier] | None:
        cached = self._keys.get(entry.partition)
        if cached is None or cached.uid != entry.uid or cached.expires <= self._clock():
            cached = await self._refresh(entry, cached)
        if cached.key is None or cached.verifier is None:
            return None
        return cached.key, cached.verifier

    async def _refresh(self, entry: DirectoryEntry, old: _Key | None) -> _Key:
        pending = self._pending.get(entry.partition)
        if pending is not None:  # one lookup at a time per partition
            return await asyncio.shield(pending)
        future: asyncio.Future[_Key] = asyncio.get_running_loop().create_future()
        self._pending[entry.partition] = future
        try:
            cached = self._store(entry, await self._lookup(entry), old)
            future.set_result(cached)
            return cached
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._pending[entry.partition]

    def _store(self, entry: DirectoryEntry, key: bytes | None, old: _Key | None) -> _Key:
        now = self._clock()
        if key is None:
            cached = _Key(entry.uid, None, None, now + self._negative_ttl)
        elif old is not None and (old.uid, old.key) == (entry.uid, key) and old.verifier:
            cached = _Key(entry.uid, key, old.verifier, now + self._ttl)
        else:
            verifier = protocol.Verifier(key, entry.partition)
            cached = _Key(entry.uid, key, verifier, now + self._ttl)
        self._keys[entry.partition] = cached
        self._keys.move_to_end(entry.partition)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return cached


# --- coalescing ------------------------------------------------------------------------------


@dataclass
class _Lane(Generic[T]):
    item: T | None = None
    outcome: asyncio.Future[None] | None = None  # of the next write; None: nothing waits
    writer: asyncio.Task | None = None
    last_start: float = float("-inf")


class Coalescer(Generic[T]):
    """At most one write per key every ``window`` seconds.

    An item that arrives sooner waits for the window's end, and of the items that waited only
    the latest is written; every caller gets the outcome of the write that carried its item or
    a later one, so a report is answered only once what it said (or newer) is written.
    """

    def __init__(
        self,
        write: Callable[[str, T], Awaitable[None]],
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._window = window
        self._clock = clock
        self._lanes: dict[str, _Lane[T]] = {}

    def __len__(self) -> int:
        return len(self._lanes)

    async def submit(self, key: str, item: T) -> None:
        """Returns once ``item`` or a later one is written; raises what that write raised."""
        lane = self._lanes.setdefault(key, _Lane())
        lane.item = item
        if lane.outcome is None:
            lane.outcome = asyncio.get_running_loop().create_future()
        outcome = lane.outcome
        if lane.writer is None:
            lane.writer = asyncio.create_task(self._drain(key, lane), name=f"write {key}")
        await asyncio.shield(outcome)

    async def close(self) -> None:
        """Cancel the writes still waiting (their callers see the cancellation)."""
        writers = [lane.writer for lane in self._lanes.values() if lane.writer is not None]
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)

    async def _drain(self, key: str, lane: _Lane[T]) -> None:
        try:
            while lane.outcome is not None:
                pause = lane.last_start + self._window - self._clock()
                if pause > 0:
                    await asyncio.sleep(pause)
                item, outcome = lane.item, lane.outcome
                lane.item, lane.outcome = None, None
                lane.last_start = self._clock()
                await self._carry(key, item, outcome)  # type: ignore[arg-type]
        finally:
            lane.writer = None
            if lane.outcome is not None:  # cancelled while callers waited
                lane.outcome.cancel()
            asyncio.get_running_loop().call_later(self._window, self._retire, key, lane)

    async def _carry(self, key: str, item: T, outcome: asyncio.Future[None]) -> None:
        try:
            await self._write(key, item)
        except Exception as exc:
            outcome.set_exception(exc)
            outcome.exception()  # retrieved: the callers re-raise it, nobody else must
        except BaseException:
            outcome.cancel()
            raise
        else:
            outcome.set_result(None)

    def _retire(self, key: str, lane: _Lane[T]) -> None:
        """Forget an idle key once its window has passed: the lanes stay as few as the keys
        written within the last window."""
        idle = lane.writer is None and lane.outcome is None
        passed = self._clock() - lane.last_start >= self._window
        if idle and passed and self._lanes.get(key) is lane:
            del self._lanes[key]


# --- requests --------------------------------------------------------------------------------


def _error(
    reason: str,
    message: str,
    *,
    key: bytes | None = None,
    request: protocol.Signed | None = None,
) -> web.Response:
    """The documented JSON error, signed when the request was verified. The connection closes
    after it: a client that was refused gets no second request on it."""
    status = STATUS_OF.get(reason, 400)
    body = json.dumps({"error": reason, "message": message}).encode()
    headers = {"Content-Type": "application/json"}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if key is not None and request is not None:
        headers.update(protocol.sign_response(key, request, status, body).headers())
    response = web.Response(status=status, body=body, headers=headers)
    response.force_close()
    return response


class _RefusedError(Exception):
    """Carries the error response for a request that is refused, and what it counts as."""

    def __init__(self, reason: str, message: str, *, counted_as: str | None = None) -> None:
        super().__init__(message)
        self.counted_as = counted_as or reason
        self.response = _error(reason, message)


def _check_size(request: web.BaseRequest) -> None:
    limit = protocol.MAX_BODY_BYTES
    if (request.content_length or 0) > limit:
        raise _RefusedError("oversized", f"body exceeds {limit} bytes")


async def _body(request: web.BaseRequest) -> bytes:
    limit = protocol.MAX_BODY_BYTES
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise _RefusedError("oversized", f"body exceeds {limit} bytes")
    return body


def _tls_partition(request: web.BaseRequest) -> str | None:
    """The partition the client certificate names; "" on a plain connection (nothing to check)."""
    transport = request.transport
    if transport is None or transport.get_extra_info("ssl_object") is None:
        return ""
    return peer_partition(transport.get_extra_info("peercert"))


@dataclass(frozen=True)
class _Claim:
    entry: DirectoryEntry | None
    key: bytes | None
    verifier: protocol.Verifier
    refused_as: str | None  # what a refusal counts as when there is no such Partition

    @classmethod
    def nobody(cls, partition: str, refused_as: str) -> _Claim:
        return cls(None, None, protocol.Verifier(_NOBODYS_KEY, partition), refused_as)


class ReportGateway:
    """``POST /v1/reports``: accepted reports reach the sink, everything else is refused."""

    def __init__(
        self,
        directory: PartitionDirectory,
        verifiers: Verifiers,
        parse: ReportParser,
        sink: ReportSink,
        valid: PartitionCheck,
        *,
        record: Recorder = lambda _: None,
        limits: Limits = Limits(),
    ) -> None:
        self._directory = directory
        self._verifiers = verifiers
        self._parse = parse
        self._sink = sink
        self._valid = valid
        self._record = record
        self.connections = Connections(limits)

    async def listen(
        self, host: str | None, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> Listener:
        """Serve on ``host:port`` (TLS when a context is given). Raises OSError."""
        limits = self.connections.limits
        http = _TrackedServer(
            self.handle,
            self.connections,
            keepalive_timeout=limits.request_seconds,
            access_log=None,
            lingering_time=1.0,
            max_line_size=4096,
            max_field_size=4096,
            max_headers=32,
        )
        server = await asyncio.get_running_loop().create_server(
            http,
            host or None,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=limits.handshake_seconds if ssl_context else None,
            backlog=limits.backlog,
        )
        sweeper = asyncio.create_task(_sweep(self.connections), name="agent gateway deadlines")
        return Listener(server, http, sweeper)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        try:
            if request.method != "POST" or request.path != REPORTS_PATH:
                raise _RefusedError("not-found", f"only POST {REPORTS_PATH} is served")
            return await self._receive(request, connection)
        except _RefusedError as refused:
            self._record(refused.counted_as)
            return refused.response
        finally:
            self.connections.wait(connection)

    async def _receive(self, request: web.BaseRequest, connection: object) -> web.Response:
        _check_size(request)
        signed = self._signed_headers(request)
        body = await _body(request)
        self.connections.busy(connection)
        claim = await self._claim(request, signed)
        message = protocol.Message(
            protocol.TO_OPERATOR, request.method, request.path_qs, signed.partition, body
        )
        try:
            claim.verifier.verify(message, request.headers)
        except protocol.AuthError as exc:
            logger.debug("Refused a report for %s: %s", signed.partition, exc.reason)
            raise _RefusedError(exc.reason, str(exc), counted_as=claim.refused_as) from exc
        if claim.entry is None or claim.key is None:  # a key nobody holds: cannot happen
            raise _RefusedError("bad-signature", "signature does not match the partition key")
        try:
            report = self._parse(body)
        except MalformedReportError as exc:
            self._record("malformed")
            return _error("malformed", str(exc), key=claim.key, request=signed)
        if not self._directory.accept(claim.entry, signed.timestamp):
            raise _RefusedError("replayed", "the report is not signed later than the last one")
        self.connections.proven(connection)
        return await self._deliver(claim.entry, signed, claim.key, report)

    def _signed_headers(self, request: web.BaseRequest) -> protocol.Signed:
        try:
            signed = protocol.read_headers(request.headers)
        except protocol.AuthError as exc:
            raise _RefusedError(exc.reason, str(exc)) from exc
        if not self._valid(signed.partition):
            message = f"{protocol.HEADER_PARTITION} must be namespace/name"
            raise _RefusedError("malformed", message)
        if not self._directory.synced:
            raise _RefusedError("unavailable", "the operator is starting; retry")
        return signed

    async def _claim(self, request: web.BaseRequest, signed: protocol.Signed) -> _Claim:
        """What the request claims to be: a Partition with a key, or (unknown, being deleted,
        keyless, or not the client certificate's partition) nothing, with a verifier no
        signature passes, so that it is refused exactly as a wrong key is."""
        tls_partition = _tls_partition(request)
        if tls_partition not in ("", signed.partition):
            return _Claim.nobody(signed.partition, "wrong-partition")
        entry = self._directory.find(signed.partition)
        if entry is None:
            return _Claim.nobody(signed.partition, "unknown-partition")
        try:
            found = await self._verifiers.get(entry)
        except Exception as exc:
            logger.exception("Cannot look up the key of %s", signed.partition)
            message = "the operator cannot read the partition key; retry"
            raise _RefusedError("unavailable", message) from exc
        if found is None:
            return _Claim.nobody(signed.partition, "unknown-partition")
        key, verifier = found
        return _Claim(entry, key, verifier, None)

    async def _deliver(
        self, entry: DirectoryEntry, signed: protocol.Signed, key: bytes, report: Any
    ) -> web.Response:
        try:
            await self._sink(entry, signed.timestamp, report)
        except Exception:
            logger.exception("Cannot record the report of %s", signed.partition)
            self._record("unavailable")
            message = "the report was not recorded; retry"
            return _error("unavailable", message, key=key, request=signed)
        self._record("accepted")
        headers = protocol.sign_response(key, signed, 204, b"").headers()
        return web.Response(status=204, headers=headers)
