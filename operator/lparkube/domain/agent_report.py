"""What a guest agent reports to the gateway, validated before anything is written.

The body is signed, but a signature proves only who sent it, not that it is well formed: a
report that does not match the documented shape is refused as a whole, so status never holds
half of a bad report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lparkube.domain.clock import rfc3339

MAX_TEXT = 256
MAX_APPLICATIONS = 1024
HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{1,16}$")


@dataclass(frozen=True)
class Vmcoreinfo:
    """Where the guest kernel's VMCOREINFO note lives (from /sys/kernel/vmcoreinfo)."""

    address: str
    size: int


@dataclass(frozen=True)
class AgentReport:
    """One heartbeat: who the agent is, what kernel it runs, what is registered."""

    version: str
    boot_time: datetime | None
    kernel_release: str
    vmcoreinfo: Vmcoreinfo | None
    applications: int

    def status(self, received: datetime) -> dict[str, Any]:
        """The Partition's status.agent fields this report sets; received is the heartbeat."""
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
    )


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
