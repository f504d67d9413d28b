"""The process registration table: who is saved, how, and in what order.

Entries survive an agent restart (persisted atomically in the state directory) and are bound to
the process's start time, so dead processes are pruned and a recycled pid never inherits an
entry. Validation here is pure; authorisation (which uid may register which pid) lives in
regserver.py.
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from . import procinfo
from .inputtable import encode_token
from .state import atomic_write_json, read_json

log = logging.getLogger(__name__)

SIGNAL, COMMAND, HTTP, UNIX_SOCKET, SIMULATED_INPUT = (
    "Signal",
    "Command",
    "HTTP",
    "UnixSocket",
    "SimulatedInput",
)
METHODS = (SIGNAL, COMMAND, HTTP, UNIX_SOCKET, SIMULATED_INPUT)
_ALIASES = {m.lower(): m for m in METHODS} | {
    "unix-socket": UNIX_SOCKET,
    "socket": UNIX_SOCKET,
    "simulated-input": SIMULATED_INPUT,
    "input": SIMULATED_INPUT,
    "keys": SIMULATED_INPUT,
}
MAX_NAME = 128
MAX_PRIORITY = 1_000_000
MAX_PER_UID = 64
MAX_ENTRIES = 1024


@dataclass
class Registration:
    """One registered application."""

    name: str
    pid: int
    priority: int
    method: str
    uid: int = 0
    started: int | None = None
    signal: str | None = None
    command: list[str] | None = None
    url: str | None = None
    socket: str | None = None
    keys: list[str] | None = None
    program: str | None = None
    watch: str | None = None
    settle_millis: int | None = None
    owner_pid: int | None = None
    owner_started: int | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (self.pid, self.name)

    def summary(self) -> dict:
        """What the operator sees (Partition.status.agent.applications)."""
        return {
            "name": self.name,
            "pid": self.pid,
            "priority": self.priority,
            "method": self.method,
        }

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> Registration:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def normalize_method(value: object) -> str:
    if not isinstance(value, str) or value.lower() not in _ALIASES:
        raise ValueError(f"method must be one of {', '.join(METHODS)}")
    return _ALIASES[value.lower()]


# The signals a Signal registration may name. An application that does not handle a signal
# gets its default action, and for most signals that is to die (SIGTERM, SIGPIPE, SIGRTMIN...),
# dump core (SIGSEGV, SIGABRT...) or stop (SIGTSTP...) with its unsaved data. Allowed are the
# signals applications conventionally take as a request (SIGUSR1, SIGUSR2, SIGHUP: fatal by
# default, which is why a save sends one only to a process that catches it, see methods.py)
# and those whose default action leaves a running process as it is (SIGWINCH, SIGURG and
# SIGCHLD are ignored, SIGCONT continues). No other signal is a save request in any convention.
SAVE_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGHUP", "SIGWINCH", "SIGURG", "SIGCHLD", "SIGCONT")
_DEFAULT_ACTIONS = {  # of the refused signals; on any other the process dies
    **dict.fromkeys(("SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGSEGV",
                     "SIGSYS", "SIGXCPU", "SIGXFSZ"), "dumps core and dies"),
    **dict.fromkeys(("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"), "stops"),
}  # fmt: skip


def normalize_signal(value: object) -> str:
    """A save signal's name, such as SIGUSR1 from 'USR1', 'sigusr1' or 10; ValueError for a
    signal that is not one of SAVE_SIGNALS, saying why."""
    name = None
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            name = signal.Signals(value).name
        elif isinstance(value, str):
            text = value.strip().upper()
            if text.isascii() and text.isdigit():
                name = signal.Signals(int(text)).name
            else:
                name = signal.Signals[text if text.startswith("SIG") else f"SIG{text}"].name
    except (KeyError, ValueError):
        pass
    allowed = f"a save signal is one of {', '.join(SAVE_SIGNALS)}"
    if name is None:
        raise ValueError(f"unknown signal {value!r}: {allowed}")
    if name not in SAVE_SIGNALS:
        action = _DEFAULT_ACTIONS.get(name, "dies")
        raise ValueError(
            f"{name} is refused as a save signal: an application that does not handle it "
            f"{action}; {allowed}"
        )
    return name


def check_loopback_url(url: object) -> str:
    """Only http:// callbacks to this machine: the agent must not be a proxy into the network."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ValueError("url must be a string")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("url must be http://127.0.0.1:PORT/PATH (loopback only)")
    host = parts.hostname
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError as error:
        raise ValueError(f"url: {error}") from error
    if not loopback:
        raise ValueError("url must point at a loopback address (127.0.0.1, ::1, localhost)")
    return url


def _int(data: dict, name: str, low: int, high: int, default: int | None = None) -> int | None:
    value = data.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}")
    return value


def _command(value: object) -> list[str]:
    argv = shlex.split(value) if isinstance(value, str) else value
    if (
        not isinstance(argv, list)
        or not 1 <= len(argv) <= 64
        or not all(isinstance(a, str) and len(a) <= 4096 and "\0" not in a for a in argv)
    ):
        raise ValueError("command must be a non-empty argv list (at most 64 strings)")
    return argv


def _path(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 4096:
        raise ValueError(f"{what} must be an absolute path")
    if "\0" in value:
        raise ValueError(f"{what} must not contain NUL")
    return value


def _method_fields(method: str, data: dict) -> dict:
    if method == SIGNAL:
        return {"signal": normalize_signal(data.get("signal") or "SIGUSR1")}
    if method == COMMAND:
        return {"command": _command(data.get("command"))}
    if method == HTTP:
        return {"url": check_loopback_url(data.get("url"))}
    if method == UNIX_SOCKET:
        path = _path(data.get("socket"), "socket")
        if len(path.encode()) > 107:
            raise ValueError("socket path is longer than 107 bytes")
        return {"socket": path}
    keys = data.get("keys")
    if keys is not None:
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ValueError("keys must be a non-empty list of key tokens")
        for token in keys:
            encode_token(token)
    program = data.get("program")
    if program is not None and (not isinstance(program, str) or len(program) > 255):
        raise ValueError("program must be a program name")
    watch = data.get("watch")
    return {
        "keys": keys,
        "program": program,
        "watch": None if watch is None else _path(watch, "watch"),
        "settle_millis": _int(data, "settleMillis", 0, 60_000),
    }


def parse_registration(data: object) -> Registration:
    """A Registration from a request object (camelCase keys); ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("the application must be a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not name.isprintable():
        raise ValueError(f"name must be 1..{MAX_NAME} printable characters")
    pid = _int(data, "pid", 1, 2**22)
    priority = _int(data, "priority", -MAX_PRIORITY, MAX_PRIORITY, default=0)
    if pid is None:
        raise ValueError("pid is required")
    method = normalize_method(data.get("method"))
    extra = _method_fields(method, data)
    return Registration(name=name, pid=pid, priority=priority or 0, method=method, **extra)


class Table:
    """The registration table: thread-safe, persisted on every change, pruned of the dead."""

    def __init__(
        self,
        path: Path | None,
        alive: Callable[[int, int | None], bool] = procinfo.is_alive,
    ) -> None:
        self._path = path
        self._alive = alive
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, str], Registration] = {}
        self.listeners: list[Callable[[list[Registration]], None]] = []
        self._load()

    def _load(self) -> None:
        data = read_json(self._path) if self._path else None
        items = data.get("applications", []) if isinstance(data, dict) else []
        for item in items:
            try:
                reg = Registration.from_json(item)
                self._entries[reg.key] = reg
            except (TypeError, ValueError) as error:
                log.warning("dropping unreadable registration %r: %s", item, error)
        self.prune()

    def _save(self) -> None:
        if self._path is not None:
            entries = [r.to_json() for r in self._entries.values()]
            atomic_write_json(self._path, {"version": 1, "applications": entries})

    def add(self, reg: Registration) -> None:
        """Insert or replace (same pid and name); ValueError when a limit is reached."""
        with self._lock:
            if reg.key not in self._entries:
                if len(self._entries) >= MAX_ENTRIES:
                    raise ValueError("the registration table is full")
                mine = sum(1 for r in self._entries.values() if r.uid == reg.uid)
                if reg.uid != 0 and mine >= MAX_PER_UID:
                    raise ValueError(f"at most {MAX_PER_UID} registrations per user")
            self._entries[reg.key] = reg
            self._save()
        self._notify([])

    def remove(self, match: Callable[[Registration], bool]) -> list[Registration]:
        with self._lock:
            gone = [r for r in self._entries.values() if match(r)]
            for reg in gone:
                del self._entries[reg.key]
            if gone:
                self._save()
        if gone:
            self._notify(gone)
        return gone

    def entries(self) -> list[Registration]:
        with self._lock:
            return list(self._entries.values())

    def get(self, key: tuple[int, str]) -> Registration | None:
        with self._lock:
            return self._entries.get(key)

    def prune(self) -> list[Registration]:
        """Drop entries whose process (or run wrapper) is gone; returns what was dropped."""

        def dead(reg: Registration) -> bool:
            if not self._alive(reg.pid, reg.started):
                return True
            return reg.owner_pid is not None and not self._alive(reg.owner_pid, reg.owner_started)

        gone = self.remove(dead)
        for reg in gone:
            log.info("pruned %s (pid %d): process exited", reg.name, reg.pid)
        return gone

    def _notify(self, removed: list[Registration]) -> None:
        for listener in list(self.listeners):
            try:
                listener(removed)
            except Exception:
                log.exception("registration listener failed")
