"""One VMI's QEMU process, driven the way virt-launcher drives its libvirt domain.

``QemuLauncher(domain, run_dir).start()`` writes the run directory (``qemu.argv``, ``qemu.log``,
``serial0.log``, the fw_cfg ``hosts`` file, the ``qmp.sock`` and ``serial0.sock`` sockets),
starts QEMU with its CPUs stopped in a process group of its own, negotiates QMP, then lets the
CPUs run. From then on the state follows QEMU's events and the process itself:

=============  =====================================================================
``starting``   the process runs, QMP not yet ready
``running``    CPUs run (RESUME, or ``cont``)
``paused``     CPUs stopped: ``pause_reason`` ``user`` (``pause``), ``dump`` (a memory
               dump pauses as libvirt's non-live dump does) or QEMU's run state
``shutdown``   SHUTDOWN: the guest powered off (``by_guest``), or QEMU was told to quit
               by a signal or ``quit`` (``shutdown_reason``); the launcher then ends QEMU
``panicked``   GUEST_PANICKED: recorded, and the process destroyed at once, as libvirt's
               ``on_crash=destroy`` (KubeVirt sets no other) does
``destroyed``  ended on request: ``kill``, or ``power_off`` after its grace period
``crashed``    the process ended without any of the above
=============  =====================================================================

``vmi_phase`` maps a final state to the VMI phase as virt-handler does, and ``panic_message``
gives the ``GuestPanicked`` event's message. No QEMU outlives the stand-in: every QEMU is forked
from one long-lived thread through ``setpriv --pdeathsig KILL`` (util-linux), because
PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, and Popen's
``preexec_fn`` is not safe in a threaded program.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import accel as accel_probe
from .machine import Domain, Network, RunFiles, disk_node_name, hosts_text, qemu_argv
from .qmp import Event, QmpClient, QmpClosedError, QmpError

log = logging.getLogger(__name__)
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; keep a margin
SETPRIV = "setpriv"
DUMP_POLL = 0.2
DUMP_FD = "dump"  # the name the dump file's descriptor has inside QEMU
SECTOR = 512  # block_resize sizes are whole sectors
CTRL_ALT_DELETE = [{"type": "qcode", "data": key} for key in ("ctrl", "alt", "delete")]


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    PANICKED = "panicked"
    DESTROYED = "destroyed"
    CRASHED = "crashed"


FINAL_STATES = frozenset({State.SHUTDOWN, State.PANICKED, State.DESTROYED, State.CRASHED})


@dataclass(frozen=True)
class Status:
    state: State = State.STARTING
    pause_reason: str | None = None
    shutdown_reason: str | None = None
    by_guest: bool = False
    panic: dict[str, Any] | None = None  # GUEST_PANICKED's data
    resets: int = 0  # RESET events: guest reboots and soft reboots
    watchdog: str | None = None  # the action of the last WATCHDOG event
    exit_code: int | None = None  # the process's return code; negative: killed by that signal

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def exited(self) -> bool:
        return self.exit_code is not None


@dataclass(frozen=True)
class DumpResult:
    path: Path
    total: int  # bytes of guest memory dumped
    seconds: float


class LaunchError(RuntimeError):
    """QEMU did not start, or cannot do what was asked in its current state."""


class DumpError(RuntimeError):
    """dump-guest-memory failed."""


def vmi_phase(status: Status, graceful_shutdown: bool = True) -> str | None:
    """The VMI phase virt-handler gives a domain in this state (``pkg/virt-handler/vm.go``).

    ``graceful_shutdown``: the VMI has ACPI and a termination grace period other than 0; a
    domain destroyed then was destroyed because the grace period ran out, which is a failure.
    """
    if status.state in (State.RUNNING, State.PAUSED):
        return "Running"
    if status.state == State.SHUTDOWN:
        return "Succeeded"
    if status.state in (State.PANICKED, State.CRASHED):
        return "Failed"
    if status.state == State.DESTROYED:
        return "Failed" if graceful_shutdown else "Succeeded"
    return None


def panic_message(panic: dict[str, Any] | None) -> str:
    """The GuestPanicked event's message, as virt-launcher formats the panic information."""
    info = (panic or {}).get("info") or {}
    kind = info.get("type", "")
    if kind == "hyper-v":
        args = ", ".join(f"'{info.get(f'arg{i}', 0):#x}'" for i in range(1, 6))
        return f"GuestPanicked: {args}"
    if kind:
        return f"GuestPanicked: type={kind}"
    return "GuestPanicked (details unavailable)"


class _Spawner:
    """Forks every QEMU from one thread that lives as long as the program (see module doc)."""

    def __init__(self) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def popen(self, argv: list[str], **options: Any) -> subprocess.Popen:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="qemu-spawner", daemon=True
                )
                self._thread.start()
        answer: queue.Queue = queue.Queue(maxsize=1)
        self._requests.put((argv, options, answer))
        ok, value = answer.get()
        if not ok:
            raise value
        return value

    def _serve(self) -> None:
        while True:
            argv, options, answer = self._requests.get()
            try:
                answer.put((True, subprocess.Popen(argv, **options)))
            except Exception as exc:
                answer.put((False, exc))


_spawner = _Spawner()


class QemuLauncher:
    """One VMI's QEMU: start, follow, pause, stop, dump."""

    def __init__(
        self,
        domain: Domain,
        run_dir: Path,
        *,
        network: Network | None = None,
        accelerator: str | None = None,
        binary: str | None = None,
        on_change: Callable[[Status], None] | None = None,
    ) -> None:
        self.domain = domain
        self.run_dir = Path(run_dir).absolute()
        self.network = network or Network()
        self.binary = binary or accel_probe.qemu_binary()
        self.accelerator = accelerator or accel_probe.accelerator(self.binary).name
        self.on_change = on_change
        self._socket_dir = socket_dir(self.run_dir)
        self.files = RunFiles.in_dir(self.run_dir, self._socket_dir)
        self._changed = threading.Condition(threading.RLock())
        self._status = Status()
        self._process: subprocess.Popen | None = None
        self._qmp: QmpClient | None = None
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._expected_pause: str | None = None
        self._fake_reboot = False
        self._kill_requested = False
        self._grace_timer: threading.Timer | None = None
        self._dump_lock = threading.Lock()
        self.started_at: float | None = None
        self.qmp_ready_at: float | None = None

    # --- state ------------------------------------------------------------------------------

    @property
    def status(self) -> Status:
        with self._changed:
            return self._status

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def qmp(self) -> QmpClient:
        if self._qmp is None:
            raise LaunchError("QEMU has not been started")
        return self._qmp

    def wait_for(self, accept: Callable[[Status], bool] | State, timeout: float = 30.0) -> Status:
        """Wait until the status satisfies ``accept`` (or is that state); the status then."""
        wanted = accept

        def accepted() -> bool:
            if isinstance(wanted, State):
                return self._status.state == wanted
            return wanted(self._status)

        with self._changed:
            if not self._changed.wait_for(accepted, timeout):
                raise TimeoutError(f"QEMU {self.domain.name}: still {self._status}")
            return self._status

    def wait_exit(self, timeout: float = 30.0) -> Status:
        return self.wait_for(lambda s: s.exited, timeout)

    def _update(self, **changes: Any) -> Status:
        return self._transition(None, **changes)

    def _transition(self, source: State | None, **changes: Any) -> Status:
        """Apply ``changes`` if the state is ``source`` (any state: None); then tell on_change
        (outside the lock). A final state stays; later facts only add detail."""
        with self._changed:
            if source is not None and self._status.state != source:
                return self._status
            if self._status.final:
                changes.pop("state", None)
            self._status = new = replace(self._status, **changes)
            self._changed.notify_all()
        log.debug("QEMU %s: %s", self.domain.name, new)
        if self.on_change is not None:
            try:
                self.on_change(new)
            except Exception:
                log.exception("QEMU %s: on_change failed", self.domain.name)
        return new

    # --- starting ---------------------------------------------------------------------------

    def argv(self) -> list[str]:
        return qemu_argv(self.domain, self.files, self.network, self.accelerator, self.binary)

    def start(self, timeout: float = 30.0) -> Status:
        """Start QEMU and let its CPUs run; the status once they do."""
        if self._process is not None:
            raise LaunchError(f"QEMU {self.domain.name} was started already")
        argv = self._prepare_run_dir()
        self.started_at = time.monotonic()
        self._process = self._spawn(argv)
        threading.Thread(target=self._watch_process, name="qemu-exit", daemon=True).start()
        try:
            self._qmp = QmpClient.connect(
                self.files.qmp_socket, timeout, self._events.put, self._process_alive
            )
            self.qmp_ready_at = time.monotonic()
            threading.Thread(target=self._handle_events, name="qemu-events", daemon=True).start()
            self._qmp.execute("cont")
        except (QmpClosedError, QmpError, TimeoutError, OSError) as exc:
            self._kill_process()
            self._wait_process(10.0)
            raise LaunchError(f"QEMU {self.domain.name} did not start: {self._log_tail()}") from exc
        return self._transition(State.STARTING, state=State.RUNNING)

    def _prepare_run_dir(self) -> list[str]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _make_private_dir(self._socket_dir)
        if self.network.services:
            self.files.hosts_file.write_text(hosts_text(self.network.services))
        argv = self.argv()
        (self.run_dir / "qemu.argv").write_text("\n".join(argv) + "\n")
        if self._socket_dir != self.run_dir:
            for name in ("qmp.sock", "serial0.sock"):
                link = self.run_dir / name
                link.unlink(missing_ok=True)
                link.symlink_to(self._socket_dir / name)
        return argv

    def _spawn(self, argv: list[str]) -> subprocess.Popen:
        setpriv = shutil.which(SETPRIV)
        if setpriv is None:
            raise LaunchError("setpriv is missing: install the Debian package util-linux")
        with (self.run_dir / "qemu.log").open("ab") as qemu_log:
            return _spawner.popen(
                [setpriv, "--pdeathsig", "KILL", "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                process_group=0,
                close_fds=True,
            )

    def _process_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _log_tail(self, size: int = 2000) -> str:
        try:
            text = (self.run_dir / "qemu.log").read_text(errors="replace")
        except OSError:
            return "(no qemu.log)"
        return text[-size:].strip() or "(qemu.log is empty)"

    # --- what QEMU tells us -----------------------------------------------------------------

    def _handle_events(self) -> None:
        while (event := self._events.get()) is not None:
            try:
                self._handle(event)
            except (QmpClosedError, QmpError, TimeoutError) as exc:
                log.debug("QEMU %s: acting on %s: %s", self.domain.name, event.name, exc)

    def _handle(self, event: Event) -> None:
        if event.name == "STOP":
            self._stopped()
        elif event.name == "RESUME":
            self._transition(State.PAUSED, state=State.RUNNING, pause_reason=None)
        elif event.name == "SHUTDOWN":
            self._shut_down(event)
        elif event.name == "GUEST_PANICKED":
            self._update(state=State.PANICKED, panic=event.data)
            self._kill_process()  # libvirt on_crash=destroy: the memory is gone
        elif event.name == "RESET":
            self._update(resets=self.status.resets + 1)
        elif event.name == "WATCHDOG":
            self._update(watchdog=event.data.get("action"))

    def _stopped(self) -> None:
        reason, self._expected_pause = self._expected_pause, None  # ours, consumed once
        if self.status.state != State.RUNNING:
            return
        if reason is None:
            reason = (self.qmp.execute("query-status") or {}).get("status", "paused")
            if reason in ("shutdown", "guest-panicked"):
                return  # SHUTDOWN / GUEST_PANICKED say what happened
        self._transition(State.RUNNING, state=State.PAUSED, pause_reason=reason)

    def _shut_down(self, event: Event) -> None:
        if self.status.final:
            return  # our own quit after the guest's power-off, or a kill
        by_guest = bool(event.data.get("guest"))
        if by_guest and self._fake_reboot:
            # libvirt's fake reboot: the guest powered off on the ACPI button, so reset it
            # and let it run again (qemuProcessFakeReboot).
            self._fake_reboot = False
            self.qmp.execute("system_reset")
            self.qmp.execute("cont")
            return
        self._update(
            state=State.SHUTDOWN, shutdown_reason=event.data.get("reason"), by_guest=by_guest
        )
        self._end_after_shutdown()

    def _end_after_shutdown(self) -> None:
        try:
            self.qmp.execute("quit", timeout=5.0)
        except (QmpClosedError, QmpError, TimeoutError):
            self._kill_process()

    def _watch_process(self) -> None:
        assert self._process is not None
        code = self._process.wait()
        with self._changed:
            crashed = not self._status.final
            state = State.DESTROYED if self._kill_requested else State.CRASHED
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        if crashed:
            log.info("QEMU %s ended (%s): %s", self.domain.name, code, self._log_tail(500))
        if self._qmp is not None:
            self._qmp.close()
        self._remove_sockets()  # before the final state: whoever waits for it finds them gone
        self._update(state=state, exit_code=code, pause_reason=None)
        self._events.put(None)

    # --- what we ask of QEMU ----------------------------------------------------------------

    def pause(self) -> Status:
        self._require(State.RUNNING, "pause")
        self._stop_cpus("user")
        return self._transition(State.RUNNING, state=State.PAUSED, pause_reason="user")

    def unpause(self) -> Status:
        self._require(State.PAUSED, "unpause")
        self.qmp.execute("cont")
        return self._transition(State.PAUSED, state=State.RUNNING, pause_reason=None)

    def power_off(self, grace: float) -> None:
        """KubeVirt's stop: press the ACPI power button, destroy after ``grace`` seconds.

        Returns at once; ``wait_exit`` waits for the outcome (``shutdown`` or ``destroyed``).
        """
        if self.status.final or not self._process_alive():
            return
        if not self.domain.acpi or grace <= 0:
            self.kill()
            return
        self._fake_reboot = False  # a power-off now, even after an unanswered soft reboot
        try:
            self.qmp.execute("system_powerdown")
        except (QmpClosedError, QmpError):
            self.kill()
            return
        if self._grace_timer is not None:
            self._grace_timer.cancel()  # the last stop's grace period counts
        self._grace_timer = threading.Timer(grace, self._grace_expired)
        self._grace_timer.daemon = True
        self._grace_timer.start()

    def _grace_expired(self) -> None:
        if not self.status.final:
            log.info("QEMU %s: grace period over, destroying it", self.domain.name)
            self.kill(wait=False)

    def kill(self, wait: bool = True) -> Status:
        """Destroy the domain (SIGKILL to QEMU's process group); ``destroyed`` unless final."""
        self._kill_requested = True
        self._kill_process()
        if wait:
            self._wait_process(30.0)
        return self.status

    def reboot_soft(self) -> None:
        """KubeVirt's softreboot without a guest agent: libvirt's ACPI reboot.

        virt-launcher calls ``virDomainReboot(VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)``; libvirt
        presses the power button and, when the guest has powered off, resets the machine and
        lets it run again (a "fake reboot"), so the guest reboots through a clean shutdown.
        """
        self._require(State.RUNNING, "softreboot")
        self._fake_reboot = True
        self.qmp.execute("system_powerdown")

    def send_ctrl_alt_del(self) -> None:
        self._require(State.RUNNING, "send Ctrl-Alt-Del")
        self.qmp.execute("send-key", {"keys": CTRL_ALT_DELETE})

    def disk_capacity(self, disk: str) -> int:
        """The size in bytes the guest sees for the Domain's disk named ``disk``: the virtual
        size of its format node (QMP ``query-named-block-nodes``)."""
        node = self._disk_node(disk)
        for found in self.qmp.execute("query-named-block-nodes", {"flat": True}) or []:
            if found.get("node-name") == node:
                return int(found["image"]["virtual-size"])
        raise LaunchError(f"QEMU {self.domain.name} has no block node {node} for disk {disk!r}")

    def block_resize(self, disk: str, size: int) -> None:
        """Grow a disk of the running guest to ``size`` bytes, as libvirt's
        ``virDomainBlockResize`` (KubeVirt's ExpandDisks) does: QMP ``block_resize`` of the
        disk's format node, which truncates its file up to that size when it is shorter; the
        guest's virtio-blk device is told of the new capacity at once (a config change)."""
        status = self.status.state
        if status not in (State.RUNNING, State.PAUSED):
            raise LaunchError(f"cannot resize a disk of QEMU {self.domain.name}: it is {status}")
        if size <= 0 or size % SECTOR:
            raise ValueError(f"a disk size must be a positive multiple of {SECTOR} bytes: {size}")
        self.qmp.execute("block_resize", {"node-name": self._disk_node(disk), "size": size})

    def _disk_node(self, disk: str) -> str:
        for index, candidate in enumerate(self.domain.disks):
            if candidate.name == disk:
                return disk_node_name(index)
        raise LaunchError(f"QEMU {self.domain.name} has no disk {disk!r}")

    def memory_dump(self, path: Path, timeout: float = 600.0) -> DumpResult:
        """Dump guest memory as virt-launcher does: ``virDomainCoreDumpWithFormat(RAW,
        MEMORY_ONLY)``, which libvirt runs as ``dump-guest-memory`` (ELF, paging off,
        detached, polled) with the CPUs stopped for the dump (it is not a live dump)."""
        with self._dump_lock, self.cpus_stopped("dump"):
            return self._dump(Path(path), timeout)

    @contextlib.contextmanager
    def cpus_stopped(self, reason: str) -> Iterator[None]:
        """The guest's CPUs stopped meanwhile (QMP ``stop``, which also drains and flushes
        every disk's in-flight writes, so the disk files hold that instant), then running again
        (``cont``) if they ran before and nobody else paused or ended the domain meanwhile; the
        pause is not the user's (``pause_reason`` ``reason``)."""
        status = self.status
        if status.state not in (State.RUNNING, State.PAUSED):
            raise LaunchError(f"cannot stop the CPUs of a {status.state} domain")
        was_running = status.state == State.RUNNING
        if was_running:
            self._stop_cpus(reason)
            self._transition(State.RUNNING, state=State.PAUSED, pause_reason=reason)
        try:
            yield
        finally:
            status = self.status
            if was_running and (status.state, status.pause_reason) == (State.PAUSED, reason):
                self.unpause()

    def _stop_cpus(self, reason: str) -> None:
        """QMP `stop`; the STOP event, whenever it comes, takes `reason` as the pause's."""
        self._expected_pause = reason
        try:
            self.qmp.execute("stop")
        except BaseException:
            self._expected_pause = None
            raise

    def _dump(self, path: Path, timeout: float) -> DumpResult:
        begun = time.monotonic()
        since = self.qmp.mark()
        self._hand_over_dump_file(path)
        arguments = {"paging": False, "protocol": f"fd:{DUMP_FD}", "detach": True, "format": "elf"}
        try:
            self.qmp.execute("dump-guest-memory", arguments)
        except QmpError:
            with contextlib.suppress(QmpError):
                self.qmp.execute("closefd", {"fdname": DUMP_FD})
            raise
        while time.monotonic() - begun < timeout:
            progress = self.qmp.execute("query-dump")
            if progress["status"] == "completed":
                return DumpResult(path, progress["total"], time.monotonic() - begun)
            if progress["status"] == "failed":
                raise DumpError(self._dump_failure(since))
            time.sleep(DUMP_POLL)
        raise DumpError(f"dump-guest-memory did not finish within {timeout:g} s")

    def _hand_over_dump_file(self, path: Path) -> None:
        """Open the file here and pass it to QEMU (``getfd``), as libvirt does: the dump
        gets this process's permissions (0600, it holds guest memory), not QEMU's."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self.qmp.execute("getfd", {"fdname": DUMP_FD}, fds=(fd,))
        finally:
            os.close(fd)

    def _dump_failure(self, since: int) -> str:
        try:
            event = self.qmp.wait_event("DUMP_COMPLETED", 1.0, since)
        except TimeoutError:
            return "dump-guest-memory failed"
        return f"dump-guest-memory failed: {event.data.get('error', 'no reason given')}"

    def _require(self, state: State, action: str) -> None:
        current = self.status.state
        if current != state:
            raise LaunchError(f"cannot {action} QEMU {self.domain.name}: it is {current}")

    # --- ending -----------------------------------------------------------------------------

    def _kill_process(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)

    def _wait_process(self, timeout: float) -> None:
        if self._process is None:
            return
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("QEMU %s did not end in %.0f s", self.domain.name, timeout)
            return
        self.wait_for(lambda s: s.exited, timeout)

    def close(self) -> None:
        """Destroy QEMU if it still runs and wait for it; idempotent."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self.kill()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """QEMU cannot remove its sockets when it is killed; nothing may connect to a dead one."""
        for path in (self.files.qmp_socket, self.files.serial_socket):
            path.unlink(missing_ok=True)
            (self.run_dir / path.name).unlink(missing_ok=True)
        if self._socket_dir != self.run_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> QemuLauncher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def socket_dir(run_dir: Path) -> Path:
    """The run directory, or, when its socket paths would not fit in sun_path, a short one
    named after it (the run directory then holds links to the sockets)."""
    run_dir = Path(run_dir).absolute()
    if len(str(run_dir / "serial0.sock")) <= SOCKET_PATH_MAX:
        return run_dir
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"lparkube-qemu-{digest}"


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise LaunchError(f"{path} belongs to another user; remove it")
