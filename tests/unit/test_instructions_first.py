"""Instructions first: bookkeeping held until every target answered, or released."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lparkube.controllers.instructions_first import InstructionsFirst


def test_nothing_to_wait_for_runs_bookkeeping_at_once() -> None:
    async def scenario() -> list[str]:
        hold, done = InstructionsFirst(4), []
        hold.start([])
        hold.after(lambda: done.append("a"))
        return done

    assert asyncio.run(scenario()) == ["a"]


def test_bookkeeping_waits_for_the_last_answer_and_keeps_its_order() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        hold, done = InstructionsFirst(4), []
        hold.start(["a", "b", "c"])
        hold.after(lambda: done.append("a"))
        hold.answered("a")
        hold.answered("a")  # answering twice counts once
        hold.after(lambda: done.append("b"))
        hold.answered("b")
        before = list(done)
        hold.answered("c")
        hold.after(lambda: done.append("late"))
        return before, done

    before, after = asyncio.run(scenario())
    assert before == []
    assert after == ["a", "b", "late"]


def test_release_stops_holding_when_an_agent_never_answers() -> None:
    async def scenario() -> tuple[list[str], bool]:
        hold, done = InstructionsFirst(4), []
        hold.start(["fast", "silent"])
        hold.after(lambda: done.append("fast"))
        hold.answered("fast")
        await hold.release(0.05)
        return done, hold.out.is_set()

    assert asyncio.run(scenario()) == (["fast"], True)


def test_release_returns_as_soon_as_all_answered() -> None:
    async def scenario() -> float:
        hold = InstructionsFirst(4)
        hold.start(["a"])
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, hold.answered, "a")
        began = loop.time()
        await hold.release(30)
        return loop.time() - began

    assert asyncio.run(scenario()) < 5


def test_a_failing_bookkeeping_does_not_lose_the_others(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[str]:
        hold, done = InstructionsFirst(4), []
        hold.start(["a"])
        hold.after(lambda: 1 / 0)
        hold.after(lambda: done.append("b"))
        hold.answered("a")
        return done

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == ["b"]
    assert "Held bookkeeping failed" in caplog.text


def test_launch_starts_a_target_only_when_a_slot_is_free() -> None:
    """Two slots: the third target starts once one of the first two answered, not before."""

    async def scenario() -> list[str]:
        hold, log = InstructionsFirst(2), []
        hold.start("abc")
        answers = {t: asyncio.Event() for t in "abc"}

        async def run(target: str) -> None:
            log.append(f"start {target}")
            await answers[target].wait()
            log.append(f"answered {target}")
            hold.answered(target)
            await asyncio.sleep(0.01)  # still saving, but its slot is free again

        launching = asyncio.ensure_future(hold.launch("abc", run))
        for _ in range(5):
            await asyncio.sleep(0)
        log.append("b answers")
        answers["b"].set()
        for _ in range(5):
            await asyncio.sleep(0)
        answers["a"].set()
        answers["c"].set()
        await launching
        assert hold.out.is_set() and len(hold.tasks) == 3
        return log

    log = asyncio.run(scenario())
    assert log[:5] == ["start a", "start b", "b answers", "answered b", "start c"]
