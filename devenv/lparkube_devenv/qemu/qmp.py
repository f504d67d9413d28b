"""A QMP client over QEMU's unix socket: handshake, commands with timeouts, events.

The protocol (QEMU docs/interop/qmp-spec.rst): the server greets with ``{"QMP": {"version":
..., "capabilities": [...]}}``; the client sends ``{"execute": "qmp_capabilities"}`` and gets
``{"return": {}}``; after that each command ``{"execute": NAME, "arguments": {...}, "id": ID}``
is answered by ``{"return": ..., "id": ID}`` or ``{"error": {"class": ..., "desc": ...},
"id": ID}``, and asynchronous events ``{"event": NAME, "data": {...}, "timestamp":
{"seconds": S, "microseconds": U}}`` come in between, one JSON object per line.

Our own rather than the ``qemu.qmp`` package: that one is asyncio-only (its blocking API lives
in ``qemu.qmp.legacy``) and still 0.0.x, while the stand-in is threaded and needs only this
much. One reader thread owns the socket's input: it answers waiting ``execute`` calls by id,
keeps every event in order (``wait_event``) and hands each to ``on_event``. ``on_event`` runs on
the reader thread, so it must not call ``execute`` (the answer could never be read); queue the
work instead.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CONNECT_RETRY = 0.02


class QmpError(RuntimeError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__(f"QMP {command}: {error_class}: {description}")
        self.command = command
        self.error_class = error_class
        self.description = description


class QmpClosedError(ConnectionError):
    """The QMP connection is gone (QEMU exited, or the client was closed)."""


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0  # QEMU's clock, seconds since the epoch

    @classmethod
    def of(cls, message: dict[str, Any]) -> Event:
        stamp = message.get("timestamp") or {}
        seconds = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
        return cls(message["event"], message.get("data") or {}, seconds)


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.message: dict[str, Any] | None = None


class QmpClient:
    """One negotiated QMP connection. Make it with ``connect``."""

    def __init__(self, sock: socket.socket, on_event: Callable[[Event], None] | None = None):
        self._sock = sock
        self._buffer = b""
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._events: list[Event] = []
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self.greeting: dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read_loop, name="qmp-reader", daemon=True)

    @classmethod
    def connect(
        cls,
        path: Path,
        timeout: float = 30.0,
        on_event: Callable[[Event], None] | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> QmpClient:
        """Connect (retrying while QEMU creates the socket), read the greeting, negotiate.

        ``alive`` says whether QEMU still runs, so a QEMU that died gives an error at once.
        """
        deadline = time.monotonic() + timeout
        sock = _connect_when_listening(path, deadline, alive)
        client = cls(sock, on_event)
        try:
            client._handshake(deadline)
        except BaseException:
            sock.close()
            raise
        return client

    def _handshake(self, deadline: float) -> None:
        self._sock.settimeout(max(0.01, deadline - time.monotonic()))
        greeting = self._read_message()
        if "QMP" not in greeting:
            raise QmpClosedError(f"not a QMP greeting: {greeting!r}")
        self.greeting = greeting["QMP"]
        self._send({"execute": "qmp_capabilities"})
        answer = self._read_message()
        while "event" in answer:  # none are sent before negotiation, but keep any that are
            self._events.append(Event.of(answer))
            answer = self._read_message()
        if "error" in answer:
            error = answer["error"]
            raise QmpError("qmp_capabilities", error.get("class", ""), error.get("desc", ""))
        self._sock.settimeout(None)
        self._reader.start()

    # --- commands ---------------------------------------------------------------------------

    def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        timeout: float = 30.0,
        fds: tuple[int, ...] = (),
    ) -> Any:
        """Run one command; its ``return`` value, or ``QmpError`` / ``TimeoutError``.

        ``fds`` travel with the command as SCM_RIGHTS (for ``getfd``).
        """
        if self._closed.is_set():
            raise QmpClosedError(f"QMP {command}: the connection is closed")
        ident = next(self._ids)
        pending = self._pending[ident] = _Pending()
        message: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            message["arguments"] = arguments
        try:
            self._send(message, fds)
            if not pending.done.wait(timeout):
                raise TimeoutError(f"QMP {command} got no answer within {timeout:g} s")
        finally:
            self._pending.pop(ident, None)
        if pending.message is None:
            raise QmpClosedError(f"QMP {command}: QEMU closed the connection before answering")
        if "error" in pending.message:
            error = pending.message["error"]
            raise QmpError(command, error.get("class", ""), error.get("desc", ""))
        return pending.message.get("return")

    def _send(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        data = json.dumps(message).encode() + b"\n"
        with self._send_lock:
            try:
                if fds:
                    rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))
                    sent = self._sock.sendmsg([data], [rights])
                    data = data[sent:]
                self._sock.sendall(data)
            except OSError as exc:
                raise QmpClosedError(f"QMP: cannot send ({exc})") from exc

    # --- events -----------------------------------------------------------------------------

    def events(self) -> list[Event]:
        with self._changed:
            return list(self._events)

    def mark(self) -> int:
        """A position in the event history, for ``wait_event(since=...)``."""
        with self._changed:
            return len(self._events)

    def wait_event(
        self,
        names: str | Iterable[str],
        timeout: float,
        since: int = 0,
        match: Callable[[Event], bool] | None = None,
    ) -> Event:
        """The first event named ``names`` at or after position ``since`` (waiting for it)."""
        wanted = {names} if isinstance(names, str) else set(names)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self._events[since:]:
                    if event.name in wanted and (match is None or match(event)):
                        return event
                since = len(self._events)
                remaining = deadline - time.monotonic()
                if self._closed.is_set() or remaining <= 0:
                    state = "the connection closed" if self._closed.is_set() else "timed out"
                    raise TimeoutError(f"no QMP event {sorted(wanted)}: {state}")
                self._changed.wait(remaining)

    # --- the reader -------------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while True:
                self._dispatch(self._read_message())
        except (OSError, QmpClosedError, ValueError) as exc:
            log.debug("QMP reader stops: %s", exc)
        finally:
            self._closed.set()
            for pending in list(self._pending.values()):
                pending.done.set()
            with self._changed:
                self._changed.notify_all()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "event" in message:
            event = Event.of(message)
            with self._changed:
                self._events.append(event)
                self._changed.notify_all()
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("QMP event handler failed on %s", event.name)
            return
        pending = self._pending.get(message.get("id"))  # type: ignore[arg-type]
        if pending is not None:
            pending.message = message
            pending.done.set()

    def _read_message(self) -> dict[str, Any]:
        while True:
            while b"\n" not in self._buffer:
                self._receive()
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip():
                return json.loads(line)

    def _receive(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise QmpClosedError("QEMU closed the QMP connection")
        self._buffer += chunk

    # --- closing ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float) -> bool:
        return self._closed.wait(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if self._reader.is_alive() and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        self._closed.set()


def _connect_when_listening(
    path: Path, deadline: float, alive: Callable[[], bool] | None
) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(Path(path).resolve()))  # a link's target may be shorter
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if alive is not None and not alive():
                raise QmpClosedError(f"QEMU exited before {path} answered") from exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not answer in time") from exc
            time.sleep(CONNECT_RETRY)
