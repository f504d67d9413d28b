"""QemuLauncher against real QEMU: first with no guest at all (SeaBIOS idles without a boot
device, and QMP, pause, dumps and kills work all the same), then booting the guest image.

Every test checks that no QEMU of its own is left in /proc afterwards.
"""

from __future__ import annotations

import importlib
import mmap
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lparkube_devenv.qemu import accel
from lparkube_devenv.qemu.console import SerialConsole
from lparkube_devenv.qemu.console import attach as console_attach
from lparkube_devenv.qemu.launcher import (
    LaunchError,
    QemuLauncher,
    State,
    panic_message,
    vmi_phase,
)
from lparkube_devenv.qemu.machine import (
    Backing,
    Domain,
    GuestService,
    HostForward,
    KernelBoot,
    Network,
    device_tree,
    domain_from_vmi,
)

pytestmark = pytest.mark.realguest

MIB = 1024 * 1024
USERSPACE_UP = "lparkube-guest: userspace up"
BOOT_TIMEOUT = 240.0  # software emulation on a loaded 2-core machine
GATEWAY = "lparkube-agent-gateway.lparkube.svc"
VMI_IP = "127.77.0.5"  # a VMI's loopback address, as the stand-in hands them out


@pytest.fixture(scope="module", autouse=True)
def _qemu_installed() -> None:
    if shutil.which(accel.QEMU_BINARY) is None:
        pytest.fail(
            f"{accel.QEMU_BINARY} is missing: install the Debian package {accel.QEMU_PACKAGE} "
            "(.ci/run installs it)"
        )


def qemu_processes(marker: str) -> list[int]:
    """The QEMU processes whose command line mentions ``marker`` (a test's own directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and marker.encode() in b" ".join(argv):
            found.append(int(entry.name))
    return found


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "run"
    deadline = time.monotonic() + 10
    while qemu_processes(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemu_processes(str(tmp_path)) == [], "a QEMU outlived its test"


def small_vmi(memory: str = "512Mi", **devices) -> dict:
    return {
        "metadata": {"name": "vm1", "namespace": "ns", "uid": "uid-1"},
        "spec": {"domain": {"memory": {"guest": memory}, "devices": devices}},
    }


@pytest.fixture
def launch(run_dir: Path) -> Iterator[Callable[..., QemuLauncher]]:
    launchers: list[QemuLauncher] = []

    def start(domain: Domain, network: Network | None = None) -> QemuLauncher:
        launcher = QemuLauncher(domain, run_dir, network=network)
        launchers.append(launcher)
        launcher.start()
        return launcher

    yield start
    for launcher in launchers:
        launcher.close()


def attached(socket_path: Path) -> tuple[threading.Thread, int, int]:
    """``console.attach`` in a thread with pipes for a terminal: (thread, keyboard, screen)."""
    keyboard_out, keyboard = os.pipe()
    screen, screen_in = os.pipe()
    thread = threading.Thread(target=console_attach, args=(socket_path, keyboard_out, screen_in))
    thread.start()
    return thread, keyboard, screen


def read_until(fd: int, text: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, f"{text!r} never came; saw {seen[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            seen += os.read(fd, 4096)
    return seen


# --- ELF core files -----------------------------------------------------------------------------

PT_LOAD, PT_NOTE, ET_CORE, EM_X86_64 = 1, 4, 4, 62


ELF_LAYOUTS = {  # class: (header after e_ident, program header), little-endian
    1: ("<HHIIIIIHHHHHH", "<IIIIIIII"),  # ELFCLASS32: p_type p_offset p_vaddr p_paddr ...
    2: ("<HHIQQQIHHHHHH", "<IIQQQQQQ"),  # ELFCLASS64: p_type p_flags p_offset p_vaddr ...
}


def program_header(layout: str, raw: bytes) -> tuple[int, int, int, int, int]:
    """(p_type, p_offset, p_paddr, p_filesz, p_memsz) from either class's layout."""
    fields = struct.unpack(layout, raw)
    if layout == ELF_LAYOUTS[2][1]:
        return fields[0], fields[2], fields[4], fields[5], fields[6]
    return fields[0], fields[1], fields[3], fields[4], fields[5]


def elf_core(path: Path) -> tuple[int, int, list[tuple[int, int, int]], list[bytes]]:
    """(e_type, e_machine, PT_LOAD (paddr, filesz, memsz) segments, note names)."""
    with path.open("rb") as dump:
        ident = dump.read(16)
        assert ident[:4] == b"\x7fELF" and ident[5] == 1  # little-endian ELF
        header_layout, program_layout = ELF_LAYOUTS[ident[4]]
        header = struct.unpack(header_layout, dump.read(struct.calcsize(header_layout)))
        e_type, e_machine, phoff, phentsize, phnum = (header[i] for i in (0, 1, 4, 8, 9))
        segments, notes = [], []
        for index in range(phnum):
            dump.seek(phoff + index * phentsize)
            raw = dump.read(struct.calcsize(program_layout))
            p_type, offset, paddr, filesz, memsz = program_header(program_layout, raw)
            if p_type == PT_LOAD:
                segments.append((paddr, filesz, memsz))
            elif p_type == PT_NOTE:
                dump.seek(offset)
                notes += note_names(dump.read(filesz))
    return e_type, e_machine, segments, notes


def note_names(data: bytes) -> list[bytes]:
    names, offset = [], 0
    while offset + 12 <= len(data):
        namesz, descsz, _ = struct.unpack_from("<III", data, offset)
        names.append(data[offset + 12 : offset + 12 + namesz].rstrip(b"\0"))
        offset += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return names


def covers(segments: list[tuple[int, int, int]], size: int) -> bool:
    """The segments, all written in full, cover guest physical memory [0, size)."""
    reached = 0
    for paddr, filesz, memsz in sorted(segments):
        assert filesz == memsz, "paging off dumps every byte"
        if paddr > reached:
            break  # a hole (or memory above the RAM, like the BIOS at 4 GiB - 256 KiB)
        reached = max(reached, paddr + memsz)
    return reached >= size


# --- without a guest ----------------------------------------------------------------------------


def test_start_gives_a_running_machine_with_exactly_our_device_tree(launch, run_dir) -> None:
    root, keys = run_dir.parent / "root.img", run_dir.parent / "keys.iso"
    for disk in (root, keys):
        disk.write_bytes(b"")
        os.truncate(disk, 64 * MIB)  # sparse
    spec = small_vmi(disks=[{"name": "root"}, {"name": "keys", "serial": "lparkube"}],
                     panicDevices=[{"model": "pvpanic"}])  # fmt: skip
    domain = domain_from_vmi(spec, {"root": Backing(root), "keys": Backing(keys, readonly=True)})
    launcher = launch(domain)
    assert launcher.status.state == State.RUNNING
    assert launcher.qmp.execute("query-status")["status"] == "running"
    pci = launcher.qmp.execute("query-pci")[0]["devices"]
    ours = {d["qdev_id"]: d["slot"] for d in pci if d["qdev_id"]}
    assert ours == {device.id: device.slot for device in device_tree(domain)}
    assert sorted(d["slot"] for d in pci if not d["qdev_id"]) == [0x00, 0x1F, 0x1F, 0x1F]
    peripheral = "/machine/peripheral/"
    blocks = {
        b["qdev"].removeprefix(peripheral).split("/")[0]: b["inserted"]
        for b in launcher.qmp.execute("query-block")
        if b.get("qdev", "").startswith(peripheral)
    }
    assert blocks["ua-keys"]["ro"] and not blocks["ua-root"]["ro"]
    serial = {"path": f"{peripheral}ua-keys", "property": "serial"}
    assert launcher.qmp.execute("qom-get", serial) == "lparkube"
    for name in ("qmp.sock", "serial0.sock", "serial0.log", "qemu.argv", "qemu.log"):
        assert (run_dir / name).exists(), name
    assert launcher.qmp_ready_at - launcher.started_at < 10


def test_pause_and_unpause_round_trip_with_their_events(launch) -> None:
    launcher = launch(domain_from_vmi(small_vmi(), {}))
    since = launcher.qmp.mark()
    paused = launcher.pause()
    assert (paused.state, paused.pause_reason) == (State.PAUSED, "user")
    assert launcher.qmp.execute("query-status")["status"] == "paused"
    launcher.qmp.wait_event("STOP", 5, since)
    with pytest.raises(LaunchError, match="it is paused"):
        launcher.pause()
    since = launcher.qmp.mark()
    assert launcher.unpause().state == State.RUNNING
    launcher.qmp.wait_event("RESUME", 5, since)
    assert launcher.qmp.execute("query-status")["status"] == "running"
    assert vmi_phase(launcher.status) == "Running"


def test_memory_dump_is_an_elf_core_of_all_guest_memory(launch, run_dir) -> None:
    launcher = launch(domain_from_vmi(small_vmi("512Mi"), {}))
    since = launcher.qmp.mark()
    target = run_dir.parent / "pvc" / "vm1-dumps-20260101-120000.memory.dump"
    result = launcher.memory_dump(target)
    e_type, _, segments, notes = elf_core(target)
    assert e_type == ET_CORE
    assert covers(segments, 512 * MIB)
    assert b"VMCOREINFO" not in notes  # no vmcoreinfo device: KubeVirt sets none
    assert result.total >= 512 * MIB and result.path == target
    assert target.stat().st_mode & 0o777 == 0o600
    names = [e.name for e in launcher.qmp.events()[since:]]
    assert names == ["STOP", "DUMP_COMPLETED", "RESUME"]  # CPUs stopped for the dump
    assert launcher.status.state == State.RUNNING


def test_a_paused_guest_is_dumped_and_stays_paused(launch, run_dir) -> None:
    launcher = launch(domain_from_vmi(small_vmi("128Mi"), {}))
    launcher.pause()
    launcher.memory_dump(run_dir.parent / "paused.dump")
    assert (launcher.status.state, launcher.status.pause_reason) == (State.PAUSED, "user")


def test_kill_destroys_the_domain(launch) -> None:
    launcher = launch(domain_from_vmi(small_vmi(), {}))
    pid = launcher.pid
    status = launcher.kill()
    assert (status.state, status.exit_code) == (State.DESTROYED, -signal.SIGKILL)
    assert not Path(f"/proc/{pid}").exists()
    assert not (launcher.run_dir / "qmp.sock").exists()
    with pytest.raises(LaunchError, match="it is destroyed"):
        launcher.pause()


def test_qemu_dying_on_its_own_is_a_crash(launch) -> None:
    launcher = launch(domain_from_vmi(small_vmi(), {}))
    os.kill(launcher.pid, signal.SIGKILL)  # not asked by the launcher: as if QEMU crashed
    status = launcher.wait_exit(10)
    assert (status.state, status.exit_code) == (State.CRASHED, -signal.SIGKILL)
    assert vmi_phase(status) == "Failed"


def test_power_off_that_nothing_answers_destroys_after_the_grace_period(launch) -> None:
    launcher = launch(domain_from_vmi(small_vmi(), {}))  # SeaBIOS ignores the power button
    begun = time.monotonic()
    launcher.power_off(grace=1.0)
    status = launcher.wait_exit(20)
    assert status.state == State.DESTROYED and time.monotonic() - begun >= 1.0
    assert vmi_phase(status, graceful_shutdown=True) == "Failed"  # as virt-handler decides


def test_a_qemu_that_cannot_start_says_why(run_dir) -> None:
    taken = socket.create_server((VMI_IP, 0))
    port = taken.getsockname()[1]
    network = Network(forwards=(HostForward(VMI_IP, port, 8443),))
    launcher = QemuLauncher(domain_from_vmi(small_vmi(), {}), run_dir, network=network)
    with taken, pytest.raises(LaunchError, match="Could not set up host forwarding rule"):
        launcher.start(timeout=20)
    assert launcher.status.exited


def test_qemu_started_from_a_short_lived_thread_keeps_running(launch, run_dir) -> None:
    domain = domain_from_vmi(small_vmi(), {})
    launcher = QemuLauncher(domain, run_dir)
    starter = threading.Thread(target=launcher.start)
    starter.start()
    starter.join()
    time.sleep(1)  # PR_SET_PDEATHSIG would have fired when the forking thread ended
    try:
        assert launcher.status.state == State.RUNNING
        assert launcher.qmp.execute("query-status")["status"] == "running"
    finally:
        launcher.close()


def test_no_qemu_outlives_the_program_that_started_it(run_dir) -> None:
    program = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from lparkube_devenv.qemu.launcher import QemuLauncher
        from lparkube_devenv.qemu.machine import domain_from_vmi
        vmi = {small_vmi("64Mi")!r}
        launcher = QemuLauncher(domain_from_vmi(vmi, {{}}), Path({str(run_dir)!r}))
        launcher.start()
        print(launcher.pid, flush=True)
        time.sleep(600)
    """)
    stand_in = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    qemu_pid = int(stand_in.stdout.readline())
    assert Path(f"/proc/{qemu_pid}").exists()
    stand_in.kill()  # SIGKILL: no cleanup of its own runs
    stand_in.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{qemu_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{qemu_pid}").exists()


def test_attach_leaves_on_ctrl_bracket_without_a_guest(launch) -> None:
    launcher = launch(domain_from_vmi(small_vmi("64Mi"), {}))
    thread, keyboard, _ = attached(launcher.run_dir / "serial0.sock")
    os.write(keyboard, b"typed before leaving\x1dnever sent")
    thread.join(10)
    assert not thread.is_alive()


def test_long_run_directories_get_short_sockets_linked_in(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    launcher = QemuLauncher(domain_from_vmi(small_vmi("64Mi"), {}), deep)
    try:
        launcher.start()
        assert (deep / "qmp.sock").is_symlink() and len(str(launcher.files.qmp_socket)) < 100
        with SerialConsole(deep / "serial0.sock", deep / "serial0.log") as console:
            console.send_line("")  # the serial socket answers through its link
    finally:
        launcher.close()
    assert not launcher.files.qmp_socket.parent.exists()
    assert qemu_processes(str(tmp_path)) == []


# --- with the guest image -----------------------------------------------------------------------


def guest_image_package():
    """lparkube_devenv.guestimage, imported only by the tests that boot the guest."""
    try:
        return importlib.import_module("lparkube_devenv.guestimage")
    except ImportError as exc:
        pytest.fail(f"the guest image package lparkube_devenv.guestimage is missing: {exc}")


@pytest.fixture(scope="module")
def guest_image():
    return guest_image_package().ensure_image()


def guest_domain(image, run_dir: Path, panic_model: str = "pvpanic") -> Domain:
    booted = guest_image_package().image_for_run(image, run_dir)
    spec = small_vmi("512Mi", panicDevices=[{"model": panic_model}])
    return domain_from_vmi(spec, {}, default_kernel=KernelBoot.of(booted))


def boot(image, run_dir: Path, network: Network | None = None, panic_model: str = "pvpanic"):
    launcher = QemuLauncher(guest_domain(image, run_dir, panic_model), run_dir, network=network)
    launcher.start()
    console = SerialConsole(launcher.files.serial_socket, launcher.files.serial_log)
    try:
        console.wait_for(USERSPACE_UP, BOOT_TIMEOUT)
        console.wait_for("# ", 60)  # the console's shell prompt
    except BaseException:
        console.close()
        launcher.close()
        raise
    return launcher, console


class OneShotService:
    """A loopback TCP service answering one connection: it reads a line, answers "pong ..."."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self.listener:
            connection, _ = self.listener.accept()
            with connection:
                line = connection.makefile("rb").readline()
                self.received.append(line)
                connection.sendall(b"pong " + line)


@pytest.fixture(scope="module")
def booted(guest_image, tmp_path_factory) -> Iterator[tuple[QemuLauncher, SerialConsole, dict]]:
    """One guest for the tests that leave it running: a gateway service and an agent port."""
    run_dir = tmp_path_factory.mktemp("booted") / "run"
    service = OneShotService()
    agent_port = free_port(VMI_IP)
    network = Network(
        forwards=(HostForward(VMI_IP, agent_port, 8443),),
        services=(GuestService(8444, "127.0.0.1", service.port, (GATEWAY,)),),
        relay=(sys.executable, "-m", "lparkube_devenv.qemu.relay"),
    )
    launcher, console = boot(guest_image, run_dir, network)
    yield launcher, console, {"service": service, "agent_port": agent_port}
    console.close()
    launcher.close()
    assert qemu_processes(str(run_dir)) == []


def free_port(host: str) -> int:
    with socket.create_server((host, 0)) as probe:
        return probe.getsockname()[1]


def test_the_guest_reaches_the_host_only_through_its_guest_services(booted) -> None:
    _, console, extra = booted
    service: OneShotService = extra["service"]
    assert f"10.0.2.100 {GATEWAY}" in console.run("cat /etc/hosts")
    # With restrict=on the host's own address answers nothing, not even the service's port.
    refused = console.run(f"echo direct | nc -w 3 10.0.2.2 {service.port}; echo rc=$?", 30)
    assert "pong" not in refused and service.received == []
    answer = console.run(f"echo ping | nc {GATEWAY} 8444", 60)
    assert "pong ping" in answer
    assert service.received == [b"ping\n"]


def test_the_host_reaches_the_guest_through_the_forwarded_agent_port(booted) -> None:
    _, console, extra = booted
    console.send_line("echo hello-from-guest | nc -l -p 8443 &")
    deadline = time.monotonic() + 60
    while True:  # the listener starts in the guest a moment later
        try:
            with socket.create_connection((VMI_IP, extra["agent_port"]), timeout=10) as conn:
                conn.shutdown(socket.SHUT_WR)
                received = conn.makefile("rb").read()
            if received:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the forwarded port never answered"
        time.sleep(0.5)
    assert received.strip() == b"hello-from-guest"


def test_attach_joins_a_terminal_to_the_console_until_ctrl_bracket(booted) -> None:
    launcher, console, _ = booted
    console.close()  # the serial socket takes one client at a time
    thread, keyboard, screen = attached(launcher.run_dir / "serial0.sock")
    os.write(keyboard, b"echo attached-$((6*7))\n")
    read_until(screen, b"attached-42", 60)
    os.write(keyboard, b"\x1d")  # Ctrl-]
    thread.join(10)
    assert not thread.is_alive()
    assert console.run("echo again-$((1+1))").strip() == "again-2"  # and the console is back


def test_a_running_linux_s_dump_holds_its_vmcoreinfo(booted, guest_image, tmp_path) -> None:
    launcher, _, _ = booted
    target = tmp_path / "vm1-dumps-20260101-120000.memory.dump"
    launcher.memory_dump(target)
    e_type, e_machine, segments, notes = elf_core(target)
    assert (e_type, e_machine) == (ET_CORE, EM_X86_64)  # a 64-bit kernel runs in long mode
    assert covers(segments, 512 * MIB)
    assert b"VMCOREINFO" not in notes
    with target.open("rb") as dump, mmap.mmap(dump.fileno(), 0, access=mmap.ACCESS_READ) as mem:
        assert mem.find(f"OSRELEASE={guest_image.kernel_release}\n".encode()) >= 0
    assert launcher.status.state == State.RUNNING


def test_soft_reboot_is_a_clean_power_off_then_a_reset(booted) -> None:
    launcher, console, _ = booted
    since_log, since_events = console.mark(), launcher.qmp.mark()
    launcher.reboot_soft()
    console.wait_for(USERSPACE_UP, BOOT_TIMEOUT, since_log)
    shutdown = launcher.qmp.wait_event("SHUTDOWN", 5, since_events)
    assert shutdown.data == {"guest": True, "reason": "guest-shutdown"}
    launcher.qmp.wait_event("RESET", 5, since_events)
    status = launcher.wait_for(State.RUNNING, 10)
    assert status.resets >= 1 and not status.final
    console.wait_for("# ", 60, since_log)


class HoldingService:
    """A loopback TCP service that keeps the one connection it accepts open."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self.ended = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self.listener:
            connection, _ = self.listener.accept()
            self.accepted.set()
            with connection:
                while connection.recv(4096):
                    pass
            self.ended.set()


def relay_processes(port: int) -> list[int]:
    wanted = [b"lparkube_devenv.qemu.relay", b"127.0.0.1", str(port).encode()]
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and argv[2:5] == wanted:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("model", ["pvpanic", "isa"])
def test_a_panic_on_the_console_destroys_the_domain(guest_image, run_dir, model: str) -> None:
    service = HoldingService()
    network = Network(
        services=(GuestService(8444, "127.0.0.1", service.port),),
        relay=(sys.executable, "-m", "lparkube_devenv.qemu.relay"),
    )
    launcher, console = boot(guest_image, run_dir, network, panic_model=model)
    try:
        console.send_line("sleep 600 | nc 10.0.2.100 8444 &")  # a connection left open
        assert service.accepted.wait(60)
        assert relay_processes(service.port)
        console.send_line("echo c > /proc/sysrq-trigger")
        status = launcher.wait_exit(120)
    finally:
        console.close()
        launcher.close()
    assert (status.state, status.exit_code) == (State.PANICKED, -signal.SIGKILL)
    assert status.panic == {"action": "pause"}
    assert panic_message(status.panic) == "GuestPanicked (details unavailable)"
    assert vmi_phase(status) == "Failed"
    assert "sysrq: Trigger a crash" in console.text()
    assert service.ended.wait(10)  # the relay's connection ended with QEMU
    deadline = time.monotonic() + 10
    while relay_processes(service.port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert relay_processes(service.port) == []


def test_acpi_power_off_is_a_guest_shutdown(guest_image, run_dir) -> None:
    launcher, console = boot(guest_image, run_dir)
    try:
        launcher.power_off(grace=BOOT_TIMEOUT)
        status = launcher.wait_exit(BOOT_TIMEOUT)
    finally:
        console.close()
        launcher.close()
    assert (status.state, status.by_guest, status.shutdown_reason) == (
        State.SHUTDOWN, True, "guest-shutdown",
    )  # fmt: skip
    assert status.exit_code == 0  # the launcher ended QEMU with quit
    assert vmi_phase(status) == "Succeeded"
