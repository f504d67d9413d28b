"""Save runs: every registered app, by priority, each within its timeout, every outcome kept.

Priority groups run one after another (lower number first); the apps of one group run at once,
each in its own thread, so a hung or crashed app costs its own timeout and nothing else. Runs
are idempotent by the instruction's id: a repeat attaches to the run or gets its result, also
after an agent restart (the journal keeps them).
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from .journal import Journal, RunRecord
from .methods import FAILED, SKIPPED, TIMED_OUT, Outcome, SaveContext
from .registry import Registration

log = logging.getLogger(__name__)

RUNNING, COMPLETED = "Running", "Completed"
GRACE_SECONDS = 0.5  # past an app's timeout, before the runner stops waiting for its thread
MAX_ID = 253
MAX_TIMEOUT = 3600.0
MAX_WAIT = 55.0
_RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)$"
)


def iso(epoch: float) -> str:
    """RFC 3339 UTC with second precision, as Kubernetes writes times."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> float:
    """Epoch seconds from an RFC 3339 time; ValueError if it is not one."""
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError("deadline must be an RFC 3339 time such as 2026-11-21T22:10:00Z")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = float(match.group(7) or 0)
    zone = match.group(8)
    offset = 0 if zone in "Zz" else (int(zone[1:3]) * 60 + int(zone[4:6])) * 60
    offset = -offset if zone.startswith("-") else offset
    moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    return moment.timestamp() + fraction - offset


@dataclass(frozen=True)
class SaveRequest:
    """A validated save instruction."""

    id: str
    reason: str
    app_timeout: float
    deadline: float | None  # epoch seconds
    wait: float


def _number(data: dict, name: str, low: float, high: float, default: float) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in {low:g}..{high:g}")
    return float(value)


def instruction_id(data: object) -> str:
    """The id of an instruction (save or hibernate) from its JSON body; ValueError if the body
    is not an object or the id is not 1..MAX_ID printable characters."""
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    ident = data.get("id")
    if not isinstance(ident, str) or not 0 < len(ident) <= MAX_ID or not ident.isprintable():
        raise ValueError(f"id must be a string of 1..{MAX_ID} printable characters")
    return ident


def parse_save_request(data: object) -> SaveRequest:
    """The instruction from its JSON; ValueError names the field to fix."""
    ident = instruction_id(data)
    assert isinstance(data, dict)
    reason = data.get("reason", "Other")
    if not isinstance(reason, str) or not 0 < len(reason) <= 64 or not reason.isprintable():
        raise ValueError("reason must be a short string such as Thermal")
    deadline = data.get("deadline")
    return SaveRequest(
        id=ident,
        reason=reason,
        app_timeout=_number(data, "applicationTimeoutSeconds", 0.001, MAX_TIMEOUT, 30),
        deadline=None if deadline is None else parse_time(deadline),
        wait=_number(data, "waitSeconds", 0, MAX_WAIT, 25),
    )


def priority_groups(regs: Iterable[Registration]) -> list[list[Registration]]:
    """Registrations grouped by priority, lowest first; stable order inside a group."""
    ordered = sorted(regs, key=lambda r: (r.priority, r.name, r.pid))
    return [list(g) for _, g in itertools.groupby(ordered, key=lambda r: r.priority)]


def app_result(reg: Registration, order: int, outcome: Outcome, millis: int) -> dict:
    """One application's entry in the result (SaveEvent.status.partitions[].applications[])."""
    return {
        "name": reg.name,
        "pid": reg.pid,
        "priority": reg.priority,
        "order": order,
        "method": reg.method,
        "outcome": outcome.outcome,
        "durationMillis": max(0, int(millis)),
        "message": outcome.message,
    }


SaveFn = Callable[[Registration, SaveContext], Outcome]


class SaveRun:
    """One save instruction's execution and its (partial, then final) result."""

    def __init__(
        self,
        request: SaveRequest,
        saved: Iterable[dict] = (),
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """``saved``: outcomes kept from an interrupted run of the same id, not repeated."""
        self.request = request
        self.state = RUNNING
        self.started_at = time.time()
        self.completed_at: float | None = None
        self.done = threading.Event()
        self._apps: dict[tuple[int, str], dict] = {(a["pid"], a["name"]): a for a in saved}
        # Outcomes (and the end) are journaled before anyone can see them: a result that was
        # answered is never lost, so a save already reported is never repeated after a crash.
        self._staged: dict[tuple[int, str], dict] = {}
        self._completing: float | None = None
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda: None)

    def result(self) -> dict:
        with self._lock:
            apps = sorted(self._apps.values(), key=lambda a: (a["order"], a["name"], a["pid"]))
            body = {
                "id": self.request.id,
                "state": self.state,
                "startedAt": iso(self.started_at),
                "applications": apps,
            }
            if self.completed_at is not None:
                body["completedAt"] = iso(self.completed_at)
        return body

    def record(self) -> RunRecord:
        """What the journal keeps: everything seen, and what is about to be."""
        with self._lock:
            completing = self._completing is not None
            return RunRecord(
                asdict(self.request),
                COMPLETED if completing else self.state,
                self.started_at,
                self._completing if completing else self.completed_at,
                [*self._apps.values(), *self._staged.values()],
            )

    def _record(self, entry: dict) -> None:
        key = (entry["pid"], entry["name"])
        with self._lock:
            if key in self._apps or key in self._staged:
                return  # the first outcome wins (a late thread loses)
            self._staged[key] = entry
        self._on_change()  # journaled first
        with self._lock:
            self._apps[key] = self._staged.pop(key)

    def execute(self, regs: list[Registration], save: SaveFn) -> None:
        mono_deadline = None
        if self.request.deadline is not None:
            mono_deadline = time.monotonic() + (self.request.deadline - time.time())
        for order, group in enumerate(priority_groups(regs), 1):
            with self._lock:
                pending = [
                    r
                    for r in group
                    if (r.pid, r.name) not in self._apps.keys() | self._staged.keys()
                ]
            if pending:
                self._run_group(order, pending, save, mono_deadline)
        self.finish()

    def finish(self) -> None:
        with self._lock:
            self._completing = time.time()
        self._on_change()  # journaled first
        with self._lock:
            self.state, self.completed_at = COMPLETED, self._completing
        self.done.set()

    def _run_group(
        self, order: int, group: list[Registration], save: SaveFn, deadline: float | None
    ) -> None:
        start = time.monotonic()
        if deadline is not None and start >= deadline:
            for reg in group:
                self._record(app_result(reg, order, Outcome(SKIPPED, "deadline passed"), 0))
            return
        app_deadline = start + self.request.app_timeout
        if deadline is not None:
            app_deadline = min(app_deadline, deadline)
        ctx = SaveContext(self.request.id, self.request.reason, app_deadline)
        threads = [
            threading.Thread(target=self._save_one, args=(reg, order, ctx, save), daemon=True)
            for reg in group
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, app_deadline + GRACE_SECONDS - time.monotonic()))
        millis = (time.monotonic() - start) * 1000
        for reg in group:
            late = Outcome(TIMED_OUT, "no answer within the timeout")
            self._record(app_result(reg, order, late, millis))

    def _save_one(self, reg: Registration, order: int, ctx: SaveContext, save: SaveFn) -> None:
        start = time.monotonic()
        try:
            outcome = save(reg, ctx)
        except Exception as error:  # a broken method is one app's failure, not the run's
            outcome = Outcome(FAILED, f"{type(error).__name__}: {error}")
        self._record(app_result(reg, order, outcome, (time.monotonic() - start) * 1000))
        log.info("save %s: %s (pid %d) %s", ctx.save_id, reg.name, reg.pid, outcome.outcome)


class BusyError(Exception):
    """Too many save runs are waiting."""


class SaveStore:
    """Save runs by id: one at a time, repeats attach, the last `keep` results are kept, in
    memory and, with a journal path, on disk across restarts."""

    def __init__(
        self,
        registrations: Callable[[], list[Registration]],
        save: SaveFn,
        keep: int = 64,
        max_pending: int = 64,
        journal: Journal | None = None,
    ) -> None:
        self._registrations = registrations
        self._save = save
        self._keep = keep
        self._max_pending = max_pending
        self._running: dict[str, SaveRun] = {}
        self._finished: OrderedDict[str, SaveRun] = OrderedDict()
        self._interrupted: dict[str, RunRecord] = {}  # runs a previous agent died in
        self._lock = threading.Lock()
        self._serial = threading.Lock()
        self._journal = journal or Journal(None)
        self._persisting = threading.Lock()
        self._restore()

    def _restore(self) -> None:
        for record in self._journal.load()[-self._keep :]:
            try:
                request = SaveRequest(**record.request)
            except TypeError as error:
                log.warning("dropping a kept save run: %s", error)
                continue
            if record.state != COMPLETED:
                self._interrupted[request.id] = record
                continue
            run = SaveRun(request, record.applications)
            run.started_at, run.completed_at = record.started_at, record.completed_at
            run.state = COMPLETED
            run.done.set()
            self._finished[request.id] = run

    def running(self) -> bool:
        """True while a save run is under way (a hibernation then waits: Busy)."""
        with self._lock:
            return bool(self._running)

    def submit(self, request: SaveRequest) -> tuple[SaveRun, bool]:
        """The run for this id, started if new; the bool says whether it is new."""
        with self._lock:
            run = self._running.get(request.id) or self._finished.get(request.id)
            if run is not None:
                return run, False
            if len(self._running) >= self._max_pending:
                raise BusyError(f"{len(self._running)} save runs are already waiting")
            kept = self._interrupted.pop(request.id, None)
            saved = kept.applications if kept is not None else []
            run = SaveRun(request, saved, on_change=self._persist)
            self._running[request.id] = run
        self._persist()
        threading.Thread(target=self._execute, args=(run,), daemon=True).start()
        return run, True

    def _execute(self, run: SaveRun) -> None:
        with self._serial:
            try:
                run.execute(self._registrations(), self._save)
            except Exception:
                log.exception("save run %s failed", run.request.id)
                run.finish()
        with self._lock:
            self._running.pop(run.request.id, None)
            self._finished[run.request.id] = run
            while len(self._finished) > self._keep:
                self._finished.popitem(last=False)
        self._persist()

    def _persist(self) -> None:
        """Write every kept run; serialized so an older snapshot never lands last."""
        with self._persisting:
            with self._lock:
                runs = [*self._finished.values(), *self._running.values()]
                kept = list(self._interrupted.values())
            self._journal.write([*kept, *(r.record() for r in runs)][-self._keep :])
