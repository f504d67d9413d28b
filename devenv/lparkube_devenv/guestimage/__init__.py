"""The lparkube guest image: Debian's kernel and an initramfs that boots into the real agent.

Two parts. The base, from ``hack/build-guest-image.sh``: the kernel and a compressed initramfs
of the pinned Debian 12 packages (busybox, python3, python3-yaml, nano, vim and the kernel
modules the guest loads), cached outside the repository and rebuilt only when a pin or the
script changes. The overlay, made for each run by :func:`initrd_for_run`: the guest's init
(busybox init, its inittab and scripts under ``rootfs/``), the NoCloud applier
(``nocloud.py``) and the agent's zipapp, as a second cpio archive appended to the base (the
kernel unpacks concatenated archives in order, later files over earlier ones). So a change to
the init or the agent needs no image build.

QEMU boots it with ``-kernel image.kernel -initrd <initrd_for_run(...)> -append image.cmdline``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lparkube_agent import build as agent_build
from lparkube_devenv.controlplane import run_build_script

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-guest-image.sh"
PACKAGE_DIR = Path(__file__).resolve().parent
ROOTFS = PACKAGE_DIR / "rootfs"
NOCLOUD_APPLIER = PACKAGE_DIR / "nocloud.py"

# quiet: the kernel's boot messages cost ~0.7 s on an emulated serial port; errors still show.
# hibernate=nocompress: a hibernation image goes to the paging LU page for page (no LZO), so
# the LU holds at least what the kernel said it copied ("Need to copy N pages").
# no_console_suspend: the console keeps printing while devices are suspended for hibernation,
# so the console log shows the image being written (when the log level lets it through).
DEFAULT_CMDLINE = "console=ttyS0 quiet hibernate=nocompress no_console_suspend"
AGENT_PATH = "usr/local/bin/lparkube-agent"
NOCLOUD_PATH = "usr/lib/lparkube-guest/nocloud.py"
# Modes are set here, not taken from the package's files (an installed wheel may lose them).
EXECUTABLES = {
    "init",
    "etc/acpi/PWRF/00000080",
    "usr/lib/lparkube-guest/rcS",
    "usr/lib/lparkube-guest/agent-service",
    "usr/lib/lparkube-guest/shutdown",
    "usr/lib/lparkube-guest/final",
    NOCLOUD_PATH,
    AGENT_PATH,
}
DIRECTORIES = {  # made empty in the overlay, with these modes
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "run": 0o755,
    "tmp": 0o1777,
    "root": 0o700,
    "mnt": 0o755,
    "var/log": 0o755,
    "var/tmp": 0o1777,
    "var/lib": 0o755,
}
OVERLAY_NAME = "guest-overlay.cpio.lz4"
INITRD_NAME = "initrd.img"


class GuestImageError(RuntimeError):
    """The guest image could not be built or assembled."""


@dataclass(frozen=True)
class GuestImage:
    """What QEMU boots: ``-kernel kernel -initrd initrd -append cmdline``.

    From :func:`ensure_image`, ``initrd`` is the base alone (no init: it does not boot);
    :func:`image_for_run` gives the one to boot."""

    kernel: Path
    initrd: Path
    kernel_release: str
    cmdline: str = DEFAULT_CMDLINE


def ensure_image(cache: Path | None = None) -> GuestImage:
    """Build (or reuse from the cache) the base image; ``cache`` overrides the cache root
    (default ``$LPARKUBE_CACHE``, else ``$XDG_CACHE_HOME/lparkube`` or ``~/.cache/lparkube``)."""
    env = dict(os.environ)
    if cache is not None:
        env["LPARKUBE_CACHE"] = str(cache)
    image_dir = Path(_run_build(env))
    image = GuestImage(
        kernel=image_dir / "vmlinux",
        initrd=image_dir / INITRD_NAME,
        kernel_release=_read(image_dir / "kernel-release"),
    )
    missing = [p.name for p in (image.kernel, image.initrd) if not p.is_file()]
    if missing or not image.kernel_release:
        raise GuestImageError(f"{BUILD_SCRIPT} left an incomplete image in {image_dir}")
    return image


def _run_build(env: dict[str, str]) -> str:
    """The image directory the build script prints (its log goes to our stderr)."""
    code, lines = run_build_script(BUILD_SCRIPT, env)
    if code != 0 or not lines:
        raise GuestImageError(f"{BUILD_SCRIPT} failed (exit code {code}); its messages are above")
    return lines[-1]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def initrd_for_run(image: GuestImage, workdir: Path) -> Path:
    """Write ``workdir/initrd.img``: the image's base initramfs and, appended, the overlay
    (init, its configuration, the NoCloud applier, the agent built from this checkout)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = build_overlay(workdir / OVERLAY_NAME)
    target = workdir / INITRD_NAME
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("wb") as out:
        for part in (image.initrd, overlay):
            with part.open("rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
    partial.replace(target)
    return target


def image_for_run(image: GuestImage, workdir: Path) -> GuestImage:
    """The image to boot in ``workdir``: as ``image``, with the initrd of :func:`initrd_for_run`."""
    return dataclasses.replace(image, initrd=initrd_for_run(image, workdir))


def build_overlay(target: Path) -> Path:
    """The overlay as a cpio (newc) archive, every file root's, compressed as the base is (lz4
    legacy: the kernel's lz4 decoder reads on to the end of the initrd, across both)."""
    cpio, lz4 = _tool("cpio", "cpio"), _tool("lz4", "lz4")
    with tempfile.TemporaryDirectory(prefix="lparkube-overlay-") as tmp:
        staging = Path(tmp) / "rootfs"
        _stage_overlay(staging)
        names = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
        archive = subprocess.run(
            [cpio, "-o", "-H", "newc", "-R", "0:0", "--quiet"],
            input="\n".join(names).encode() + b"\n",
            capture_output=True,
            cwd=staging,
            check=True,
        ).stdout
    with target.open("wb") as out:
        subprocess.run([lz4, "-l", "-9", "-q"], input=archive, stdout=out, check=True)
    return target


def _tool(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise GuestImageError(
            f"{program} is not installed (Debian package {package}; .ci/run installs it)"
        )
    return path


def _stage_overlay(staging: Path) -> None:
    shutil.copytree(ROOTFS, staging)
    (staging / NOCLOUD_PATH).write_bytes(NOCLOUD_APPLIER.read_bytes())
    agent_build.build(staging / AGENT_PATH)
    for name in DIRECTORIES:
        (staging / name).mkdir(parents=True, exist_ok=True)
    for path in staging.rglob("*"):
        name = str(path.relative_to(staging))
        if path.is_dir():
            path.chmod(DIRECTORIES.get(name, 0o755))
        else:
            path.chmod(0o755 if name in EXECUTABLES else 0o644)
