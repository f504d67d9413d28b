"""Crash-safe JSON files in the agent's state directory.

The agent can be killed at any instant (SIGKILL, power loss in the guest). Writing to a temp
file in the same directory, fsyncing it, renaming it over the old file and fsyncing the
directory means a reader sees either the old table or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def atomic_write_json(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON, atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = json.dumps(data, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> Any:
    """The file's JSON, or None if it is missing; an unreadable file is kept aside, not lost."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        log.error("state file %s is unreadable (%s); moved to %s", path, error, aside)
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        return None
