"""Leader-election decisions: acquire, renew, respect, take over, release."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lparkube.domain.leadership import (
    Action,
    LeaseRecord,
    Observation,
    decide,
    expires_at,
    observe,
    release,
    should_step_down,
)

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
ME = "pod-a-1"
OTHER = "pod-b-1"
DURATION = 15.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def held_by(holder: str, renewed: datetime = T0, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(
        holder=holder,
        duration_seconds=15,
        acquire_time=T0 - timedelta(minutes=5),
        renew_time=renewed,
        transitions=transitions,
    )


def test_creates_the_lease_when_none_exists() -> None:
    decision = decide(observe(None, None, T0), ME, T0, DURATION)

    assert decision.action is Action.CREATE
    assert decision.leads
    assert decision.record == LeaseRecord(ME, 15, T0, T0, 0)


def test_acquires_a_free_lease_at_once() -> None:
    released = LeaseRecord(holder="", duration_seconds=1, renew_time=T0, transitions=4)
    decision = decide(observe(None, released, T0), ME, T0, DURATION)

    assert decision.action is Action.ACQUIRE
    assert decision.record == LeaseRecord(ME, 15, T0, T0, 5)


def test_renews_its_own_lease_keeping_acquire_time_and_transitions() -> None:
    mine = held_by(ME)
    decision = decide(observe(None, mine, at(5)), ME, at(5), DURATION)

    assert decision.action is Action.RENEW
    assert decision.record is not None
    assert decision.record.renew_time == at(5)
    assert decision.record.acquire_time == mine.acquire_time
    assert decision.record.transitions == mine.transitions


def test_respects_another_holders_unexpired_lease() -> None:
    observation = observe(None, held_by(OTHER), T0)
    decision = decide(observation, ME, at(14), DURATION)

    assert decision.action is Action.WAIT
    assert not decision.leads
    assert decision.record is None
    assert decision.holder == OTHER
    assert decision.expires_at == at(15)


def test_takes_over_a_lease_its_holder_stopped_renewing() -> None:
    observation = observe(None, held_by(OTHER), T0)
    observation = observe(observation, held_by(OTHER), at(10))  # unchanged: keeps T0
    decision = decide(observation, ME, at(15), DURATION)

    assert decision.action is Action.TAKEOVER
    assert decision.record == LeaseRecord(ME, 15, at(15), at(15), 4)


def test_a_renewal_restarts_the_expiry_clock() -> None:
    observation = observe(None, held_by(OTHER), T0)
    observation = observe(observation, held_by(OTHER, renewed=at(10)), at(10))

    assert decide(observation, ME, at(20), DURATION).action is Action.WAIT
    assert decide(observation, ME, at(25), DURATION).action is Action.TAKEOVER


def test_expiry_counts_from_first_sight_not_the_remote_clock() -> None:
    # The holder's clock may be far behind ours: a stale-looking renewTime is not expiry.
    ancient = held_by(OTHER, renewed=T0 - timedelta(hours=1))
    observation = observe(None, ancient, T0)

    assert decide(observation, ME, at(1), DURATION).action is Action.WAIT
    assert expires_at(observation, DURATION) == at(15)


def test_missing_duration_falls_back_to_ours() -> None:
    record = LeaseRecord(holder=OTHER, duration_seconds=0)

    assert expires_at(Observation(record, T0), 7.0) == at(7)


def test_fractional_durations_round_up_to_whole_seconds() -> None:
    decision = decide(observe(None, None, T0), ME, T0, 2.5)

    assert decision.record is not None
    assert decision.record.duration_seconds == 3


def test_release_empties_the_holder_and_shortens_the_lease() -> None:
    released = release(held_by(ME), ME, at(3))

    assert released is not None
    assert released.holder == ""
    assert released.duration_seconds == 1
    assert released.renew_time == at(3)
    assert released.transitions == 3
    assert decide(observe(None, released, at(3)), OTHER, at(3), DURATION).leads


@pytest.mark.parametrize("record", [None, held_by(OTHER), LeaseRecord()])
def test_release_leaves_a_lease_that_is_not_ours_alone(record: LeaseRecord | None) -> None:
    assert release(record, ME, T0) is None


def test_leader_steps_down_at_the_renew_deadline() -> None:
    assert not should_step_down(T0, at(9.9), 10.0)
    assert should_step_down(T0, at(10), 10.0)
