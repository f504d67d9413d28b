"""The agent gateway's HTTP side: where guest agents POST their signed reports.

Connections are bounded before any request is read (``Connections``, fed by the gateway's own
accept loop): each must deliver a whole request, headers and body, within
``Limits.request_seconds`` of its start or of its previous answer; one source address may hold
only ``per_address`` of them; when ``max_connections`` are open a newcomer evicts the oldest
connection that has not delivered a verified report, from the address holding the most such
connections, or is closed. With TLS the handshake has its own deadline too.

Then each request is refused as early and as cheaply as possible, and never with an API call
for a name the operator does not know: size, headers, the partition in the operator's
directory (and, over TLS, in the client certificate), its key (looked up once per partition),
signature, freshness, nonce, a well-formed body, and a signed time strictly later
than the last accepted one. An unknown partition is answered exactly as a wrong signature,
after the same work, so the answers tell nobody which partitions exist. Only a verified,
well-formed report reaches the sink, which writes at most once a second per partition
(``Coalescer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import secrets
import socket
import ssl
import time
from collections import Counter, OrderedDict
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
# What a wrong key and an unknown partition are both answered, word for word.
WRONG_KEY = "signature does not match the partition key"
# An unknown partition's signature is checked against a key nobody holds: the same work.
_NOBODYS_KEY = secrets.token_bytes(protocol.KEY_BYTES)

KeyLookup = Callable[[DirectoryEntry], Awaitable[bytes]]
"""The key of a Partition in the directory."""
Recorder = Callable[[str], None]
"""Counts outcomes: ``accepted`` or the refusal reason (``unknown-partition`` and
``wrong-partition`` count what is answered as ``bad-signature``)."""
ReportParser = Callable[[bytes], Any]
"""The report in a verified body; raises MalformedReportError to refuse it."""
ReportSink = Callable[[DirectoryEntry, int, Any], Awaitable[dict[str, Any] | None]]
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

    # To deliver a whole request (headers and body), from the connection's start (TLS
    # handshake included) or its previous answer: the header, body and keep-alive idle timeout
    # at once.
    request_seconds: float = 5.0
    max_connections: int = 512
    # One source address (a pod, a VM) may hold no more, so one noisy neighbour cannot crowd
    # out the agents of others.
    per_address: int = 64
    handshake_seconds: float = 5.0  # TLS only
    backlog: int = 4096  # connections the kernel queues until they are accepted
    accept_batch: int = 128  # accepted per wake-up: no burst of them starves the rest
    sweep_seconds: float = 0.25  # how often overdue connections are looked for


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    fd: int
    address: str
    handler: object | None = None  # aiohttp's protocol, once the transport exists
    transport: asyncio.BaseTransport | None = None
    forgotten: bool = False


class Connections:
    """The gateway's connections, from the moment they are accepted.

    A connection is *waiting* for its next request, with a deadline, or *busy* (its request
    is in and being answered). It is *proven* once it delivered a verified report. A newcomer
    is closed at once, before anything is made for it, when its address already holds
    ``per_address`` connections; when ``max_connections`` are open it takes the place of the
    oldest unproven connection of the address holding the most of them, if that is more than
    twice what its own address holds, and is closed otherwise. So a flood fills only its own
    share and pays for the rest in refusals that cost the gateway a close, and an agent's
    single connection is the last to go.
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._by_fd: dict[int, _Connection] = {}
        self._by_handler: dict[object, _Connection] = {}
        self._waiting: OrderedDict[_Connection, float] = OrderedDict()  # by deadline
        self._unproven: dict[str, OrderedDict[_Connection, None]] = {}  # oldest first
        self._count: Counter[str] = Counter()  # connections per address
        self._total = 0
        self.refused = self.evicted = self.closed_overdue = 0

    def __len__(self) -> int:
        return self._total

    def admit(self, sock: socket.socket, address: str) -> _Connection | None:
        """Track a just-accepted socket; None when it must be closed at once."""
        if self._count[address] >= self.limits.per_address or not self._room_for(address):
            self.refused += 1
            return None
        connection = _Connection(sock, sock.fileno(), address)
        stale = self._by_fd.get(connection.fd)
        if stale is not None:  # its socket was closed before it could say so (a failed
            self._forget(stale)  # handshake): the descriptor is this one's now
        self._by_fd[connection.fd] = connection
        self._count[address] += 1
        self._total += 1
        self._unproven.setdefault(address, OrderedDict())[connection] = None
        self._arm(connection)
        return connection

    def _room_for(self, address: str) -> bool:
        """Below the cap; or the address holding the most unproven connections, if that is
        more than twice what this one holds, gives up its oldest (so flooding addresses do not
        churn among themselves, while an agent holding none always gets in)."""
        if self._total < self.limits.max_connections:
            return True
        crowded = max(self._unproven, key=lambda a: len(self._unproven[a]), default=None)
        mine = len(self._unproven.get(address, ()))
        if crowded is None or len(self._unproven[crowded]) <= 2 * mine:
            return False
        self.evicted += 1
        self._drop(next(iter(self._unproven[crowded])))
        return True

    def bound(self, handler: object, transport: asyncio.BaseTransport) -> None:
        """aiohttp's protocol for the connection exists (after the TLS handshake)."""
        connection = self._by_fd.get(transport.get_extra_info("socket").fileno())
        if connection is None:  # dropped while its transport was made; once aiohttp has begun
            asyncio.get_running_loop().call_soon(transport.abort)
            return
        connection.handler, connection.transport = handler, transport
        self._by_handler[handler] = connection

    def wait(self, handler: object) -> None:
        """It waits for its next request, due within ``request_seconds``."""
        connection = self._by_handler.get(handler)
        if connection is not None:
            self._arm(connection)

    def busy(self, handler: object) -> None:
        """Its request is in: no deadline while the gateway answers."""
        connection = self._by_handler.get(handler)
        if connection is not None:
            self._waiting.pop(connection, None)

    def proven(self, handler: object) -> None:
        """It delivered a verified report: never evicted for a newcomer."""
        connection = self._by_handler.get(handler)
        if connection is not None:
            self._unprove(connection)

    def closed(self, handler: object) -> None:
        connection = self._by_handler.get(handler)
        if connection is not None:
            self._forget(connection)

    def failed(self, connection: _Connection) -> None:
        """Its transport could not be made (a TLS handshake that failed or timed out)."""
        self._forget(connection)

    def expire(self) -> None:
        """Close every connection whose request is overdue."""
        now = self._clock()
        while self._waiting:
            connection, deadline = next(iter(self._waiting.items()))
            if deadline > now:
                return
            self.closed_overdue += 1
            self._drop(connection)

    def _arm(self, connection: _Connection) -> None:
        self._waiting[connection] = self._clock() + self.limits.request_seconds
        self._waiting.move_to_end(connection)

    def _drop(self, connection: _Connection) -> None:
        self._forget(connection)
        if connection.transport is not None:
            connection.transport.abort()
        else:  # still in its TLS handshake: make it fail
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    def _unprove(self, connection: _Connection) -> None:
        unproven = self._unproven.get(connection.address)
        if unproven is not None:
            unproven.pop(connection, None)
            if not unproven:
                del self._unproven[connection.address]

    def _forget(self, connection: _Connection) -> None:
        if connection.forgotten:
            return
        connection.forgotten = True
        if self._by_fd.get(connection.fd) is connection:
            del self._by_fd[connection.fd]
        if connection.handler is not None:
            self._by_handler.pop(connection.handler, None)
        self._waiting.pop(connection, None)
        self._unprove(connection)
        self._total -= 1
        self._count[connection.address] -= 1
        if not self._count[connection.address]:
            del self._count[connection.address]


class PeerErrors(logging.LoggerAdapter):
    """aiohttp's reports of a request it could not parse go to DEBUG: what a peer sent wrong is
    no error of the operator's, and anyone who reaches the gateway could otherwise fill its log
    with tracebacks. The gateway's own failures are logged by its handlers, not here."""

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


PEER_ERRORS = PeerErrors(logging.getLogger(f"{__name__}.peers"), {})


class _TrackedServer(web.Server):
    """aiohttp's low-level server, telling ``Connections`` when a connection is made or lost."""

    def __init__(self, handler: Any, connections: Connections, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._tracked = connections

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._tracked.bound(handler, transport)

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        self._tracked.closed(handler)
        super().connection_lost(handler, exc)


def _listening_socket(host: str | None, port: int, backlog: int) -> socket.socket:
    """Every address (IPv4 and IPv6) when ``host`` is empty, else ``host``'s."""
    if not host:
        if socket.has_dualstack_ipv6():
            return socket.create_server(
                ("", port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True
            )
        return socket.create_server(("", port), backlog=backlog)
    family, *_, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return socket.create_server(address[:2], family=family, backlog=backlog)


class Listener:
    """The gateway's own accept loop: each socket is admitted (or closed at once) by
    ``Connections`` before anything is made for it, then handed to aiohttp's server."""

    def __init__(
        self,
        sock: socket.socket,
        http: web.Server,
        connections: Connections,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._sock = sock
        self._http = http
        self._connections = connections
        self._ssl = ssl_context
        self._loop = asyncio.get_running_loop()
        self._starting: set[asyncio.Task] = set()
        self._paused: asyncio.TimerHandle | None = None
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)
        self._sweeper = asyncio.create_task(self._sweep(), name="agent gateway deadlines")

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def _accept(self) -> None:
        limits = self._connections.limits
        for _ in range(limits.accept_batch):
            try:
                sock, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of file descriptors: pause, as asyncio does
                logger.warning("Cannot accept agent gateway connections: %s", exc)
                self._loop.remove_reader(self._sock.fileno())
                self._paused = self._loop.call_later(1.0, self._resume)
                return
            connection = self._connections.admit(sock, peer[0])
            if connection is None:
                sock.close()
                continue
            sock.setblocking(False)
            task = asyncio.create_task(self._start(connection))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    def _resume(self) -> None:
        self._paused = None
        self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _start(self, connection: _Connection) -> None:
        """Make the transport (after the TLS handshake, when there is one)."""
        handshake = self._connections.limits.handshake_seconds if self._ssl else None
        try:
            await self._loop.connect_accepted_socket(
                self._http, connection.sock, ssl=self._ssl, ssl_handshake_timeout=handshake
            )
        except BaseException as exc:
            self._connections.failed(connection)
            connection.sock.close()
            if not isinstance(exc, OSError):  # ssl.SSLError and handshake timeouts are
                raise
            logger.debug("Agent gateway connection from %s failed: %s", connection.address, exc)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._connections.limits.sweep_seconds)
            self._connections.expire()

    async def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sweeper.cancel()
        for task in list(self._starting):
            task.cancel()
        self._http.pre_shutdown()
        await self._http.shutdown(1.0)
        await asyncio.gather(self._sweeper, *self._starting, return_exceptions=True)


# --- keys ------------------------------------------------------------------------------------


@dataclass
class _Key:
    uid: str
    key: bytes
    verifier: protocol.Verifier


class Verifiers:
    """One Verifier per Partition, its key looked up once per uid: it keeps the nonces it saw.

    Only Partitions in the directory are looked up, and at most ``capacity`` are remembered
    (the least recently used forgotten first).
    """

    def __init__(self, lookup: KeyLookup, *, capacity: int = 20_000) -> None:
        self._lookup = lookup
        self._capacity = capacity
        self._keys: OrderedDict[str, _Key] = OrderedDict()

    async def get(self, entry: DirectoryEntry) -> tuple[bytes, protocol.Verifier]:
        cached = self._keys.get(entry.partition)
        if cached is None or cached.uid != entry.uid:
            key = await self._lookup(entry)
            cached = _Key(entry.uid, key, protocol.Verifier(key, entry.partition))
            self._keys[entry.partition] = cached
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)
        self._keys.move_to_end(entry.partition)
        return cached.key, cached.verifier


# --- coalescing ------------------------------------------------------------------------------


@dataclass
class _Lane(Generic[T]):
    item: T | None = None
    outcome: asyncio.Future[Any] | None = None  # of the next write; None: nothing waits
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
        write: Callable[[str, T], Awaitable[Any]],
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._window = window
        self._clock = clock
        self._lanes: dict[str, _Lane[T]] = {}

    def __len__(self) -> int:
        return len(self._lanes)

    async def submit(self, key: str, item: T) -> Any:
        """Returns what the write that carried ``item`` (or a later one) returned, once it is
        done; raises what that write raised."""
        lane = self._lanes.setdefault(key, _Lane())
        lane.item = item
        if lane.outcome is None:
            lane.outcome = asyncio.get_running_loop().create_future()
        outcome = lane.outcome
        if lane.writer is None:
            lane.writer = asyncio.create_task(self._drain(key, lane), name=f"write {key}")
        return await asyncio.shield(outcome)

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

    async def _carry(self, key: str, item: T, outcome: asyncio.Future[Any]) -> None:
        try:
            result = await self._write(key, item)
        except Exception as exc:
            outcome.set_exception(exc)
            outcome.exception()  # retrieved: the callers re-raise it, nobody else must
        except BaseException:
            outcome.cancel()
            raise
        else:
            outcome.set_result(result)

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
    body = _error_body(reason, message)
    headers = {"Content-Type": "application/json"}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if key is not None and request is not None:
        headers.update(protocol.sign_response(key, request, status, body).headers())
    response = web.Response(status=status, body=body, headers=headers)
    response.force_close()
    return response


@functools.lru_cache(maxsize=64)  # the refusals' messages are a few fixed texts
def _error_body(reason: str, message: str) -> bytes:
    return json.dumps({"error": reason, "message": message}).encode()


def _check_as_a_wrong_key(message: protocol.Message, signed: protocol.Signed) -> None:
    """The work of checking a signature (body digest, canonical string, HMAC), against a key
    nobody holds: an unknown partition costs what a wrong key costs."""
    canonical = message.canonical(signed.timestamp, signed.nonce)
    expected = hmac.new(_NOBODYS_KEY, canonical, hashlib.sha256).hexdigest()
    hmac.compare_digest(expected, signed.signature)


class _RefusedError(Exception):
    """Carries the error response for a request that is refused, and what it counts as."""

    def __init__(self, reason: str, message: str, *, counted_as: str = "") -> None:
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
    """The Partition a request names, with its key; or, for one that is unknown, being deleted
    or not the client certificate's, nothing, and what its refusal counts as."""

    entry: DirectoryEntry | None
    key: bytes | None = None
    verifier: protocol.Verifier | None = None
    refused_as: str = ""


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

    def listen(
        self, host: str | None, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> Listener:
        """Serve on ``host:port`` (TLS when a context is given). Raises OSError."""
        limits = self.connections.limits
        http = _TrackedServer(
            self.handle,
            self.connections,
            keepalive_timeout=limits.request_seconds,
            access_log=None,
            logger=PEER_ERRORS,
            lingering_time=1.0,
            max_line_size=4096,
            max_field_size=4096,
            max_headers=32,
        )
        sock = _listening_socket(host, port, limits.backlog)
        return Listener(sock, http, self.connections, ssl_context)

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
        if claim.entry is None or claim.key is None or claim.verifier is None:
            _check_as_a_wrong_key(message, signed)
            raise _RefusedError("bad-signature", WRONG_KEY, counted_as=claim.refused_as)
        try:
            claim.verifier.verify(message, request.headers)
        except protocol.AuthError as exc:
            logger.debug("Refused a report for %s: %s", signed.partition, exc.reason)
            text = WRONG_KEY if exc.reason == "bad-signature" else str(exc)
            raise _RefusedError(exc.reason, text) from exc
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
        """The Partition the request names, its key looked up only if the directory knows it
        (and, over TLS, the client certificate names it)."""
        tls_partition = _tls_partition(request)
        if tls_partition not in ("", signed.partition):
            return _Claim(None, refused_as="wrong-partition")
        entry = self._directory.find(signed.partition)
        if entry is None:
            return _Claim(None, refused_as="unknown-partition")
        try:
            key, verifier = await self._verifiers.get(entry)
        except Exception as exc:
            logger.exception("Cannot look up the key of %s", signed.partition)
            message = "the operator cannot find the partition key; retry"
            raise _RefusedError("unavailable", message) from exc
        return _Claim(entry, key, verifier)

    async def _deliver(
        self, entry: DirectoryEntry, signed: protocol.Signed, key: bytes, report: Any
    ) -> web.Response:
        try:
            answer = await self._sink(entry, signed.timestamp, report)
        except Exception:
            logger.exception("Cannot record the report of %s", signed.partition)
            self._record("unavailable")
            message = "the report was not recorded; retry"
            return _error("unavailable", message, key=key, request=signed)
        self._record("accepted")
        if answer is None:
            headers = protocol.sign_response(key, signed, 204, b"").headers()
            return web.Response(status=204, headers=headers)
        body = json.dumps(answer, separators=(",", ":")).encode()
        headers = protocol.sign_response(key, signed, 200, body).headers()
        headers["Content-Type"] = "application/json"
        return web.Response(status=200, body=body, headers=headers)
