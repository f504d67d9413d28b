"""The report's optional guest facts (bootId, memory, paging, hibernation) at the gateway:
each taken when valid, left out when malformed (the report still holds), and written to
status.agent so that a fact no longer reported, or a field a newer run lacks, is removed."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from lparkube.domain.agent_report import Hibernation, Memory, Paging, parse_report
from lparkube.domain.partition_status import status_patch

PAGING = {
    "serial": "lparkube-paging",
    "device": "/dev/vdc",
    "sizeBytes": 671088640,
    "swapBytes": 671084544,
    "active": True,
    "message": "",
}
HIBERNATION = {
    "id": "uid-1",
    "state": "Resumed",
    "requestedAt": "2026-11-21T22:00:00Z",
    "resumedAt": "2026-11-21T22:03:00Z",
    "imageBytes": 123456789,
    "message": "",
}
FACTS = {
    "bootId": "4f1c2f5e-0c1d-4d38-9a55-2b1c1f3e5a77",
    "memory": {"totalBytes": 536870912, "availableBytes": 402653184},
    "paging": PAGING,
    "hibernation": HIBERNATION,
}
NOW = datetime(2026, 11, 21, 22, 5, tzinfo=UTC)


def report(**facts: object) -> bytes:
    return json.dumps({"agentVersion": "0.1.0", "applications": [], **facts}).encode()


def test_the_documented_facts_parse_and_reach_status() -> None:
    parsed = parse_report(report(**FACTS))
    assert parsed.boot_id == FACTS["bootId"]
    assert parsed.memory == Memory(536870912, 402653184)
    assert parsed.paging == Paging("lparkube-paging", "/dev/vdc", 671088640, 671084544, True, "")
    assert parsed.hibernation == Hibernation(
        "uid-1",
        "Resumed",
        datetime(2026, 11, 21, 22, tzinfo=UTC),
        datetime(2026, 11, 21, 22, 3, tzinfo=UTC),
        123456789,
        "",
    )
    status = parsed.status(NOW)
    assert {k: status[k] for k in FACTS} == FACTS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bootId", 5),
        ("bootId", ""),
        ("bootId", "x" * 65),
        ("bootId", "a\nb"),
        ("memory", "512Mi"),
        ("memory", {"totalBytes": -1, "availableBytes": 0}),
        ("memory", {"totalBytes": 1}),
        ("memory", {"totalBytes": True, "availableBytes": 0}),
        ("memory", {"totalBytes": 2**64, "availableBytes": 0}),
        ("paging", []),
        ("paging", {**PAGING, "active": "yes"}),
        ("paging", {**PAGING, "sizeBytes": 1.5}),
        ("paging", {**PAGING, "device": "x" * 300}),
        ("paging", {**PAGING, "message": 7}),
        ("hibernation", {**HIBERNATION, "state": "Asleep"}),
        ("hibernation", {**HIBERNATION, "id": ""}),
        ("hibernation", {**HIBERNATION, "requestedAt": "noon"}),
        ("hibernation", {**HIBERNATION, "imageBytes": "1G"}),
        ("hibernation", "Resumed"),
    ],
)
def test_a_malformed_fact_is_left_out_and_the_report_holds(field: str, value: object) -> None:
    parsed = parse_report(report(**{**FACTS, field: value}))
    status = parsed.status(NOW)
    assert status[field] is None
    assert parsed.version == "0.1.0"
    assert all(status[k] == FACTS[k] for k in FACTS if k != field)


def test_a_long_message_is_cut_not_dropped() -> None:
    parsed = parse_report(report(paging={**PAGING, "active": False, "message": "m" * 5000}))
    assert parsed.paging is not None and len(parsed.paging.message) == 1024


def test_an_agent_without_the_facts_reports_none_of_them() -> None:
    status = parse_report(report()).status(NOW)
    assert [status[k] for k in FACTS] == [None, None, None, None]


def test_a_newer_run_clears_what_the_older_one_set_and_a_gone_disk_clears_paging() -> None:
    stored = parse_report(report(**FACTS)).status(NOW)
    running = {"id": "uid-2", "state": "Hibernating", "requestedAt": "2026-11-21T23:00:00Z"}
    newer = parse_report(report(bootId=FACTS["bootId"], hibernation=running)).status(NOW)
    patch = status_patch({"agent": stored}, {"agent": {**stored, **newer}})["agent"]
    assert patch["hibernation"] == {
        "id": "uid-2",
        "state": "Hibernating",
        "requestedAt": "2026-11-21T23:00:00Z",
        "resumedAt": None,
        "imageBytes": None,
    }
    assert patch["paging"] is None and patch["memory"] is None
    assert "bootId" not in patch  # unchanged


STORAGE = {
    "id": "sc-1",
    "at": "2026-11-21T22:10:00Z",
    "disks": [
        {"serial": "data", "device": "/dev/sdb", "sizeBytes": 2**31, "rescanned": True,
         "message": ""},
        {"serial": "gone", "device": "", "sizeBytes": 0, "rescanned": False, "message": "x" * 2000},
    ],
}  # fmt: skip


def test_the_last_storage_change_reaches_status() -> None:
    body = json.dumps({"agentVersion": "0.1.0", "storage": STORAGE}).encode()
    status = parse_report(body).status(datetime(2026, 11, 21, tzinfo=UTC))
    assert status["storage"]["id"] == "sc-1"
    assert status["storage"]["disks"][0] == STORAGE["disks"][0]
    assert len(status["storage"]["disks"][1]["message"]) == 1024


@pytest.mark.parametrize(
    "storage",
    [
        {"disks": []},
        {"id": "sc-1", "disks": "data"},
        {"id": "sc-1", "disks": [{"serial": "d", "sizeBytes": -1, "rescanned": False}]},
        {"id": "sc-1", "disks": [{"serial": "d", "sizeBytes": 1, "rescanned": "yes"}]},
        {"id": "sc-1", "disks": [{"serial": "d", "sizeBytes": 1, "rescanned": True}] * 65},
    ],
)
def test_a_malformed_storage_fact_is_left_out(storage: dict) -> None:
    report = parse_report(json.dumps({"agentVersion": "0.1.0", "storage": storage}).encode())
    assert report.storage is None and report.version == "0.1.0"


def test_the_watchdog_reaches_status_and_a_malformed_one_is_left_out() -> None:
    watchdog = {"device": "/dev/watchdog", "timeoutSeconds": 10, "armed": True, "message": ""}
    body = json.dumps({"agentVersion": "0.1.0", "watchdog": watchdog}).encode()
    assert parse_report(body).status(NOW)["watchdog"] == watchdog
    for bad in ({**watchdog, "armed": "yes"}, {**watchdog, "timeoutSeconds": True}, []):
        body = json.dumps({"agentVersion": "0.1.0", "watchdog": bad}).encode()
        assert parse_report(body).status(NOW)["watchdog"] is None
