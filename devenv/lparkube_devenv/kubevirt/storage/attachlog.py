"""The attach log: every attach, detach and refusal the stand-in's attacher saw, as JSON lines.

The attacher writes ``attach`` *before* it marks a VolumeAttachment attached and ``detach``
only *after* the attachment is gone, so the log never shows a volume free while it is in use:
:func:`two_writers` over it finds every moment a single-node volume was attached on two nodes.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .names import multi_attach_allowed

ATTACH = "attach"
DETACH = "detach"
REFUSED = "refused"


def log_time() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


class AttachLog:
    """Appends one JSON object per line; safe to share between threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(
        self,
        event: str,
        *,
        volume: str,
        node: str,
        access_modes: Iterable[str],
        claim: str = "",
        pods: Iterable[str] = (),
        attachment: str = "",
        message: str = "",
    ) -> dict:
        entry = {
            "time": log_time(),
            "event": event,
            "pv": volume,
            "claim": claim,
            "node": node,
            "pods": sorted(pods),
            "accessModes": list(access_modes),
            "attachment": attachment,
            "message": message,
        }
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as log:
                log.write(line)
        return entry


def read_entries(log_path: Path) -> list[dict]:
    """The log's entries in order (an absent log is an empty one)."""
    path = Path(log_path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Violation:
    """A single-node volume attached on more than one node at once."""

    time: str
    volume: str
    nodes: tuple[str, ...]
    line: int  # 1-based line of the attach that made the second writer


def find_two_writers(entries: Iterable[dict]) -> list[Violation]:
    """Replays attaches and detaches; every attach of an RWO/RWOP volume held elsewhere."""
    holders: dict[str, set[str]] = defaultdict(set)
    violations = []
    for line, entry in enumerate(entries, start=1):
        volume, node = entry.get("pv", ""), entry.get("node", "")
        if entry.get("event") == DETACH:
            holders[volume].discard(node)
        elif entry.get("event") == ATTACH:
            others = holders[volume] - {node}
            if others and not multi_attach_allowed(entry.get("accessModes") or ["ReadWriteOnce"]):
                nodes = tuple(sorted(others | {node}))
                violations.append(Violation(entry.get("time", ""), volume, nodes, line))
            holders[volume].add(node)
    return violations


def two_writers(log_path: Path) -> list[Violation]:
    """Every moment the log at ``log_path`` shows an RWO volume attached on two nodes."""
    return find_two_writers(read_entries(log_path))
