"""The paging device: the swap LU the operator attaches (virtio serial ``lparkube-paging``).

At start the agent enables it as swap: ``swapon``, after ``mkswap`` only when the device has
no swap signature. The signature is the last 10 bytes of the first page: ``SWAPSPACE2`` for a
swap area; ``S1SUSPEND`` (and its variants) when the device holds a hibernation image, which a
boot that did not restore it leaves there. Such a device is never formatted nor enabled (both
would destroy the image): the report says so in ``paging.message``. A device larger than its
swap area (the LU was expanded) is re-made (swapoff, mkswap, swapon) before a hibernation, so
the image may use all of it.

The commands are injectable (busybox has all three in the guest image, util-linux elsewhere),
like every path (``guestfiles``), so tests run the real agent against a fake tree.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .guestfiles import GuestFiles, SwapArea, read_text, swap_areas

log = logging.getLogger(__name__)

SERIAL = "lparkube-paging"
SWAP_SIGNATURE = b"SWAPSPACE2"
# The kernel's own (S1SUSPEND), older and userspace suspend's, and the one blkid also knows.
IMAGE_SIGNATURES = (b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001")
SIGNATURE_BYTES = 10
SECTOR_BYTES = 512  # /sys/block/<dev>/size counts 512-byte sectors whatever the device's own
COMMAND_SECONDS = 300.0  # swapoff of a well-used area reads it all back into memory
MAX_MESSAGE = 200


@dataclass(frozen=True)
class SwapCommands:
    """The commands that format and switch swap areas (each gets the device as last argument)."""

    mkswap: tuple[str, ...] = ("mkswap",)
    swapon: tuple[str, ...] = ("swapon",)
    swapoff: tuple[str, ...] = ("swapoff",)


@dataclass(frozen=True)
class Device:
    """The paging disk as the kernel sees it now."""

    path: Path  # the node the by-id link points at (/dev/vdc)
    numbers: str | None  # "MAJ:MIN" from /sys/block/<dev>/dev
    size_bytes: int | None


class PagingError(Exception):
    """A swap command failed; the message says which and why."""


def signature_kind(signature: bytes) -> str:
    """``swap``, ``image`` (a hibernation image) or ``none``, from the 10 signature bytes."""
    if signature == SWAP_SIGNATURE:
        return "swap"
    if any(signature.rstrip(b"\0") == s for s in IMAGE_SIGNATURES):
        return "image"
    return "none"


def expanded(device: Device, area: SwapArea, page_size: int) -> bool:
    """True when the device has more pages than its swap area (plus its header page) uses."""
    if device.size_bytes is None:
        return False
    return device.size_bytes // page_size - 1 > area.size_bytes // page_size


class Paging:
    """The paging device's state and the swap commands run on it; thread-safe."""

    def __init__(
        self,
        files: GuestFiles,
        commands: SwapCommands | None = None,
        *,
        serial: str = SERIAL,
        page_size: int | None = None,
    ) -> None:
        self.files = files
        self.commands = commands or SwapCommands()
        self.serial = serial
        self.page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        self._message = ""  # what the last enable or re-make found
        self._lock = threading.Lock()

    @property
    def message(self) -> str:
        """What the last enable or re-make found wrong ("" if nothing)."""
        return self._message

    def device(self) -> Device | None:
        """The device behind /dev/disk/by-id/virtio-<serial>, None if it is not attached."""
        link = self.files.disk_by_serial(self.serial)
        if not os.path.lexists(link):
            return None
        path = link.resolve()
        if not path.exists():
            return None
        block = self.files.block(path.name)
        numbers = (read_text(block / "dev") or "").strip()
        sectors = (read_text(block / "size") or "").strip()
        return Device(
            path,
            numbers if _is_dev_numbers(numbers) else None,
            int(sectors) * SECTOR_BYTES if sectors.isascii() and sectors.isdigit() else None,
        )

    def signature(self, device: Device) -> bytes:
        """The 10 bytes that end the first page; b"" if the device cannot be read."""
        try:
            with device.path.open("rb") as handle:
                handle.seek(self.page_size - SIGNATURE_BYTES)
                return handle.read(SIGNATURE_BYTES)
        except OSError:
            return b""

    def area(self, device: Device) -> SwapArea | None:
        """The device's line in /proc/swaps, None if it is not swap now."""
        for area in swap_areas(self.files):
            if area.path == str(device.path) or os.path.realpath(area.path) == str(device.path):
                return area
        return None

    def enable(self) -> None:
        """Make the device this guest's swap, if it is attached (the agent's start)."""
        with self._lock:
            device = self.device()
            if device is None:
                self._message = ""
                return
            try:
                self._message = self._enable(device)
            except PagingError as error:
                self._message = str(error)[:MAX_MESSAGE]
            if self._message:
                log.warning("paging device %s: %s", device.path, self._message)
            else:
                log.info("paging device %s is swap", device.path)

    def _enable(self, device: Device) -> str:
        if self.area(device) is not None:
            return ""
        signature = self.signature(device)
        kind = signature_kind(signature)
        if kind == "image":
            name = signature.rstrip(b"\0").decode()
            return (
                f"the device holds a hibernation image ({name}) that this boot did not "
                "restore: it is not made swap, so the image is kept"
            )
        if kind == "none":
            self._run(self.commands.mkswap, device)
        self._run(self.commands.swapon, device)
        if self.area(device) is None:
            return f"swapon {device.path} succeeded, but /proc/swaps does not list it"
        return ""

    def remake_if_expanded(self, device: Device) -> bool:
        """swapoff, mkswap, swapon when the device outgrew its swap area; True if it did.
        Raises PagingError when a command fails (the device may then be no swap at all)."""
        with self._lock:
            area = self.area(device)
            if area is None or not expanded(device, area, self.page_size):
                return False
            log.info("paging device %s grew to %s bytes: re-making its swap area",
                     device.path, device.size_bytes)  # fmt: skip
            try:
                self._run(self.commands.swapoff, device)
                self._run(self.commands.mkswap, device)
                self._run(self.commands.swapon, device)
            except PagingError as error:
                self._message = str(error)[:MAX_MESSAGE]
                raise
            self._message = ""
            return True

    def report(self) -> dict | None:
        """The report's ``paging``, None when no paging device is attached."""
        device = self.device()
        if device is None:
            return None
        area = self.area(device)
        message = self._message
        if area is not None and expanded(device, area, self.page_size) and not message:
            message = "the device is larger than its swap area: it is re-made before hibernating"
        return {
            "serial": self.serial,
            "device": str(device.path),
            "sizeBytes": device.size_bytes or 0,
            "swapBytes": area.size_bytes if area else 0,
            "active": area is not None,
            "message": message,
        }

    def _run(self, command: tuple[str, ...], device: Device) -> None:
        argv = [*command, str(device.path)]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=COMMAND_SECONDS, check=False,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PagingError(f"{' '.join(argv)}: {error}") from error
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            detail = said[-1] if said else "no message"
            raise PagingError(f"{' '.join(argv)} exited {done.returncode}: {detail}")


def _is_dev_numbers(text: str) -> bool:
    major, sep, minor = text.partition(":")
    return bool(sep) and all(p.isascii() and p.isdigit() for p in (major, minor))
