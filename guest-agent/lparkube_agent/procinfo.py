"""Facts about local processes, from /proc and from the kernel's socket credentials.

A pid alone is not an identity: pids are reused. An entry is bound to the pid *and* its start
time (field 22 of /proc/<pid>/stat, in clock ticks since boot), so a recycled pid never inherits
another process's registration, signals or keystrokes.

Checking a process and then acting on it by pid is still a race (the pid can be reused between
the two), so whatever checks and then acts goes through a `Process`: /proc/<pid> opened once.
Every file read through that directory, and every signal sent with it (`pidfd_send_signal`
takes a /proc/<pid> descriptor), concerns the process it was opened for, or fails with ESRCH
once that process is gone, whoever has the pid by then.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

PROC = Path("/proc")
Fact = TypeVar("Fact")


class Process:
    """One process, pinned by its open /proc/<pid> directory (see the module docstring).

    Raises ProcessLookupError if there is no such process; afterwards each fact is None (or
    False) once the process is gone.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._dir = os.open(PROC / str(pid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as error:
            raise ProcessLookupError(f"no process {pid}") from error

    def close(self) -> None:
        os.close(self._dir)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, name: str) -> str | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir)
        except OSError:
            return None  # ESRCH: the process is gone (even if its pid is in use again)
        try:
            with os.fdopen(fd, "rb") as handle:
                return handle.read().decode(errors="replace")
        except OSError:
            return None

    def _stat_fields(self) -> list[str] | None:
        """Fields of stat after the command name (which may contain spaces)."""
        raw = self._read("stat") or ""
        end = raw.rfind(")")
        if end < 0:
            return None
        fields = raw[end + 2 :].split()
        # After the name, fields start at 3 (state); starttime is field 22.
        return fields if len(fields) >= 20 else None

    def start_time(self) -> int | None:
        """The start time in clock ticks since boot, or None if the process is gone."""
        fields = self._stat_fields()
        try:
            return None if fields is None else int(fields[19])
        except ValueError:
            return None

    def alive(self, started: int | None) -> bool:
        """True if the process runs (not a zombie) and started at `started` (when given)."""
        fields = self._stat_fields()
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return started is None or fields[19] == str(started)

    def tty_nr(self) -> int | None:
        """The controlling terminal's device number (field 7), or None."""
        fields = self._stat_fields()
        try:
            return None if fields is None else int(fields[4])
        except ValueError:
            return None

    def _status(self, key: str) -> list[str] | None:
        """The values of one line of status ("Uid:", "SigCgt:", ...)."""
        for line in (self._read("status") or "").splitlines():
            if line.startswith(key):
                return line.split()[1:]
        return None

    def uids(self) -> tuple[int, int] | None:
        """(real, effective) uid, or None."""
        values = self._status("Uid:")
        try:
            return None if values is None else (int(values[0]), int(values[1]))
        except (ValueError, IndexError):
            return None

    def catches(self, signum: int) -> bool:
        """True if the process has a handler for the signal (its bit in SigCgt). An ignored
        signal saves nothing; one only blocked (for signalfd or sigwait) does not count either:
        nothing here tells whether the process reads it, or will die of it once unblocked."""
        values = self._status("SigCgt:")
        try:
            return values is not None and bool(int(values[0], 16) & (1 << (signum - 1)))
        except (ValueError, IndexError):
            return False

    def send_signal(self, signum: int) -> None:
        """Signal this process; ProcessLookupError if it is gone (never whoever has its pid)."""
        try:
            signal.pidfd_send_signal(self._dir, signum)
        except (AttributeError, OSError) as error:
            if isinstance(error, OSError) and error.errno != errno.ENOSYS:
                raise
            # Linux < 5.1 (or a Python built on its headers) cannot signal through the
            # directory: check that the process still runs right before kill(), which leaves
            # a reuse microseconds, not the whole check.
            if not self.alive(None):
                raise ProcessLookupError(f"no process {self.pid}") from error
            os.kill(self.pid, signum)

    def program_names(self) -> list[str]:
        """Names the input table may know the process by: argv[0], the executable, the comm."""
        names: list[str] = []
        argv0 = (self._read("cmdline") or "").split("\0", 1)[0]
        names.append(os.path.basename(argv0))
        with contextlib.suppress(OSError):
            names.append(os.path.basename(os.readlink("exe", dir_fd=self._dir)))
        names.append((self._read("comm") or "").strip())
        return [n for i, n in enumerate(names) if n and n not in names[:i]]


def _by_pid(pid: int, fact: Callable[[Process], Fact], missing: Fact) -> Fact:
    """One fact about whichever process has `pid` now (for reads that act on nothing)."""
    try:
        process = Process(pid)
    except OSError:
        return missing
    with process:
        return fact(process)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    return _by_pid(pid, Process.start_time, None)


def is_alive(pid: int, started: int | None) -> bool:
    """True if `pid` runs and is the same process that started at `started` (not a zombie)."""
    return _by_pid(pid, lambda process: process.alive(started), False)


def program_names(pid: int) -> list[str]:
    """Names the input table may know the process by (see Process.program_names)."""
    return _by_pid(pid, Process.program_names, [])


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a Unix socket, as the kernel reports it (SO_PEERCRED):
    the connecting process for a server, the listening process for a client."""

    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", raw))


def boot_time(proc: Path = PROC) -> float | None:
    """Seconds since the epoch at which the kernel booted (btime in /proc/stat)."""
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
