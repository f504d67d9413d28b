"""The election loop against an in-memory Lease store with optimistic concurrency."""

from __future__ import annotations

import asyncio
import copy

import pytest

from lparkube.adapters.lease import (
    LeaseConflictError,
    LeaseNamespaceMissingError,
    StoredLease,
    decode_spec,
    encode_spec,
)
from lparkube.config import LeaseConfig
from lparkube.domain.leadership import LeaseRecord
from lparkube.runtime.election import LeaderElector, LeadershipLostError

FAST = {"duration": 0.6, "renew_interval": 0.05, "renew_deadline": 0.3, "retry_interval": 0.05}


class MemoryStore:
    """A Lease that behaves like the API server's: resourceVersion checks on write."""

    def __init__(self, namespace_exists: bool = True) -> None:
        self.namespace, self.name = "ops", "lparkube-operator"
        self.object: dict | None = None
        self.version = 0
        self.failing = False
        self.namespace_exists = namespace_exists

    def get(self) -> StoredLease | None:
        self._maybe_fail()
        return self._stored() if self.object else None

    def create(self, record: LeaseRecord) -> StoredLease:
        self._maybe_fail()
        if not self.namespace_exists:
            raise LeaseNamespaceMissingError("namespace 'ops' does not exist")
        if self.object is not None:
            raise LeaseConflictError("already exists")
        return self._write({"metadata": {}, "spec": encode_spec(record)})

    def update(self, record: LeaseRecord, current: StoredLease) -> StoredLease:
        self._maybe_fail()
        if current.raw["metadata"]["resourceVersion"] != str(self.version):
            raise LeaseConflictError("stale resourceVersion")
        return self._write({"metadata": {}, "spec": encode_spec(record)})

    @property
    def holder(self) -> str:
        return decode_spec(self.object["spec"]).holder if self.object else ""

    def _write(self, obj: dict) -> StoredLease:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.object = obj
        return self._stored()

    def _stored(self) -> StoredLease:
        raw = copy.deepcopy(self.object)
        assert raw is not None
        return StoredLease(decode_spec(raw["spec"]), raw)

    def _maybe_fail(self) -> None:
        if self.failing:
            raise ConnectionError("API server unreachable")


def elector(store: MemoryStore, identity: str, changes: list | None = None) -> LeaderElector:
    def on_change(leading: bool, holder: str) -> None:
        if changes is not None:
            changes.append((leading, holder))

    return LeaderElector(store, LeaseConfig(identity=identity, **FAST), on_change)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_first_replica_creates_and_holds_the_lease() -> None:
    store = MemoryStore()
    changes: list = []
    a = elector(store, "a", changes)

    assert run(a.acquire(asyncio.Event()))
    assert a.leading
    assert store.holder == "a"
    assert changes == [(True, "a")]


def test_standby_waits_then_acquires_after_release() -> None:
    store = MemoryStore()
    a, b = elector(store, "a"), elector(store, "b")

    async def scenario() -> None:
        assert await a.acquire(asyncio.Event())
        waiting = asyncio.create_task(b.acquire(asyncio.Event()))
        await asyncio.sleep(0.2)  # several retry rounds; the lease is still valid
        assert not waiting.done()
        assert (b.leading, b.holder) == (False, "a")
        await a.release()
        assert await waiting
        assert store.holder == "b"

    run(scenario())


def test_standby_takes_over_when_the_leader_stops_renewing() -> None:
    store = MemoryStore()
    a, b = elector(store, "a"), elector(store, "b")

    async def scenario() -> None:
        assert await a.acquire(asyncio.Event())  # a never renews: it has crashed
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await b.acquire(asyncio.Event())
        assert loop.time() - started >= FAST["duration"] * 0.9

    run(scenario())
    assert store.holder == "b"


def test_stop_ends_standby_without_leading() -> None:
    store = MemoryStore()
    run(elector(store, "a").acquire(asyncio.Event()))
    stop = asyncio.Event()
    stop.set()

    assert not run(elector(store, "b").acquire(stop))


def test_leader_renews_until_stopped() -> None:
    store = MemoryStore()
    a = elector(store, "a")

    async def scenario() -> None:
        assert await a.acquire(asyncio.Event())
        stop = asyncio.Event()
        holding = asyncio.create_task(a.hold(stop))
        await asyncio.sleep(FAST["duration"] * 2)
        assert a.leading and store.version >= 5
        stop.set()
        await holding

    run(scenario())


def test_leader_loses_the_lease_when_someone_else_holds_it() -> None:
    store = MemoryStore()
    a = elector(store, "a")

    async def scenario() -> None:
        assert await a.acquire(asyncio.Event())
        current = store.get()
        assert current is not None
        store.update(LeaseRecord(holder="intruder", duration_seconds=60), current)
        with pytest.raises(LeadershipLostError, match="intruder"):
            await a.hold(asyncio.Event())

    run(scenario())
    assert not a.leading


def test_leader_steps_down_when_it_cannot_renew_in_time() -> None:
    store = MemoryStore()
    a = elector(store, "a")

    async def scenario() -> None:
        assert await a.acquire(asyncio.Event())
        store.failing = True
        with pytest.raises(LeadershipLostError, match="could not renew"):
            await a.hold(asyncio.Event())

    run(scenario())
    assert not a.leading


def test_missing_lease_namespace_is_fatal() -> None:
    with pytest.raises(LeaseNamespaceMissingError):
        run(elector(MemoryStore(namespace_exists=False), "a").acquire(asyncio.Event()))


def test_release_is_a_no_op_for_a_standby() -> None:
    store = MemoryStore()
    run(elector(store, "a").acquire(asyncio.Event()))
    b = elector(store, "b")
    run(b.release())

    assert store.holder == "a"
