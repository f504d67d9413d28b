"""The save runs on disk, so that an agent restart repeats no application's save.

The operator re-sends an instruction (same id) after its own restart or a lost answer and
expects the agent to attach rather than save again. In memory that holds only while the agent
lives; the journal keeps each run's request, state and per-application outcomes in the state
directory (written atomically after every change), so a restarted agent answers a finished
id with the kept result and, for a run it was killed in, saves only the apps with no outcome.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .state import atomic_write_json, read_json

log = logging.getLogger(__name__)

VERSION = 1
APP_FIELDS = ("name", "pid", "priority", "order", "method", "outcome", "durationMillis")


@dataclass
class RunRecord:
    """What the journal keeps of one run."""

    request: dict[str, Any]
    state: str
    started_at: float
    completed_at: float | None
    applications: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _record(data: object) -> RunRecord:
    """A record read back from disk; ValueError when a field has the wrong shape."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    record = RunRecord(**data)
    if not isinstance(record.request, dict) or not isinstance(record.request.get("id"), str):
        raise ValueError("request.id missing")
    if not isinstance(record.started_at, (int, float)):
        raise ValueError("started_at is not a number")
    if not isinstance(record.applications, list) or not all(
        isinstance(a, dict) and all(f in a for f in APP_FIELDS) for a in record.applications
    ):
        raise ValueError("applications are malformed")
    return record


class Journal:
    """Run records by id, newest last; ``path`` None keeps nothing (in-process agents)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> list[RunRecord]:
        """The kept records; unreadable ones are logged and dropped, never fatal."""
        data = read_json(self.path) if self.path is not None else None
        items = data.get("runs") if isinstance(data, dict) else None
        records = []
        for item in items if isinstance(items, list) else []:
            try:
                records.append(_record(item))
            except (TypeError, ValueError) as error:
                log.warning("dropping an unreadable save record from %s: %s", self.path, error)
        return records

    def write(self, records: list[RunRecord]) -> None:
        if self.path is None:
            return
        with self._lock:
            payload = {"version": VERSION, "runs": [r.to_json() for r in records]}
            try:
                atomic_write_json(self.path, payload)
            except OSError as error:  # a full disk must not stop the save itself
                log.error("cannot write the save journal %s: %s", self.path, error)
