"""What a HibernationImage's status says, for the hibernate, resume and status verbs: pure
functions of the object.

A condition counts only when it was written for the image's current generation
(``observedGeneration``): right after ``resume`` sets ``spec.resume``, the ``Resumed``
condition of the generation before says nothing about this request.

While the operator works, ``Captured`` (or ``Resumed``) is absent, ``Unknown``, or ``False``
with reason ``InProgress`` (the reason SaveEvents use while they run); any other ``False`` is
the final answer, and its reason and message are the failure's.
"""

from __future__ import annotations

from typing import Any

from lparkube.api.v1alpha1.hibernationimage import CAPTURED, RESUMED
from lparkube.domain.conditions import FALSE, TRUE
from lparkube.domain.saving import IN_PROGRESS
from lparkube.kubectl_plugin.text import NONE, size
from lparkube.kubectl_plugin.verb import Verdict, condition_of, reason_and_message

PENDING_REASONS = frozenset({IN_PROGRESS})  # Captured/Resumed False with these: still working


def current_condition(image: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The condition, unless it was written for an older generation of the spec."""
    condition = condition_of(image, type_)
    generation = (image.get("metadata") or {}).get("generation")
    observed = (condition or {}).get("observedGeneration")
    if condition is None or (generation and observed and observed < generation):
        return None
    return condition


def is_final_failure(condition: dict[str, Any] | None) -> bool:
    return (
        condition is not None
        and condition.get("status") == FALSE
        and condition.get("reason") not in PENDING_REASONS
    )


def progress_text(status: dict[str, Any]) -> str:
    """``Suspending (3/6), 212.0 MiB written`` from ``status.progress``."""
    progress = status.get("progress") or {}
    if not progress:
        return "waiting for the operator to start the capture"
    text = progress.get("step") or "capturing"
    if progress.get("totalSteps"):
        text += f" ({progress.get('completedSteps', 0)}/{progress['totalSteps']})"
    if progress.get("bytesWritten") is not None:
        text += f", {size(progress['bytesWritten'])} written"
    return text


def captured_verdict(image: dict[str, Any]) -> Verdict:
    """Captured=True: done; a final Captured=False: failed; else the capture's progress."""
    status = image.get("status") or {}
    captured = current_condition(image, CAPTURED)
    if captured is not None and captured.get("status") == TRUE:
        lu = status.get("lu") or {}
        written = lu.get("usedBytes", (status.get("progress") or {}).get("bytesWritten"))
        where = f"{size(written)} on LU {lu.get('claimName') or NONE}"
        node = status.get("sourceNodeName") or NONE
        memory, boot = size(status.get("memoryBytes")), status.get("bootId") or NONE
        return Verdict.succeeded(f"captured: {where} (memory {memory}, node {node}, boot {boot})")
    if is_final_failure(captured):
        return Verdict.failed(f"not captured: {reason_and_message(captured)}")
    return Verdict.going(progress_text(status))


def resumed_verdict(image: dict[str, Any]) -> Verdict:
    """Resumed=True: done; a final Resumed=False: failed; else what the resume waits for."""
    status = image.get("status") or {}
    resumed = current_condition(image, RESUMED)
    if resumed is not None and resumed.get("status") == TRUE:
        return Verdict.succeeded(f"resumed: boot {status.get('bootId') or NONE}")
    if is_final_failure(resumed):
        return Verdict.failed(f"not resumed: {reason_and_message(resumed)}")
    if resumed is not None and (resumed.get("reason") or resumed.get("message")):
        return Verdict.going(f"resuming: {reason_and_message(resumed)}")
    return Verdict.going("waiting for the operator to resume the partition")


def image_state(image: dict[str, Any]) -> str:
    """One word or two for the status verb's table: where the image stands."""
    resumed = current_condition(image, RESUMED)
    if resumed is not None and resumed.get("status") == TRUE:
        return "Resumed"
    if (image.get("spec") or {}).get("resume"):
        return f"ResumeFailed: {resumed.get('reason')}" if is_final_failure(resumed) else "Resuming"
    captured = current_condition(image, CAPTURED)
    if captured is not None and captured.get("status") == TRUE:
        return "Captured"
    if is_final_failure(captured):
        return f"Failed: {captured.get('reason')}"
    progress = (image.get("status") or {}).get("progress") or {}
    if not progress:
        return "Pending"
    steps = f" {progress.get('completedSteps', 0)}/{progress['totalSteps']}"
    return f"Capturing: {progress.get('step') or NONE}{steps if progress.get('totalSteps') else ''}"
