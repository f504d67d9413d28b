"""A fake guest for tests of the real agent process (not part of the zipapp): /sys, /proc and
/dev as plain files in a temporary directory, and mkswap, swapon and swapoff that act on them
as the kernel and util-linux/busybox would.

The paging disk is a sparse file linked from dev/disk/by-id/virtio-lparkube-paging, with its
MAJ:MIN and size in sys/block/<name>. ``mkswap`` writes a version-1 swap header (its last page
number, and ``SWAPSPACE2`` at the end of the first page); ``swapon`` refuses a device without
that signature or already on, and lists it in proc/swaps with the size its header gives (so a
grown disk keeps its old area until mkswap runs again); ``swapoff`` removes it. Every command
run is appended to ``commands.log`` so a test can tell what the agent ran.

The watchdog is a plain file, dev/watchdog, that collects what the agent writes to it. A file
takes no ioctl, so ``agent`` runs the agent with the watchdog's ioctls answered as a kernel
would (a timeout of 1 to 2046 s, i6300esb's range, else EINVAL), each timeout set logged too.

    python -m lparkube_agent.fakeguest {mkswap,swapon,swapoff} --root ROOT DEVICE
    python -m lparkube_agent.fakeguest agent --root ROOT LPARKUBE-AGENT-ARGUMENTS...
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import struct
import sys
from pathlib import Path

from .cli import main as agent_main
from .guestfiles import GuestFiles, swap_areas
from .paging import SERIAL, SIGNATURE_BYTES, SWAP_SIGNATURE
from .watchdog import INT, WDIOC_GETTIMEOUT, WDIOC_SETTIMEOUT

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
HEADER_VERSION_AT = 1024  # after the boot block: version, last_page, nr_badpages (u32 each)
SWAPS_HEADING = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
WATCHDOG_TIMEOUTS = range(1, 2047)


class FakeGuest:
    """The fake tree under ``root``; its methods change it as the guest's kernel would."""

    def __init__(
        self,
        root: Path,
        *,
        disk_bytes: int | None = 64 * MIB,
        mem_total: int = 512 * MIB,
        mem_available: int = 480 * MIB,
        numbers: str = "252:32",
        boot_id: str = "4f1c2f5e-0c1d-4d38-9a55-2b1c1f3e5a77",
    ) -> None:
        root = root.resolve()  # the agent resolves the disk's link: paths compare equal
        self.root = root
        self.files = GuestFiles(root / "sys", root / "proc", root / "dev")
        self.disk = self.files.dev / "vdc"
        self.watchdog = self.files.watchdog
        self.log = root / "commands.log"
        self.numbers = numbers
        for directory in (self.files.power, self.files.proc / "sys/kernel/random"):
            directory.mkdir(parents=True, exist_ok=True)
        self.files.dev.mkdir(parents=True, exist_ok=True)
        self.files.boot_id.write_text(boot_id + "\n")
        self.files.swaps.write_text(SWAPS_HEADING)
        self.files.kmsg.write_text("")
        self.set_memory(mem_total, mem_available)
        (self.files.power / "state").write_text("freeze mem disk\n")
        (self.files.power / "disk").write_text("[platform] shutdown reboot suspend test_resume\n")
        (self.files.power / "resume").write_text("0:0\n")
        if disk_bytes is not None:
            self.attach(disk_bytes)

    def config(self) -> dict:
        """The agent's configuration fields that point it at this tree and these commands."""
        command = f"{sys.executable} -m lparkube_agent.fakeguest"
        return {
            "sysfs": str(self.files.sys),
            "procfs": str(self.files.proc),
            "devfs": str(self.files.dev),
            "watchdogDevice": str(self.watchdog),
            **{c: f"{command} {c} --root {self.root}" for c in ("mkswap", "swapon", "swapoff")},
        }

    def agent_command(self) -> list[str]:
        """The agent's command line (before ``serve``) with this guest's watchdog ioctls."""
        return [sys.executable, "-m", "lparkube_agent.fakeguest", "agent", "--root", str(self.root)]

    def watchdog_timeouts(self) -> list[int]:
        """The timeouts the agent set on the watchdog, in order."""
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [int(value) for name, value in entries if name == "WDIOC_SETTIMEOUT"]

    def attach(self, disk_bytes: int) -> None:
        """The paging disk, blank (all zeros)."""
        with self.disk.open("wb") as handle:
            handle.truncate(disk_bytes)
        block = self.files.block(self.disk.name)
        block.mkdir(parents=True, exist_ok=True)
        (block / "dev").write_text(self.numbers + "\n")
        self.grow(disk_bytes)
        link = self.files.disk_by_serial(SERIAL)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(link):
            link.symlink_to(os.path.relpath(self.disk, link.parent))

    def grow(self, disk_bytes: int) -> None:
        """The LU expanded: a larger disk, its data kept."""
        with self.disk.open("r+b") as handle:
            handle.truncate(disk_bytes)
        (self.files.block(self.disk.name) / "size").write_text(f"{disk_bytes // 512}\n")

    def attach_data_disk(
        self, serial: str, disk_bytes: int, *, node: str = "vdb", rescan: bool = False
    ) -> Path:
        """Another disk, linked from dev/disk/by-id/virtio-<serial> (cut to 20 bytes, as the
        kernel keeps a virtio serial); ``rescan``: it has sys/block/<node>/device/rescan, as a
        SCSI disk has. Returns the device node."""
        device = self.files.dev / node
        with device.open("wb") as handle:
            handle.truncate(disk_bytes)
        block = self.files.block(node)
        (block / "device").mkdir(parents=True, exist_ok=True)
        (block / "dev").write_text(f"252:{16 * (ord(node[-1]) - ord('a'))}\n")
        (block / "size").write_text(f"{disk_bytes // 512}\n")
        if rescan:
            (block / "device/rescan").write_text("")
        link = self.files.disk_by_serial(serial[:20])
        link.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(link):
            link.symlink_to(os.path.relpath(device, link.parent))
        return device

    def resize_data_disk(self, node: str, disk_bytes: int) -> None:
        """The host changed the disk's capacity: what the kernel shows in sys/block/<node>."""
        (self.files.block(node) / "size").write_text(f"{disk_bytes // 512}\n")

    def rescans(self, node: str) -> str:
        """What was written to sys/block/<node>/device/rescan."""
        return (self.files.block(node) / "device/rescan").read_text()

    def set_memory(self, total: int, available: int) -> None:
        free = max(0, available - 16 * MIB)
        lines = [("MemTotal", total), ("MemFree", free), ("MemAvailable", available)]
        text = "".join(f"{name}:{value // 1024:>16} kB\n" for name, value in lines)
        self.files.meminfo.write_text(text + "SwapTotal:              0 kB\n")

    def signature(self) -> bytes:
        with self.disk.open("rb") as handle:
            handle.seek(PAGE - SIGNATURE_BYTES)
            return handle.read(SIGNATURE_BYTES)

    def write_signature(self, signature: bytes) -> None:
        """Put these bytes where the signature goes (S1SUSPEND: a hibernation image)."""
        with self.disk.open("r+b") as handle:
            handle.seek(PAGE - SIGNATURE_BYTES)
            handle.write(signature.ljust(SIGNATURE_BYTES, b"\0"))

    def swap_bytes(self) -> int | None:
        """The paging disk's swap area size in proc/swaps, None if it is not on."""
        sizes = [a.size_bytes for a in swap_areas(self.files) if a.path == str(self.disk)]
        return sizes[0] if sizes else None

    def commands(self) -> list[str]:
        """The commands the agent ran, by name, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line)[0] for line in self.log.read_text().splitlines()]

    def log_kernel(self, text: str) -> None:
        """A kernel message, as /dev/kmsg shows it (the next sequence number)."""
        lines = self.files.kmsg.read_text().splitlines()
        seq = len(lines)
        with self.files.kmsg.open("a") as handle:
            handle.write(f"6,{seq},{seq * 1000},-;{text}\n")

    def power(self, name: str) -> str:
        """The content of sys/power/<name> (what the agent wrote last)."""
        return (self.files.power / name).read_text()


# --- the commands ------------------------------------------------------------------------


def _mkswap(guest: GuestFiles, device: Path) -> int:
    size = device.stat().st_size
    pages = size // PAGE
    if pages < 10:
        print(f"mkswap: {device}: swap area needs at least 10 pages", file=sys.stderr)
        return 1
    if any(a.path == str(device) for a in swap_areas(guest)):
        print(f"mkswap: {device}: is in use as swap", file=sys.stderr)
        return 1
    with device.open("r+b") as handle:
        handle.seek(HEADER_VERSION_AT)
        handle.write(struct.pack("<III", 1, pages - 1, 0))
        handle.seek(PAGE - SIGNATURE_BYTES)
        handle.write(SWAP_SIGNATURE)
    return 0


def _swapon(guest: GuestFiles, device: Path) -> int:
    with device.open("rb") as handle:
        handle.seek(HEADER_VERSION_AT)
        _, last_page, _ = struct.unpack("<III", handle.read(12))
        handle.seek(PAGE - SIGNATURE_BYTES)
        signature = handle.read(SIGNATURE_BYTES)
    if signature != SWAP_SIGNATURE:
        print(f"swapon: {device}: swapon failed: Invalid argument", file=sys.stderr)
        return 255
    if any(a.path == str(device) for a in swap_areas(guest)):
        print(f"swapon: {device}: swapon failed: Device or resource busy", file=sys.stderr)
        return 255
    kib = last_page * PAGE // 1024
    with guest.swaps.open("a") as handle:
        handle.write(f"{device}\t\t\t\tpartition\t{kib}\t\t0\t\t-2\n")
    return 0


def _swapoff(guest: GuestFiles, device: Path) -> int:
    lines = guest.swaps.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.split()[:1] != [str(device)]]
    if len(kept) == len(lines):
        print(f"swapoff: {device}: swapoff failed: Invalid argument", file=sys.stderr)
        return 255
    guest.swaps.write_text("".join(kept))
    return 0


COMMANDS = {"mkswap": _mkswap, "swapon": _swapon, "swapoff": _swapoff}


def _log(root: Path, name: str, argument: str) -> None:
    with (root / "commands.log").open("a") as log:
        log.write(json.dumps([name, argument]) + "\n")


def _agent(root: Path, argv: list[str]) -> int:
    """The agent, its process's ``fcntl.ioctl`` answering the watchdog's two requests."""
    real, timeout = fcntl.ioctl, 0

    def ioctl(fd: int, request: int, arg: bytearray, *more: object) -> object:
        nonlocal timeout
        if request == WDIOC_SETTIMEOUT:
            value = INT.unpack(arg)[0]
            if value not in WATCHDOG_TIMEOUTS:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            timeout = value
            _log(root, "WDIOC_SETTIMEOUT", str(value))
        if request in (WDIOC_SETTIMEOUT, WDIOC_GETTIMEOUT):
            arg[:] = INT.pack(timeout)
            return 0
        return real(fd, request, arg, *more)

    fcntl.ioctl = ioctl  # type: ignore[assignment]
    return agent_main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lparkube_agent.fakeguest")
    root = argparse.ArgumentParser(add_help=False)
    root.add_argument("--root", required=True, type=Path)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in sorted(COMMANDS):
        sub.add_parser(name, parents=[root]).add_argument("device", type=Path)
    agent = sub.add_parser("agent", parents=[root], help="lparkube-agent, with watchdog ioctls")
    agent.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "agent":
        return _agent(args.root, args.argv)
    _log(args.root, args.command, str(args.device))
    guest = GuestFiles(args.root / "sys", args.root / "proc", args.root / "dev")
    return COMMANDS[args.command](guest, args.device)


if __name__ == "__main__":
    sys.exit(main())
