"""Agent reports are validated as a whole before the gateway writes anything."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from lparkube.domain.agent_report import AgentReport, Vmcoreinfo, parse_report

GOOD = {
    "agentVersion": "0.1.0",
    "bootTime": "2026-11-21T11:00:00+01:00",
    "kernelRelease": "6.1.0-26-amd64",
    "vmcoreinfo": {"address": "0x1f5c8b000", "size": 4096},
    "applications": [{"name": "editor", "pid": 42, "priority": 10, "method": "SimulatedInput"}],
}


def test_a_documented_report_parses() -> None:
    report = parse_report(json.dumps(GOOD).encode())
    assert report == AgentReport(
        version="0.1.0",
        boot_time=datetime(2026, 11, 21, 10, 0, tzinfo=UTC),
        kernel_release="6.1.0-26-amd64",
        vmcoreinfo=Vmcoreinfo("0x1f5c8b000", 4096),
        applications=1,
    )
    assert (
        report.status(datetime(2026, 11, 21, 12, tzinfo=UTC))["bootTime"] == "2026-11-21T10:00:00Z"
    )


def test_optional_fields_may_be_missing() -> None:
    report = parse_report(b"{}")
    assert report == AgentReport("", None, "", None, 0)
    status = report.status(datetime(2026, 11, 21, 12, tzinfo=UTC))
    assert status["vmcoreinfo"] is None and status["bootTime"] is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"x"',
        json.dumps({**GOOD, "agentVersion": 3}).encode(),
        json.dumps({**GOOD, "kernelRelease": "x" * 300}).encode(),
        json.dumps({**GOOD, "bootTime": "yesterday"}).encode(),
        json.dumps({**GOOD, "bootTime": 5}).encode(),
        json.dumps({**GOOD, "vmcoreinfo": "0x1"}).encode(),
        json.dumps({**GOOD, "vmcoreinfo": {"address": "1f5c8b000", "size": 4096}}).encode(),
        json.dumps({**GOOD, "vmcoreinfo": {"address": "0x1", "size": -1}}).encode(),
        json.dumps({**GOOD, "vmcoreinfo": {"address": "0x1", "size": True}}).encode(),
        json.dumps({**GOOD, "applications": {"a": 1}}).encode(),
        json.dumps({**GOOD, "applications": [1, 2]}).encode(),
        json.dumps({**GOOD, "applications": [{}] * 1025}).encode(),
    ],
)
def test_malformed_reports_are_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_report(body)
