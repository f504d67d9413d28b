"""Storage changes (``POST /v1/storage``): the operator saw a disk's backing storage replaced,
resized or lost, and the agent has the guest's kernel look at the disk again.

For each disk of the change, found by its serial under ``/dev/disk/by-id/virtio-<serial>`` (the
serial as the kernel keeps it: virtio-blk keeps 20 bytes, so a longer one is also looked for cut
there), or else by the disk's name: the agent writes ``1`` to ``/sys/block/<dev>/device/rescan``
when the device has one (SCSI disks; a virtio-blk disk learns its new capacity from the host at
once and has none), then reads the size the kernel has now from ``/sys/block/<dev>/size``. A
disk whose backing is ``Lost`` is only looked at, never rescanned (its I/O fails anyway).

Changes are idempotent by id, also across restarts: the result is journaled before it is
answered, and a known id is answered with the kept result, nothing done again.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .guestfiles import GuestFiles, read_text, write_kernel_file
from .journal import Journal
from .paging import SECTOR_BYTES
from .saves import instruction_id, iso

log = logging.getLogger(__name__)

CHANGES = ("Replaced", "Resized", "Lost")
LOST = "Lost"
MAX_DISKS = 64
KEEP = 64  # ids remembered: the operator only ever resends its latest change
VIRTIO_SERIAL_BYTES = 20  # VIRTIO_BLK_ID_BYTES: what the guest's kernel keeps of a serial
MAX_MESSAGE = 200
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$")  # a path component, never "..": safe


@dataclass(frozen=True)
class DiskChange:
    serial: str
    name: str
    change: str


@dataclass(frozen=True)
class StorageRequest:
    """A validated storage change."""

    id: str
    disks: tuple[DiskChange, ...]


def parse_storage_request(data: object) -> StorageRequest:
    """The change from its JSON; ValueError names the field to fix."""
    ident = instruction_id(data)
    assert isinstance(data, dict)
    disks = data.get("disks")
    if not isinstance(disks, list) or not 0 < len(disks) <= MAX_DISKS:
        raise ValueError(f"disks must be a list of 1..{MAX_DISKS} disks")
    parsed = []
    for disk in disks:
        if not isinstance(disk, dict):
            raise ValueError("every disk must be an object {serial, name, change}")
        serial, name, change = disk.get("serial"), disk.get("name", ""), disk.get("change")
        if not isinstance(serial, str) or not _NAME.match(serial):
            raise ValueError("disks[].serial must be a disk serial (letters, digits, ._:-)")
        if not isinstance(name, str) or (name and not _NAME.match(name)):
            raise ValueError("disks[].name must be a disk name (letters, digits, ._:-)")
        if change not in CHANGES:
            raise ValueError(f"disks[].change must be one of {', '.join(CHANGES)}")
        parsed.append(DiskChange(serial, name, change))
    return StorageRequest(ident, tuple(parsed))


@dataclass(frozen=True)
class StorageRun:
    """One change as the journal keeps it and the answers and the report show it."""

    id: str
    at: float
    disks: list[dict] = field(default_factory=list)

    def result(self) -> dict:
        return {"id": self.id, "at": iso(self.at), "disks": self.disks}

    def to_json(self) -> dict:
        return asdict(self)


DISK_FIELDS = {"serial": str, "device": str, "sizeBytes": int, "rescanned": bool, "message": str}


def decode_run(data: object) -> StorageRun:
    """A run read back from the journal; ValueError or TypeError if it is malformed."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    run = StorageRun(**data)
    if (
        not isinstance(run.id, str)
        or isinstance(run.at, bool)
        or not isinstance(run.at, (int, float))
    ):
        raise ValueError("id or at has the wrong type")
    for disk in run.disks if isinstance(run.disks, list) else [None]:
        if not isinstance(disk, dict) or not all(
            isinstance(disk.get(k), t) for k, t in DISK_FIELDS.items()
        ):
            raise ValueError("disks are malformed")
    return run


class StorageStore:
    """Storage changes by id, the last ``KEEP`` kept (journaled); one handled at a time."""

    def __init__(
        self,
        files: GuestFiles,
        *,
        journal: Journal[StorageRun] | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.files = files
        self._journal: Journal[StorageRun] = journal or Journal(None, decode_run, "storage")
        self._on_change = on_change
        self._runs = {run.id: run for run in self._journal.load()[-KEEP:]}
        self._lock = threading.Lock()

    def last(self) -> dict | None:
        """The newest change, as the report shows it."""
        with self._lock:
            newest = next(reversed(self._runs.values()), None)
        return newest.result() if newest else None

    def submit(self, request: StorageRequest) -> tuple[StorageRun, bool]:
        """The change's result (and True) if it was handled now, the kept one (and False) for
        a known id."""
        with self._lock:
            known = self._runs.get(request.id)
            if known is not None:
                return known, False
            looked = [self._look(request.id, d) for d in request.disks]
            run = StorageRun(request.id, time.time(), looked)
            runs = {**self._runs, run.id: run}
            kept = list(runs.values())[-KEEP:]
            self._journal.write(kept)
            self._runs = {r.id: r for r in kept}
        self._on_change()
        return run, True

    def _look(self, ident: str, disk: DiskChange) -> dict:
        """Find, rescan (unless lost) and measure one disk; what was found, for the answer."""
        found = self._device(disk)
        result = {"serial": disk.serial, "device": "", "sizeBytes": 0, "rescanned": False}
        if found is None:
            log.warning("storage change %s: %s of disk %s: no such disk in the guest", ident,
                        disk.change, disk.serial)  # fmt: skip
            return {**result, "message": f"no disk with serial {disk.serial} in the guest"}
        result["device"] = str(found)
        block = self.files.block(found.name)
        message = ""
        rescan = block / "device/rescan"
        if disk.change == LOST:
            message = "its backing storage is lost: not rescanned"
        elif rescan.exists():
            try:
                write_kernel_file(rescan, "1")
                result["rescanned"] = True
            except OSError as error:
                message = f"rescan failed: {error.strerror} (errno {error.errno})"
        else:
            message = "no rescan for this device: the kernel has the host's size"
        size = _sectors(read_text(block / "size"))
        result["sizeBytes"] = size * SECTOR_BYTES if size is not None else 0
        if size is None:
            message = (message + "; " if message else "") + "its size is unreadable"
        rescanned = ", rescanned" if result["rescanned"] else ""
        log.info("storage change %s: %s of disk %s (%s): %d bytes%s", ident, disk.change,
                 disk.serial, found, result["sizeBytes"], rescanned)  # fmt: skip
        return {**result, "message": message[:MAX_MESSAGE]}

    def _device(self, disk: DiskChange) -> Path | None:
        """The device node behind the disk's by-id link, None if there is none."""
        names = [disk.serial, disk.serial[:VIRTIO_SERIAL_BYTES]]
        if disk.name:
            names.append(disk.name)
        for name in dict.fromkeys(names):
            link = self.files.disk_by_serial(name)
            if not os.path.lexists(link):
                continue
            path = link.resolve()
            if path.exists() and self.files.block(path.name).is_dir():
                return path
        return None


def _sectors(text: str | None) -> int | None:
    value = (text or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None
