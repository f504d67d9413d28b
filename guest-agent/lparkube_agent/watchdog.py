"""Self-fencing in the guest: the lease the operator grants in its signed answer to a report,
and the watchdog device the agent pets only while that lease holds.

The first lease arms the watchdog: the agent opens the device (which starts its timer) and sets
the granted timeout. A thread then writes to it every second while the lease holds. Once the
operator stops granting leases (it is unreachable, or it lost sight of this guest), the writes
stop and the watchdog powers the guest off at most the timeout after the lease ended: by then
the operator may start the VM elsewhere. The device is never closed with the magic character
while armed (closing it otherwise leaves the timer running), except when a verified answer
says ``{"disarm": true}``: the operator turned self-fencing off. An answer that grants nothing
(204) changes nothing: the lease held runs out at its time (the operator fences this guest).
A guest about to hibernate closes it too: its timer would cut the image short, and the VM
that resumes has new hardware, not running.

Lease times are on the guest's boot-time clock (``CLOCK_BOOTTIME``): monotonic, and it counts
time the guest spent suspended, so no lease outlives a suspend.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import math
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PET_SECONDS = 1.0
PET = b"."  # anything but the magic character
MAGIC_CLOSE = b"V"  # written just before close, it stops the timer (unless nowayout)
INT = struct.Struct("i")


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    """An ioctl request number as linux/ioctl.h (asm-generic, as on x86, arm64, s390 and
    riscv) encodes it: 2 direction bits, 14 size bits, 8 type bits, 8 number bits."""
    return direction << 30 | size << 16 | ord(kind) << 8 | number


_IOC_WRITE, _IOC_READ = 1, 2  # the direction: the caller writes, reads the argument
# linux/watchdog.h, with WATCHDOG_IOCTL_BASE 'W': WDIOC_SETTIMEOUT _IOWR('W', 6, int),
# WDIOC_GETTIMEOUT _IOR('W', 7, int)
WDIOC_SETTIMEOUT = _ioc(_IOC_READ | _IOC_WRITE, "W", 6, INT.size)
WDIOC_GETTIMEOUT = _ioc(_IOC_READ, "W", 7, INT.size)

boot_clock = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Lease:
    """What a verified report answer grants (docs/agent-protocol.md, "Self-fencing")."""

    seconds: float  # from the moment before the report was sent
    watchdog_timeout: int
    renew: float  # when to report again, if sooner than the interval


@dataclass(frozen=True)
class Disarm:
    """A verified answer's ``{"disarm": true}``: self-fencing is off for this partition."""


DISARM = Disarm()


class Watchdog:
    """The watchdog device, armed by the first lease and pet while one holds; thread-safe.

    ``clock`` gives the time leases are measured in, ``ioctl`` is ``fcntl.ioctl`` (tests stand
    in for both, and for the device with a plain file)."""

    def __init__(
        self,
        device: Path,
        *,
        clock: Callable[[], float] = boot_clock,
        ioctl: Callable[[int, int, bytearray], object] | None = None,
    ) -> None:
        self.device = device
        self.clock = clock
        self._ioctl = ioctl or fcntl.ioctl
        self._lock = threading.Lock()
        self._until = -math.inf  # when the lease ends, on `clock`
        self._fd: int | None = None  # open: armed
        self._requested = 0  # the timeout last asked of the device
        self._timeout = 0  # the timeout the device has (read back), 0 when not armed
        self._message = ""
        self._granted = False  # a lease came since the agent started
        self._stop = threading.Event()

    def answered(self, lease: Lease | Disarm | None, sent_at: float) -> None:
        """A verified answer to the report sent at ``sent_at`` (on ``clock``): a lease, a
        disarm, or nothing (the lease held runs out)."""
        with self._lock:
            if lease is None:
                return
            if isinstance(lease, Disarm):
                self._until = -math.inf
                if self._fd is not None:
                    self._close("disarmed: the operator turned self-fencing off")
                return
            self._until = sent_at + lease.seconds
            self._granted = True
            if self._fd is None or lease.watchdog_timeout != self._requested:
                self._arm(lease.watchdog_timeout)

    def pet(self) -> bool:
        """Write to the device if it is armed and the lease holds; True if it did."""
        with self._lock:
            if self._fd is None or self.clock() >= self._until:
                return False
            os.write(self._fd, PET)
            return True

    def disarm(self, why: str) -> None:
        """Stop the timer (the guest hibernates); the next lease arms it again."""
        with self._lock:
            if self._fd is not None:
                self._close(why)

    def report(self) -> dict | None:
        """The report's ``watchdog``, None until the operator granted a lease."""
        with self._lock:
            if not self._granted:
                return None
            return {
                "device": str(self.device),
                "timeoutSeconds": self._timeout,
                "armed": self._fd is not None,
                "message": self._message,
            }

    def start(self) -> None:
        threading.Thread(target=self._pet_loop, name="watchdog", daemon=True).start()

    def stop(self) -> None:
        """Stop petting; the device stays open, so an armed timer keeps counting."""
        self._stop.set()

    def _pet_loop(self) -> None:
        while not self._stop.wait(PET_SECONDS):
            try:
                self.pet()
            except OSError as error:
                log.warning("petting the watchdog %s failed: %s", self.device, error)

    def _arm(self, timeout: int) -> None:
        self._requested = timeout
        if self._fd is None:
            try:
                # O_APPEND means nothing to a device; a stand-in file keeps every write.
                self._fd = os.open(self.device, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except OSError as error:
                self._not_armed(f"cannot open {self.device}: {error.strerror}")
                return
        step = "WDIOC_SETTIMEOUT"
        try:
            self._int_ioctl(WDIOC_SETTIMEOUT, timeout)
            step = "WDIOC_GETTIMEOUT"
            self._timeout = self._int_ioctl(WDIOC_GETTIMEOUT, 0)
        except OSError as error:
            self._close(f"{step} ({timeout} s) on {self.device} failed: {error.strerror}")
            return
        self._message = ""
        log.info("watchdog %s armed, timeout %d s", self.device, self._timeout)

    def _int_ioctl(self, request: int, value: int) -> int:
        assert self._fd is not None
        buffer = bytearray(INT.pack(value))
        self._ioctl(self._fd, request, buffer)
        return INT.unpack(buffer)[0]

    def _close(self, why: str) -> None:
        """The magic close: the timer stops."""
        assert self._fd is not None
        fd, self._fd, self._timeout = self._fd, None, 0
        try:
            os.write(fd, MAGIC_CLOSE)
        except OSError as error:
            why = f"{why}; the magic close failed ({error.strerror}): the timer may still run"
        os.close(fd)
        self._not_armed(why)

    def _not_armed(self, why: str) -> None:
        if why != self._message:
            log.warning("watchdog %s not armed: %s", self.device, why)
        self._message = why
