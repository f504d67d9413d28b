"""Leader election loop: acquire the Lease, keep renewing it, give it back on exit.

The decisions are pure (lparkube.domain.leadership); this module only schedules them and
runs the blocking Lease calls in worker threads so the event loop keeps serving probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from lparkube.adapters.lease import LeaseNamespaceMissingError, StoredLease
from lparkube.config import LeaseConfig
from lparkube.domain import leadership
from lparkube.domain.clock import utcnow
from lparkube.domain.leadership import Action, Decision, LeaseRecord, Observation

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
OnChange = Callable[[bool, str], None]


class LeaseStorage(Protocol):
    """What the elector needs of a Lease store (lparkube.adapters.lease.LeaseStore)."""

    namespace: str
    name: str

    def get(self) -> StoredLease | None: ...
    def create(self, record: LeaseRecord) -> StoredLease: ...
    def update(self, record: LeaseRecord, current: StoredLease) -> StoredLease: ...


class LeadershipLostError(Exception):
    """This replica no longer holds the Lease and must stop running handlers."""


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``event``; True if it was set. Spawns no task."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


class LeaderElector:
    """One replica's view of the Lease and whether it leads."""

    def __init__(
        self,
        store: LeaseStorage,
        lease: LeaseConfig,
        on_change: OnChange | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._store = store
        self._lease = lease
        self._on_change = on_change or (lambda leading, holder: None)
        self._clock = clock
        self._observation: Observation | None = None
        self.leading = False
        self.holder = ""
        self.last_renewed: datetime | None = None

    @property
    def identity(self) -> str:
        return self._lease.identity

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Retry until this replica holds the Lease (True) or ``stop`` is set (False)."""
        logger.info(
            "Waiting to acquire Lease %s/%s as %s",
            self._store.namespace,
            self._store.name,
            self.identity,
        )
        while not stop.is_set():
            if await self._attempt():
                return True
            await wait_event(stop, self._lease.retry_interval)
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until ``stop`` is set; raise LeadershipLostError when the Lease slips away."""
        interval = self._lease.renew_interval
        while not await wait_event(stop, interval):
            if await self._attempt():
                interval = self._lease.renew_interval
                continue
            if self.holder and self.holder != self.identity:
                self._set(False, self.holder)
                raise LeadershipLostError(f"Lease was taken over by {self.holder}")
            last_renewed = self.last_renewed or self._clock()
            if leadership.should_step_down(last_renewed, self._clock(), self._lease.renew_deadline):
                self._set(False, self.holder)
                raise LeadershipLostError(
                    f"could not renew the Lease for {self._lease.renew_deadline:g}s"
                )
            interval = self._lease.retry_interval

    async def release(self) -> None:
        """Hand the Lease back so a standby takes over at once; failures only cost time."""
        if not self.leading:
            return
        try:
            await asyncio.to_thread(self._release_once)
        except Exception as exc:
            logger.warning("Could not release the Lease (it will expire instead): %s", exc)
        self._set(False, "")

    async def _attempt(self) -> bool:
        try:
            decision = await asyncio.to_thread(self._round)
        except LeaseNamespaceMissingError:
            raise
        except Exception as exc:
            logger.warning("Lease %s failed: %s", "renewal" if self.leading else "acquisition", exc)
            return False
        if decision.leads and (decision.action is not Action.RENEW or not self.leading):
            logger.info("Acquired Lease (%s) as %s", decision.action.value, self.identity)
        elif not decision.leads and decision.holder != self.holder and not self.leading:
            logger.info("Standing by: Lease held by %s", decision.holder)
        self._set(decision.leads, decision.holder)
        return decision.leads

    def _round(self) -> Decision:
        """One round of client-go's tryAcquireOrRenew; runs in a worker thread."""
        now = self._clock()
        stored = self._store.get()
        record = stored.record if stored else None
        self._observation = leadership.observe(self._observation, record, now)
        decision = leadership.decide(self._observation, self.identity, now, self._lease.duration)
        if decision.record is None:
            return decision
        if decision.action is Action.CREATE or stored is None:
            written = self._store.create(decision.record)
        else:
            written = self._store.update(decision.record, stored)
        self._observation = Observation(written.record, now)
        self.last_renewed = now
        return decision

    def _release_once(self) -> None:
        stored = self._store.get()
        released = leadership.release(
            stored.record if stored else None, self.identity, self._clock()
        )
        if stored is None or released is None:
            return
        self._store.update(released, stored)
        logger.info("Released Lease %s/%s", self._store.namespace, self._store.name)

    def _set(self, leading: bool, holder: str) -> None:
        changed = (leading, holder) != (self.leading, self.holder)
        self.leading, self.holder = leading, holder
        if changed:
            self._on_change(leading, holder)
