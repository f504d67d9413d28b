"""Hibernation of a real guest onto its paging disk, and its resume in a new QEMU process.

A 512 MiB guest-image guest with a sparse paging disk (serial ``lparkube-paging``) enables it
as swap, runs a counter that prints its pid and count to the console every second and an
editor holding an unsaved buffer, then hibernates as the agent will (typed on the console):
QEMU must report the guest's own shutdown and end; the paging disk must then hold at least the
image the kernel said it copied, and less than its size. A new QEMU process for the same
Domain boots the same kernel, whose init (rcS) points ``/sys/power/resume`` at the paging disk:
the kernel must restore the image (same boot id, the counter's pid and count going on, the
editor's buffer still there and saved correctly afterwards). A cold boot with an empty paging
disk must boot as usual.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lparkube_devenv import guestimage
from lparkube_devenv.qemu import accel, hibernation
from lparkube_devenv.qemu.launcher import State
from lparkube_devenv.qemu.machine import KernelBoot

pytestmark = pytest.mark.realguest

MIB = 1024 * 1024
PAGING_BYTES = 1024 * MIB
BOOT_TIMEOUT = 300.0  # software emulation on a loaded 2-core machine
HIBERNATE_TIMEOUT = 600.0
COUNTER = re.compile(r"lparkube-counter (\d+) (\d+)\r?\n")
NOTES = "/root/notes.txt"
KEYS = "/tmp/nano.keys"
SCREEN = "/tmp/nano.screen"
TYPED = "unsaved line"
CTRL_O = "\\017"  # nano's Write Out; Enter then takes the file name it offers


@pytest.fixture(scope="module")
def guest_image():
    if shutil.which(accel.QEMU_BINARY) is None:
        pytest.fail(f"{accel.QEMU_BINARY} is missing: install {accel.QEMU_PACKAGE}")
    return guestimage.ensure_image()


@pytest.fixture
def kernel_boot(guest_image, tmp_path: Path) -> KernelBoot:
    return KernelBoot.of(guestimage.image_for_run(guest_image, tmp_path / "image"))


@pytest.fixture
def guests() -> Iterator[list[hibernation.RunningGuest]]:
    started: list[hibernation.RunningGuest] = []
    yield started
    for guest in started:
        guest.close()


def counts(text: str) -> list[tuple[int, int]]:
    return [(int(pid), int(n)) for pid, n in COUNTER.findall(text)]


def start_counter(console) -> None:
    """A shell loop in the background printing ``lparkube-counter <its pid> <count>``."""
    loop = 'n=0; while :; do n=$((n+1)); echo "lparkube-counter $$ $n"; sleep 1; done'
    console.run(f"(sh -c '{loop}' &)")


def start_nano(console) -> None:
    """nano on NOTES in a pty (python's pty.spawn), its keyboard a FIFO we write into."""
    console.run(f"printf 'first line\\n' >{NOTES} && mkfifo {KEYS}")
    console.run(f"(sleep 100000 >{KEYS} &)")  # holds the FIFO open between our writes
    spawn = "import pty, sys; pty.spawn(sys.argv[1:])"
    console.run(
        f"(TERM=xterm HOME=/root python3 -c '{spawn}' nano {NOTES} <{KEYS} >{SCREEN} 2>&1 &)"
    )


def run(console, command: str, timeout: float = 60.0) -> str:
    """What a command printed on the console, without the counter's lines in between."""
    return COUNTER.sub("", console.run(command, timeout))


def wait_console(console, command: str, wanted: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        output = run(console, command)
        if wanted in output:
            return output
        assert time.monotonic() < deadline, f"{wanted!r} never in `{command}`: {output[-500:]}"
        time.sleep(1)


def test_a_hibernated_guest_resumes_in_a_new_qemu_process(kernel_boot, guests, tmp_path) -> None:
    paging = hibernation.paging_disk(tmp_path / "paging.img", PAGING_BYTES)
    domain = hibernation.guest_domain(kernel_boot, (paging,))
    first = hibernation.start(domain, tmp_path / "run-1", BOOT_TIMEOUT)
    guests.append(first)
    tty = first.console
    assert hibernation.PAGING_SERIAL in tty.run(f"ls -l {hibernation.PAGING_DEVICE}")
    swaps = hibernation.enable_swap(tty)
    assert "/dev/vd" in swaps, swaps
    boot_id = run(tty, "cat /proc/sys/kernel/random/boot_id").strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", boot_id), boot_id

    start_counter(tty)
    start_nano(tty)
    wait_console(tty, f"cat {SCREEN}", "first line")
    tty.run(f"printf '{TYPED}\\r' >{KEYS}")
    wait_console(tty, f"cat {SCREEN}", TYPED)
    assert run(tty, f"cat {NOTES}") == "first line\n"  # unsaved so far
    nano_pid = run(tty, "pidof nano").strip()
    assert nano_pid.isdigit(), nano_pid

    hibernated = hibernation.hibernate(first, HIBERNATE_TIMEOUT)
    assert hibernated.status.state == State.SHUTDOWN and hibernated.status.by_guest, (
        hibernated.status,
        hibernated.console_log[-2000:],
    )
    assert hibernated.copied_pages > 0, hibernated.console_log[-3000:]
    before = counts(first.console.text())
    assert before, "the counter printed nothing"
    pid, last = before[-1]
    assert last >= 2

    used = hibernation.disk_usage(paging.backing.path)
    assert hibernated.image_bytes <= used < PAGING_BYTES, (used, hibernated.image_bytes)

    second = hibernation.start(domain, tmp_path / "run-2", BOOT_TIMEOUT)
    guests.append(second)
    tty = second.console
    boot_log = tty.text()
    assert hibernation.USERSPACE_UP in boot_log  # a new kernel booted, and restored the image
    assert hibernation.RESUME_LOOKING in boot_log, boot_log[-2000:]
    assert hibernation.RESUME_NONE not in boot_log, boot_log[-2000:]
    assert run(tty, "cat /proc/sys/kernel/random/boot_id").strip() == boot_id
    assert run(tty, "pidof nano").strip() == nano_pid
    kernel_log = run(tty, "dmesg | grep 'Need to copy'")
    assert f"Need to copy {hibernated.copied_pages} pages" in kernel_log, kernel_log

    tty.run("sleep 3")
    after = counts(tty.text())
    assert after, "the counter printed nothing after the resume"
    assert {p for p, _ in after} == {pid}, after
    numbers = [n for _, n in after]
    assert numbers[0] == last + 1, (last, numbers)
    assert numbers == list(range(last + 1, last + 1 + len(numbers))), numbers

    assert run(tty, f"cat {NOTES}") == "first line\n"  # still unsaved after the resume
    tty.run(f"printf '{CTRL_O}\\r' >{KEYS}")
    wait_console(tty, f"cat {NOTES}", TYPED)
    assert run(tty, f"cat {NOTES}") == f"{TYPED}\nfirst line\n"
    print(
        f"hibernate -> QEMU gone {hibernated.seconds:.1f} s, image {hibernated.image_bytes} B "
        f"({used} B on the paging disk); QEMU start -> console answering: cold boot "
        f"{first.responsive_after:.1f} s, resume {second.responsive_after:.1f} s"
    )


def test_a_cold_boot_with_an_empty_paging_disk_boots_as_usual(kernel_boot, guests, tmp_path):
    paging = hibernation.paging_disk(tmp_path / "paging.img", 64 * MIB)
    domain = hibernation.guest_domain(kernel_boot, (paging,), name="cold")
    guest = hibernation.start(domain, tmp_path / "run", BOOT_TIMEOUT)
    guests.append(guest)
    boot_log = guest.console.text()
    assert hibernation.USERSPACE_UP in boot_log
    assert hibernation.RESUME_LOOKING in boot_log and hibernation.RESUME_NONE in boot_log
    assert "/dev/vd" in hibernation.enable_swap(guest.console)
    assert guest.console.run("echo $((6*7))").strip() == "42"
