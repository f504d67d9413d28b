"""The operator's directory of Partitions, as the agent gateway needs it: who exists, under
which uid, and the signed time of the last report accepted from each.

It is fed by the operator's Partition watch, so it holds one entry per Partition and never one
per request: a report naming a Partition that is not in it is refused without an API call.
The last accepted time comes back from status (``agent.lastHeartbeatTime`` is the signed time
of the last accepted report), so it survives a restart, and a report is accepted only when its
signed time is strictly later: a captured report replayed at any time later can never move
a heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from lparkube.domain.clock import parse_time


@dataclass(frozen=True)
class DirectoryEntry:
    """One Partition as the gateway sees it."""

    namespace: str
    name: str
    uid: str
    deleting: bool
    last_report: int | None  # signed Unix seconds of the last accepted report

    @property
    def partition(self) -> str:
        """``namespace/name``, as the agent's ``X-Lparkube-Partition`` header names it."""
        return f"{self.namespace}/{self.name}"


def is_newer(timestamp: int, last: int | None) -> bool:
    """The replay rule: a report is accepted only if signed strictly after the last one."""
    return last is None or timestamp > last


def last_report_time(status: dict[str, Any] | None) -> int | None:
    """The signed time of the last accepted report, as status keeps it."""
    moment = parse_time(((status or {}).get("agent") or {}).get("lastHeartbeatTime"))
    return int(moment.timestamp()) if moment else None


def entry_of(partition: dict[str, Any]) -> DirectoryEntry:
    """The directory entry of a Partition object (as the watch delivers it)."""
    meta = partition["metadata"]
    return DirectoryEntry(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        deleting=bool(meta.get("deletionTimestamp")),
        last_report=last_report_time(partition.get("status")),
    )


class PartitionDirectory:
    """Partitions by ``namespace/name``; not ``synced`` until the watch's first listing is in.

    Not thread-safe: the watch and the gateway share one event loop.
    """

    def __init__(self) -> None:
        self._entries: dict[str, DirectoryEntry] = {}
        self._synced = False

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def synced(self) -> bool:
        """Whether every Partition that existed at start is in: only then is a name that is
        not here really unknown."""
        return self._synced

    def mark_synced(self) -> None:
        self._synced = True

    def observe(self, entry: DirectoryEntry) -> None:
        """A Partition as the watch sees it now.

        The last accepted time only moves forward (the watch may deliver a status older than
        a report just accepted), and a late event of a Partition being deleted never displaces
        a live successor of the same name.
        """
        current = self._entries.get(entry.partition)
        if current is not None and current.uid == entry.uid:
            known = [t for t in (entry.last_report, current.last_report) if t is not None]
            entry = replace(entry, last_report=max(known, default=None))
        elif current is not None and entry.deleting and not current.deleting:
            return
        self._entries[entry.partition] = entry

    def forget(self, partition: str, uid: str) -> None:
        """The Partition with this uid is gone (a successor of the same name stays)."""
        current = self._entries.get(partition)
        if current is not None and current.uid == uid:
            del self._entries[partition]

    def find(self, partition: str) -> DirectoryEntry | None:
        """The live Partition of that name; None when there is none or it is being deleted."""
        entry = self._entries.get(partition)
        return entry if entry is not None and not entry.deleting else None

    def accept(self, entry: DirectoryEntry, timestamp: int) -> bool:
        """Record a verified report's signed time; False (nothing recorded) when it is not
        newer than the last accepted one, or the Partition changed or went meanwhile."""
        current = self.find(entry.partition)
        if current is None or current.uid != entry.uid:
            return False
        if not is_newer(timestamp, current.last_report):
            return False
        self._entries[entry.partition] = replace(current, last_report=timestamp)
        return True
