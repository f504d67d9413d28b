"""The agent's HTTPS endpoint for the operator: POST /v1/save, POST /v1/hibernate,
POST /v1/storage and GET /v1/report.

Only the operator gets through the TLS handshake (its client certificate, from the CA the
guest pins, naming the operator; ``tls``). Every request is authenticated (protocol.Verifier)
before its body is parsed; authenticated answers, errors included, are signed. The server must
survive anything the network sends: bodies are bounded by Content-Length (no chunked bodies),
every handler error becomes a response, never a crash, and `Connections` bounds what a client
can hold: a request (its TLS handshake included) has a total deadline whatever its pace, an
idle kept-alive connection is closed, and a full connection table evicts the oldest connection
that never proved to be the operator's, so a flood of slow or idle connections cannot lock the
operator out (docs/agent-protocol.md, "Limits").
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from . import protocol, tls
from .hibernate import (
    HIBERNATING,
    UNSUPPORTED,
    HibernationStore,
    RefusedError,
    parse_hibernate_request,
)
from .saves import BusyError, SaveStore, parse_save_request
from .storage import StorageStore, parse_storage_request
from .version import VERSION

log = logging.getLogger(__name__)

SAVE_PATH = "/v1/save"
HIBERNATE_PATH = "/v1/hibernate"
STORAGE_PATH = "/v1/storage"
REPORT_PATH = "/v1/report"
ROUTES = {SAVE_PATH: "POST", HIBERNATE_PATH: "POST", STORAGE_PATH: "POST", REPORT_PATH: "GET"}
STATUS_OF = {"oversized": 413, "malformed": 400}


def error_body(reason: str, message: str) -> dict:
    return {"error": reason, "message": message}


def refusal_body(refusal: RefusedError) -> dict:
    """A signed 409's body: the guest cannot do it now, and why (docs/agent-protocol.md)."""
    return {"error": "refused", "reason": refusal.reason, "message": str(refusal)}


def nothing() -> None:
    """What runs after an answer, for most answers."""


# An answer: status, body, and what to do once it is written (a hibernation starts only then).
Answer = tuple[int, dict, Callable[[], None]]


class AgentAPI:
    """What the endpoint does once a request is authenticated."""

    def __init__(
        self,
        key: bytes,
        partition: str,
        saves: SaveStore,
        report: Callable[[], dict],
        hibernations: HibernationStore | None = None,
        *,
        storage: StorageStore | None = None,
    ) -> None:
        self.key = key
        self.partition = partition
        self.verifier = protocol.Verifier(key, partition)
        self.saves = saves
        self.report = report
        self.hibernations = hibernations
        self.storage = storage

    def dispatch(self, method: str, path: str, body: bytes) -> Answer:
        if path not in ROUTES:
            return 404, error_body("not-found", f"no such path; use {', '.join(ROUTES)}"), nothing
        if ROUTES[path] != method:
            return 405, error_body("method-not-allowed", f"use {ROUTES[path]} {path}"), nothing
        if path == REPORT_PATH:
            return 200, self.report(), nothing
        if path == HIBERNATE_PATH:
            return self._hibernate(body)
        if path == STORAGE_PATH:
            return self._storage(body)
        return self._save(body)

    def _save(self, body: bytes) -> Answer:
        try:
            request = parse_save_request(json.loads(body))
        except Exception as error:  # bad JSON, wrong types, absurd nesting: all malformed
            return 400, error_body("malformed", f"invalid save instruction: {error}"), nothing
        try:
            run, _ = self.saves.submit(request)
        except BusyError as error:
            return 503, error_body("busy", str(error)), nothing
        finished = run.done.wait(request.wait)
        return (200 if finished else 202), run.result(), nothing

    def _hibernate(self, body: bytes) -> Answer:
        """202 once a new run is journaled (it starts once the answer is out), the kept run's
        state for a known id (200 when it ended), a signed 409 refusal otherwise."""
        try:
            request = parse_hibernate_request(json.loads(body))
        except Exception as error:  # as for saves: anything unparsable is malformed
            return 400, error_body("malformed", f"invalid hibernate instruction: {error}"), nothing
        try:
            if self.hibernations is None:
                raise RefusedError(UNSUPPORTED, "this agent was started without hibernation")
            run, start = self.hibernations.submit(request)
        except RefusedError as refusal:
            return 409, refusal_body(refusal), nothing
        return (202 if run.state == HIBERNATING else 200), run.result(), start

    def _storage(self, body: bytes) -> Answer:
        """200 with what the guest found of each disk: done now, or kept for a known id."""
        try:
            request = parse_storage_request(json.loads(body))
        except Exception as error:  # as for saves: anything unparsable is malformed
            return 400, error_body("malformed", f"invalid storage change: {error}"), nothing
        if self.storage is None:
            refusal = RefusedError(UNSUPPORTED, "this agent was started without storage changes")
            return 409, refusal_body(refusal), nothing
        run, _ = self.storage.submit(request)
        return 200, run.result(), nothing


@dataclass(frozen=True)
class Limits:
    """What a client may take of the endpoint: time per request, connections held."""

    # From a connection's accept (so a TLS handshake too) or a kept-alive request's first byte
    # to the last byte of its body, whatever the pace; writing an answer has the same again.
    request_seconds: float = 10.0
    # A kept-alive connection's wait for its next request: longer than the operator's HTTP
    # client keeps an idle connection (aiohttp: 15 s), so the operator closes first and never
    # sends on a connection the agent is closing.
    idle_seconds: float = 20.0
    # Connections that have not delivered a verified request; over this the oldest is evicted.
    untrusted_connections: int = 128
    # Connections that have (the operator's); kept, never evicted, up to this many.
    trusted_connections: int = 16


class TrackedConnection:
    """One accepted connection as `Connections` sees it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock  # what a cut shuts down: whoever wraps the socket (TLS) replaces it
        self.deadline: float | None = None  # monotonic; None while the agent works on a request
        self.trusted = False
        self.cut = False  # evicted or past its deadline: its socket is shut down


class Connections:
    """The endpoint's open connections: admission, trust and deadlines.

    A new connection is always admitted: when the untrusted connections are at their cap, the
    oldest of them is cut to make room. `trust` marks a connection that proved to be the
    operator's; trusted connections are never evicted, up to their own allowance. A reaper
    thread cuts every connection whose deadline passes: shutting its socket down wakes the
    thread blocked on it, which then ends.
    """

    def __init__(self, limits: Limits) -> None:
        if limits.untrusted_connections < 1:
            raise ValueError("untrusted_connections must be at least 1")
        self.limits = limits
        self._open: dict[TrackedConnection, None] = {}  # accept order, oldest first
        self._trusted = 0
        self._changed = threading.Condition()
        self._reaper_wakes_at: float | None = None
        self._closed = False
        threading.Thread(target=self._reap, name="http-deadlines", daemon=True).start()

    def admit(self, sock: socket.socket) -> TrackedConnection:
        """Track a new connection, with the request deadline; evicts the oldest untrusted
        connection when they are at their cap."""
        with self._changed:
            if len(self._open) - self._trusted >= self.limits.untrusted_connections:
                self._cut(next(c for c in self._open if not c.trusted))
            connection = TrackedConnection(sock)
            self._open[connection] = None
            self._expect(connection, self.limits.request_seconds)
            return connection

    def trust(self, connection: TrackedConnection) -> bool:
        """Mark the connection as the operator's (its TLS client certificate): it is never
        evicted and may stay alive between requests. False if it was cut, or the trusted
        allowance is full (it is then served like any other and closed after its answer)."""
        with self._changed:
            if not connection.trusted:
                full = self._trusted >= self.limits.trusted_connections
                if full or connection not in self._open:
                    return False
                connection.trusted = True
                self._trusted += 1
            return True

    def expect(self, connection: TrackedConnection, seconds: float | None) -> None:
        """Cut the connection unless what it does now ends within `seconds` (None: no limit)."""
        with self._changed:
            self._expect(connection, seconds)

    def release(self, connection: TrackedConnection) -> None:
        """Forget a connection that is closing."""
        with self._changed:
            self._forget(connection)

    def close(self) -> None:
        """Stop the reaper."""
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _expect(self, connection: TrackedConnection, seconds: float | None) -> None:
        connection.deadline = None if seconds is None else time.monotonic() + seconds
        wakes_at = self._reaper_wakes_at
        if connection.deadline is not None and (wakes_at is None or connection.deadline < wakes_at):
            self._changed.notify()

    def _forget(self, connection: TrackedConnection) -> None:
        if connection in self._open:
            del self._open[connection]
            self._trusted -= connection.trusted

    def _cut(self, connection: TrackedConnection) -> None:
        self._forget(connection)
        connection.cut = True
        with contextlib.suppress(OSError):
            # The plain socket's shutdown, also under a TLS wrapper: ssl.SSLSocket.shutdown
            # would drop the TLS state under the thread still using it.
            socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)

    def _reap(self) -> None:
        with self._changed:
            while not self._closed:
                now = time.monotonic()
                deadlines = [(c, c.deadline) for c in self._open if c.deadline is not None]
                for connection, deadline in deadlines:
                    if deadline <= now:
                        self._cut(connection)
                upcoming = [deadline for _, deadline in deadlines if deadline > now]
                self._reaper_wakes_at = min(upcoming, default=None)
                wait = None if self._reaper_wakes_at is None else self._reaper_wakes_at - now
                self._changed.wait(wait)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"lparkube-agent/{VERSION}"
    sys_version = ""
    server: AgentHTTPServer

    def __init__(
        self, connection: TrackedConnection, client_address: tuple, server: AgentHTTPServer
    ) -> None:
        self.tracked = connection
        # No socket timeout: Connections cuts the socket at the deadline of whatever it does.
        super().__init__(connection.sock, client_address, server)

    def setup(self) -> None:
        # TLS first, within the request's deadline, and only with the operator: anyone else is
        # dropped here, before a byte of HTTP is read (a failure ends the connection through
        # handle_error). The operator's connection is then trusted: never evicted.
        self.request.do_handshake()
        tls.check_operator(self.request)
        self.server.connections.trust(self.tracked)
        super().setup()
        # Headers and body go out in two writes; without this, Nagle + delayed ACK stall
        # every keep-alive answer by ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        """Requests until the connection closes; only a trusted connection is kept alive, and
        only while its next request starts within idle_seconds."""
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection and self._next_request_started():
            self.handle_one_request()

    def _next_request_started(self) -> bool:
        connections, limits = self.server.connections, self.server.connections.limits
        connections.expect(self.tracked, limits.idle_seconds)
        try:
            started = bool(self.rfile.peek(1))  # b"" once the idle deadline cuts the socket
        except OSError:
            return False
        connections.expect(self.tracked, limits.request_seconds)
        return started

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        signed = None
        try:
            body = self._read_body()
            if body is None:
                return
            self.server.connections.expect(self.tracked, None)  # read in full: the agent's turn
            api = self.server.api
            message = protocol.Message(
                protocol.TO_AGENT, self.command, self.path, api.partition, body
            )
            try:
                signed = api.verifier.verify(message, self.headers)
            except protocol.AuthError as error:
                status = STATUS_OF.get(error.reason, 401)
                self._reply(status, error_body(error.reason, str(error)), None)
                return
            status, payload, then = api.dispatch(self.command, self.path, body)
            try:
                self._reply(status, payload, signed)
            finally:
                then()
        except (OSError, socket.timeout):
            self.close_connection = True
        except Exception:
            log.exception("request handler failed")
            self._reply(500, error_body("internal", "the agent failed to answer"), signed)

    def _read_body(self) -> bytes | None:
        """The body, or None after answering an unreadable one (and closing the connection)."""
        if self.headers.get("Transfer-Encoding"):
            self._refuse(400, "malformed", "send a Content-Length body, not chunked")
            return None
        lengths = self.headers.get_all("Content-Length") or ["0"]
        length = protocol.ascii_decimal(lengths[0].strip(" \t"), 12)
        if len(lengths) > 1 or length is None:
            self._refuse(400, "malformed", "Content-Length must be one decimal number")
            return None
        signature_headers = (
            protocol.HEADER_PARTITION,
            protocol.HEADER_TIMESTAMP,
            protocol.HEADER_NONCE,
            protocol.HEADER_SIGNATURE,
        )
        if any(len(self.headers.get_all(name) or ()) > 1 for name in signature_headers):
            self._refuse(400, "malformed", "each X-Lparkube-* header must appear once")
            return None
        if length > protocol.MAX_BODY_BYTES:
            self._refuse(413, "oversized", f"body exceeds {protocol.MAX_BODY_BYTES} bytes")
            return None
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            self._refuse(400, "malformed", "the body is shorter than its Content-Length")
            return None
        return body

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self.close_connection = True
        self._reply(status, error_body(reason, message), None)

    def _reply(self, status: int, payload: dict, signed: protocol.Signed | None) -> None:
        if self.tracked.cut:  # evicted or past its deadline: the socket is shut down
            self.close_connection = True
            return
        if not self.tracked.trusted:  # only the operator's connections are kept alive
            self.close_connection = True
        connections = self.server.connections
        connections.expect(self.tracked, connections.limits.request_seconds)
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if signed is not None:
            headers = protocol.sign_response(self.server.api.key, signed, status, body).headers()
            for name, value in headers.items():
                self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors found by http.server (bad request line, headers): JSON, unsigned."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # so the status line and headers are sent
        with contextlib.suppress(OSError):
            self._reply(code, error_body("malformed", message or "bad request"), None)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class AgentHTTPServer(HTTPServer):
    """One thread per connection; `Connections` admits, trusts and cuts them."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        api: AgentAPI,
        tls_context: ssl.SSLContext,
        limits: Limits | None = None,
    ):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api = api
        self.tls_context = tls_context
        super().__init__(address, Handler)  # _serve makes each Handler, with its connection
        self.connections = Connections(limits or Limits())

    def get_request(self) -> tuple[ssl.SSLSocket, Any]:
        """Accept, wrapped for TLS; the handshake runs in the connection's own thread."""
        sock, address = self.socket.accept()
        wrapped = self.tls_context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        connection = self.connections.admit(request)
        thread = threading.Thread(
            target=self._serve, args=(connection, client_address), name="http", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            self.connections.release(connection)
            raise

    def _serve(self, connection: TrackedConnection, client_address: tuple) -> None:
        try:
            Handler(connection, client_address, self)
        except Exception:
            self.handle_error(connection.sock, client_address)
        finally:
            self.connections.release(connection)
            self.shutdown_request(connection.sock)

    def server_close(self) -> None:
        super().server_close()
        self.connections.close()

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        log.debug("connection from %s failed", client_address, exc_info=True)
