"""Partition status and conditions from what the operator observed: the VM, the VMI and the
guest agent's heartbeats, as pure functions (the controllers only read and write).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from lparkube.domain.clock import parse_time
from lparkube.domain.conditions import FALSE, TRUE, UNKNOWN, Condition, find, is_true, merge
from lparkube.domain.partition import agent_spec, vm_name

MAX_ADDRESSES = 16
VM_READY = "VMReady"
AGENT_CONNECTED = "AgentConnected"
READY = "Ready"
# VMReady=False reasons for problems the user must fix (docs/api.md lists them all)
VM_NAME_CONFLICT = "VMNameConflict"
INVALID_TEMPLATE = "InvalidTemplate"
KEY_SECRET_CONFLICT = "KeySecretConflict"
KEY_DELIVERY_FAILED = "KeyDeliveryFailed"
KUBEVIRT_MISSING = "KubeVirtMissing"


def addresses(vmi: dict[str, Any] | None) -> list[dict[str, str]]:
    """{interface, ip} for every address KubeVirt reports, primary address first."""
    found: list[dict[str, str]] = []
    for iface in ((vmi or {}).get("status") or {}).get("interfaces") or []:
        ips = [iface.get("ipAddress"), *(iface.get("ipAddresses") or [])]
        for ip in dict.fromkeys(ip for ip in ips if ip):
            found.append({"interface": iface.get("name") or "", "ip": ip})
    return found[:MAX_ADDRESSES]


def endpoint(found: list[dict[str, str]], port: int) -> str | None:
    """``ip:port`` of the agent on the VM's first address (brackets for IPv6)."""
    if not found:
        return None
    ip = found[0]["ip"]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def vm_ready(name: str, vm: dict[str, Any] | None, vmi: dict[str, Any] | None) -> Condition:
    """VMReady: the VMI runs and KubeVirt calls it ready."""
    if vm is None:
        return Condition.of(VM_READY, False, "VMNotFound", f"VirtualMachine {name} does not exist")
    printable = (vm.get("status") or {}).get("printableStatus") or "Unknown"
    if vmi is None:
        return Condition.of(
            VM_READY, False, "VMNotRunning", f"VirtualMachine {name} is {printable}"
        )
    status = vmi.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase != "Running":
        message = f"VirtualMachineInstance {name} is {phase}"
        if status.get("reason"):
            message += f" ({status['reason']})"
        return Condition.of(VM_READY, False, f"VMI{phase}", message)
    ready = find(status.get("conditions"), "Ready") or {}
    if ready.get("status") != TRUE:
        detail = ready.get("message") or ready.get("reason") or "not ready"
        return Condition.of(
            VM_READY, False, "VMINotReady", f"VirtualMachineInstance {name}: {detail}"
        )
    node = status.get("nodeName") or "?"
    return Condition.of(
        VM_READY, True, "VMIRunning", f"VirtualMachineInstance {name} runs on {node}"
    )


def stored_condition(status: dict[str, Any] | None, type_: str) -> Condition:
    """A condition as last written, to carry it into a recomputation that did not observe it."""
    found = find((status or {}).get("conditions"), type_)
    if found is None:
        return Condition(type_, UNKNOWN, "NotObserved", "")
    return Condition(
        type_, found.get("status", UNKNOWN), found.get("reason", ""), found.get("message", "")
    )


def heartbeat_deadline(agent_status: dict[str, Any] | None, timeout: float) -> datetime | None:
    """When the agent counts as lost unless it reports again; None before its first report."""
    last = parse_time((agent_status or {}).get("lastHeartbeatTime"))
    return last + timedelta(seconds=timeout) if last else None


def agent_lost(conditions: list[dict[str, Any]] | None) -> bool:
    """Its VM runs but its agent stopped reporting: such a guest cannot be told to save.
    (An agent not started yet, or one whose VM is stopped, is not lost.)"""
    connected = find(conditions, AGENT_CONNECTED) or {}
    return (
        is_true(conditions, VM_READY)
        and connected.get("status") == FALSE
        and connected.get("reason") == "HeartbeatTimeout"
    )


def agent_connected(
    agent_status: dict[str, Any] | None, timeout: float, now: datetime
) -> Condition:
    """AgentConnected: a signed heartbeat within heartbeatTimeout."""
    deadline = heartbeat_deadline(agent_status, timeout)
    if deadline is None:
        return Condition.of(
            AGENT_CONNECTED, False, "NoHeartbeat", "the guest agent has not reported yet"
        )
    last = (agent_status or {}).get("lastHeartbeatTime")
    if now > deadline:
        return Condition.of(
            AGENT_CONNECTED,
            False,
            "HeartbeatTimeout",
            f"no heartbeat since {last} (timeout {timeout:g}s)",
        )
    return Condition.of(AGENT_CONNECTED, True, "HeartbeatReceived", f"last heartbeat {last}")


def ready(vm: Condition, agent: Condition) -> Condition:
    """Ready: the VM runs and its agent is connected; otherwise the first reason why not."""
    for part in (vm, agent):
        if part.status != TRUE:
            reason = part.reason if part.status == FALSE else f"{part.type}Unknown"
            return Condition(READY, FALSE, reason, part.message)
    return Condition.of(READY, True, "Ready", "VM running and guest agent connected")


def conditions(
    partition: dict[str, Any],
    vm: Condition,
    agent_status: dict[str, Any] | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The merged condition list for VMReady, AgentConnected and Ready."""
    meta, spec = partition["metadata"], partition.get("spec") or {}
    agent = agent_connected(agent_status, agent_spec(meta["name"], spec).heartbeat_timeout, now)
    stored = (partition.get("status") or {}).get("conditions")
    return merge(stored, [vm, agent, ready(vm, agent)], meta.get("generation", 0), now)


def observed_status(
    partition: dict[str, Any],
    vm: dict[str, Any] | None,
    vmi: dict[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The status the operator owns, from the VM and VMI it observed (agent report kept)."""
    meta, spec = partition["metadata"], partition.get("spec") or {}
    agent = agent_spec(meta["name"], spec)
    name = vm_name(meta["name"], spec)
    found = addresses(vmi)
    stored_agent = (partition.get("status") or {}).get("agent") or {}
    agent_status = {
        **stored_agent,
        "keySecretName": agent.key_secret_name,
        "endpoint": endpoint(found, agent.port),
    }
    node = ((vmi or {}).get("status") or {}).get("nodeName")
    return {
        "observedGeneration": meta.get("generation", 0),
        "vmName": name,
        "nodeName": node,
        "addresses": found,
        "agent": agent_status,
        "conditions": conditions(partition, vm_ready(name, vm, vmi), agent_status, now),
    }


def status_with_report(
    partition: dict[str, Any], report_status: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The status after a verified agent report: agent fields and conditions, VM part kept."""
    status = partition.get("status") or {}
    agent_status = {**(status.get("agent") or {}), **report_status}
    vm = stored_condition(status, VM_READY)
    return {"agent": agent_status, "conditions": conditions(partition, vm, agent_status, now)}


def status_with_expiry(partition: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The conditions re-evaluated at ``now`` (the heartbeat may have expired)."""
    status = partition.get("status") or {}
    vm = stored_condition(status, VM_READY)
    return {"conditions": conditions(partition, vm, status.get("agent"), now)}


def status_patch(stored: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from stored to desired (None removes a field); {} when equal."""
    stored = stored or {}
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = stored.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            nested = status_patch(old, value)
            if nested:
                patch[key] = nested
        elif value != old and not (value is None and key not in stored):
            patch[key] = value
    return patch


def transition(
    before: dict[str, Any] | None, after: dict[str, Any] | None, type_: str
) -> str | None:
    """The new status of a condition when it changed between two status snapshots, else None."""
    old = find((before or {}).get("conditions"), type_) or {}
    new = find((after or {}).get("conditions"), type_) or {}
    if new.get("status") and new.get("status") != old.get("status"):
        return new["status"]
    return None
