"""Test helpers for real agent processes (used by the agent's and the operator's tests).

Not part of the zipapp. `AgentProcess` starts `lparkube-agent serve` for one partition in a
temporary directory (config, key, state dir, registration socket, ephemeral port) and talks to
it with signed requests; `python -m lparkube_agent.testing app ...` is a tiny application that
appends "<name> <time>" to a file whenever it is told to save, by any of the save methods.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import http.client
import io
import json
import os
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from . import protocol, tls

DEFAULT_PARTITION = "tenant-a/web-1"


@dataclass(frozen=True)
class TLSMaterial:
    """PEM for a test agent (the CA it pins, its certificate and key) and, when the test
    calls the agent, for its operator side (a CA-issued certificate naming the operator), e.g.
    from the operator's ``AgentIdentity``."""

    ca_pem: bytes
    agent_cert_pem: bytes
    agent_key_pem: bytes
    operator_cert_pem: bytes = b""
    operator_key_pem: bytes = b""

    def write_agent_files(self, directory: Path) -> tls.TLSFiles:
        """ca.crt, tls.crt and tls.key, as the key Secret hands them to a guest."""
        files = tls.TLSFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
        files.ca.write_bytes(self.ca_pem)
        files.cert.write_bytes(self.agent_cert_pem)
        files.key.touch(mode=0o600)
        files.key.write_bytes(self.agent_key_pem)
        return files

    def operator_context(self, directory: Path) -> ssl.SSLContext:
        """A client context as the operator's: the CA, the operator's certificate; the agent's
        name is not checked (a test agent's certificate may name another partition)."""
        files = tls.TLSFiles(directory / "op-ca.crt", directory / "op.crt", directory / "op.key")
        files.ca.write_bytes(self.ca_pem)
        files.cert.write_bytes(self.operator_cert_pem)
        files.key.touch(mode=0o600)
        files.key.write_bytes(self.operator_key_pem)
        return tls.client_context(files)


class AgentProcess:
    """A real `lparkube-agent serve` process in `root` (a temporary directory)."""

    def __init__(
        self,
        root: Path,
        partition: str = DEFAULT_PARTITION,
        key: bytes | None = None,
        config: dict | None = None,
        command: list[str] | None = None,
        *,
        tls_material: TLSMaterial,
        own_session: bool = False,
    ) -> None:
        self.root = root
        # In a session of its own, with its CLI commands, a terminal's Ctrl-C does not reach it.
        self.own_session = own_session
        self.partition = partition
        self.key = key or protocol.new_key()
        self.state_dir = root / "state"
        # AF_UNIX paths are limited to 107 bytes; pytest's tmp paths can be longer.
        self.socket = Path(tempfile.mkdtemp(prefix="lpk-")) / "agent.sock"
        self.socket.parent.chmod(0o755)  # like /run/lparkube: every local user may connect
        self.config_path = root / "config.json"
        (root / "key").write_bytes(self.key)
        tls_material.write_agent_files(root)
        self.tls_material = tls_material
        self._operator_tls: ssl.SSLContext | None = None
        if tls_material.operator_cert_pem:  # made now: threads of a test share it
            self._operator_tls = tls_material.operator_context(root)
        settings = {"partition": partition, "listen": "127.0.0.1:0", "reportIntervalSeconds": 30}
        settings["watchdogDevice"] = str(root / "watchdog")  # never the host's, if it has one
        settings.update(config or {})
        self.config_path.write_text(json.dumps(settings))
        self.command = command or [sys.executable, "-m", "lparkube_agent"]
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = root / "agent.log"

    def argv(self) -> list[str]:
        return [
            *self.command,
            "serve",
            f"--config={self.config_path}",
            f"--state-dir={self.state_dir}",
            f"--socket={self.socket}",
            f"--input-table={self.root / 'input-table.json'}",
            f"--vmcoreinfo={self.root / 'vmcoreinfo'}",
        ]

    def start(self, timeout: float = 15.0) -> AgentProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=self.own_session,
        )  # fmt: skip
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "on port" not in line:
            self.proc.kill()
            raise RuntimeError(f"agent did not start: {line!r}\n{self.log_path.read_text()}")
        self.port = int(line.rsplit(" ", 1)[1])
        deadline = time.monotonic() + timeout
        while not self.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def env(self) -> dict[str, str]:
        """Environment for `lparkube-agent register/run/list` against this agent."""
        return {**os.environ, "LPARKUBE_AGENT_SOCKET": str(self.socket)}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def close(self) -> None:
        """Stop the agent for good and remove its socket's temporary folder."""
        self.stop()
        shutil.rmtree(self.socket.parent, ignore_errors=True)

    def restart(self, sig: int = signal.SIGTERM) -> AgentProcess:
        """Stop (gracefully, or with SIGKILL) and start again on the same state and socket."""
        self.stop(sig)
        return self.start()

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        key: bytes | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, dict]:
        """A signed request; the answer's signature is verified when the request was valid."""
        return signed_request(
            "127.0.0.1",
            self.port,
            key or self.key,
            partition=self.partition,
            method=method,
            path=path,
            body=body,
            timeout=timeout,
            context=self.operator_context(),
        )

    def operator_context(self) -> ssl.SSLContext:
        """The TLS client side the operator would use with this agent."""
        if self._operator_tls is None:
            raise RuntimeError("this agent's TLS material has no operator certificate")
        return self._operator_tls

    def connect(self, timeout: float = 15.0) -> ssl.SSLSocket:
        """A TLS connection to the agent as the operator, for raw HTTP bytes."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return self.operator_context().wrap_socket(sock)

    def save(self, ident: str, timeout: float = 5.0, wait: float = 30.0, **extra) -> dict:
        body = {"id": ident, "reason": "Manual", "applicationTimeoutSeconds": timeout}
        body.update(waitSeconds=wait, **extra)
        status, answer = self.request("POST", "/v1/save", json.dumps(body).encode())
        if status not in (200, 202):
            raise AssertionError(f"save answered {status}: {answer}")
        return answer

    def hibernate(self, ident: str, serial: str = "lparkube-paging", **extra) -> tuple[int, dict]:
        """A signed hibernate instruction; its (verified) status and body."""
        body = json.dumps({"id": ident, "serial": serial, **extra}).encode()
        return self.request("POST", "/v1/hibernate", body)


def signed_request(
    host: str,
    port: int,
    key: bytes,
    *,
    partition: str,
    method: str,
    path: str,
    body: bytes = b"",
    timeout: float = 60.0,
    context: ssl.SSLContext,
) -> tuple[int, dict]:
    """Send one operator->agent request over TLS (``context``: the operator's side); verify a
    signed answer (raises AuthError if forged)."""
    message = protocol.Message(protocol.TO_AGENT, method, path, partition, body)
    signed = protocol.sign(key, message)
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        conn.request(method, path, body, signed.headers())
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    headers = dict(response.getheaders())
    if protocol.HEADER_SIGNATURE.lower() in {k.lower() for k in headers}:
        protocol.verify_response(key, signed, response.status, headers, data)
    return response.status, json.loads(data or b"{}")


@dataclass
class Slow:
    opened: float
    sent: int
    next_byte: float


class Slowloris:
    """`count` connections that each send one more byte of a request every `pace` seconds,
    each reopened as soon as the agent closes it, as an attacker keeps a connection table full.
    `lifetimes` holds (opened, closed) of every connection the agent closed."""

    REQUEST = b"POST /v1/save HTTP/1.1\r\nHost: agent\r\nContent-Length: 2\r\n\r\n{}"

    def __init__(self, address: tuple[str, int], count: int = 128, pace: float = 5.0):
        self.address, self.count, self.pace = address, count, pace
        self.lifetimes: list[tuple[float, float]] = []
        self.answers: list[bytes] = []  # what the agent sent; it must send nothing
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Slowloris:
        for _ in range(self.count):
            self._open()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def open_since(self, moment: float) -> int:
        """Connections opened before `moment` that are still open."""
        with self._lock:
            return sum(k.data.opened < moment for k in self._selector.get_map().values())

    def closed_since(self, moment: float) -> list[float]:
        """How long each connection opened before `moment` lived, of those the agent closed."""
        with self._lock:
            return [closed - opened for opened, closed in self.lifetimes if opened < moment]

    def _open(self) -> None:
        sock = socket.create_connection(self.address, timeout=5)
        sock.sendall(self.REQUEST[:1])
        sock.setblocking(False)
        now = time.monotonic()
        with self._lock:
            self._selector.register(sock, selectors.EVENT_READ, Slow(now, 1, now + self.pace))

    def _closed(self, sock: socket.socket, slow: Slow) -> None:
        with self._lock:
            self._selector.unregister(sock)
            self.lifetimes.append((slow.opened, time.monotonic()))
        sock.close()
        self._open()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.answers.append(data)
                self._closed(key.fileobj, key.data)  # type: ignore[arg-type]
            now = time.monotonic()
            for key in list(self._selector.get_map().values()):
                slow = key.data
                if slow.next_byte <= now:
                    try:
                        key.fileobj.send(self.REQUEST[slow.sent : slow.sent + 1])  # type: ignore[union-attr]
                    except OSError:
                        continue  # closed: the next select sees it
                    slow.sent += 1
                    slow.next_byte = now + self.pace


class ReceivedBytes:
    """Bytes already received, as http.client.HTTPResponse reads a socket."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def half_closed_exchange(
    context: ssl.SSLContext, port: int, data: bytes, timeout: float = 20.0
) -> bytes:
    """Send ``data`` over TLS, close the sending side (close_notify, which TLS 1.3 allows
    while the other side still answers), and return every byte the agent sends back until it
    closes: how a test sends a truncated request and still sees the answer at once."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls_object = context.wrap_bio(incoming, outgoing)

        def flush() -> None:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)

        def pull() -> bool:
            chunk = sock.recv(65536)
            if chunk:
                incoming.write(chunk)
            else:
                incoming.write_eof()
            return bool(chunk)

        while True:
            try:
                tls_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                if not pull():
                    return b""
        tls_object.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls_object.unwrap()
        flush()
        answer = b""
        while True:
            try:
                chunk = tls_object.read(65536)
            except ssl.SSLWantReadError:
                if not pull():
                    return answer
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return answer
            if not chunk:
                return answer
            answer += chunk


def cli(agent: AgentProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `lparkube-agent ARGS` against the agent (the real CLI, as a user would)."""
    result = subprocess.run(
        [*agent.command, *args],
        env=agent.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        start_new_session=agent.own_session,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"lparkube-agent {' '.join(args)}: {result.stderr}{result.stdout}")
    return result


def start_app(
    mode: str, name: str, out: Path, delay: float = 0.0, *, own_session: bool = False
) -> tuple[subprocess.Popen, str]:
    """Start a demo app (in a session of its own if asked); returns it and what it is reachable
    by (its pid, URL or socket), the line it prints once it is ready."""
    argv = [sys.executable, "-m", "lparkube_agent.testing", "app", f"--mode={mode}"]
    argv += [f"--name={name}", f"--out={out}", f"--delay={delay}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=own_session)
    assert proc.stdout is not None
    with proc.stdout:
        address = proc.stdout.readline().strip()
    if not address:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"app {name} did not start")
    return proc, address


class Terminal:
    """A pseudo-terminal the test controls, like a user's terminal window."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.output = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.output.extend(data)

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def wait_for(self, text: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if text in self.output:
                    return
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never appeared on the terminal: {bytes(self.output)!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def lines(out: Path) -> list[tuple[str, float]]:
    """The (name, time) lines the demo apps appended."""
    if not out.exists():
        return []
    return [(n, float(t)) for n, t in (line.split() for line in out.read_text().splitlines())]


# --- a tiny application that saves by every method --------------------------------------


def _append(out: Path, name: str, delay: float) -> None:
    time.sleep(delay)
    with out.open("a") as handle:
        handle.write(f"{name} {time.time():.6f}\n")
        handle.flush()
        os.fsync(handle.fileno())


def _app(args: argparse.Namespace) -> int:
    out, name = Path(args.out), args.name
    if args.mode == "command":  # the save command itself
        _append(out, name, args.delay)
        return 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_quietly)
    if args.mode == "signal":
        signal.signal(signal.SIGUSR1, lambda *_: _append(out, name, args.delay))
    if args.mode == "http":
        address = _serve_http(out, name, args.delay)
    elif args.mode == "socket":
        address = _serve_socket(out, name, args.delay)
    else:
        address = str(os.getpid())
    print(address, flush=True)  # tells start_app it is ready
    while True:
        time.sleep(3600)


def _exit_quietly(_signum: int, _frame: object) -> None:
    """Ctrl-C or SIGTERM: exit as a well-behaved app does, with no traceback."""
    raise SystemExit(0)


def _serve_http(out: Path, name: str, delay: float) -> str:
    class Save(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            _append(out, name, delay)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Save)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/save"


def _serve_socket(out: Path, name: str, delay: float) -> str:
    # AF_UNIX paths are limited to 107 bytes: a short folder of its own, removed when it exits.
    folder = tempfile.mkdtemp(prefix="lpk-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = Path(folder) / "app.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)

    def loop() -> None:
        while True:
            conn, _ = sock.accept()
            with conn:
                conn.recv(4096)
                _append(out, name, delay)
                conn.sendall(b"OK saved\n")

    threading.Thread(target=loop, daemon=True).start()
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lparkube_agent.testing")
    sub = parser.add_subparsers(dest="cmd", required=True)
    app = sub.add_parser("app", help="an app that appends '<name> <time>' to --out on save")
    app.add_argument("--mode", choices=["signal", "http", "socket", "command", "idle"])
    app.add_argument("--name", required=True)
    app.add_argument("--out", required=True)
    app.add_argument("--delay", type=float, default=0.0, help="seconds a save takes")
    return _app(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
