"""What a guest agent reports to the gateway, validated before anything is written.

The body is signed, but a signature proves only who sent it, not that it is well formed: a
report whose core fields do not match the documented shape is refused as a whole, so status
never holds half of a bad report. The guest's optional facts (``bootId``, ``memory``,
``paging``, ``hibernation``, ``storage``, ``watchdog``; docs/agent-protocol.md) are each taken
or left on their own: one that is malformed is left out, as if the agent had not sent it, and
never fails the report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from lparkube.domain.clock import rfc3339

MAX_TEXT = 256
MAX_MESSAGE = 1024
MAX_BOOT_ID = 64
MAX_BYTES = 2**63 - 1
MAX_APPLICATIONS = 1024
HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{1,16}$")
HIBERNATION_STATES = ("Hibernating", "Resumed", "Failed")
MAX_STORAGE_DISKS = 64
Fact = TypeVar("Fact")


@dataclass(frozen=True)
class Vmcoreinfo:
    """Where the guest kernel's VMCOREINFO note lives (from /sys/kernel/vmcoreinfo)."""

    address: str
    size: int


@dataclass(frozen=True)
class Memory:
    """The guest's memory (/proc/meminfo MemTotal and MemAvailable)."""

    total_bytes: int
    available_bytes: int

    def status(self) -> dict[str, Any]:
        return {"totalBytes": self.total_bytes, "availableBytes": self.available_bytes}


@dataclass(frozen=True)
class Paging:
    """The paging disk as the agent found it: its size, its swap area's, whether it is on."""

    serial: str
    device: str
    size_bytes: int
    swap_bytes: int
    active: bool
    message: str

    def status(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "device": self.device,
            "sizeBytes": self.size_bytes,
            "swapBytes": self.swap_bytes,
            "active": self.active,
            "message": self.message,
        }


@dataclass(frozen=True)
class Watchdog:
    """The guest's watchdog device: its timeout, whether the agent armed it (it pets it only
    while it holds a lease the gateway granted)."""

    device: str
    timeout_seconds: int
    armed: bool
    message: str

    def status(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "timeoutSeconds": self.timeout_seconds,
            "armed": self.armed,
            "message": self.message,
        }


@dataclass(frozen=True)
class Hibernation:
    """The agent's last hibernate run."""

    id: str
    state: str
    requested_at: datetime | None
    resumed_at: datetime | None
    image_bytes: int | None
    message: str

    def status(self) -> dict[str, Any]:
        """Every field, absent ones as None: a newer run clears what an older one set."""
        return {
            "id": self.id,
            "state": self.state,
            "requestedAt": rfc3339(self.requested_at) if self.requested_at else None,
            "resumedAt": rfc3339(self.resumed_at) if self.resumed_at else None,
            "imageBytes": self.image_bytes,
            "message": self.message,
        }


@dataclass(frozen=True)
class StorageDisk:
    """One disk of the last storage change, as the guest found it."""

    serial: str
    device: str
    size_bytes: int
    rescanned: bool
    message: str

    def status(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "device": self.device,
            "sizeBytes": self.size_bytes,
            "rescanned": self.rescanned,
            "message": self.message,
        }


@dataclass(frozen=True)
class Storage:
    """What the agent did for the last storage change it was told of."""

    id: str
    disks: tuple[StorageDisk, ...]

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "disks": [d.status() for d in self.disks]}


@dataclass(frozen=True)
class AgentReport:
    """One heartbeat: who the agent is, what kernel it runs, what is registered, and the
    guest's optional facts (None: not reported, or malformed)."""

    version: str
    boot_time: datetime | None
    kernel_release: str
    vmcoreinfo: Vmcoreinfo | None
    applications: int
    boot_id: str | None = None
    memory: Memory | None = None
    paging: Paging | None = None
    hibernation: Hibernation | None = None
    storage: Storage | None = None
    watchdog: Watchdog | None = None

    def status(self, received: datetime) -> dict[str, Any]:
        """The Partition's status.agent fields this report sets; received is the heartbeat.
        An optional fact the report lacks is None, so it is removed from status."""
        return {
            "version": self.version,
            "lastHeartbeatTime": rfc3339(received),
            "bootTime": rfc3339(self.boot_time) if self.boot_time else None,
            "kernelRelease": self.kernel_release,
            "vmcoreinfo": (
                {"address": self.vmcoreinfo.address, "size": self.vmcoreinfo.size}
                if self.vmcoreinfo
                else None
            ),
            "applications": self.applications,
            "bootId": self.boot_id,
            "memory": self.memory.status() if self.memory else None,
            "paging": self.paging.status() if self.paging else None,
            "hibernation": self.hibernation.status() if self.hibernation else None,
            "storage": self.storage.status() if self.storage else None,
            "watchdog": self.watchdog.status() if self.watchdog else None,
        }


def parse_report(body: bytes) -> AgentReport:
    """The report in a request body, or ValueError saying what is wrong with it."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("the report must be a JSON object")
    applications = data.get("applications", [])
    if not isinstance(applications, list) or len(applications) > MAX_APPLICATIONS:
        raise ValueError(f"applications must be a list of at most {MAX_APPLICATIONS} entries")
    if not all(isinstance(app, dict) for app in applications):
        raise ValueError("every application must be a JSON object")
    return AgentReport(
        version=_text(data, "agentVersion"),
        boot_time=_time(data.get("bootTime")),
        kernel_release=_text(data, "kernelRelease"),
        vmcoreinfo=_vmcoreinfo(data.get("vmcoreinfo")),
        applications=len(applications),
        boot_id=_optional(_boot_id, data.get("bootId")),
        memory=_optional(_memory, data.get("memory")),
        paging=_optional(_paging, data.get("paging")),
        hibernation=_optional(_hibernation, data.get("hibernation")),
        storage=_optional(_storage, data.get("storage")),
        watchdog=_optional(_watchdog, data.get("watchdog")),
    )


def _optional(parse: Callable[[Any], Fact], value: Any) -> Fact | None:
    """An optional fact: None when it is missing or malformed (the rest of the report holds)."""
    if value is None:
        return None
    try:
        return parse(value)
    except (ValueError, TypeError, OverflowError):
        return None


def _boot_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_BOOT_ID or not value.isprintable():
        raise ValueError(f"bootId must be 1..{MAX_BOOT_ID} printable characters")
    return value


def _bytes(data: dict[str, Any], field: str) -> int:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BYTES:
        raise ValueError(f"{field} must be a byte count")
    return value


def _string(data: dict[str, Any], field: str, limit: int = MAX_TEXT) -> str:
    value = data.get(field, "")
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{field} must be a string of at most {limit} characters")
    return value


def _message(data: dict[str, Any]) -> str:
    """A message for people: any string, cut to MAX_MESSAGE."""
    value = data.get("message", "")
    if not isinstance(value, str):
        raise ValueError("message must be a string")
    return value[:MAX_MESSAGE]


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object")
    return value


def _memory(value: Any) -> Memory:
    data = _object(value, "memory")
    return Memory(_bytes(data, "totalBytes"), _bytes(data, "availableBytes"))


def _paging(value: Any) -> Paging:
    data = _object(value, "paging")
    active = data.get("active")
    if not isinstance(active, bool):
        raise ValueError("paging.active must be true or false")
    return Paging(
        serial=_string(data, "serial", 64),
        device=_string(data, "device"),
        size_bytes=_bytes(data, "sizeBytes"),
        swap_bytes=_bytes(data, "swapBytes"),
        active=active,
        message=_message(data),
    )


def _watchdog(value: Any) -> Watchdog:
    data = _object(value, "watchdog")
    armed, timeout = data.get("armed"), data.get("timeoutSeconds")
    if not isinstance(armed, bool):
        raise ValueError("watchdog.armed must be true or false")
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout <= 86400:
        raise ValueError("watchdog.timeoutSeconds must be 0..86400")
    return Watchdog(_string(data, "device", 256), timeout, armed, _message(data))


def _hibernation(value: Any) -> Hibernation:
    data = _object(value, "hibernation")
    ident, state = _string(data, "id"), data.get("state")
    if not ident or state not in HIBERNATION_STATES:
        raise ValueError("hibernation needs an id and a state")
    image = data.get("imageBytes")
    return Hibernation(
        id=ident,
        state=state,
        requested_at=_time(data.get("requestedAt")),
        resumed_at=_time(data.get("resumedAt")),
        image_bytes=None if image is None else _bytes(data, "imageBytes"),
        message=_message(data),
    )


def _storage(value: Any) -> Storage:
    data = _object(value, "storage")
    ident, disks = _string(data, "id", 64), data.get("disks")
    if not ident or not isinstance(disks, list) or len(disks) > MAX_STORAGE_DISKS:
        raise ValueError(f"storage needs an id and at most {MAX_STORAGE_DISKS} disks")
    parsed = []
    for disk in disks:
        entry = _object(disk, "storage.disks[]")
        if not isinstance(entry.get("rescanned"), bool):
            raise ValueError("storage.disks[].rescanned must be true or false")
        parsed.append(
            StorageDisk(
                serial=_string(entry, "serial", 253),
                device=_string(entry, "device"),
                size_bytes=_bytes(entry, "sizeBytes"),
                rescanned=entry["rescanned"],
                message=_message(entry),
            )
        )
    return Storage(ident, tuple(parsed))


def _text(data: dict[str, Any], field: str) -> str:
    value = data.get(field, "")
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{field} must be a string of at most {MAX_TEXT} characters")
    return value


def _time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError("bootTime must be an RFC 3339 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"bootTime must be an RFC 3339 time: {exc}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _vmcoreinfo(value: Any) -> Vmcoreinfo | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("vmcoreinfo must be an object {address, size} or null")
    address, size = value.get("address"), value.get("size")
    if not isinstance(address, str) or not HEX_ADDRESS.match(address):
        raise ValueError("vmcoreinfo.address must be a hexadecimal string like 0x1f5c8b000")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**31:
        raise ValueError("vmcoreinfo.size must be a non-negative integer")
    return Vmcoreinfo(address.lower(), size)
