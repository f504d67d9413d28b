"""The local registration socket: apps (or their wrappers) register how they save.

Callers are identified by the kernel (SO_PEERCRED), not by what they claim: a user may register,
unregister and list only their own processes' entries; root may do anything. Every connection
costs a thread, so each user may hold only a share of them (ConnectionSlots). Requests and
answers are JSON lines. A SimulatedInput registration carries its pty master as SCM_RIGHTS
ancillary data, and the daemon checks that this terminal really is the process's controlling
terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
from pathlib import Path

from . import procinfo
from .procinfo import Peer, peer_of
from .registry import SIMULATED_INPUT, Registration, Table, parse_registration
from .terminals import Terminals, pts_device, pty_number

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
IDLE_TIMEOUT = 30.0
MAX_CONNECTIONS = 256
MAX_CONNECTIONS_PER_USER = 32
ROOT_RESERVE = 32
MAX_FDS = 4


class RefusedError(Exception):
    """A request the caller may not make, or cannot be done; the message is for the caller."""


class ConnectionSlots:
    """Who may hold one of the socket's `total` connections (each costs the agent a thread).

    Root takes any free slot. Any other uid holds at most `per_user`, and never one of the last
    `reserve` slots: whatever one user does, every other user still finds total - reserve -
    per_user slots and root at least `reserve`. Thread-safe.
    """

    def __init__(
        self,
        total: int = MAX_CONNECTIONS,
        per_user: int = MAX_CONNECTIONS_PER_USER,
        reserve: int = ROOT_RESERVE,
    ) -> None:
        self.total, self.per_user, self.reserve = total, per_user, reserve
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}  # uid -> connections

    def acquire(self, uid: int) -> None:
        """Take a slot for `uid`; RefusedError says why there is none."""
        with self._lock:
            used = sum(self._held.values())
            mine = self._held.get(uid, 0)
            if uid != 0 and mine >= self.per_user:
                raise RefusedError(
                    f"uid {uid} already holds {mine} connections to the agent, "
                    f"the most one user may; close some (each `lparkube-agent run` holds one)"
                )
            free = self.total - used - (0 if uid == 0 else self.reserve)
            if free <= 0:
                raise RefusedError(f"the agent is serving {used} connections; try again later")
            self._held[uid] = mine + 1

    def release(self, uid: int) -> None:
        with self._lock:
            left = self._held[uid] - 1
            if left:
                self._held[uid] = left
            else:
                del self._held[uid]


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

    def __init__(
        self,
        path: Path,
        table: Table,
        terminals: Terminals,
        connections: ConnectionSlots | None = None,
    ) -> None:
        self.path = path
        self.table = table
        self.terminals = terminals
        self.connections = connections or ConnectionSlots()
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
            try:
                peer = peer_of(conn)
                self.connections.acquire(peer.uid)
            except (OSError, RefusedError) as error:
                _turn_away(conn, str(error))
                continue
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: Peer) -> None:
        held: dict[tuple[int, str], int | None] = {}
        try:
            conn.settimeout(IDLE_TIMEOUT)
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
            self.connections.release(peer.uid)

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
                mine = [r for r in self.table.entries() if peer.uid in (0, r.uid)]
                return {"ok": True, "applications": [self._listed(r) for r in mine]}
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
        try:
            process = procinfo.Process(reg.pid)
        except OSError as error:
            raise RefusedError(f"no process {reg.pid}") from error
        with process:  # every check reads the same process, even if its pid is reused meanwhile
            authorize(peer, process)
            reg.uid = peer.uid
            reg.started = process.start_time()
            if reg.started is None:
                raise RefusedError(f"no process {reg.pid}")
            if reg.method == SIMULATED_INPUT:
                if len(fds) != 1:
                    raise RefusedError(
                        "SimulatedInput needs the app's terminal: use `lparkube-agent run`"
                    )
                check_terminal(fds[0], process)
        fd = os.dup(fds[0]) if reg.method == SIMULATED_INPUT else None
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


def authorize(peer: Peer, process: procinfo.Process) -> None:
    """A non-root caller may register only a process whose real and effective uid are its own."""
    owner = process.uids()
    if owner is None:
        raise RefusedError(f"no process {process.pid}")
    if peer.uid != 0 and owner != (peer.uid, peer.uid):
        raise RefusedError(f"process {process.pid} belongs to another user")


def check_terminal(fd: int, process: procinfo.Process) -> None:
    """The fd must be the pty master whose slave is the process's controlling terminal."""
    try:
        number = pty_number(fd)
    except OSError as error:
        raise RefusedError("the file descriptor sent is not a pseudo-terminal master") from error
    if process.tty_nr() != pts_device(number):
        raise RefusedError(
            f"/dev/pts/{number} is not the controlling terminal of process {process.pid}"
        )


def _turn_away(conn: socket.socket, reason: str) -> None:
    """Tell a connection without a slot why (`busy`: a client may try again later), without
    waiting for it, and close it."""
    conn.setblocking(False)
    with contextlib.suppress(OSError):
        conn.send(json.dumps({"ok": False, "busy": True, "error": reason}).encode() + b"\n")
    conn.close()
    log.debug("registration connection turned away: %s", reason)


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
