"""Runs on disk, so that an agent restart repeats no application's save and no hibernation.

The operator re-sends an instruction (same id) after its own restart or a lost answer and
expects the agent to attach rather than run it again. In memory that holds only while the agent
lives; a journal keeps each run in the state directory (written atomically after every change),
so a restarted agent answers a finished id with the kept result. Save runs keep their request,
state and per-application outcomes (a run the agent was killed in saves only the apps with no
outcome); hibernate runs keep theirs (hibernate.py), each journal with its own record decoder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

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


class Record(Protocol):
    def to_json(self) -> dict[str, Any]: ...


Kept = TypeVar("Kept", bound=Record)


class Journal(Generic[Kept]):
    """Run records by id, newest last; ``path`` None keeps nothing (in-process agents).
    ``decode`` reads one record back (ValueError or TypeError when it is malformed); by
    default a save run's."""

    def __init__(
        self,
        path: Path | None,
        decode: Callable[[object], Kept] = _record,  # type: ignore[assignment]
        what: str = "save",
    ) -> None:
        self.path = path
        self._decode = decode
        self._what = what
        self._lock = threading.Lock()

    def load(self) -> list[Kept]:
        """The kept records; unreadable ones are logged and dropped, never fatal."""
        data = read_json(self.path) if self.path is not None else None
        items = data.get("runs") if isinstance(data, dict) else None
        records = []
        for item in items if isinstance(items, list) else []:
            try:
                records.append(self._decode(item))
            except (TypeError, ValueError) as error:
                what, path = self._what, self.path
                log.warning("dropping an unreadable %s record from %s: %s", what, path, error)
        return records

    def write(self, records: list[Kept]) -> None:
        if self.path is None:
            return
        with self._lock:
            payload = {"version": VERSION, "runs": [r.to_json() for r in records]}
            try:
                atomic_write_json(self.path, payload)
            except OSError as error:  # a full disk must not stop the run itself
                log.error("cannot write the %s journal %s: %s", self._what, self.path, error)
