"""Adopting an existing VM: a plain owner reference, the key disk, a real agent; deleting the
Partition hands the VM back untouched instead of deleting it."""

from __future__ import annotations

import pytest
from kubernetes import client
from partition_helpers import GROUP, VERSION, Partitions, vm_spec, wait_for

from lparkube_devenv.controlplane import free_port
from lparkube_devenv.kubevirt import VM, StandIn

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


def create_vm(parts: Partitions, name: str, ip: str) -> dict:
    body = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"tier": "db"}},
        "spec": vm_spec(ip),
    }
    return parts.kubevirt.kube.create(VM.path(parts.namespace), body)


def adopting(name: str, vm_name: str, port: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Partition",
        "metadata": {"name": name},
        "spec": {"vmName": vm_name, "agent": {"port": port, "heartbeatTimeout": "3s"}},
    }


def volume_names(vm: dict) -> list[str]:
    return [v["name"] for v in vm["spec"]["template"]["spec"]["volumes"]]


def test_adopt_then_release(parts: Partitions, guest_agent) -> None:
    ip, port = "127.0.0.31", free_port()
    create_vm(parts, "db-1", ip)
    vmi_uid = wait_for(lambda: (parts.vmi("db-1") or {}).get("metadata", {}).get("uid"), "VMI")
    created = parts.create(adopting("db", "db-1", port))
    uid = created["metadata"]["uid"]

    def adopted() -> dict | None:
        vm = parts.vm("db-1") or {}
        refs = vm.get("metadata", {}).get("ownerReferences") or []
        return vm if any(r["uid"] == uid for r in refs) else None

    vm = wait_for(adopted, "the Partition among the VM's owners")
    (ref,) = vm["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "lparkube.io/v1alpha1",
        "kind": "Partition",
        "name": "db",
        "uid": uid,
    }
    assert volume_names(vm) == ["root", "lparkube-agent"]

    status = parts.wait_condition("db", "VMReady", "True")
    assert status["vmName"] == "db-1"
    assert status["agent"]["endpoint"] == f"{ip}:{port}"
    guest_agent(parts.namespace, "db", ip=ip)
    parts.wait_condition("db", "AgentConnected", "True", timeout=15)
    wait_for(lambda: "VMAdopted" in parts.reasons("db"), "the VMAdopted event")

    parts.delete("db")
    wait_for(lambda: parts.get("db") is None, "the Partition gone")
    vm = parts.vm("db-1")
    assert vm is not None, "an adopted VM is never deleted"
    assert vm["metadata"].get("ownerReferences") is None
    assert volume_names(vm) == ["root"]
    assert parts.vmi("db-1")["metadata"]["uid"] == vmi_uid, "the running guest was not disturbed"
    wait_for(lambda: parts.secret("db-agent-key") is None, "the key Secret gone")


def test_a_vm_that_appears_later_is_adopted(parts: Partitions) -> None:
    parts.create(adopting("late", "late-vm", free_port()))
    missing = parts.wait_condition("late", "VMReady", "False")
    assert parts.condition("late", "VMReady")["reason"] == "VMNotFound"
    assert missing["vmName"] == "late-vm"

    create_vm(parts, "late-vm", "127.0.0.32")
    parts.wait_condition("late", "VMReady", "True")
    owners = parts.vm("late-vm")["metadata"]["ownerReferences"]
    assert [o["name"] for o in owners] == ["late"]
