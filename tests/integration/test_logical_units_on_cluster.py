"""Thin LUs on the real API server with the stand-in's thin storage: the operator's adapter
claims, reuses, expands, creates and releases labelled PVCs under claim Leases."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from lparkube.adapters.kube import Kube
from lparkube.adapters.logical_units import LogicalUnits, Storage, pool_selector
from lparkube.domain.logical_units import CREATE, EXPAND, PAGING, REUSE, LURefusal, LURequest
from lparkube_devenv.controlplane import wait_until

MI = 1 << 20
STORAGE = Storage("lparkube-thin")
SCRIPT = Path(__file__).with_name("lu_allocate_and_wait.py")


@pytest.fixture
def pool() -> str:
    return f"it-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def kube(api_client: client.ApiClient, kubevirt) -> Iterator[Kube]:
    """The operator's client, as the admin (RBAC is proven with the operator's own tests)."""
    kube = Kube(api_client, workers=32)
    yield kube
    kube._pool.shutdown(wait=False)


@pytest.fixture
def other_namespace(api_client: client.ApiClient, namespace: str) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    name = f"{namespace[:50]}-other"
    core.create_namespace({"metadata": {"name": name, "labels": {"lparkube.test": "true"}}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def request(namespace: str, pool: str, size: int, uid: str, **fields) -> LURequest:
    return LURequest(namespace, pool, PAGING, size, uid, initial_bytes=fields.pop("initial", size),
                     **fields)  # fmt: skip


def pvcs(api_client: client.ApiClient, namespace: str, pool: str) -> list:
    core = client.CoreV1Api(api_client)
    return core.list_namespaced_persistent_volume_claim(
        namespace, label_selector=pool_selector(pool)
    ).items


def leases(api_client: client.ApiClient, namespace: str, pool: str) -> list:
    api = client.CoordinationV1Api(api_client)
    return api.list_namespaced_lease(namespace, label_selector=pool_selector(pool)).items


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_freed_lu_of_the_right_size_is_reused(kube, api_client, namespace, pool) -> None:
    units = LogicalUnits(kube)
    first = run(units.allocate(request(namespace, pool, 256 * MI, "uid-a"), "a", STORAGE, 30))
    assert first.action == CREATE
    claim = pvcs(api_client, namespace, pool)[0]
    assert claim.metadata.labels["lparkube.io/partition"] == "a"
    assert claim.metadata.annotations["lparkube.io/claimed-by"] == "uid-a"
    assert claim.metadata.annotations["lparkube.io/claim-committed"] == "uid-a"
    assert leases(api_client, namespace, pool) == [], "a committed claim keeps no Lease"
    again = run(units.allocate(request(namespace, pool, 256 * MI, "uid-a"), "a", STORAGE, 30))
    assert (again.name, again.action) == (first.name, REUSE), "allocating twice is once"
    taken = run(units.allocate(request(namespace, pool, 128 * MI, "uid-b"), "b", STORAGE, 30))
    assert taken.action == CREATE and taken.name != first.name, "a held LU is never shared"

    async def reuse(_: str) -> bool:
        return True

    assert run(units.release(namespace, "a", "uid-a", reuse)) == [(first.name, "Released")]
    freed = pvcs(api_client, namespace, pool)
    assert len(freed) == 2
    reused = run(units.allocate(request(namespace, pool, 200 * MI, "uid-c"), "c", STORAGE, 30))
    assert (reused.name, reused.action) == (first.name, REUSE)
    assert len(pvcs(api_client, namespace, pool)) == 2, "no new PVC"
    assert run(units.release(namespace, "b", "uid-wrong", reuse)) == [], "only the holder's"


def test_a_free_lu_too_small_is_expanded_and_release_without_reuse_deletes(
    kube, api_client, namespace, pool
) -> None:
    units = LogicalUnits(kube)
    small = run(units.allocate(request(namespace, pool, 128 * MI, "uid-a"), "a", STORAGE, 30))
    wait_until(
        lambda: pvcs(api_client, namespace, pool)[0].status.phase == "Bound",
        30,
        "the thin volume bound (only a bound claim can grow)",
    )

    async def reuse(_: str) -> bool:
        return True

    run(units.release(namespace, "a", "uid-a", reuse))
    grown = run(units.allocate(request(namespace, pool, 300 * MI, "uid-b"), "b", STORAGE, 30))
    assert (grown.name, grown.action, grown.size_bytes) == (small.name, EXPAND, 300 * MI)
    (claim,) = pvcs(api_client, namespace, pool)
    assert claim.spec.resources.requests["storage"] == str(300 * MI)
    wait_until(
        lambda: (
            (c := pvcs(api_client, namespace, pool)[0]).status.capacity
            and c.status.capacity["storage"] in (str(300 * MI), "300Mi")
        ),
        30,
        "the thin volume expanded",
    )

    async def delete(_: str) -> bool:
        return False

    assert run(units.release(namespace, "b", "uid-b", delete)) == [(small.name, "Deleted")]
    wait_until(lambda: not pvcs(api_client, namespace, pool), 30, "the LU deleted")


def test_an_lu_of_another_namespace_is_never_reused(
    kube, api_client, namespace, pool, other_namespace
) -> None:
    units = LogicalUnits(kube)
    other = other_namespace
    theirs = run(units.allocate(request(other, pool, 128 * MI, "uid-a"), "a", STORAGE, 30))

    async def reuse(_: str) -> bool:
        return True

    run(units.release(other, "a", "uid-a", reuse))
    mine = run(units.allocate(request(namespace, pool, 128 * MI, "uid-b"), "b", STORAGE, 30))
    assert mine.action == CREATE and mine.namespace == namespace
    assert [p.metadata.name for p in pvcs(api_client, other, pool)] == [theirs.name]
    assert not pvcs(api_client, other, pool)[0].metadata.labels.get("lparkube.io/partition")


def test_a_size_above_the_pools_max_is_refused(kube, namespace, pool) -> None:
    units = LogicalUnits(kube)
    refused = run(
        units.allocate(request(namespace, pool, 2 * MI, "u", max_bytes=MI), "p", STORAGE, 30)
    )
    assert isinstance(refused, LURefusal) and refused.reason == "LUTooLarge"


def test_fifty_concurrent_allocations_get_fifty_distinct_claims(
    kube, api_client, namespace, pool
) -> None:
    units = LogicalUnits(kube)

    async def prepare() -> None:
        made = await asyncio.gather(
            *(
                units.allocate(
                    request(namespace, pool, 64 * MI, f"old-{i}"), f"old-{i}", STORAGE, 30
                )
                for i in range(10)
            )
        )
        assert len({m.name for m in made}) == 10

        async def reuse(_: str) -> bool:
            return True

        for i in range(10):
            await units.release(namespace, f"old-{i}", f"old-{i}", reuse)

    async def allocate_all() -> list:
        return await asyncio.gather(
            *(
                units.allocate(request(namespace, pool, 64 * MI, f"uid-{i}"), f"p-{i}", STORAGE, 30)
                for i in range(50)
            )
        )

    run(prepare())
    claimed = run(allocate_all())
    names = [c.name for c in claimed]
    assert len(set(names)) == 50
    assert sorted(c.action for c in claimed).count(REUSE) == 10, "every free LU reused once"
    found = pvcs(api_client, namespace, pool)
    assert len(found) == 50
    holders = [p.metadata.annotations["lparkube.io/claim-committed"] for p in found]
    assert sorted(holders) == sorted(f"uid-{i}" for i in range(50))
    assert all(
        p.metadata.annotations["lparkube.io/claimed-by"]
        == p.metadata.annotations["lparkube.io/claim-committed"]
        for p in found
    )
    assert leases(api_client, namespace, pool) == []


def test_a_claimant_killed_mid_claim_frees_the_lu_after_the_lock_and_deletes_nothing(  # noqa: PLR0917
    kube, api_client, kubeconfig, namespace, pool, tmp_path
) -> None:
    units = LogicalUnits(kube)
    free = run(units.allocate(request(namespace, pool, 64 * MI, "old"), "old", STORAGE, 30))

    async def reuse(_: str) -> bool:
        return True

    run(units.release(namespace, "old", "old", reuse))
    marker = tmp_path / "claimed"
    lock = 3
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(kubeconfig), namespace, pool, "uid-dead", "dead",
         str(64 * MI), str(lock), str(marker)],
    )  # fmt: skip
    try:
        wait_until(marker.exists, 30, "the claimant to stop mid-claim")
        process.kill()
        process.wait(timeout=10)
        killed_at = time.time()
    finally:
        if process.poll() is None:
            process.kill()
    assert marker.read_text().split() == ["claimed", free.name]
    (claim,) = pvcs(api_client, namespace, pool)
    assert claim.metadata.annotations["lparkube.io/claimed-by"] == "uid-dead"
    assert "lparkube.io/claim-committed" not in claim.metadata.annotations
    assert [lease.spec.holder_identity for lease in leases(api_client, namespace, pool)] == [
        "uid-dead"
    ]
    # While the lock holds, the LU is not free: another partition gets a new one.
    meanwhile = run(units.allocate(request(namespace, pool, 64 * MI, "uid-1"), "p1", STORAGE, 30))
    if time.time() - killed_at < lock:
        assert meanwhile.action == CREATE and meanwhile.name != free.name
    time.sleep(max(0.0, killed_at + lock + 0.5 - time.time()))
    after = run(units.allocate(request(namespace, pool, 64 * MI, "uid-2"), "p2", STORAGE, 30))
    assert (after.name, after.action) == (free.name, REUSE), "free again once the lock ran out"
    names = {p.metadata.name for p in pvcs(api_client, namespace, pool)}
    assert free.name in names, "nothing deleted"
    assert leases(api_client, namespace, pool) == []
