"""Adopting an existing VM: the adopted-by annotation (no owner reference, so the garbage
collector never takes it), the key disk, a real agent; deleting the Partition hands the VM back
untouched instead of deleting it. A VM belongs to at most one Partition."""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client
from partition_helpers import GROUP, VERSION, Partitions, vm_spec, wait_for

from lparkube_devenv.controlplane import REPO_ROOT, free_port
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


ADOPTED_BY = "lparkube.io/adopted-by"
EXAMPLES = REPO_ROOT / "examples"


def adopter(parts: Partitions, vm_name: str) -> str | None:
    return ((parts.vm(vm_name) or {}).get("metadata", {}).get("annotations") or {}).get(ADOPTED_BY)


def test_adopt_then_release(parts: Partitions, guest_agent) -> None:
    ip, port = "127.0.0.31", free_port()
    create_vm(parts, "db-1", ip)
    vmi_uid = wait_for(lambda: (parts.vmi("db-1") or {}).get("metadata", {}).get("uid"), "VMI")
    parts.create(adopting("db", "db-1", port))

    wait_for(lambda: adopter(parts, "db-1") == "db", "the VM annotated as the Partition's")
    vm = parts.vm("db-1")
    assert not vm["metadata"].get("ownerReferences"), "no owner reference: GC never takes it"
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
    assert ADOPTED_BY not in (vm["metadata"].get("annotations") or {})
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
    assert adopter(parts, "late-vm") == "late"


def conflict(parts: Partitions, name: str) -> dict:
    parts.wait_condition(name, "VMReady", "False")
    return wait_for(
        lambda: (c := parts.condition(name, "VMReady")).get("reason") == "VMNameConflict" and c,
        f"{name} VMNameConflict",
    )


def test_a_second_partition_adopting_the_same_vm_touches_nothing(
    parts: Partitions, operator
) -> None:
    log_start = operator.log_size()
    create_vm(parts, "db-1", "127.0.0.33")
    parts.create(adopting("first", "db-1", free_port()))
    wait_for(lambda: adopter(parts, "db-1") == "first", "adopted by the first")
    parts.wait_condition("first", "VMReady", "True")
    generation = parts.vm("db-1")["metadata"]["generation"]

    parts.create(adopting("second", "db-1", free_port()))
    refused = conflict(parts, "second")
    assert "belongs to Partition first, which adopted it" in refused["message"]
    status = parts.status("second")
    assert status.get("nodeName") is None and not status.get("addresses")
    assert parts.secret("second-agent-key") is None, "a refused Partition makes nothing"
    vm = parts.vm("db-1")
    assert vm["metadata"]["generation"] == generation
    assert adopter(parts, "db-1") == "first"
    assert [r for r, _ in parts.events("first")].count("VMAdopted") == 1
    assert [r for r, _ in parts.events("second")].count("VMNameConflict") == 1
    assert "Logging" not in parts.reasons("second"), "no second event of a handler failure"

    # The owner goes: it hands the VM back, and the Partition that waited takes it over.
    parts.delete("first")
    wait_for(lambda: adopter(parts, "db-1") == "second", "adopted by the second")
    parts.wait_condition("second", "VMReady", "True")
    key_volume = next(
        v for v in parts.vm("db-1")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "lparkube-agent"
    )  # fmt: skip
    assert key_volume["secret"]["secretName"] == "second-agent-key"
    assert "Traceback" not in operator.log_since(log_start)


def test_partitions_racing_for_one_vm_end_with_one_owner(parts: Partitions) -> None:
    names = [f"racer-{i}" for i in range(3)]
    for name in names:
        parts.create(adopting(name, "db-1", free_port()))
    create_vm(parts, "db-1", "127.0.0.34")  # appears for all three at once
    owner = wait_for(lambda: adopter(parts, "db-1"), "an owner")
    parts.wait_condition(owner, "VMReady", "True")
    for loser in set(names) - {owner}:
        assert f"belongs to Partition {owner}" in conflict(parts, loser)["message"]
    generation = parts.vm("db-1")["metadata"]["generation"]
    assert generation <= 2, "the key disk was added once, not fought over"
    assert adopter(parts, "db-1") == owner


def test_adopting_a_template_partitions_vm_is_refused_and_deleting_it_keeps_the_key_disk(
    parts: Partitions, operator
) -> None:
    log_start = operator.log_size()
    parts.create(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Partition",
            "metadata": {"name": "web-1"},
            "spec": {"vmTemplate": {"spec": vm_spec("127.0.0.35")}},
        }
    )
    parts.wait_condition("web-1", "VMReady", "True")
    before = parts.vm("web-1")

    parts.create(adopting("thief", "web-1", free_port()))
    assert "which created it" in conflict(parts, "thief")["message"]
    parts.delete("thief")
    wait_for(lambda: parts.get("thief") is None, "the refused Partition gone")

    vm = parts.vm("web-1")
    assert volume_names(vm) == volume_names(before) == ["root", "lparkube-agent"]
    assert vm["metadata"]["generation"] == before["metadata"]["generation"]
    assert ADOPTED_BY not in (vm["metadata"].get("annotations") or {})
    assert parts.condition("web-1", "VMReady")["status"] == "True"
    assert "Traceback" not in operator.log_since(log_start)


def test_an_adopted_vm_outlives_a_partition_removed_without_the_operator(
    parts: Partitions, kubectl
) -> None:
    create_vm(parts, "db-1", "127.0.0.36")
    parts.create(adopting("gone", "db-1", free_port()))
    wait_for(lambda: adopter(parts, "db-1") == "gone", "adopted")
    # What the README says to do when the operator is gone: clear the finalizer, delete.
    kubectl("-n", parts.namespace, "patch", "partition", "gone", "--type=merge",
            "-p", '{"metadata":{"finalizers":null}}')  # fmt: skip
    kubectl("-n", parts.namespace, "delete", "partition", "gone", "--wait=true")
    # The VM names the vanished Partition but has no owner for the garbage collector to miss;
    # a new Partition may take it, as the claim it finds is stale.
    assert not parts.vm("db-1")["metadata"].get("ownerReferences")
    parts.create(adopting("next", "db-1", free_port()))
    wait_for(lambda: adopter(parts, "db-1") == "next", "adopted again")
    parts.wait_condition("next", "VMReady", "True")
    assert parts.vm("db-1") is not None


def without_key_disk(manifest: str) -> str:
    """The example's VM with the lparkube-agent volume and disk taken out."""
    vm, partition = yaml.safe_load_all(manifest)
    pod = vm["spec"]["template"]["spec"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "lparkube-agent"]
    disks = pod["domain"]["devices"]["disks"]
    pod["domain"]["devices"]["disks"] = [d for d in disks if d["name"] != "lparkube-agent"]
    return yaml.safe_dump_all([vm, partition])


def test_applying_the_adopted_vms_manifest_again_changes_nothing(
    parts: Partitions, kubectl
) -> None:
    manifest = (EXAMPLES / "partition-adopt-vm.yaml").read_text()

    def apply(text: str, *flags: str) -> None:
        kubectl("apply", *flags, "-n", parts.namespace, "-f", "-", input=text)

    apply(manifest)
    wait_for(lambda: adopter(parts, "db-1") == "db-1", "the example VM adopted")
    vm = parts.vm("db-1")
    assert vm["metadata"]["generation"] == 1, "the manifest's key disk was left as it was"
    for flags in ((), (), ("--server-side",), ("--server-side",)):
        apply(manifest, *flags)
        assert parts.vm("db-1")["metadata"]["generation"] == 1, flags
    assert adopter(parts, "db-1") == "db-1", "server-side apply leaves lparkube's annotation"
    assert [r for r, _ in parts.events("db-1")].count("VMAdopted") == 1

    # A manifest without the key disk: each apply removes it; lparkube puts it back and says
    # what to add to the manifest.
    apply(without_key_disk(manifest))
    wait_for(lambda: "KeyDiskRestored" in parts.reasons("db-1"), "the KeyDiskRestored warning")
    wait_for(lambda: "lparkube-agent" in volume_names(parts.vm("db-1")), "the key disk back")
    message = next(m for r, m in parts.events("db-1") if r == "KeyDiskRestored")
    assert "Put them into the VM's manifest" in message
