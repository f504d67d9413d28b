"""Which QEMU binary, and whether KVM can run the stand-in's machine or TCG must emulate it.

KVM counts as usable only when it can run exactly our machine: ``/dev/kvm`` opens read-write
and answers ``KVM_GET_API_VERSION`` with 12 (the stable API), *and* QEMU starts
``pc-q35-7.2`` with ``-cpu Nehalem-v1,enforce`` under ``-accel kvm``. The second probe matters:
a nested or restricted KVM can create VMs yet not offer the CPU features of our fixed model
(then ``enforce`` refuses it), and a guest whose CPU differs by accelerator could not carry a
memory image from one process to another. ``LPARKUBE_QEMU_ACCEL=tcg`` forces emulation;
``=kvm`` demands KVM (an error when it is not usable).
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from .machine import CPU_MODEL, MACHINE_TYPE

QEMU_BINARY = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"  # the Debian package holding QEMU_BINARY
KVM_DEVICE = "/dev/kvm"
KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO=0xAE, 0x00)
KVM_API_VERSION = 12
ACCEL_ENV = "LPARKUBE_QEMU_ACCEL"
PROBE_TIMEOUT = 30.0
_MISSING_FEATURE = re.compile(r"requested feature: \S+?\.([\w.-]+) \[bit")


class QemuMissingError(RuntimeError):
    """qemu-system-x86_64 is not installed."""


@dataclass(frozen=True)
class Accelerator:
    name: str  # kvm | tcg
    reason: str  # why, in words for the log


def qemu_binary() -> str:
    found = shutil.which(QEMU_BINARY)
    if found is None:
        raise QemuMissingError(
            f"{QEMU_BINARY} is not installed: install the Debian package {QEMU_PACKAGE} "
            "(.ci/run installs it)"
        )
    return found


def kvm_device_answers(device: str = KVM_DEVICE) -> tuple[bool, str]:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"{device} cannot be opened read-write ({exc.strerror})"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return False, f"{device} does not answer KVM_GET_API_VERSION ({exc.strerror})"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return False, f"{device} speaks KVM API {version}, not {KVM_API_VERSION}"
    return True, f"{device} answers KVM API {version}"


def kvm_runs_machine(binary: str) -> tuple[bool, str]:
    """Start our machine under KVM, CPUs stopped, and quit at once."""
    argv = [
        binary, "-machine", MACHINE_TYPE, "-accel", "kvm", "-cpu", f"{CPU_MODEL},enforce",
        "-nodefaults", "-no-user-config", "-display", "none", "-S", "-m", "16M", "-qmp", "stdio",
    ]  # fmt: skip
    commands = b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
    try:
        run = subprocess.run(
            argv, check=False, input=commands, capture_output=True, timeout=PROBE_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return False, f"QEMU did not start under KVM within {PROBE_TIMEOUT:.0f} s"
    if run.returncode != 0:
        return False, f"QEMU cannot run {CPU_MODEL} under KVM: {_refusal(run.stderr)}"
    return True, f"QEMU runs {CPU_MODEL} under KVM"


def _refusal(stderr: bytes) -> str:
    text = stderr.decode(errors="replace")
    missing = _MISSING_FEATURE.findall(text)
    if missing:
        return f"the host's KVM lacks {', '.join(dict.fromkeys(missing))}"
    return " ".join(text.split())[-300:] or "no reason given"


@functools.cache
def accelerator(binary: str) -> Accelerator:
    """KVM when it can run our machine, else TCG (cached: the host does not change)."""
    forced = os.environ.get(ACCEL_ENV, "")
    if forced == "tcg":
        return Accelerator("tcg", f"{ACCEL_ENV}=tcg")
    usable, reason = kvm_device_answers()
    if usable:
        usable, reason = kvm_runs_machine(binary)
    if forced == "kvm" and not usable:
        raise RuntimeError(f"{ACCEL_ENV}=kvm but KVM is not usable: {reason}")
    if forced not in ("", "kvm"):
        raise RuntimeError(f"{ACCEL_ENV} must be kvm or tcg, not {forced!r}")
    return Accelerator("kvm" if usable else "tcg", reason)
