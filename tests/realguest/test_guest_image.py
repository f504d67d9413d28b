"""The guest image booted for real: Debian's kernel under QEMU (software emulation), its init,
and the real agent inside, reached from the host through user networking's hostfwd with the
operator's own client (TLS naming the partition, signed requests, verified answers).

One boot per test: the SecretVolume test then reboots the guest with Ctrl-Alt-Del, the
CloudInit test kills the agent to see it restarted; both end with the ACPI power button, after
which QEMU must exit by itself. The QEMU command line here is the test's own minimal one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_tls import standalone_credentials

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube.adapters.guest_agent import AgentClient, AgentError, AgentTarget
from lparkube.domain import key_delivery
from lparkube.domain.partition import AgentSpec, secret_files
from lparkube_devenv.controlplane import Process, free_port, spawn
from lparkube_devenv.guestimage import GuestImage, ensure_image, image_for_run

pytestmark = pytest.mark.realguest

AGENT_PORT = 8443
GATEWAY_NAME = "lparkube-agent-gateway.lparkube.svc"
OPERATOR_URL = f"https://{GATEWAY_NAME}:8443"
HOSTS_LINE = f"10.0.2.100 {GATEWAY_NAME}"
NAMESPACE, NAME, UID = "tenant-a", "web-1", "8c1f5a52-realguest"
CTRL_ALT_DEL = ("ctrl", "alt", "delete")
BOOT_TIMEOUT = 240.0  # software emulation on a loaded 2-core machine
HOST_PACKAGES = {  # program: the Debian package that has it
    "qemu-system-x86_64": "qemu-system-x86",
    "genisoimage": "genisoimage",
    "cpio": "cpio",
    "depmod": "kmod",
    "lz4": "lz4",
    "xz": "xz-utils",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
}


def missing_packages() -> list[str]:
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [pkg for prog, pkg in HOST_PACKAGES.items() if shutil.which(prog, path=path) is None]


@pytest.fixture(scope="module")
def image() -> GuestImage:
    missing = missing_packages()
    if missing:
        pytest.fail(
            f"the real-guest tests need the Debian packages {', '.join(missing)} "
            "(apt-get install -y ...; .ci/run installs them)"
        )
    return ensure_image()


# --- a minimal QEMU for one guest --------------------------------------------------------


class Console:
    """The guest's serial console (QEMU's chardev socket): a root shell, read in a thread."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.output = bytearray()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.output.extend(data)

    def type(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def wait_for(self, text: str, timeout: float = 60.0, since: int = 0) -> int:
        """Wait until ``text`` appears after offset ``since``; returns the offset after it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = self.output.find(text.encode(), since)
            if found >= 0:
                return found + len(text)
            time.sleep(0.05)
        tail = bytes(self.output[-2000:]).decode(errors="replace")
        raise AssertionError(f"{text!r} never appeared on the console; its end:\n{tail}")

    def mark(self) -> int:
        with self._lock:
            return len(self.output)

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Run a shell command on the console; its output (the typed line's echo excluded:
        the markers are split by quotes as typed, whole only in what the shell prints)."""
        n = next(self._ids)
        since = self.mark()
        self.type(f"echo '<<''{n}<<'; {command}; echo '>>''{n}>>'\n")
        start = self.wait_for(f"<<{n}<<", timeout, since)
        end = self.wait_for(f">>{n}>>", timeout, start)
        with self._lock:
            text = bytes(self.output[start : end - len(f">>{n}>>")])
        return text.decode(errors="replace").replace("\r\n", "\n").strip()

    def close(self) -> None:
        self.sock.close()


class Guest:
    """One QEMU process booting the image with the given disks (image file, serial)."""

    def __init__(
        self, run_dir: Path, image: GuestImage, disks: list[tuple[Path, str]], hosts: str
    ) -> None:
        self.run_dir = run_dir
        self.image = image_for_run(image, run_dir)
        self.disks = disks
        self.port = free_port()
        (run_dir / "hosts").write_text(hosts)
        self.serial_log = run_dir / "serial0.log"
        self.started = 0.0
        self.process: Process | None = None
        self._console: Console | None = None

    def argv(self) -> list[str]:
        run = self.run_dir
        argv = [
            "qemu-system-x86_64", "-machine", "pc-q35-7.2,accel=tcg", "-cpu", "qemu64",
            "-m", "512", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", self.image.cmdline,
            "-chardev", f"socket,id=serial0,path={run / 'serial0.sock'},server=on,wait=off,"
            f"logfile={self.serial_log}",
            "-device", "isa-serial,chardev=serial0",
            "-chardev", f"socket,id=qmp,path={run / 'qmp.sock'},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
            "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:{AGENT_PORT}",
            "-device", "virtio-net-pci,netdev=net0,addr=0x3",
            "-fw_cfg", f"name=opt/io.lparkube/hosts,file={run / 'hosts'}",
            "-device", "pvpanic",
        ]  # fmt: skip
        for index, (path, serial) in enumerate(self.disks):
            argv += [
                "-drive", f"file={path},if=none,id=disk{index},format=raw,readonly=on",
                "-device", f"virtio-blk-pci,drive=disk{index},serial={serial},addr={4 + index:#x}",
            ]  # fmt: skip
        return argv

    def start(self) -> Guest:
        self.started = time.monotonic()
        self.process = spawn("qemu", self.argv(), self.run_dir / "qemu.log")
        return self

    def log_text(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_marker(self, marker: str, count: int = 1, timeout: float = BOOT_TIMEOUT) -> float:
        """Seconds from QEMU's start until the serial log shows ``marker`` ``count`` times."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(f"lparkube-guest: {marker}") >= count:
                return time.monotonic() - self.started
            assert self.process is not None
            if self.process.exit_code() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no 'lparkube-guest: {marker}' (x{count}) on the console; QEMU: "
            f"{self.process and self.process.tail()}\nconsole:\n{self.log_text()[-3000:]}"
        )

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(self.run_dir / "serial0.sock")
        return self._console

    def qmp(self, command: str, **arguments: object) -> dict:
        """One QMP command on a fresh connection; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.run_dir / "qmp.sock"))
            replies = sock.makefile("rb")
            replies.readline()  # the greeting
            for request in ({"execute": "qmp_capabilities"}, {"execute": command}):
                if request["execute"] == command and arguments:
                    request["arguments"] = arguments
                sock.sendall(json.dumps(request).encode())
                while True:
                    reply = json.loads(replies.readline())
                    if "event" not in reply:
                        break
            return reply

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.popen.wait(timeout)

    def stop(self) -> None:
        if self._console is not None:
            self._console.close()
        if self.process is not None:
            self.process.stop(grace=5)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes: a short directory, not pytest's tmp_path.
    path = Path(tempfile.mkdtemp(prefix="lpk-guest-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_iso(target: Path, label: str, files: dict[str, bytes]) -> Path:
    """An ISO 9660 disk (Rock Ridge, Joliet) holding ``files``, as KubeVirt makes its
    secret and NoCloud disks."""
    source = target.with_suffix(".d")
    source.mkdir()
    for name, content in files.items():
        (source / name).write_bytes(content)
    subprocess.run(
        ["genisoimage", "-quiet", "-o", str(target), "-V", label, "-J", "-R", str(source)],
        check=True,
    )
    return target


def partition_files(credentials: OperatorCredentials, delivery: str) -> dict[str, bytes]:
    """The key Secret's files for the partition, made by the operator's own code."""
    agent_credentials = credentials.identity.agent_credentials(NAMESPACE, NAME, UID)
    agent = AgentSpec(
        port=AGENT_PORT, key_secret_name=f"{NAME}-agent", key_delivery=delivery,
        heartbeat_timeout=90.0,
    )  # fmt: skip
    partition = {"metadata": {"namespace": NAMESPACE, "name": NAME, "uid": UID}}
    return secret_files(partition, agent, agent_credentials, OPERATOR_URL)


def call_agent(credentials: OperatorCredentials, port: int, request: str, **kwargs: object):
    """The operator's AgentClient against the guest's agent (through hostfwd)."""

    async def call() -> dict:
        client = AgentClient(credentials)
        target = AgentTarget(NAMESPACE, NAME, UID, f"127.0.0.1:{port}")
        try:
            return await getattr(client, request)(target, **kwargs)
        finally:
            await client.close()

    return asyncio.run(call())


def wait_for_report(credentials: OperatorCredentials, guest: Guest, timeout: float) -> dict:
    """The agent's report, asked until it answers (hostfwd accepts before the guest listens)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call_agent(credentials, guest.port, "report")
        except AgentError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def power_off(guest: Guest) -> None:
    """The ACPI power button: the guest shuts down cleanly and QEMU exits by itself (0)."""
    guest.qmp("system_powerdown")
    guest.wait_for_marker("shutting down", timeout=60)
    assert guest.wait_exit(timeout=60) == 0


PROMPT = ":~# "  # root's, in its home (/etc/profile)
EDITOR_READY = {"vim": "[New]", "nano": "New File"}  # what each shows for a new file


def save_editor_edit(
    credentials: OperatorCredentials, guest: Guest, editor: str, document: str, typed: str
) -> dict:
    """Start ``editor`` under `lparkube-agent run` on the console, type an unsaved edit, and
    have the agent save it (a signed save from the host); returns the save's result."""
    console = guest.console
    console.type(f"lparkube-agent run -- {editor} {document}\n")
    ready = console.wait_for(EDITOR_READY[editor], timeout=60, since=console.mark())
    console.type(typed)
    console.wait_for(typed.removeprefix("i"), timeout=30, since=ready)
    instruction = {"id": f"save-{editor}", "reason": "Manual", "applicationTimeoutSeconds": 20}
    return call_agent(credentials, guest.port, "save", instruction=instruction, timeout=90)


def quit_editor(console: Console, keys: str) -> None:
    """Type the editor's quit keys and wait for the shell's prompt to come back."""
    since = console.mark()
    console.type(keys)
    console.wait_for(PROMPT, timeout=30, since=since)


# --- the tests ---------------------------------------------------------------------------


def test_secret_volume_guest_boots_debian_and_serves_the_agent(
    image: GuestImage, run_dir: Path
) -> None:
    credentials = standalone_credentials()
    files = partition_files(credentials, key_delivery.SECRET_VOLUME)
    secret_disk = make_iso(run_dir / "secret.iso", key_delivery.KEY_VOLUME, files)
    guest = Guest(run_dir, image, [(secret_disk, key_delivery.KEY_SERIAL)], HOSTS_LINE + "\n")
    try:
        guest.start()
        guest.wait_for_marker("userspace up")
        guest.wait_for_marker("agent started")
        report = wait_for_report(credentials, guest, timeout=60)
        assert report["kernelRelease"] == image.kernel_release
        assert report["vmcoreinfo"] is not None

        console = guest.console
        assert console.run("uname -r") == image.kernel_release
        assert console.run("test -r /sys/kernel/vmcoreinfo && echo present") == "present"
        assert console.run("readlink /dev/disk/by-id/virtio-lparkube") == "../../vda"
        assert console.run("grep -c ' /run/lparkube/secret ' /proc/mounts") == "1"
        assert HOSTS_LINE in console.run("cat /etc/hosts")
        writable = "test -c /dev/pts/ptmx && touch /root/w /tmp/w /var/lib/lparkube/w && echo ok"
        assert console.run(writable) == "ok"

        result = save_editor_edit(credentials, guest, "vim", "/root/vim-notes.txt", "ihello vim")
        [app] = result["applications"]
        assert (app["method"], app["outcome"]) == ("SimulatedInput", "Saved")
        quit_editor(console, ":q\r")
        assert console.run("cat /root/vim-notes.txt") == "hello vim"

        guest.qmp("send-key", keys=[{"type": "qcode", "data": k} for k in CTRL_ALT_DEL])
        guest.wait_for_marker("userspace up", count=2)
        guest.wait_for_marker("agent started", count=2)
        assert wait_for_report(credentials, guest, timeout=60)["kernelRelease"]
        power_off(guest)
    finally:
        guest.stop()


def test_cloud_init_guest_applies_the_operators_user_data(image: GuestImage, run_dir: Path) -> None:
    credentials = standalone_credentials()
    files = partition_files(credentials, key_delivery.CLOUD_INIT)
    template = "#cloud-config\nwrite_files:\n- path: /root/from-template.txt\n  content: kept\n"
    template += "packages: [htop]\n"
    user_data = key_delivery.user_data_with_files(template, files)
    meta_data = "instance-id: web-1-test\nlocal-hostname: web-1\n"
    seed = {"user-data": user_data.encode(), "meta-data": meta_data.encode()}
    seed_disk = make_iso(run_dir / "cidata.iso", "cidata", seed)
    guest = Guest(run_dir, image, [(seed_disk, key_delivery.CLOUD_INIT_VOLUME)], "")
    try:
        guest.start()
        guest.wait_for_marker("agent started")
        report = wait_for_report(credentials, guest, timeout=60)
        assert report["kernelRelease"] == image.kernel_release
        assert "not implemented by this image, ignored: packages" in guest.log_text()

        console = guest.console
        assert console.run("stat -c '%a %U:%G' /etc/lparkube/key") == "600 root:root"
        assert console.run("ls -1 /etc/lparkube") == "ca.crt\nconfig.json\nkey\ntls.crt\ntls.key"
        assert console.run("grep -c /run/lparkube/secret /proc/mounts") == "0"
        assert console.run("cat /root/from-template.txt") == "kept"
        assert console.run("hostname") == "web-1"

        result = save_editor_edit(credentials, guest, "nano", "/root/nano-notes.txt", "hi nano")
        [app] = result["applications"]
        assert (app["method"], app["outcome"]) == ("SimulatedInput", "Saved")
        quit_editor(console, "\x18")  # Ctrl-X: nano quits (saved, so it asks nothing)
        assert console.run("cat /root/nano-notes.txt") == "hi nano"

        console.run("kill -9 $(cat /run/lparkube-guest/agent.pid)")
        guest.wait_for_marker("agent started", count=2, timeout=60)
        assert wait_for_report(credentials, guest, timeout=60)["kernelRelease"]
        power_off(guest)
    finally:
        guest.stop()
