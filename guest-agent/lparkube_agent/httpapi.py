"""The agent's HTTPS endpoint for the operator: POST /v1/save and GET /v1/report.

Only the operator gets through the TLS handshake (its client certificate, from the CA the
guest pins, naming the operator; ``tls``). Every request is authenticated (protocol.Verifier)
before its body is parsed; authenticated answers, errors included, are signed. The server must
survive anything the network sends: bodies are bounded by Content-Length (no chunked bodies),
slow clients hit a socket timeout, connections are capped, and every handler error becomes a
response, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import protocol, tls
from .saves import BusyError, SaveStore, parse_save_request
from .version import VERSION

log = logging.getLogger(__name__)

SAVE_PATH = "/v1/save"
REPORT_PATH = "/v1/report"
ROUTES = {SAVE_PATH: "POST", REPORT_PATH: "GET"}
STATUS_OF = {"oversized": 413, "malformed": 400}


def error_body(reason: str, message: str) -> dict:
    return {"error": reason, "message": message}


class AgentAPI:
    """What the endpoint does once a request is authenticated."""

    def __init__(
        self,
        key: bytes,
        partition: str,
        saves: SaveStore,
        report: Callable[[], dict],
    ) -> None:
        self.key = key
        self.partition = partition
        self.verifier = protocol.Verifier(key, partition)
        self.saves = saves
        self.report = report

    def dispatch(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if path not in ROUTES:
            return 404, error_body("not-found", f"no such path; use {', '.join(ROUTES)}")
        if ROUTES[path] != method:
            return 405, error_body("method-not-allowed", f"use {ROUTES[path]} {path}")
        if path == REPORT_PATH:
            return 200, self.report()
        return self._save(body)

    def _save(self, body: bytes) -> tuple[int, dict]:
        try:
            request = parse_save_request(json.loads(body))
        except Exception as error:  # bad JSON, wrong types, absurd nesting: all malformed
            return 400, error_body("malformed", f"invalid save instruction: {error}")
        try:
            run, _ = self.saves.submit(request)
        except BusyError as error:
            return 503, error_body("busy", str(error))
        finished = run.done.wait(request.wait)
        return (200 if finished else 202), run.result()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds a client may stall while sending (slowloris) or idle on keep-alive
    server_version = f"lparkube-agent/{VERSION}"
    sys_version = ""
    server: AgentHTTPServer

    def setup(self) -> None:
        # TLS first, bounded, and only with the operator: anyone else is dropped here, before
        # a byte of HTTP is read (a failure ends the connection through handle_error).
        self.request.settimeout(tls.HANDSHAKE_SECONDS)
        self.request.do_handshake()
        tls.check_operator(self.request)
        super().setup()
        # Headers and body go out in two writes; without this, Nagle + delayed ACK stall
        # every keep-alive answer by ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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
            status, payload = api.dispatch(self.command, self.path, body)
            self._reply(status, payload, signed)
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
        text = lengths[0].strip()
        if len(lengths) > 1 or not text.isdigit() or len(text) > 12:
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
        length = int(text)
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


class AgentHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a connection cap and quiet per-connection errors."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        api: AgentAPI,
        tls_context: ssl.SSLContext,
        max_connections: int = 128,
    ):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api = api
        self.tls_context = tls_context
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, Handler)

    def get_request(self) -> tuple[ssl.SSLSocket, Any]:
        """Accept, wrapped for TLS; the handshake runs in the connection's own thread."""
        sock, address = self.socket.accept()
        wrapped = self.tls_context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the cap: drop, do not queue unbounded
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        log.debug("connection from %s failed", client_address, exc_info=True)
