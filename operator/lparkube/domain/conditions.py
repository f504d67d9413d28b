"""Conditions shaped like metav1.Condition, computed by pure functions.

Controllers compute the conditions they want from what they observed, then `merge` them into
the stored list: lastTransitionTime changes only when a condition's status changes, so
`kubectl describe` shows how long a state has held.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lparkube.domain.clock import rfc3339

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Condition:
    """One desired condition; `merge` adds the transition time."""

    type: str
    status: str
    reason: str
    message: str = ""

    @classmethod
    def of(cls, type_: str, holds: bool, reason: str, message: str = "") -> Condition:
        return cls(type_, TRUE if holds else FALSE, reason, message)


def merge(
    stored: list[dict[str, Any]] | None,
    desired: list[Condition],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The new condition list: desired conditions replace stored ones of the same type,
    keeping lastTransitionTime when the status did not change; other types are kept."""
    previous = {c.get("type"): c for c in stored or []}
    merged = {t: c for t, c in previous.items() if t not in {d.type for d in desired}}
    for condition in desired:
        old = previous.get(condition.type)
        unchanged = old is not None and old.get("status") == condition.status
        merged[condition.type] = {
            "type": condition.type,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message,
            "observedGeneration": generation,
            "lastTransitionTime": old["lastTransitionTime"] if unchanged else rfc3339(now),
        }
    return sorted(merged.values(), key=lambda c: c["type"])


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The stored condition of a type, if any."""
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found.get("status") == TRUE
