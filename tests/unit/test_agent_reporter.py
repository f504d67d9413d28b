"""The agent's Reporter: pokes are coalesced (at most one push a second), no two pushes fall
in the same wall-clock second (the gateway accepts only strictly later signed seconds), and a
lease's renewal comes sooner than the interval."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from lparkube_agent.report import Reporter


class Pushes:
    """A send that records when each push started and in which second it was signed."""

    def __init__(
        self, duration: float = 0.0, fail: bool = False, renew: float | None = None
    ) -> None:
        self.started: list[float] = []
        self.signed: list[int] = []
        self.duration, self.fail, self.renew = duration, fail, renew
        self.first = threading.Event()

    def __call__(self) -> float | None:
        self.started.append(time.monotonic())
        time.sleep(self.duration)
        self.signed.append(int(time.time()))  # push() signs just before it sends
        self.first.set()
        if self.fail:
            raise ConnectionError("operator unreachable")
        return self.renew


@pytest.fixture
def reporters() -> Iterator[list[Reporter]]:
    started: list[Reporter] = []
    yield started
    for reporter in started:
        reporter.stop()


def start(reporters: list[Reporter], pushes: Pushes, interval: float = 60) -> Reporter:
    reporter = Reporter(pushes, interval)
    reporters.append(reporter)
    reporter.start()
    assert pushes.first.wait(5), "the first push goes at start"
    return reporter


def poke_for(reporter: Reporter, seconds: float) -> None:
    """A registration storm: pokes every millisecond."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        reporter.poke()
        time.sleep(0.001)


def test_a_storm_of_pokes_makes_one_push_a_second(reporters: list[Reporter]) -> None:
    pushes = Pushes()
    reporter = start(reporters, pushes)
    poke_for(reporter, 3.2)
    time.sleep(1.1)  # the storm's last poke is pushed too
    assert 3 <= len(pushes.started) <= 5, pushes.started
    gaps = [b - a for a, b in itertools.pairwise(pushes.started)]
    assert min(gaps) >= 0.99, gaps
    assert len(set(pushes.signed)) == len(pushes.signed), pushes.signed


def test_a_poke_is_pushed_within_a_second(reporters: list[Reporter]) -> None:
    pushes = Pushes()
    reporter = start(reporters, pushes)
    time.sleep(1.2)
    poked = time.monotonic()
    reporter.poke()
    deadline = time.monotonic() + 3
    while len(pushes.started) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pushes.started) == 2
    assert pushes.started[1] - poked < 0.1, "no spacing is owed after a quiet second"


def test_no_two_pushes_are_signed_in_the_same_second(reporters: list[Reporter]) -> None:
    """A push that takes long ends in a later second than it started: the next one still
    waits for the second after that."""
    pushes = Pushes(duration=0.6)
    reporter = start(reporters, pushes)
    poke_for(reporter, 4)
    assert len(pushes.signed) >= 3
    assert pushes.signed == sorted(set(pushes.signed)), pushes.signed


def test_failures_are_retried_paced_too(reporters: list[Reporter]) -> None:
    pushes = Pushes(fail=True)
    reporter = start(reporters, pushes, interval=1)
    poke_for(reporter, 2.5)
    assert reporter.failures == len(pushes.started) >= 2
    assert len(set(pushes.signed)) == len(pushes.signed)


def test_stop_is_prompt_even_while_pacing(reporters: list[Reporter]) -> None:
    pushes = Pushes()
    reporter = start(reporters, pushes)
    reporter.poke()  # the next push waits for its second
    stopped = time.monotonic()
    reporter.stop()
    reporter._thread.join(2)
    assert not reporter._thread.is_alive()
    assert time.monotonic() - stopped < 0.5
    assert len(pushes.started) == 1


def test_a_lease_is_renewed_sooner_than_the_interval_but_never_twice_a_second(
    reporters: list[Reporter],
) -> None:
    pushes = Pushes(renew=1.5)
    start(reporters, pushes)
    time.sleep(3.2)
    gaps = [b - a for a, b in itertools.pairwise(pushes.started)]
    assert len(gaps) == 2 and all(1.45 < g < 1.9 for g in gaps), gaps
    pushes.renew = 0.1  # asked sooner than a second: still one push a second
    time.sleep(3.2)
    gaps = [b - a for a, b in itertools.pairwise(pushes.started)]
    assert min(gaps) >= 0.99 and len(gaps) >= 4, gaps
    assert len(set(pushes.signed)) == len(pushes.signed), pushes.signed


def test_retries_while_leased_come_at_least_as_often_as_renewals(
    reporters: list[Reporter],
) -> None:
    pushes = Pushes(renew=1.0)
    start(reporters, pushes)
    time.sleep(1.5)
    pushes.fail = True  # backoff would double 1, 2, 4 s: capped at the renewal's 1 s
    time.sleep(4.4)
    gaps = [b - a for a, b in itertools.pairwise(pushes.started)]
    assert len(gaps) >= 4 and max(gaps) < 1.6, gaps
