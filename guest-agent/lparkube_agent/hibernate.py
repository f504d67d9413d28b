"""Hibernate runs: the guest's own kernel writes its memory to the paging device (suspend to
disk) and powers off; when the image is restored the run ends where it was, as ``Resumed``.

A request (``POST /v1/hibernate``) is checked first and refused, with nothing done, when the
guest cannot hibernate now (``NoPagingDevice``, ``SwapInactive``, ``Unsupported``, ``Busy``,
``TooSmall``, in that order). Otherwise the run is journaled as ``Hibernating`` and answered;
then, in the background: the paging device's swap area is re-made if the device grew, the
disks are synced, ``/sys/power/resume`` gets the device's MAJ:MIN, ``/sys/power/disk``
``shutdown`` and ``/sys/power/state`` ``disk``. That last write returns once the guest has
been restored from the image (or at once, with the kernel's errno, when hibernation failed):
the run is journaled ``Resumed`` with the image size the kernel logged, or ``Failed``.

Runs are idempotent by id, also across agent restarts: a run found ``Hibernating`` in the
journal at start was interrupted (the agent stopped, or the guest booted without restoring
the image); it ends ``Failed`` and is never repeated.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

from .guestfiles import (
    GuestFiles,
    boot_id,
    kernel_messages,
    last_kernel_seq,
    meminfo,
    read_text,
    write_kernel_file,
)
from .journal import Journal
from .paging import Paging, PagingError, expanded
from .saves import instruction_id, iso, parse_time

log = logging.getLogger(__name__)

HIBERNATING, RESUMED, FAILED = "Hibernating", "Resumed", "Failed"
NO_PAGING_DEVICE = "NoPagingDevice"
SWAP_INACTIVE = "SwapInactive"
TOO_SMALL = "TooSmall"
BUSY = "Busy"
UNSUPPORTED = "Unsupported"
MARGIN_BYTES = 16 * 1024 * 1024  # the image's metadata and what runs while it is made
ANSWER_SECONDS = 2.0  # the answer goes out before the guest freezes (or after this, anyway)
KEEP = 64
MAX_SERIAL = 64
_NEED_TO_COPY = re.compile(r"Need to copy (\d+) pages")


class RunFailedError(Exception):
    """The background run could not hibernate; the message says why."""


class RefusedError(Exception):
    """The guest cannot hibernate now; ``reason`` is one of the refusal words."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class HibernateRequest:
    """A validated hibernate instruction."""

    id: str
    serial: str
    deadline: float | None  # epoch seconds


def parse_hibernate_request(data: object) -> HibernateRequest:
    """The instruction from its JSON; ValueError names the field to fix."""
    ident = instruction_id(data)
    assert isinstance(data, dict)
    serial = data.get("serial")
    if not isinstance(serial, str) or not 0 < len(serial) <= MAX_SERIAL or not serial.isprintable():
        raise ValueError(f"serial must be the paging disk's serial (1..{MAX_SERIAL} characters)")
    deadline = data.get("deadline")
    return HibernateRequest(ident, serial, None if deadline is None else parse_time(deadline))


@dataclass(frozen=True)
class HibernateRun:
    """One run as the journal keeps it and the answers and reports show it."""

    id: str
    serial: str
    state: str
    requested_at: float
    deadline: float | None = None
    resumed_at: float | None = None
    image_bytes: int | None = None
    message: str = ""
    boot_id: str | None = None  # the boot it was requested in
    kmsg_seq: int = -1  # the newest kernel record then: the image's size is logged after it

    def result(self) -> dict:
        """The answer's body and the report's ``hibernation``."""
        body: dict = {"id": self.id, "state": self.state, "requestedAt": iso(self.requested_at)}
        if self.resumed_at is not None:
            body["resumedAt"] = iso(self.resumed_at)
        if self.image_bytes is not None:
            body["imageBytes"] = self.image_bytes
        body["message"] = self.message
        return body

    def to_json(self) -> dict:
        return asdict(self)


_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "serial": (str,),
    "state": (str,),
    "requested_at": (int, float),
    "deadline": (int, float, type(None)),
    "resumed_at": (int, float, type(None)),
    "image_bytes": (int, type(None)),
    "message": (str,),
    "boot_id": (str, type(None)),
    "kmsg_seq": (int,),
}


def decode_run(data: object) -> HibernateRun:
    """A run read back from the journal; ValueError or TypeError if it is malformed."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    run = HibernateRun(**data)
    for f in fields(run):
        value = getattr(run, f.name)
        if isinstance(value, bool) or not isinstance(value, _TYPES[f.name]):
            raise ValueError(f"{f.name} has the wrong type")
    if run.state not in (HIBERNATING, RESUMED, FAILED):
        raise ValueError(f"unknown state {run.state!r}")
    return run


def image_bytes(messages: list, after: int, page_size: int) -> int | None:
    """What the kernel said it copied ("Need to copy N pages", logged before the snapshot, so
    in the restored log) in bytes: the last such record newer than ``after``."""
    counts = [
        int(match.group(1))
        for m in messages
        if m.seq > after and (match := _NEED_TO_COPY.search(m.text))
    ]
    return counts[-1] * page_size if counts else None


def required_bytes(memory: dict[str, int], swapped: int) -> int:
    """Swap the image needs: the memory in use (MemTotal - MemAvailable), what is swapped out
    to the device already (it holds slots, or comes back into memory when the area is re-made),
    and a margin."""
    return memory["MemTotal"] - memory["MemAvailable"] + swapped + MARGIN_BYTES


@dataclass
class _Pending:
    run: HibernateRun
    answered: threading.Event = field(default_factory=threading.Event)


class HibernationStore:
    """Hibernate runs by id: at most one under way, the last ``KEEP`` kept (journaled)."""

    def __init__(
        self,
        files: GuestFiles,
        paging: Paging,
        *,
        journal: Journal[HibernateRun] | None = None,
        busy: Callable[[], bool] = lambda: False,
        on_change: Callable[[], None] = lambda: None,
        before_suspend: Callable[[], None] = lambda: None,
    ) -> None:
        self.files = files
        self.paging = paging
        self._journal: Journal[HibernateRun] = journal or Journal(None, decode_run, "hibernate")
        self._busy = busy
        self._on_change = on_change
        self._before_suspend = before_suspend
        self._runs: dict[str, HibernateRun] = {}  # in request order, oldest first
        self._lock = threading.Lock()  # the runs
        self._writing = threading.Lock()  # journal, then memory: one change at a time
        self._restore()

    def _restore(self) -> None:
        booted = boot_id(self.files)
        interrupted = False
        for kept in self._journal.load()[-KEEP:]:
            run = kept
            if kept.state == HIBERNATING:
                interrupted = True
                if kept.boot_id is not None and booted is not None and kept.boot_id != booted:
                    why = "the guest booted again without restoring the image"
                else:
                    why = "the agent stopped while hibernating"
                run = replace(kept, state=FAILED, message=f"{why}; the run is not repeated")
                log.warning("hibernate run %s was interrupted: %s", run.id, why)
            self._runs[run.id] = run
        if interrupted:
            self._journal.write(list(self._runs.values()))

    def last(self) -> dict | None:
        """The newest run, as the report shows it."""
        with self._lock:
            newest = next(reversed(self._runs.values()), None)
        return newest.result() if newest else None

    def submit(self, request: HibernateRequest) -> tuple[HibernateRun, Callable[[], None]]:
        """The run for this id, started if new (journaled first), and what to call once the
        answer is out: the guest freezes only then. Raises RefusedError."""
        with self._writing:
            with self._lock:
                known = self._runs.get(request.id)
            if known is not None:
                return known, lambda: None
            self._check(request)
            run = HibernateRun(
                request.id,
                request.serial,
                HIBERNATING,
                time.time(),
                deadline=request.deadline,
                boot_id=boot_id(self.files),
                kmsg_seq=last_kernel_seq(self.files),
            )
            self._store(run)
        pending = _Pending(run)
        worker = threading.Thread(target=self._execute, args=(pending,), daemon=True)
        worker.start()
        log.info("hibernate run %s: journaled, hibernating", run.id)
        return run, pending.answered.set

    def _check(self, request: HibernateRequest) -> None:
        """Raises RefusedError naming why the guest cannot hibernate now; touches nothing."""
        device = self.paging.device() if request.serial == self.paging.serial else None
        if device is None:
            missing = f"no disk with serial {request.serial!r} is attached"
            raise RefusedError(NO_PAGING_DEVICE, missing)
        area = self.paging.area(device)
        if area is None:
            why = f": {self.paging.message}" if self.paging.message else ""
            raise RefusedError(SWAP_INACTIVE, f"{device.path} is not swap now{why}")
        power = self.files.power
        states = (read_text(power / "state") or "").split()
        modes = (read_text(power / "disk") or "").replace("[", " ").replace("]", " ").split()
        if "disk" not in states or "shutdown" not in modes or not (power / "resume").exists():
            raise RefusedError(UNSUPPORTED, "this kernel offers no suspend to disk (/sys/power)")
        if device.numbers is None:
            raise RefusedError(UNSUPPORTED, f"no MAJ:MIN for {device.path} in /sys/block")
        memory = meminfo(self.files)
        if "MemTotal" not in memory or "MemAvailable" not in memory:
            raise RefusedError(UNSUPPORTED, "cannot read MemTotal and MemAvailable (/proc/meminfo)")
        if any(r.state == HIBERNATING for r in self._runs.values()) or self._busy():
            raise RefusedError(BUSY, "another hibernation or a save is under way; ask again later")
        capacity = area.size_bytes
        if expanded(device, area, self.paging.page_size) and device.size_bytes is not None:
            capacity = device.size_bytes - self.paging.page_size  # once the area is re-made
        need = required_bytes(memory, area.used_bytes)
        if capacity < need:
            raise RefusedError(
                TOO_SMALL,
                f"the swap area holds {capacity} bytes; the image needs about {need} "
                f"(memory in use, swapped out and a {MARGIN_BYTES // 2**20} MiB margin)",
            )

    def _execute(self, pending: _Pending) -> None:
        pending.answered.wait(ANSWER_SECONDS)
        run = pending.run
        try:
            self._hibernate(run)
        except (OSError, PagingError, RunFailedError) as error:
            detail = str(error)
            if isinstance(error, OSError):
                detail = f"{error.filename}: {error.strerror} (errno {error.errno})"
            self._finish(replace(run, state=FAILED, message=detail))
            return
        found = image_bytes(kernel_messages(self.files), run.kmsg_seq, self.paging.page_size)
        self._finish(replace(run, state=RESUMED, resumed_at=time.time(), image_bytes=found))

    def _hibernate(self, run: HibernateRun) -> None:
        device = self.paging.device()
        if device is None or device.numbers is None:
            raise RunFailedError("the paging device went away")
        self.paging.remake_if_expanded(device)
        if run.deadline is not None and time.time() >= run.deadline:
            raise RunFailedError("the deadline passed before the guest could hibernate")
        os.sync()
        power = self.files.power
        write_kernel_file(power / "resume", device.numbers)
        write_kernel_file(power / "disk", "shutdown")
        log.info("hibernate run %s: suspending to %s (%s)", run.id, device.path, device.numbers)
        self._before_suspend()
        write_kernel_file(power / "state", "disk")  # returns once restored, or failed

    def _finish(self, run: HibernateRun) -> None:
        with self._writing:
            self._store(run)
        log.info("hibernate run %s: %s %s", run.id, run.state, run.message)
        self._on_change()

    def _store(self, run: HibernateRun) -> None:
        """Journal the runs with this one (added or updated), then let it be seen: an answer
        or report never shows a state a restarted agent would not know."""
        with self._lock:
            runs = {**self._runs, run.id: run}
        kept = list(runs.values())[-KEEP:]
        self._journal.write(kept)
        with self._lock:
            self._runs = {r.id: r for r in kept}
