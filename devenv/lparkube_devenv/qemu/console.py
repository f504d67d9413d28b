"""The guest's serial console (ttyS0 on ``serial0.sock``, everything logged to ``serial0.log``).

``attach`` is ``virtctl console``: the terminal in raw mode joined to the serial port until
Ctrl-] (or the guest's QEMU going away). ``SerialConsole`` is for tests: it types a line into
the console and waits for text in the log, which holds all the guest ever wrote there.

QEMU's serial socket takes one client at a time: while a terminal is attached, a
``SerialConsole`` waits until it leaves (and gives up after its timeout), and the other way
round.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import selectors
import socket
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

ESCAPE = b"\x1d"  # Ctrl-], as virtctl console
CHUNK = 4096
POLL = 0.1


def attach(socket_path: Path, stdin_fd: int | None = None, stdout_fd: int | None = None) -> None:
    """Join the terminal to the console until Ctrl-] or the socket closes."""
    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    stdout_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(Path(socket_path).resolve()))
        sys.stderr.write("Connected to the serial console. The escape sequence is ^]\r\n")
        sys.stderr.flush()
        with _raw_terminal(stdin_fd):
            _join(sock, stdin_fd, stdout_fd)


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _join(sock: socket.socket, stdin_fd: int, stdout_fd: int) -> None:
    selector = selectors.DefaultSelector()
    selector.register(stdin_fd, selectors.EVENT_READ, "terminal")
    selector.register(sock, selectors.EVENT_READ, "console")
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "terminal":
                    typed = os.read(stdin_fd, CHUNK)
                    before, escaped, _ = typed.partition(ESCAPE)
                    sock.sendall(before)
                    if escaped or not typed:
                        return
                else:
                    shown = sock.recv(CHUNK)
                    if not shown:
                        return
                    _write_all(stdout_fd, shown)
    finally:
        selector.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(CHUNK):
            pass


class SerialConsole:
    """Type into the console; read what the guest wrote from the log.

    It holds one connection while it is open (``close``, or use it as a context manager):
    QEMU feeds the guest's UART from the socket only as fast as the UART takes it, and a
    client that hung up at once would lose what was still unread. A thread drains what the
    guest writes back, so QEMU never waits on us; the log has all of it.
    """

    _tokens = itertools.count(1)

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self.socket_path = Path(socket_path)
        self.log_path = Path(log_path)
        self._sock: socket.socket | None = None

    def _connection(self, timeout: float) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path.resolve()))  # a link's target may be shorter
            sock.settimeout(None)
            threading.Thread(target=_drain, args=(sock,), name="console-drain", daemon=True).start()
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SerialConsole:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def mark(self) -> int:
        """The log's current end: ``wait_for(since=mark)`` sees only what comes after."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def data(self, since: int = 0) -> bytes:
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                return log.read()
        except FileNotFoundError:
            return b""

    def text(self, since: int = 0) -> str:
        return self.data(since).decode(errors="replace")

    def send_line(self, line: str, timeout: float = 10.0) -> None:
        self._connection(timeout).sendall(line.encode() + b"\n")

    def wait_for(self, text: str, timeout: float, since: int = 0) -> int:
        """Wait until the log holds ``text`` after ``since``; the position just after it."""
        wanted = text.encode()
        deadline = time.monotonic() + timeout
        while (found := self.data(since).find(wanted)) < 0:
            if time.monotonic() > deadline:
                tail = self.text(since)[-800:]
                raise TimeoutError(f"{text!r} did not appear on the console; its end:\n{tail}")
            time.sleep(POLL)
        return since + found + len(wanted)

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Run a shell command on the console; what it printed (between two markers)."""
        token = next(self._tokens)
        # The shell computes the markers, so the echo of the typed line never matches them.
        begin, end = f"lparkube-begin-{token}-1", f"lparkube-end-{token}-1"
        typed = f"lparkube-{{}}-{token}-$((0+1))"
        since = self.mark()
        self.send_line(f"echo {typed.format('begin')}; {command}; echo {typed.format('end')}")
        start = self.wait_for(begin, timeout, since)
        stop = self.wait_for(end, timeout, start) - len(end)
        output = self.data(start)[: stop - start].decode(errors="replace")
        return output.replace("\r\n", "\n").removeprefix("\n")
