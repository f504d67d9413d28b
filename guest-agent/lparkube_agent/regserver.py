"""The local registration socket: apps (or their wrappers) register how they save.

Callers are identified by the kernel (SO_PEERCRED), not by what they claim: a user may register
and unregister only their own processes; root may do anything. Requests and answers are JSON
lines. A SimulatedInput registration carries its pty master as SCM_RIGHTS ancillary data, and
the daemon checks that this terminal really is the process's controlling terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from . import procinfo
from .registry import SIMULATED_INPUT, Registration, Table, parse_registration
from .terminals import Terminals, pts_device, pty_number

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
IDLE_TIMEOUT = 30.0
MAX_CONNECTIONS = 256
MAX_FDS = 4


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", raw))


class RefusedError(Exception):
    """A request the caller may not make, or cannot be done; the message is for the caller."""


class LineReader:
    """JSON lines from a stream socket, with any file descriptors that arrived with them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.fds: list[int] = []

    def next_line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise RefusedError("request line too long")
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, MAX_FDS)
            self.fds.extend(fds)
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def take_fds(self) -> list[int]:
        fds, self.fds = self.fds, []
        return fds


class RegistrationServer:
    """Accepts connections on the Unix socket; one short-lived thread per connection."""

    def __init__(self, path: Path, table: Table, terminals: Terminals) -> None:
        self.path = path
        self.table = table
        self.terminals = terminals
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._sock = _listen(path)
        self._thread = threading.Thread(target=self._accept_loop, name="regserver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # stopped
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        held: dict[tuple[int, str], int | None] = {}
        try:
            conn.settimeout(IDLE_TIMEOUT)
            peer = peer_of(conn)
            reader = LineReader(conn)
            while True:
                line = reader.next_line()
                if line is None:
                    return
                answer = self._answer(line, reader.take_fds(), peer, held)
                conn.sendall(json.dumps(answer).encode() + b"\n")
                if held:
                    conn.settimeout(None)  # a run wrapper stays connected while its app runs
        except (OSError, RefusedError) as error:
            log.debug("registration connection ended: %s", error)
        finally:
            conn.close()
            self._release(held)
            self._slots.release()

    def _release(self, held: dict[tuple[int, str], int | None]) -> None:
        """The wrapper is gone: drop its app's entry and the daemon's copy of the terminal."""
        for key, fd in held.items():
            self.table.remove(lambda r, key=key: r.key == key)
            if fd is not None:
                self.terminals.detach(key, only=fd)

    def _answer(
        self, line: bytes, fds: list[int], peer: Peer, held: dict[tuple[int, str], int | None]
    ) -> dict:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise RefusedError("a request must be a JSON object")
            op = request.get("op")
            if op == "register":
                return self._register(request, fds, peer, held)
            if op == "unregister":
                return self._unregister(request, peer)
            if op == "list":
                return {"ok": True, "applications": [self._listed(r) for r in self.table.entries()]}
            if op == "ping":
                return {"ok": True}
            raise RefusedError("op must be register, unregister, list or ping")
        except (RefusedError, ValueError) as error:
            return {"ok": False, "error": str(error)}
        finally:
            for fd in fds:
                os.close(fd)  # registration dup()s what it keeps

    def _register(
        self,
        request: dict,
        fds: list[int],
        peer: Peer,
        held: dict[tuple[int, str], int | None],
    ) -> dict:
        reg = parse_registration(request.get("app"))
        authorize(peer, reg.pid)
        reg.uid = peer.uid
        reg.started = procinfo.start_time(reg.pid)
        if reg.started is None:
            raise RefusedError(f"no process {reg.pid}")
        fd = None
        if reg.method == SIMULATED_INPUT:
            if len(fds) != 1:
                raise RefusedError(
                    "SimulatedInput needs the app's terminal: use `lparkube-agent run`"
                )
            check_terminal(fds[0], reg.pid)
            fd = os.dup(fds[0])
        if request.get("hold"):
            reg.owner_pid = peer.pid
            reg.owner_started = procinfo.start_time(peer.pid)
        try:
            self.table.add(reg)
        except ValueError:
            if fd is not None:
                os.close(fd)
            raise
        if fd is not None:
            self.terminals.attach(reg.key, fd)
        if request.get("hold"):
            held[reg.key] = fd
        log.info("registered %s (pid %d, uid %d, %s)", reg.name, reg.pid, reg.uid, reg.method)
        return {"ok": True, "application": reg.to_json()}

    def _listed(self, reg: Registration) -> dict:
        entry = reg.to_json()
        if reg.method == SIMULATED_INPUT:
            entry["attached"] = self.terminals.has(reg.key)
        return entry

    def _unregister(self, request: dict, peer: Peer) -> dict:
        pid, name = request.get("pid"), request.get("name")
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise RefusedError("pid must be an integer")

        def match(reg: Registration) -> bool:
            return reg.pid == pid and (name is None or reg.name == name)

        mine = [r for r in self.table.entries() if match(r)]
        if not mine:
            raise RefusedError(
                f"no registration for pid {pid}" + (f" named {name}" if name else "")
            )
        if peer.uid != 0 and any(r.uid != peer.uid for r in mine):
            raise RefusedError("you may unregister only your own registrations")
        gone = self.table.remove(lambda r: match(r) and (peer.uid in (0, r.uid)))
        return {"ok": True, "removed": [r.to_json() for r in gone]}


def authorize(peer: Peer, pid: int) -> None:
    """A non-root caller may register only a process whose real and effective uid are its own."""
    owner = procinfo.uids(pid)
    if owner is None:
        raise RefusedError(f"no process {pid}")
    if peer.uid != 0 and owner != (peer.uid, peer.uid):
        raise RefusedError(f"process {pid} belongs to another user")


def check_terminal(fd: int, pid: int) -> None:
    """The fd must be the pty master whose slave is the process's controlling terminal."""
    try:
        number = pty_number(fd)
    except OSError as error:
        raise RefusedError("the file descriptor sent is not a pseudo-terminal master") from error
    if procinfo.tty_nr(pid) != pts_device(number):
        raise RefusedError(f"/dev/pts/{number} is not the controlling terminal of process {pid}")


def _listen(path: Path) -> socket.socket:
    """Bind the socket, replacing a stale one; world-connectable (callers are checked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise RuntimeError(f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(str(path)) == 0:
                raise RuntimeError(f"another agent is listening on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o666)
    sock.listen(64)
    return sock
