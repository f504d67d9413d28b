"""The operator's directory of Partitions: one entry per Partition, fed by the watch, and the
replay rule (a report must be signed strictly later than the last accepted one)."""

from __future__ import annotations

from dataclasses import replace

from lparkube.domain.partition_directory import (
    DirectoryEntry,
    PartitionDirectory,
    entry_of,
    is_newer,
    last_report_time,
)

T0 = 1_795_000_000  # 2026-11-18T11:06:40Z, in signed Unix seconds


def partition(
    name: str = "web-1", uid: str = "uid-1", *, status: dict | None = None, **meta: str
) -> dict:
    return {
        "metadata": {"namespace": "tenant-a", "name": name, "uid": uid, **meta},
        "spec": {"vmTemplate": {}},
        "status": status or {},
    }


def entry(uid: str = "uid-1", last: int | None = None, *, deleting: bool = False) -> DirectoryEntry:
    return DirectoryEntry("tenant-a", "web-1", uid, deleting, last)


def test_an_entry_from_a_partition() -> None:
    found = entry_of(partition())
    assert found == entry()
    assert found.partition == "tenant-a/web-1"
    reported = partition(
        status={"agent": {"lastHeartbeatTime": "2026-11-18T11:06:40Z"}},
        deletionTimestamp="2026-11-18T11:10:00Z",
    )
    assert entry_of(reported) == entry(last=T0, deleting=True)


def test_the_last_report_time_is_the_stored_heartbeat() -> None:
    assert last_report_time(None) is None
    assert last_report_time({"agent": {}}) is None
    assert last_report_time({"agent": {"lastHeartbeatTime": "not a time"}}) is None
    assert last_report_time({"agent": {"lastHeartbeatTime": "2026-11-18T11:06:40Z"}}) == T0


def test_only_a_strictly_later_signed_time_is_newer() -> None:
    assert is_newer(T0, None)
    assert is_newer(T0 + 1, T0)
    assert not is_newer(T0, T0)
    assert not is_newer(T0 - 1, T0)


def test_accept_moves_the_last_report_forward_only() -> None:
    directory = PartitionDirectory()
    directory.observe(entry())
    current = directory.find("tenant-a/web-1")
    assert current is not None
    assert directory.accept(current, T0)
    assert not directory.accept(current, T0), "the same second again is a replay"
    assert not directory.accept(current, T0 - 30)
    assert directory.accept(current, T0 + 1)
    assert directory.find("tenant-a/web-1") == entry(last=T0 + 1)


def test_the_watch_never_moves_the_last_report_back() -> None:
    """The watch may deliver a status written before the last accepted report."""
    directory = PartitionDirectory()
    directory.observe(entry(last=T0))
    directory.accept(entry(), T0 + 5)
    directory.observe(entry(last=T0 + 2))
    directory.observe(entry(last=None))
    assert directory.find("tenant-a/web-1") == entry(last=T0 + 5)
    directory.observe(entry(last=T0 + 9))
    assert directory.find("tenant-a/web-1") == entry(last=T0 + 9)


def test_a_partition_recreated_under_its_name_starts_afresh() -> None:
    directory = PartitionDirectory()
    directory.observe(entry(last=T0))
    directory.observe(entry("uid-2"))
    assert directory.find("tenant-a/web-1") == entry("uid-2")
    assert not directory.accept(entry("uid-1"), T0 + 1), "the old Partition's report"
    directory.forget("tenant-a/web-1", "uid-1")  # the old one's deletion, seen late
    assert directory.find("tenant-a/web-1") == entry("uid-2")
    directory.observe(entry("uid-1", deleting=True))  # a late event of the old one
    assert directory.find("tenant-a/web-1") == entry("uid-2")
    directory.forget("tenant-a/web-1", "uid-2")
    assert directory.find("tenant-a/web-1") is None


def test_a_partition_being_deleted_is_not_found_and_accepts_nothing() -> None:
    directory = PartitionDirectory()
    directory.observe(entry())
    directory.observe(entry(deleting=True))
    assert directory.find("tenant-a/web-1") is None
    assert not directory.accept(entry(), T0)


def test_the_directory_holds_one_entry_per_partition() -> None:
    directory = PartitionDirectory()
    for second in range(1000):
        directory.observe(replace(entry(), last_report=T0 + second))
        directory.accept(entry(), T0 + 2000 + second)
        directory.find(f"tenant-a/ghost-{second}")
    assert len(directory) == 1


def test_synced_only_when_marked() -> None:
    directory = PartitionDirectory()
    assert not directory.synced
    directory.mark_synced()
    assert directory.synced
