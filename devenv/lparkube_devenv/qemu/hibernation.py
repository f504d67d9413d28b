"""Hibernate a guest-image guest on its serial console, and resume it in a new QEMU process.

What the guest agent's ``POST /v1/hibernate`` does in the guest, typed on the console instead:
``/sys/power/resume`` <- the paging disk's ``MAJ:MIN``, ``/sys/power/disk`` <- ``shutdown``,
``disk`` -> ``/sys/power/state`` (Documentation/power/swsusp.rst, basic-pm-debugging.rst). The
kernel freezes every task, frees memory down to ``/sys/power/image_size`` (swapping onto the
paging disk), snapshots what is left ("Need to copy N pages"), writes the snapshot to the swap
area, marks its header with the hibernation signature and powers off; QEMU reports the guest's
shutdown and the launcher ends it. A new QEMU process for the same :class:`Domain` boots the
same kernel; the image's rcS writes the paging disk's numbers to ``/sys/power/resume`` before
anything touches a disk, and the kernel restores the image: the tasks, the console's shell and
``/proc/sys/kernel/random/boot_id`` are those of before.

Used by ``tests/realguest/test_hibernate_resume.py`` and ``hack/bench_hibernate.py``.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .console import SerialConsole
from .launcher import QemuLauncher, Status
from .machine import Backing, Disk, Domain, KernelBoot, Network, Nic

PAGING_SERIAL = "lparkube-paging"  # the paging LU's disk serial (docs/api.md, Partition)
PAGING_DEVICE = f"/dev/disk/by-id/virtio-{PAGING_SERIAL}"
USERSPACE_UP = "lparkube-guest: userspace up"
RESUME_LOOKING = "lparkube-guest: resume: looking for a hibernation image"
RESUME_NONE = "lparkube-guest: resume: no hibernation image"
NEED_TO_COPY = re.compile(r"Need to copy (\d+) pages")
PAGE_SIZE = 4096  # x86-64
KERNEL_INFO_LEVEL = 7  # console log level that lets KERN_INFO (6) through, as swsusp's lines are
PROBE_INTERVAL = 0.5
SWAP_MAGIC, SWAP_MAGIC_OFFSET = "SWAPSPACE2", PAGE_SIZE - 10  # a swap area's first page ends so
HIBERNATE_MAGIC = "S1SUSPEND"  # ... and so while it holds a hibernation image (kernel/power/swap.c)
RESUME_FAILED = "lparkube-guest: resume: the hibernation image on"


HIBERNATE_RETURNED = "lparkube-hibernate-returned-1"


class HibernateError(RuntimeError):
    """The guest's kernel did not hibernate (the write to /sys/power/state returned)."""


def paging_disk(path: Path, size: int) -> Disk:
    """A new, empty, sparse file as the paging LU: a virtio disk with the paging serial."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)
    return Disk("paging", PAGING_SERIAL, "virtio", "disk", Backing(path), readonly=False)


def guest_domain(
    kernel_boot: KernelBoot,
    disks: tuple[Disk, ...],
    memory_mib: int = 512,
    name: str = "hib",
    nics: tuple[Nic, ...] = (),
) -> Domain:
    """A one-vCPU guest booting ``kernel_boot`` with ``disks`` (and ``nics``, none by default)."""
    return Domain(
        name=f"realguest_{name}",
        uuid="5b0f3c0e-7d1a-4a43-9a65-0c1ad7e5f001",
        memory_mib=memory_mib,
        disks=disks,
        nics=nics,
        kernel_boot=kernel_boot,
    )


def swap_signature(path: Path) -> str:
    """The signature ending the paging disk's first page: SWAPSPACE2 (a swap area),
    S1SUSPEND (a hibernation image waiting to be restored), or whatever else is there."""
    with Path(path).open("rb") as disk:
        disk.seek(SWAP_MAGIC_OFFSET)
        return disk.read(10).rstrip(b"\0").decode(errors="replace")


def disk_usage(path: Path) -> int:
    """The bytes a (sparse) file really holds on the host: ``st_blocks * 512``."""
    return Path(path).stat().st_blocks * 512


@dataclass
class RunningGuest:
    """One QEMU process and its console; ``started`` is when the process was started."""

    launcher: QemuLauncher
    console: SerialConsole
    started: float
    responsive_after: float = 0.0  # seconds from start to the console's shell answering

    def close(self) -> None:
        self.console.close()
        self.launcher.close()


_probes = itertools.count(1)


def wait_responsive(console: SerialConsole, timeout: float, since: int = 0) -> None:
    """Type a probe line into the console until the shell answers one.

    While a kernel boots or restores an image, nothing reads the UART: what is typed waits in
    QEMU's socket or is lost, so the probe is typed again until an answer shows."""
    token = next(_probes)
    answer = f"lparkube-alive-{token}-1"
    deadline = time.monotonic() + timeout
    while True:
        console.send_line(f"echo lparkube-alive-{token}-$((0+1))")
        try:
            console.wait_for(answer, PROBE_INTERVAL, since)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the console did not answer within {timeout:g} s; its end:\n"
                    f"{console.text(since)[-1500:]}"
                ) from None


def start(
    domain: Domain, run_dir: Path, timeout: float, network: Network | None = None
) -> RunningGuest:
    """Start a QEMU process for ``domain`` in ``run_dir``; return once its console's shell
    answers (a cold boot, or a boot that restored a hibernation image)."""
    launcher = QemuLauncher(domain, run_dir, network=network)
    started = time.monotonic()
    launcher.start()
    console = SerialConsole(launcher.files.serial_socket, launcher.files.serial_log)
    guest = RunningGuest(launcher, console, started)
    try:
        wait_responsive(console, timeout)
    except BaseException:
        guest.close()
        raise
    guest.responsive_after = time.monotonic() - started
    return guest


def enable_swap(console: SerialConsole, device: str = PAGING_DEVICE) -> str:
    """mkswap (when the device has no swap signature) and swapon; ``/proc/swaps`` then."""
    return console.run(
        f'[ "$(dd if={device} bs=1 skip={SWAP_MAGIC_OFFSET} count=10 2>/dev/null)" = '
        f"{SWAP_MAGIC} ] || mkswap {device} >/dev/null; "
        f"swapon {device} && cat /proc/swaps",
        120,
    )


@dataclass(frozen=True)
class Hibernated:
    status: Status  # QEMU's final status
    seconds: float  # from the write to /sys/power/state to the QEMU process's end
    copied_pages: int  # the kernel's "Need to copy N pages"
    console_log: str = field(repr=False)  # what this QEMU process's console showed

    @property
    def image_bytes(self) -> int:
        return self.copied_pages * PAGE_SIZE


def hibernate(guest: RunningGuest, timeout: float, device: str = PAGING_DEVICE) -> Hibernated:
    """Suspend the guest to its paging disk as the agent does, from the console.

    The console log level is raised to let swsusp's KERN_INFO lines through (the guest
    image boots with ``no_console_suspend``, so they are printed while devices sleep)."""
    console = guest.console
    console.run(
        f"echo {KERNEL_INFO_LEVEL} >/proc/sys/kernel/printk; "
        f'disk=$(readlink -f {device}); cat "/sys/class/block/${{disk##*/}}/dev" '
        ">/sys/power/resume && echo shutdown >/sys/power/disk && cat /sys/power/resume",
        60,
    )
    since = console.mark()
    begun = time.monotonic()
    # The write returns in this QEMU process only when the hibernation failed (a restored
    # guest returns from it in the next process): then the marker shows, with the errno.
    console.send_line("echo disk >/sys/power/state; echo lparkube-hibernate-returned-$((0+1)) $?")
    deadline = begun + timeout
    while not guest.launcher.status.exited:
        if HIBERNATE_RETURNED in console.text(since):
            raise HibernateError(f"the guest did not hibernate: {console.text(since)[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"QEMU still runs {timeout:g} s after the hibernation began")
        time.sleep(0.05)
    status = guest.launcher.wait_for(lambda s: s.exited, 10)
    seconds = time.monotonic() - begun
    text = console.text(since)
    guest.console.close()
    found = NEED_TO_COPY.findall(text)
    return Hibernated(status, seconds, int(found[-1]) if found else 0, text)
