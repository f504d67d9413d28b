"""Facts about local processes read from /proc.

A pid alone is not an identity: pids are reused. An entry is bound to the pid *and* its start
time (field 22 of /proc/<pid>/stat, in clock ticks since boot), so a recycled pid never inherits
another process's registration, signals or keystrokes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    end = raw.rfind(")")
    if end < 0:
        return None
    return raw[end + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    fields = _stat_fields(pid)
    # After the name, fields start at 3 (state); starttime is field 22.
    if fields is None or len(fields) < 20:
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def tty_nr(pid: int) -> int | None:
    """The controlling terminal device number (field 7), or None."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 5:
        return None
    try:
        return int(fields[4])
    except ValueError:
        return None


def is_alive(pid: int, started: int | None) -> bool:
    """True if `pid` runs and is the same process that started at `started` (not a zombie)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
        return False
    return started is None or fields[19] == str(started)


def uids(pid: int) -> tuple[int, int] | None:
    """(real, effective) uid of the process, or None."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                parts = line.split()
                return int(parts[1]), int(parts[2])
    except (OSError, ValueError, IndexError):
        return None
    return None


def program_names(pid: int) -> list[str]:
    """Names the input table may know the process by: argv[0], the executable, the comm."""
    names: list[str] = []
    base = PROC / str(pid)
    try:
        argv0 = (base / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        names.append(os.path.basename(argv0))
    except OSError:
        pass
    with contextlib.suppress(OSError):
        names.append(os.path.basename(os.readlink(base / "exe")))
    with contextlib.suppress(OSError):
        names.append((base / "comm").read_text().strip())
    return [n for i, n in enumerate(names) if n and n not in names[:i]]


def boot_time() -> float | None:
    """Seconds since the epoch at which the kernel booted (btime in /proc/stat)."""
    try:
        for line in (PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
