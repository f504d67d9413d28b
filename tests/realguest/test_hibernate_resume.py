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

import dataclasses
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lparkube_devenv import guestimage
from lparkube_devenv.qemu import accel, hibernation
from lparkube_devenv.qemu.launcher import State
from lparkube_devenv.qemu.machine import GuestService, KernelBoot, Network, Nic

pytestmark = pytest.mark.realguest

MIB = 1024 * 1024
PAGING_BYTES = 1024 * MIB
BOOT_TIMEOUT = 300.0  # software emulation on a loaded 2-core machine
HIBERNATE_TIMEOUT = 600.0
COUNTER = re.compile(r"lparkube-counter (\d+) (\d+)\r?\n")
# What else may print on the console between a command's markers: the counter, and the agent's
# service saying it cannot start (this guest has no agent configuration).
NOISE = re.compile(r"(lparkube-counter \d+ \d+|lparkube-guest: agent [^\n]*)\r?\n")
NOTES = "/root/notes.txt"
KEYS = "/tmp/nano.keys"
SCREEN = "/tmp/nano.screen"
TYPED = "unsaved line"
CTRL_O = "\\017"  # nano's Write Out; Enter then takes the file name it offers
MAC = "52:54:00:6c:6b:01"
SERVICE_PORT = 8444  # where the guest reaches the host's service (10.0.2.100, guestfwd)


@pytest.fixture(scope="module")
def guest_image():
    if shutil.which(accel.QEMU_BINARY) is None:
        pytest.fail(f"{accel.QEMU_BINARY} is missing: install {accel.QEMU_PACKAGE}")
    return guestimage.ensure_image()


@pytest.fixture
def kernel_boot(guest_image, tmp_path: Path) -> KernelBoot:
    return KernelBoot.of(guestimage.image_for_run(guest_image, tmp_path / "image"))


class PongService:
    """A loopback TCP service: each connection sends a line and gets "pong <line>" back."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"pong " + connection.makefile("rb").readline())

    def network(self) -> Network:
        service = GuestService(SERVICE_PORT, "127.0.0.1", self.port)
        return Network(
            services=(service,), relay=(sys.executable, "-m", "lparkube_devenv.qemu.relay")
        )


def ping_host(console, word: str) -> str:
    """The guest connects to the host's service through its NIC; what it answered."""
    code = (
        f"import socket; s = socket.create_connection(('10.0.2.100', {SERVICE_PORT}), 10); "
        f"s.sendall(b'{word}\\n'); print(s.makefile().readline().strip())"
    )
    return run(console, f'python3 -c "{code}"', 60).strip()


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
    """What a command printed on the console, without the NOISE lines in between."""
    return NOISE.sub("", console.run(command, timeout))


def wait_console(console, command: str, wanted: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        output = run(console, command)
        if wanted in output:
            return output
        assert time.monotonic() < deadline, f"{wanted!r} never in `{command}`: {output[-500:]}"
        time.sleep(1)


@dataclass(frozen=True)
class Before:
    """What the guest was like when it hibernated."""

    boot_id: str
    nano_pid: str
    counter_pid: int
    last_count: int


def prepare(guest: hibernation.RunningGuest) -> tuple[str, str]:
    """Swap on the paging disk, the counter, nano with an unsaved line: (boot id, nano's pid)."""
    tty = guest.console
    assert hibernation.PAGING_SERIAL in tty.run(f"ls -l {hibernation.PAGING_DEVICE}")
    swaps = hibernation.enable_swap(tty)
    assert "/dev/vd" in swaps, swaps
    boot_id = run(tty, "cat /proc/sys/kernel/random/boot_id").strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", boot_id), boot_id
    assert ping_host(tty, "before") == "pong before"
    start_counter(tty)
    start_nano(tty)
    wait_console(tty, f"cat {SCREEN}", "first line")
    tty.run(f"printf '{TYPED}\\r' >{KEYS}")
    wait_console(tty, f"cat {SCREEN}", TYPED)
    assert run(tty, f"cat {NOTES}") == "first line\n"  # unsaved so far
    nano_pid = run(tty, "pidof nano").strip()
    assert nano_pid.isdigit(), nano_pid
    return boot_id, nano_pid


def check_restored(guest: hibernation.RunningGuest, before: Before, copied_pages: int) -> None:
    """The same kernel, tasks, network and editor as before the hibernation."""
    tty = guest.console
    boot_log = tty.text()
    assert hibernation.USERSPACE_UP in boot_log  # a new kernel booted, and restored the image
    assert hibernation.RESUME_LOOKING in boot_log, boot_log[-2000:]
    assert hibernation.RESUME_NONE not in boot_log, boot_log[-2000:]
    assert run(tty, "cat /proc/sys/kernel/random/boot_id").strip() == before.boot_id
    assert run(tty, "pidof nano").strip() == before.nano_pid
    assert ping_host(tty, "after") == "pong after"  # the restored NIC works in the new QEMU
    kernel_log = run(tty, "dmesg | grep 'Need to copy'")
    assert f"Need to copy {copied_pages} pages" in kernel_log, kernel_log

    tty.run("sleep 3")
    after = counts(tty.text())
    assert after, "the counter printed nothing after the resume"
    assert {pid for pid, _ in after} == {before.counter_pid}, after
    numbers = [n for _, n in after]
    first = before.last_count + 1
    assert numbers == list(range(first, first + len(numbers))), (before.last_count, numbers)

    assert run(tty, f"cat {NOTES}") == "first line\n"  # still unsaved after the resume
    tty.run(f"printf '{CTRL_O}\\r' >{KEYS}")
    wait_console(tty, f"cat {NOTES}", TYPED)
    assert run(tty, f"cat {NOTES}") == f"{TYPED}\nfirst line\n"


def test_a_hibernated_guest_resumes_in_a_new_qemu_process(kernel_boot, guests, tmp_path) -> None:
    paging = hibernation.paging_disk(tmp_path / "paging.img", PAGING_BYTES)
    domain = hibernation.guest_domain(kernel_boot, (paging,), nics=(Nic("default", MAC),))
    network = PongService().network()
    first = hibernation.start(domain, tmp_path / "run-1", BOOT_TIMEOUT, network)
    guests.append(first)
    boot_id, nano_pid = prepare(first)

    hibernated = hibernation.hibernate(first, HIBERNATE_TIMEOUT)
    assert hibernated.status.state == State.SHUTDOWN and hibernated.status.by_guest, (
        hibernated.status,
        hibernated.console_log[-2000:],
    )
    assert hibernated.copied_pages > 0, hibernated.console_log[-3000:]
    counted = counts(first.console.text())
    assert counted and counted[-1][1] >= 2, counted
    before = Before(boot_id, nano_pid, *counted[-1])
    used = hibernation.disk_usage(paging.backing.path)
    assert hibernated.image_bytes <= used < PAGING_BYTES, (used, hibernated.image_bytes)
    assert hibernation.swap_signature(paging.backing.path) == hibernation.HIBERNATE_MAGIC

    second = hibernation.start(domain, tmp_path / "run-2", BOOT_TIMEOUT, network)
    guests.append(second)
    check_restored(second, before, hibernated.copied_pages)
    # the image is restored once: its swap signature is back, the swap area in use again
    assert hibernation.swap_signature(paging.backing.path) == hibernation.SWAP_MAGIC
    assert "/dev/vd" in run(second.console, "cat /proc/swaps")
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


def test_an_image_for_another_memory_size_is_not_restored_and_the_boot_goes_on(
    kernel_boot, guests, tmp_path
) -> None:
    paging = hibernation.paging_disk(tmp_path / "paging.img", PAGING_BYTES)
    domain = hibernation.guest_domain(kernel_boot, (paging,), name="mismatch")
    first = hibernation.start(domain, tmp_path / "run-1", BOOT_TIMEOUT)
    guests.append(first)
    hibernation.enable_swap(first.console)
    boot_id = first.console.run("cat /proc/sys/kernel/random/boot_id").strip()
    hibernated = hibernation.hibernate(first, HIBERNATE_TIMEOUT)
    assert hibernated.status.state == State.SHUTDOWN and hibernated.copied_pages > 0

    smaller = dataclasses.replace(domain, memory_mib=domain.memory_mib - 128)
    second = hibernation.start(smaller, tmp_path / "run-2", BOOT_TIMEOUT)
    guests.append(second)
    boot_log = second.console.text()
    assert hibernation.RESUME_FAILED in boot_log and "mismatch" in boot_log, boot_log[-2000:]
    assert second.console.run("cat /proc/sys/kernel/random/boot_id").strip() != boot_id
    # the kernel put the swap signature back when it found the image: never tried again
    assert hibernation.swap_signature(paging.backing.path) == hibernation.SWAP_MAGIC
    assert "/dev/vd" in hibernation.enable_swap(second.console)


def test_without_swap_on_the_paging_disk_the_kernel_refuses_to_hibernate(
    kernel_boot, guests, tmp_path
) -> None:
    paging = hibernation.paging_disk(tmp_path / "paging.img", 64 * MIB)
    domain = hibernation.guest_domain(kernel_boot, (paging,), name="noswap")
    guest = hibernation.start(domain, tmp_path / "run", BOOT_TIMEOUT)
    guests.append(guest)
    with pytest.raises(hibernation.HibernateError, match="swap"):
        hibernation.hibernate(guest, HIBERNATE_TIMEOUT)
    assert guest.launcher.status.state == State.RUNNING  # the guest goes on, nothing written
    assert hibernation.swap_signature(paging.backing.path) == ""
