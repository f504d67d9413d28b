"""Partition status and conditions from the VM, the VMI and the agent's heartbeats."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from lparkube.domain import partition_status as part
from lparkube.domain.agent_report import parse_report
from lparkube.domain.clock import rfc3339
from lparkube.domain.conditions import FALSE, TRUE, find

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def partition(status: dict | None = None, timeout: str = "3s") -> dict:
    return {
        "metadata": {"name": "web-1", "namespace": "ns", "uid": "u", "generation": 4},
        "spec": {"vmTemplate": {"spec": {}}, "agent": {"port": 9000, "heartbeatTimeout": timeout}},
        "status": status or {},
    }


VM = {"status": {"printableStatus": "Running"}}


def vmi(phase: str = "Running", ready: str = TRUE, interfaces: list | None = None) -> dict:
    return {
        "status": {
            "phase": phase,
            "nodeName": "node-b",
            "conditions": [{"type": "Ready", "status": ready, "message": "guest booting"}],
            "interfaces": interfaces
            if interfaces is not None
            else [
                {
                    "name": "default",
                    "ipAddress": "127.0.0.7",
                    "ipAddresses": ["127.0.0.7", "fd00::7"],
                }
            ],
        }
    }


def cond(status: dict, type_: str) -> dict:
    found = find(status["conditions"], type_)
    assert found is not None
    return found


def test_running_vmi_fills_node_addresses_and_endpoint() -> None:
    status = part.observed_status(partition(), VM, vmi(), T0)
    assert status["vmName"] == "web-1"
    assert status["nodeName"] == "node-b"
    assert status["observedGeneration"] == 4
    assert status["addresses"] == [
        {"interface": "default", "ip": "127.0.0.7"},
        {"interface": "default", "ip": "fd00::7"},
    ]
    assert status["agent"] == {"keySecretName": "web-1-agent-key", "endpoint": "127.0.0.7:9000"}
    assert cond(status, "VMReady")["status"] == TRUE
    assert cond(status, "VMReady")["reason"] == "VMIRunning"
    assert cond(status, "VMReady")["observedGeneration"] == 4
    assert cond(status, "AgentConnected")["reason"] == "NoHeartbeat"
    assert cond(status, "Ready") | {"lastTransitionTime": None} == {
        "type": "Ready",
        "status": FALSE,
        "reason": "NoHeartbeat",
        "message": "the guest agent has not reported yet",
        "observedGeneration": 4,
        "lastTransitionTime": None,
    }


def test_ipv6_endpoint_is_bracketed() -> None:
    assert part.endpoint([{"interface": "x", "ip": "fd00::1"}], 8443) == "[fd00::1]:8443"
    assert part.endpoint([], 8443) is None


@pytest.mark.parametrize(
    ("vm", "instance", "reason"),
    [
        (None, None, "VMNotFound"),
        ({"status": {"printableStatus": "Stopped"}}, None, "VMNotRunning"),
        (VM, vmi(phase="Scheduling"), "VMIScheduling"),
        (VM, vmi(ready=FALSE), "VMINotReady"),
    ],
)
def test_vm_not_ready_reasons(vm: dict | None, instance: dict | None, reason: str) -> None:
    condition = part.vm_ready("web-1", vm, instance)
    assert (condition.status, condition.reason) == (FALSE, reason)
    assert condition.message
    ready = part.ready(condition, part.agent_connected({}, 3, T0))
    assert (ready.status, ready.reason) == (FALSE, reason)


def test_vmi_without_addresses_clears_them() -> None:
    stored = {
        "nodeName": "node-a",
        "addresses": [{"interface": "d", "ip": "1.2.3.4"}],
        "agent": {"endpoint": "1.2.3.4:9000", "keySecretName": "web-1-agent-key"},
    }
    desired = part.observed_status(partition(stored), VM, None, T0)
    patch = part.status_patch(stored, desired)
    assert patch["nodeName"] is None
    assert patch["addresses"] == []
    assert patch["agent"] == {"endpoint": None}


REPORT = {
    "agentVersion": "0.1.0",
    "kernelRelease": "6.1.0",
    "bootTime": "2026-11-21T11:00:00Z",
    "vmcoreinfo": {"address": "0x1F5C8B000", "size": 4096},
    "applications": [{"name": "a"}, {"name": "b"}],
}


def report_status(at: datetime) -> dict:
    return parse_report(json.dumps(REPORT).encode()).status(at)


def test_report_connects_the_agent_and_keeps_the_vm_condition() -> None:
    running = part.observed_status(partition(), VM, vmi(), T0)
    after = part.status_with_report(partition(running), report_status(T0), T0)
    assert after["agent"] == {
        "keySecretName": "web-1-agent-key",
        "endpoint": "127.0.0.7:9000",
        "version": "0.1.0",
        "lastHeartbeatTime": rfc3339(T0),
        "bootTime": "2026-11-21T11:00:00Z",
        "kernelRelease": "6.1.0",
        "vmcoreinfo": {"address": "0x1f5c8b000", "size": 4096},
        "applications": 2,
        # guest facts the report lacks are cleared (null in the merge patch)
        "bootId": None,
        "memory": None,
        "paging": None,
        "hibernation": None,
        "storage": None,
        "watchdog": None,
    }
    assert cond(after, "AgentConnected")["status"] == TRUE
    assert cond(after, "VMReady")["status"] == TRUE
    assert cond(after, "Ready")["status"] == TRUE
    assert part.transition(running, after, "AgentConnected") == TRUE
    assert part.transition(after, after, "AgentConnected") is None


def test_report_before_the_vm_was_observed_leaves_ready_unknown_reason() -> None:
    after = part.status_with_report(partition(), report_status(T0), T0)
    assert cond(after, "AgentConnected")["status"] == TRUE
    assert cond(after, "Ready")["reason"] == "VMReadyUnknown"


def test_heartbeat_expires_after_the_timeout() -> None:
    running = part.observed_status(partition(), VM, vmi(), T0)
    connected = part.status_with_report(partition(running), report_status(T0), T0)
    assert part.heartbeat_deadline(connected["agent"], 3.0) == T0 + timedelta(seconds=3)

    still = part.status_with_expiry(partition(connected), T0 + timedelta(seconds=3))
    assert cond(still, "AgentConnected")["status"] == TRUE
    assert part.status_patch(connected, still) == {}

    lost = part.status_with_expiry(partition(connected), T0 + timedelta(seconds=4))
    assert cond(lost, "AgentConnected")["status"] == FALSE
    assert cond(lost, "AgentConnected")["reason"] == "HeartbeatTimeout"
    assert "timeout 3s" in cond(lost, "AgentConnected")["message"]
    assert cond(lost, "Ready")["reason"] == "HeartbeatTimeout"
    assert part.transition(connected, lost, "AgentConnected") == FALSE
    assert cond(lost, "AgentConnected")["lastTransitionTime"] == rfc3339(T0 + timedelta(seconds=4))


def test_a_longer_timeout_in_the_spec_reconnects_on_recompute() -> None:
    connected = part.status_with_report(partition(), report_status(T0), T0)
    later = T0 + timedelta(seconds=10)
    assert (
        cond(part.status_with_expiry(partition(connected, "3s"), later), "AgentConnected")["status"]
        == FALSE
    )
    assert (
        cond(part.status_with_expiry(partition(connected, "1m"), later), "AgentConnected")["status"]
        == TRUE
    )


def test_status_patch_is_empty_when_nothing_changed() -> None:
    status = part.observed_status(partition(), VM, vmi(), T0)
    again = part.observed_status(partition(status), VM, vmi(), T0 + timedelta(minutes=1))
    assert part.status_patch(status, again) == {}


@pytest.mark.parametrize(
    ("vm_ready", "agent", "reason", "lost"),
    [
        ("True", "False", "HeartbeatTimeout", True),
        ("True", "False", "NoHeartbeat", False),  # not started yet
        ("False", "False", "HeartbeatTimeout", False),  # its VM is stopped
        ("True", "True", "HeartbeatReceived", False),
    ],
)
def test_an_agent_is_lost_only_when_its_running_vm_went_silent(
    vm_ready: str, agent: str, reason: str, lost: bool
) -> None:
    conditions = [
        {"type": "VMReady", "status": vm_ready, "reason": "X"},
        {"type": "AgentConnected", "status": agent, "reason": reason},
    ]
    assert part.agent_lost(conditions) is lost
