"""The kernel's files the agent reads and writes: under /sys, /proc and /dev.

Each of the three is a root the agent is given (``--sysfs``, ``--procfs``, ``--devfs``), so
tests run the real agent process against a fake tree of plain files. Every reader here returns
None (or nothing) for a file that is missing or does not parse: a guest without hibernation,
or an old kernel, reports less, it does not fail.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

KMSG_READ_BYTES = 8192  # a /dev/kmsg read returns one record; it must fit (records < 1 KiB)
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class GuestFiles:
    """The roots of sysfs, procfs and devfs, and the files the agent uses under them."""

    sys: Path = Path("/sys")
    proc: Path = Path("/proc")
    dev: Path = Path("/dev")

    @property
    def boot_id(self) -> Path:
        return self.proc / "sys/kernel/random/boot_id"

    @property
    def meminfo(self) -> Path:
        return self.proc / "meminfo"

    @property
    def swaps(self) -> Path:
        return self.proc / "swaps"

    @property
    def kmsg(self) -> Path:
        return self.dev / "kmsg"

    @property
    def watchdog(self) -> Path:
        return self.dev / "watchdog"

    @property
    def power(self) -> Path:
        return self.sys / "power"

    def disk_by_serial(self, serial: str) -> Path:
        """Where udev (or the guest's init) links a virtio disk by its serial."""
        return self.dev / "disk/by-id" / f"virtio-{serial}"

    def block(self, name: str) -> Path:
        """The sysfs directory of a whole block device (``dev``: MAJ:MIN, ``size``: sectors)."""
        return self.sys / "block" / name


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def boot_id(files: GuestFiles) -> str | None:
    """The kernel's boot id: the same across hibernate and resume, new at every boot."""
    text = (read_text(files.boot_id) or "").strip()
    return text if 0 < len(text) <= 64 and text.isprintable() else None


def meminfo(files: GuestFiles) -> dict[str, int]:
    """/proc/meminfo's values in bytes (the file gives kB), by name; {} if unreadable."""
    values = {}
    for line in (read_text(files.meminfo) or "").splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isascii() and parts[0].isdigit():
            unit = 1024 if parts[1:] == ["kB"] else 1
            values[name.strip()] = int(parts[0]) * unit
    return values


def memory(files: GuestFiles) -> dict[str, int] | None:
    """The report's ``memory``: total and available bytes, or None if unknown."""
    values = meminfo(files)
    if "MemTotal" not in values or "MemAvailable" not in values:
        return None
    return {"totalBytes": values["MemTotal"], "availableBytes": values["MemAvailable"]}


@dataclass(frozen=True)
class SwapArea:
    """One line of /proc/swaps (its sizes are in KiB there, in bytes here)."""

    path: str
    size_bytes: int
    used_bytes: int


def unescape(field: str) -> str:
    """A /proc/swaps path: the kernel writes space, tab, newline and backslash as octal."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def swap_areas(files: GuestFiles) -> list[SwapArea]:
    """The active swap areas; [] if /proc/swaps is unreadable."""
    areas = []
    for line in (read_text(files.swaps) or "").splitlines()[1:]:  # the first is a heading
        parts = line.split()
        if len(parts) < 4 or not all(p.isascii() and p.isdigit() for p in parts[2:4]):
            continue
        areas.append(SwapArea(unescape(parts[0]), int(parts[2]) * 1024, int(parts[3]) * 1024))
    return areas


@dataclass(frozen=True)
class KernelMessage:
    """One /dev/kmsg record: its sequence number and text."""

    seq: int
    text: str


def parse_kmsg(line: str) -> KernelMessage | None:
    """``prio,seq,usec,flags[,...];text`` (Documentation/ABI/testing/dev-kmsg), else None."""
    head, sep, text = line.partition(";")
    fields = head.split(",")
    if not sep or len(fields) < 3 or not (fields[1].isascii() and fields[1].isdigit()):
        return None
    return KernelMessage(int(fields[1]), text)


def kernel_messages(files: GuestFiles) -> list[KernelMessage]:
    """Every record the kernel still holds, oldest first; [] if /dev/kmsg is unreadable.

    /dev/kmsg gives one record a read and EAGAIN at the end (non-blocking), EPIPE when the
    reader fell behind a record that was overwritten (the next read goes on); a plain file
    (a test's tree) gives its lines and then end of file: both are read the same way.
    """
    try:
        fd = os.open(files.kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(fd, KMSG_READ_BYTES)
            except OSError as error:
                if error.errno == errno.EPIPE:
                    continue
                break  # EAGAIN: no more records (or the device refuses us)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    text = b"".join(chunks).decode(errors="replace")
    lines = (parse_kmsg(line) for line in text.splitlines() if not line.startswith(" "))
    return [m for m in lines if m is not None]


def last_kernel_seq(files: GuestFiles) -> int:
    """The sequence number of the newest kernel record, -1 if there is none."""
    return max((m.seq for m in kernel_messages(files)), default=-1)


def write_kernel_file(path: Path, value: str) -> None:
    """Write one value to a sysfs attribute as ``echo value > path`` does; OSError (with the
    kernel's errno) if the kernel refuses it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as error:  # the write's own error names no file: say which one
        raise OSError(error.errno, error.strerror, str(path)) from error
