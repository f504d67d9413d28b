"""Leader election decisions over a coordination.k8s.io Lease, as pure functions.

Follows client-go's leaderelection rules: the holder renews its Lease; others may take it
when it is free (empty holder, e.g. after a clean release) or expired. Expiry is measured
from when *this* replica first saw the current record, never from the record's renewTime,
so clock skew between nodes cannot make two replicas believe they lead at once.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease's spec that leader election reads and writes."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0


@dataclass(frozen=True)
class Observation:
    """A Lease record (None: no Lease object) and the local time it was first seen unchanged."""

    record: LeaseRecord | None
    observed_at: datetime


class Action(enum.Enum):
    CREATE = "create"  # no Lease object yet: create it holding it
    ACQUIRE = "acquire"  # the Lease is free
    RENEW = "renew"  # we already hold it
    TAKEOVER = "takeover"  # another holder let it expire
    WAIT = "wait"  # another holder's lease is still valid


@dataclass(frozen=True)
class Decision:
    """What to do next; ``record`` is the Lease spec to write unless the action is WAIT."""

    action: Action
    record: LeaseRecord | None
    holder: str = ""
    expires_at: datetime | None = None

    @property
    def leads(self) -> bool:
        return self.action is not Action.WAIT


def observe(previous: Observation | None, record: LeaseRecord | None, now: datetime) -> Observation:
    """Keep the first-seen time while the record is unchanged; restart it on any change."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record=record, observed_at=now)


def expires_at(observation: Observation, default_duration: float) -> datetime:
    """When the observed holder's claim lapses if it does not renew."""
    record = observation.record
    seconds = record.duration_seconds if record and record.duration_seconds > 0 else None
    return observation.observed_at + timedelta(seconds=seconds or default_duration)


def decide(observation: Observation, identity: str, now: datetime, duration: float) -> Decision:
    """Decide whether ``identity`` may hold the Lease now, and the record to write if so."""
    record = observation.record
    if record is None:
        return Decision(Action.CREATE, _claim(identity, now, duration, 0), identity)
    if record.holder == identity:
        renewed = replace(record, renew_time=now, duration_seconds=_whole_seconds(duration))
        return Decision(Action.RENEW, renewed, identity)
    if not record.holder:
        claimed = _claim(identity, now, duration, record.transitions + 1)
        return Decision(Action.ACQUIRE, claimed, identity)
    deadline = expires_at(observation, duration)
    if now >= deadline:
        claimed = _claim(identity, now, duration, record.transitions + 1)
        return Decision(Action.TAKEOVER, claimed, identity)
    return Decision(Action.WAIT, None, record.holder, deadline)


def release(record: LeaseRecord | None, identity: str, now: datetime) -> LeaseRecord | None:
    """The record that hands the Lease back at once, or None when it is not ours to release.

    Like client-go, the holder is emptied and the duration cut to one second, so standbys
    acquire on their next retry instead of waiting out the old lease.
    """
    if record is None or record.holder != identity:
        return None
    return replace(record, holder="", duration_seconds=1, renew_time=now, acquire_time=now)


def should_step_down(last_renewed: datetime, now: datetime, renew_deadline: float) -> bool:
    """A leader that could not renew for ``renew_deadline`` must stop before others take over."""
    return now - last_renewed >= timedelta(seconds=renew_deadline)


def _claim(identity: str, now: datetime, duration: float, transitions: int) -> LeaseRecord:
    return LeaseRecord(
        holder=identity,
        duration_seconds=_whole_seconds(duration),
        acquire_time=now,
        renew_time=now,
        transitions=transitions,
    )


def _whole_seconds(duration: float) -> int:
    """Lease.spec.leaseDurationSeconds is an integer; round up so we never claim less."""
    return max(1, math.ceil(duration))
