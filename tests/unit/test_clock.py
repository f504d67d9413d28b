"""Go durations and RFC 3339 times, as the API server stores them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lparkube.domain.clock import parse_duration, parse_time, rfc3339


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("0s", 0), ("1.5m", 90)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["90", "s", "1d", "5m junk", "-1s", "5 minutes"])
def test_bad_durations_are_errors(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_default_applies_when_absent() -> None:
    assert parse_duration(None, "5m") == timedelta(minutes=5)
    assert parse_duration("", "10s") == timedelta(seconds=10)


def test_times_round_trip_and_odd_values_are_none() -> None:
    moment = datetime(2026, 11, 21, 22, 10, tzinfo=UTC)
    assert rfc3339(moment) == "2026-11-21T22:10:00Z"
    assert parse_time("2026-11-21T22:10:00Z") == moment
    assert parse_time("2026-11-21T23:10:00+01:00") == moment
    assert parse_time("2026-11-21T22:10:00") == moment
    assert parse_time(None) is None
    assert parse_time("yesterday") is None
