"""Condition merging keeps transition times stable and other condition types intact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lparkube.domain.clock import rfc3339
from lparkube.domain.conditions import FALSE, TRUE, Condition, find, is_true, merge

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_gets_now_and_generation() -> None:
    (ready,) = merge(None, [Condition("Ready", TRUE, "Running", "ok")], 3, T0)
    assert ready == {
        "type": "Ready",
        "status": TRUE,
        "reason": "Running",
        "message": "ok",
        "observedGeneration": 3,
        "lastTransitionTime": "2026-11-21T12:00:00Z",
    }


def test_transition_time_moves_only_when_status_changes() -> None:
    first = merge(None, [Condition("Ready", TRUE, "Running")], 1, T0)
    same = merge(first, [Condition("Ready", TRUE, "StillRunning", "new text")], 2, T1)
    assert find(same, "Ready")["lastTransitionTime"] == rfc3339(T0)
    assert find(same, "Ready")["reason"] == "StillRunning"
    flipped = merge(same, [Condition.of("Ready", False, "Stopped")], 2, T1)
    assert find(flipped, "Ready")["lastTransitionTime"] == rfc3339(T1)
    assert find(flipped, "Ready")["status"] == FALSE


def test_other_types_are_kept_and_order_is_stable() -> None:
    stored = merge(None, [Condition("B", TRUE, "X"), Condition("A", TRUE, "Y")], 1, T0)
    merged = merge(stored, [Condition("C", FALSE, "Z")], 1, T1)
    assert [c["type"] for c in merged] == ["A", "B", "C"]
    assert is_true(merged, "A")
    assert not is_true(merged, "C")
    assert not is_true(merged, "Missing")
