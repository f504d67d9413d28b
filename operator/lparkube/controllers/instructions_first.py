"""Instructions first: a SaveEvent run gets every instruction out before anything else.

On a small machine the operator, the API server and the agents share a few cores, and the
last instruction is what a save's latency is judged by. So:

* a partition's task is started only when one of ``in_flight`` instruction slots is free, and
  frees it once its agent answered the instruction: a thousand tasks started at once would
  each do their preparation before the first request leaves;
* results that arrive while other agents still wait for their instruction are held, as
  callbacks, and run together once every target has answered (or ``release`` says enough):
  folding them into status, and the API server storing it, would take CPU from the
  instructions still going out. Nothing waits on the hold, so no task can be cancelled with
  a result in hand: whatever is held when the run ends is run then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Hashable, Iterable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)


class InstructionsFirst:
    """Targets still waiting for their instruction's answer, and the bookkeeping held back."""

    def __init__(self, in_flight: int) -> None:
        self.waiting: set[Hashable] = set()
        self.held: list[Callable[[], None]] = []
        self.out = asyncio.Event()
        self.out.set()
        self.slots = asyncio.Semaphore(in_flight)
        self.started: set[Hashable] = set()
        self.tasks: list[asyncio.Task] = []

    def start(self, targets: Iterable[Hashable]) -> None:
        """Hold bookkeeping until each of ``targets`` is ``answered``."""
        self.waiting = set(targets)
        if self.waiting:
            self.out.clear()

    async def launch(
        self, targets: Iterable[K], run: Callable[[K], Coroutine[Any, Any, None]]
    ) -> None:
        """Run each target, in order, as a task once a slot is free, and wait for them all.
        The tasks are in ``tasks`` as they start, for a deadline to cancel."""
        for target in targets:
            await self.slots.acquire()
            self.started.add(target)
            self.tasks.append(asyncio.create_task(run(target), name=f"save {target}"))
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def answered(self, target: Hashable) -> None:
        """The target's agent answered its instruction (any way), or it finished without."""
        if target in self.started:
            self.started.discard(target)
            self.slots.release()
        self.waiting.discard(target)
        if not self.waiting:
            self.flush()

    def after(self, bookkeeping: Callable[[], None]) -> None:
        """Run ``bookkeeping`` now if the instructions are out, else once they are."""
        if self.out.is_set():
            bookkeeping()
        else:
            self.held.append(bookkeeping)

    def flush(self) -> None:
        """Stop holding: run what was held, in the order it came."""
        self.out.set()
        held, self.held = self.held, []
        for bookkeeping in held:
            try:
                bookkeeping()
            except Exception:  # a defect in one result's bookkeeping must not lose the rest
                logger.exception("Held bookkeeping failed")

    async def release(self, at_most: float) -> None:
        """Wait for the instructions to go out, ``at_most`` seconds; then stop holding,
        however many agents are still to answer."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.out.wait(), at_most)
        self.flush()
