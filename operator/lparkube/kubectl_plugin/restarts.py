"""What a RemoteRestart's status says, for the restart and status verbs: pure functions of the
object (docs/api.md, "RemoteRestart").

The operation's steps are data in ``status.steps`` (in order, each with a status and a
message); one line per step that is no longer Pending tells where it is. The operation ends
when ``status.terminationState`` is set: ``RestartSucceeded`` (code 0) or ``RestartFailed``
(code 1), the cause being the ``Complete`` condition's reason and message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lparkube.api.v1alpha1.remoterestart import (
    COMPLETE,
    PENDING,
    RESTART_SUCCEEDED,
    RUNNING,
    SKIPPED,
)
from lparkube.api.v1alpha1.remoterestart import FAILED as STEP_FAILED
from lparkube.kubectl_plugin.text import NONE
from lparkube.kubectl_plugin.verb import Verdict, condition_of, reason_and_message

NOT_STARTED = "waiting for the operator to start the restart"


def _status(restart: dict[str, Any]) -> dict[str, Any]:
    return restart.get("status") or {}


def step_line(step: dict[str, Any]) -> str:
    """``<step> <status> <message>``: ``LockingAdapters Running waiting for ...``."""
    text = f"{step.get('name') or NONE} {step.get('status') or NONE}"
    message = " ".join((step.get("message") or "").split())
    return f"{text} {message}" if message else text


def step_lines(restart: dict[str, Any]) -> list[str]:
    """One line for every step that has begun, in the operation's order; a skipped one once
    the operation went past it (a later step began), so the lines come in the steps' order."""
    steps = _status(restart).get("steps") or []

    def begun(step: dict[str, Any]) -> bool:
        return (step.get("status") or PENDING) not in (PENDING, SKIPPED)

    return [
        step_line(step)
        for index, step in enumerate(steps)
        if begun(step)
        or (step.get("status") == SKIPPED and any(begun(later) for later in steps[index + 1 :]))
    ]


def finished(restart: dict[str, Any]) -> bool:
    return bool(_status(restart).get("terminationState"))


def current_step(restart: dict[str, Any]) -> dict[str, Any] | None:
    """The step ``status.step`` names (else the last one that has begun), if any."""
    steps = _status(restart).get("steps") or []
    named = _status(restart).get("step")
    for step in steps:
        if named and step.get("name") == named:
            return step
    begun = [step for step in steps if (step.get("status") or PENDING) != PENDING]
    return begun[-1] if begun else None


def where(restart: dict[str, Any]) -> str:
    """``node-a -> node-b``: the source and target nodes as far as they are known."""
    status = _status(restart)
    return f"{status.get('sourceNodeName') or NONE} -> {status.get('targetNodeName') or NONE}"


def verdict(restart: dict[str, Any]) -> Verdict:
    """RestartSucceeded: done (exit 0); RestartFailed: failed with the cause (exit 1); else
    the step it is at. Every begun step is in the verdict's log."""
    status = _status(restart)
    log = step_lines(restart)
    state = status.get("terminationState")
    complete = condition_of(restart, COMPLETE)
    partition = (restart.get("spec") or {}).get("partitionName") or NONE
    if state == RESTART_SUCCEEDED:
        target = status.get("targetNodeName") or NONE
        source = status.get("sourceNodeName")
        origin = f" (from node {source})" if source else ""
        return Verdict.succeeded(
            f"{RESTART_SUCCEEDED}: partition {partition} runs on node {target}{origin}", log=log
        )
    if state:  # RestartFailed, or a state this plugin does not know: not a success
        return Verdict.failed(f"{state}: {failure_cause(restart, complete)}", log=log)
    step = current_step(restart)
    if step is None:
        return Verdict.going(NOT_STARTED, log=log)
    return Verdict.going(step_line(step), log=log)


def failure_cause(restart: dict[str, Any], complete: dict[str, Any] | None) -> str:
    """``Reason: message`` of the Complete condition, else of the step that failed."""
    if complete and (complete.get("reason") or complete.get("message")):
        return reason_and_message(complete)
    failed = [s for s in _status(restart).get("steps") or [] if s.get("status") == STEP_FAILED]
    if failed:
        return f"{failed[-1].get('name')}: {failed[-1].get('message') or 'no reason given'}"
    return "no reason given"


def unfinished_of(restarts: Iterable[dict[str, Any]], partition: str) -> list[dict[str, Any]]:
    """The partition's RemoteRestarts that have not ended, oldest first."""
    return sorted(
        (
            r
            for r in restarts
            if (r.get("spec") or {}).get("partitionName") == partition and not finished(r)
        ),
        key=lambda r: (
            (r.get("metadata") or {}).get("creationTimestamp") or "",
            (r.get("metadata") or {}).get("name") or "",
        ),
    )


def progress_text(restart: dict[str, Any]) -> str:
    """``LockingAdapters Running (1/8), node-a -> node-b``: for the status verb."""
    step = current_step(restart)
    if step is None:
        return "not started by the operator yet"
    progress = _status(restart).get("progress") or {}
    text = f"{step.get('name')} {step.get('status') or RUNNING}"
    if progress.get("totalSteps"):
        text += f" ({progress.get('completedSteps', 0)}/{progress['totalSteps']})"
    return f"{text}, {where(restart)}"
