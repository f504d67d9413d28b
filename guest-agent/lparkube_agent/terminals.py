"""Pseudo-terminal masters of apps started under `lparkube-agent run`.

The run wrapper passes its pty master to the daemon (SCM_RIGHTS), so the daemon itself can
type an app's save keys. A master is held only while its wrapper's connection is open: when the
wrapper goes away the daemon closes its copy, so the app still gets its hangup.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import threading
import time

TIOCGPTN = getattr(termios, "TIOCGPTN", 0x80045430)
PTS_MAJOR = 136


def pty_number(fd: int) -> int:
    """The N of /dev/pts/N behind a pty master; OSError if `fd` is not a master."""
    raw = fcntl.ioctl(fd, TIOCGPTN, b"\0\0\0\0")
    return struct.unpack("I", raw)[0]


def pts_device(number: int) -> int:
    """The device number (as in /proc/<pid>/stat tty_nr) of /dev/pts/<number>."""
    return os.makedev(PTS_MAJOR + (number >> 8), number & 0xFF)


class Terminals:
    """Registration key -> pty master fd; thread-safe; closes fds it replaces or drops."""

    def __init__(self) -> None:
        self._fds: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()

    def attach(self, key: tuple[int, str], fd: int) -> None:
        with self._lock:
            old = self._fds.get(key)
            self._fds[key] = fd
        if old is not None and old != fd:
            os.close(old)

    def detach(self, key: tuple[int, str], only: int | None = None) -> None:
        """Close the key's master (only if it is still `only`, when given)."""
        with self._lock:
            if only is not None and self._fds.get(key) != only:
                return
            fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def has(self, key: tuple[int, str]) -> bool:
        with self._lock:
            return key in self._fds

    def type(self, key: tuple[int, str], data: bytes, deadline: float) -> None:
        """Write keys into the terminal; TimeoutError if the app stops reading its input."""
        with self._lock:
            fd = self._fds.get(key)
            if fd is None:
                raise LookupError("terminal not attached")
            fd = os.dup(fd)  # stays valid even if the wrapper detaches meanwhile
        try:
            while data:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the terminal's input buffer is full")
                _, writable, _ = select.select([], [fd], [], remaining)
                if writable:
                    data = data[os.write(fd, data) :]
        finally:
            os.close(fd)

    def close_all(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)
