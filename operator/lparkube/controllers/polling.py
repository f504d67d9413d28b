"""The pause between two passes of a polling kopf daemon (a HibernationImage run, a
RemoteRestart run)."""

from __future__ import annotations

import asyncio

import kopf


async def pause(stopped: kopf.DaemonStopped | None, seconds: float) -> None:
    """Until the next pass, or until kopf stops the daemon (its object deleted, the operator
    stopping); without a daemon (a test driving the run) a plain sleep."""
    if stopped is None:
        await asyncio.sleep(seconds)
    else:
        await stopped.wait(seconds)
