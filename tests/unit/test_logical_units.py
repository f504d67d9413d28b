"""Thin LU allocation as pure decisions: reuse the smallest free LU that fits, else expand the
largest free one, else create; never across namespaces or pools; expired locks free an LU
without deleting it."""

from __future__ import annotations

import pytest

from lparkube.domain.logical_units import (
    CLAIMING,
    CREATE,
    DUMP,
    EXPAND,
    FREE,
    HIBERNATION,
    IN_USE,
    PAGING,
    REUSE,
    TOO_LARGE,
    UNKNOWN_PURPOSE,
    Allocation,
    LogicalUnit,
    LURefusal,
    LURequest,
    allocate,
    format_size,
    lu_counts,
    next_lock_expiry,
    parse_size,
)

GI = 1 << 30
NOW = 1000.0


def unit(name: str, size: int, **fields) -> LogicalUnit:
    defaults = {"namespace": "tenant-a", "pool": "vios", "purpose": HIBERNATION}
    return LogicalUnit(name=name, requested_bytes=size, **{**defaults, **fields})


def request(size: int, **fields) -> LURequest:
    defaults = {
        "namespace": "tenant-a",
        "pool": "vios",
        "purpose": HIBERNATION,
        "partition_uid": "p1",
        "initial_bytes": GI,
    }
    return LURequest(size_bytes=size, **{**defaults, **fields})


def test_the_smallest_free_lu_that_fits_is_reused() -> None:
    units = [unit("big", 8 * GI), unit("fits", 2 * GI), unit("small", GI // 2)]
    assert allocate(request(GI), units, NOW) == Allocation(REUSE, GI, units[1])


def test_without_one_that_fits_the_largest_free_lu_is_expanded() -> None:
    units = [unit("tiny", GI // 4), unit("half", GI // 2)]
    assert allocate(request(GI), units, NOW) == Allocation(EXPAND, GI, units[1])


def test_a_free_lu_whose_claim_is_not_bound_yet_is_reused_but_never_expanded() -> None:
    pending = unit("pending", GI // 2, bound=False)
    assert allocate(request(GI // 4), [pending], NOW) == Allocation(REUSE, GI // 4, pending)
    assert allocate(request(GI), [pending], NOW) == Allocation(CREATE, GI)


def test_with_no_free_lu_a_new_one_of_at_least_the_initial_size_is_created() -> None:
    taken = unit("taken", 4 * GI, claimed_by="other", lock_expires=NOW + 60)
    assert allocate(request(GI // 2), [taken], NOW) == Allocation(CREATE, GI)
    assert allocate(request(3 * GI), [], NOW) == Allocation(CREATE, 3 * GI)


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"namespace": "tenant-b"},  # never across tenants
        {"pool": "other-vios"},  # never across pools
        {"purpose": PAGING},  # one purpose per LU
    ],
)
def test_an_lu_of_another_namespace_pool_or_purpose_is_never_taken(elsewhere: dict) -> None:
    assert allocate(request(GI), [unit("x", 4 * GI, **elsewhere)], NOW) == Allocation(CREATE, GI)


def test_allocating_twice_gives_the_partition_its_own_lu_again() -> None:
    mine = unit("mine", GI, claimed_by="p1", lock_expires=NOW + 60)
    free = unit("free", 4 * GI)
    assert allocate(request(GI), [free, mine], NOW) == Allocation(REUSE, GI, mine)
    assert allocate(request(2 * GI), [free, mine], NOW) == Allocation(EXPAND, 2 * GI, mine)


def test_a_claim_whose_lock_expired_is_free_again_and_deleting_lus_never_are() -> None:
    stale = unit("stale", GI, claimed_by="dead", lock_expires=NOW - 1)
    live = unit("live", GI, claimed_by="alive", lock_expires=NOW + 1)
    going = unit("going", GI, deleting=True)
    assert stale.free(NOW) and not live.free(NOW) and not going.free(NOW)
    assert allocate(request(GI), [live, going, stale], NOW) == Allocation(REUSE, GI, stale)


def test_reuse_off_always_creates() -> None:
    assert allocate(request(GI, reuse=False), [unit("free", 4 * GI)], NOW) == Allocation(CREATE, GI)


def test_too_large_or_unknown_requests_are_refused_saying_what_to_change() -> None:
    too_large = allocate(request(8 * GI, max_bytes=4 * GI), [unit("free", 16 * GI)], NOW)
    assert isinstance(too_large, LURefusal) and too_large.reason == TOO_LARGE
    assert "thin.maxSize" in too_large.message
    unknown = allocate(request(GI, purpose="scratch"), [], NOW)
    assert isinstance(unknown, LURefusal) and unknown.reason == UNKNOWN_PURPOSE


def test_counts_are_counts_and_bytes_never_a_list() -> None:
    units = [
        unit("a", GI),
        unit("b", 2 * GI, claimed_by="p", lock_expires=NOW + 5),
        unit("c", 3 * GI, claimed_by="gone", lock_expires=NOW - 5),
    ]
    counts = lu_counts(units, NOW)
    by_purpose = counts.pop("byPurpose")
    assert counts == {
        "total": 3,
        "inUse": 0,
        "claiming": 1,
        "free": 2,
        "requestedBytes": 6 * GI,
        "usedBytes": 2 * GI,
    }
    assert by_purpose[HIBERNATION] == counts
    assert by_purpose[PAGING]["total"] == by_purpose[DUMP]["total"] == 0


def test_counts_split_by_purpose_and_state() -> None:
    units = [
        unit("held", GI, purpose=PAGING, claimed_by="p"),  # committed: no lock
        unit("locked", GI, purpose=PAGING, claimed_by="q", lock_expires=NOW + 1),
        unit("dump", 4 * GI, purpose=DUMP),
        unit("going", GI, purpose=DUMP, deleting=True),
    ]
    counts = lu_counts(units, NOW)
    assert (counts["inUse"], counts["claiming"], counts["free"]) == (2, 1, 1)
    assert counts["byPurpose"][PAGING] == {
        "total": 2,
        "inUse": 1,
        "claiming": 1,
        "free": 0,
        "requestedBytes": 2 * GI,
        "usedBytes": 2 * GI,
    }
    assert counts["byPurpose"][DUMP]["free"] == 1
    assert counts["byPurpose"][DUMP]["usedBytes"] == GI


def test_states_and_the_next_lock_expiry() -> None:
    assert unit("a", GI).state(NOW) == FREE
    assert unit("b", GI, claimed_by="p").state(NOW) == IN_USE
    assert unit("c", GI, claimed_by="p", lock_expires=NOW + 3).state(NOW) == CLAIMING
    assert unit("d", GI, claimed_by="p", lock_expires=NOW).state(NOW) == FREE
    units = [
        unit("x", GI, claimed_by="p", lock_expires=NOW + 9),
        unit("y", GI, claimed_by="q", lock_expires=NOW + 2),
        unit("z", GI, claimed_by="r", lock_expires=NOW - 2),
    ]
    assert next_lock_expiry(units, NOW) == NOW + 2
    assert next_lock_expiry([unit("a", GI)], NOW) is None


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1Gi", GI),
        ("1280Mi", 1280 << 20),
        ("1.5Gi", 3 * GI // 2),
        ("1G", 10**9),
        ("500k", 500_000),
        ("1073741824", GI),
        (GI, GI),
        ("0.5", 1),  # rounded up to a whole byte
    ],
)
def test_sizes_are_read_as_kubernetes_quantities(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [None, "", "big", "-1Gi", "1Gb", "1e3"])
def test_what_is_not_a_size_reads_as_none(text) -> None:
    assert parse_size(text) is None


def test_sizes_are_written_as_the_shortest_exact_quantity() -> None:
    assert format_size(GI) == "1Gi"
    assert format_size(1280 << 20) == "1280Mi"
    assert format_size(3 * GI // 2) == "1536Mi"
    assert format_size(1000) == "1000"
    assert parse_size(format_size(5 * GI + 512)) == 5 * GI + 512
