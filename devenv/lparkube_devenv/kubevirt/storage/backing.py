"""The volumes themselves: sparse files (volumeMode Block) and directories (Filesystem).

Every volume lives at ``<root>/<namespace>/<pv name>``; both names are checked against the
Kubernetes name rules before they touch a path, so no name can reach outside its namespace's
directory (DNS labels and subdomains hold no '/' and no '..').
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path

BLOCK = "Block"
FILESYSTEM = "Filesystem"
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
COPY_CHUNK = 1 << 20
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class BackingError(ValueError):
    """A name that cannot name a volume, or a volume that is not what it should be."""


class BackingStore:
    """Creates, grows, measures and removes the files behind the thin volumes."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def path(self, namespace: str, volume: str) -> Path:
        if len(namespace) > 63 or not _LABEL.match(namespace):
            raise BackingError(f"not a namespace name: {namespace!r}")
        if len(volume) > 253 or not _SUBDOMAIN.match(volume):
            raise BackingError(f"not a PersistentVolume name: {volume!r}")
        path = self.root / namespace / volume
        if not path.resolve().is_relative_to(self.root):
            raise BackingError(f"{path} leaves {self.root}")
        return path

    def create(self, namespace: str, volume: str, volume_mode: str, size: int) -> Path:
        """A sparse file of ``size`` bytes, or an empty directory; idempotent."""
        path = self.path(namespace, volume)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if volume_mode == BLOCK:
            with open(path, "ab") as sparse:  # creates it, never truncates what is there
                sparse.truncate(max(size, sparse.seek(0, os.SEEK_END)))
            path.chmod(0o600)
        else:
            path.mkdir(mode=0o700, exist_ok=True)
        return path

    @staticmethod
    def grow(path: Path, volume_mode: str, size: int) -> None:
        """Make a Block volume ``size`` bytes long; never shorter (a directory has no size)."""
        if volume_mode != BLOCK:
            return
        if not path.is_file():
            raise BackingError(f"the backing file {path} is missing")
        if path.stat().st_size < size:
            os.truncate(path, size)

    def remove(self, path: Path) -> None:
        if not path.resolve().is_relative_to(self.root):
            raise BackingError(f"{path} is not under {self.root}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the namespace's last volume: its directory goes too
            path.parent.rmdir()

    @staticmethod
    def used_bytes(path: Path) -> int:
        """Bytes really allocated on the host disk (what was written), not the apparent size."""
        if not path.exists():
            return 0
        if not path.is_dir():
            return path.lstat().st_blocks * 512
        total = 0
        for parent, dirs, files in os.walk(path):
            for name in dirs + files:
                total += (Path(parent) / name).lstat().st_blocks * 512
        return total


def copy_data(source: Path, target: Path) -> None:
    """A copy of a volume (a sparse file, or a directory of them) that holds only what was
    written: each file's data extents, found with SEEK_DATA/SEEK_HOLE, land at the same
    offsets and its holes stay holes (the apparent size is kept). Links and special files
    are not copied."""
    if source.is_dir() and not source.is_symlink():
        target.mkdir(mode=0o700, exist_ok=True)
        for entry in source.iterdir():
            copy_data(entry, target / entry.name)
        return
    if not source.is_file() or source.is_symlink():
        return
    with source.open("rb") as src, open(target, "wb", opener=_private) as dst:
        size = os.fstat(src.fileno()).st_size
        for start, end in _data_extents(src.fileno(), size):
            for offset in range(start, end, COPY_CHUNK):
                dst.seek(offset)
                dst.write(os.pread(src.fileno(), min(COPY_CHUNK, end - offset), offset))
        dst.truncate(size)


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _data_extents(fd: int, size: int):
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # nothing but a hole up to the end
                return
            raise
        offset = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, offset
