"""Instructions first: a SaveEvent run's bookkeeping waits until every agent has its instruction.

On a small machine the operator, the API server and the agents share a few cores. Folding
1,000 results into status (and the API server storing a 1,000-entry status) while instructions
are still going out delays the last instruction by a third. So results that arrive while other
agents are still waiting for their instruction are held, as callbacks, and run together once
every target has answered (or ``release`` says enough). Nothing waits on the hold, so no task
can be cancelled with a result in hand: whatever is held when the run ends is run then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Iterable

logger = logging.getLogger(__name__)


class InstructionsFirst:
    """Targets still waiting for their instruction's answer, and the bookkeeping held back."""

    def __init__(self) -> None:
        self.waiting: set[Hashable] = set()
        self.held: list[Callable[[], None]] = []
        self.out = asyncio.Event()
        self.out.set()

    def start(self, targets: Iterable[Hashable]) -> None:
        """Hold bookkeeping until each of ``targets`` is ``answered``."""
        self.waiting = set(targets)
        if self.waiting:
            self.out.clear()

    def answered(self, target: Hashable) -> None:
        """The target's agent answered its instruction (any way), or it finished without."""
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
