"""A partition's guest restarted on another node, with the real operator, the stand-in's QEMU
guests and the real agent: the ground a RemoteRestart stands on.

* Hibernated on node A (a HibernationImage), the VM pinned to node B and the image resumed: the
  new QEMU process runs on B, its kernel restores the image from the paging LU, which detached
  from A before it attached on B: the same boot id, the counter's process going on.
* Running from its disk on node A when A loses power: the disk stays attached to A, so nothing
  on B can take it (Multi-Attach) until A is fenced with the out-of-service taint; then the VM,
  pinned to B, boots on B from the same disk and finds what it wrote there on A.

The attach log never shows a single-node volume attached on two nodes.
"""

from __future__ import annotations

import pytest
from hibernation_helpers import Images, condition
from kubernetes import client
from partition_helpers import Partitions, wait_for
from test_hibernation_real_guest import (
    HIBERNATE_TIMEOUT,
    console_of,
    counter,
    sleeper_partition,
    start_counter,
)
from test_partition_real_guest import BOOT_TIMEOUT, data_claim, real_guest_partition, with_data_disk

from lparkube_devenv.kubevirt import VM, StandIn
from lparkube_devenv.kubevirt.nodes import NODES_PATH
from lparkube_devenv.kubevirt.storage import two_writers
from lparkube_devenv.kubevirt.storage.attachlog import read_entries

pytestmark = pytest.mark.realguest

OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown"}
MARKER = "written on the first node"
DATA_DISK = "/dev/disk/by-id/virtio-data"
VMIS = "/apis/kubevirt.io/v1/namespaces/{}/virtualmachineinstances"


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


@pytest.fixture
def lost_nodes(kubevirt: StandIn, healthy_nodes):
    """Nodes a test powered off: powered on again (and made healthy) afterwards."""
    lost: list[str] = []
    yield lost
    for name in lost:
        kubevirt.power_on_node(name)
        node = kubevirt.kube.get(f"{NODES_PATH}/{name}")
        kept = [t for t in node["spec"].get("taints") or [] if t["key"] != OUT_OF_SERVICE["key"]]
        kubevirt.kube.merge_patch(f"{NODES_PATH}/{name}", {"spec": {"taints": kept or None}})


def pin(parts: Partitions, name: str, node: str) -> None:
    """What a RemoteRestart does to place the VM: kubernetes.io/hostname merged into the VM
    template's nodeSelector."""
    selector = {"kubernetes.io/hostname": node}
    patch = {"spec": {"template": {"spec": {"nodeSelector": selector}}}}
    parts.kubevirt.kube.merge_patch(VM.path(parts.namespace, name), patch)


def launcher_pods(parts: Partitions, name: str, uid: str | None = None) -> list[dict]:
    """The launcher pods of a VMI (by default the current one of that name)."""
    uid = uid or (parts.vmi(name) or {}).get("metadata", {}).get("uid")
    pods = parts.kubevirt.kube.items(f"/api/v1/namespaces/{parts.namespace}/pods")
    return [
        p
        for p in pods
        if uid and p["metadata"].get("labels", {}).get("kubevirt.io/created-by") == uid
    ]


def launcher_nodes(parts: Partitions, name: str) -> set[str]:
    return {p["spec"].get("nodeName") for p in launcher_pods(parts, name)}


def volume_of(parts: Partitions, claim: str) -> str:
    path = f"/api/v1/namespaces/{parts.namespace}/persistentvolumeclaims/{claim}"
    return parts.kubevirt.kube.get(path)["spec"]["volumeName"]


def attach_history(kubevirt: StandIn, volume: str) -> list[tuple[str, str]]:
    """(event, node) of every attach and detach of one volume, in order."""
    return [
        (e["event"], e["node"])
        for e in read_entries(kubevirt.storage.attach_log_path)
        if e["pv"] == volume and e["event"] in ("attach", "detach")
    ]


def other_node(kubevirt: StandIn, node: str) -> str:
    return next(n for n in kubevirt.node_names if n != node)


def test_a_guest_hibernated_on_one_node_resumes_on_another(
    operator,
    parts: Partitions,
    kubevirt: StandIn,
    api_client: client.ApiClient,
    vios_pool: str,
) -> None:
    parts.create(sleeper_partition("roamer", vios_pool))
    status = parts.wait_condition("roamer", "Ready", "True", timeout=BOOT_TIMEOUT)
    wait_for(
        lambda: (parts.status("roamer").get("agent") or {}).get("paging", {}).get("active"),
        "the paging LU is the guest's swap",
        120,
    )
    boot_id = parts.status("roamer")["agent"]["bootId"]
    source = parts.vmi("roamer")["status"]["nodeName"]
    target = other_node(kubevirt, source)
    paging = volume_of(parts, status["paging"]["claimName"])
    with console_of(kubevirt, parts.namespace, "roamer") as tty:
        start_counter(tty)
        wait_for(
            lambda: tty.run("cat /tmp/counter.count 2>/dev/null").strip().isdigit(),
            "the counter counting",
            30,
        )
        pid, before = counter(tty)

    images = Images(api_client, parts.namespace)
    images.create("roamer-1", "roamer", saveFirst=False)
    image = images.wait("roamer-1", "Captured", HIBERNATE_TIMEOUT)
    assert condition(image, "Captured")["status"] == "True", image["status"]
    wait_for(lambda: parts.vmi("roamer") is None, "the VMI gone (the VM halted)", 120)

    pin(parts, "roamer", target)
    images.resume("roamer-1")
    image = images.wait("roamer-1", "Resumed", BOOT_TIMEOUT)
    assert condition(image, "Resumed")["status"] == "True", condition(image, "Resumed")
    assert parts.vmi("roamer")["status"]["nodeName"] == target
    assert launcher_nodes(parts, "roamer") == {target}
    assert parts.status("roamer")["agent"]["bootId"] == boot_id
    with console_of(kubevirt, parts.namespace, "roamer") as tty:
        assert tty.run("cat /proc/sys/kernel/random/boot_id").strip() == boot_id
        same_pid, after = counter(tty)
        assert same_pid == pid and after >= before
    history = attach_history(kubevirt, paging)
    assert history[-3:] == [("attach", source), ("detach", source), ("attach", target)], history
    assert two_writers(kubevirt.storage.attach_log_path) == []
    parts.delete("roamer")
    wait_for(lambda: kubevirt.guest(parts.namespace, "roamer") is None, "guest gone", 120)


def test_a_guest_whose_node_lost_power_boots_from_its_disk_elsewhere_once_fenced(
    operator,
    parts: Partitions,
    api_client: client.ApiClient,
    lost_nodes: list[str],
    vios_pool: str,
) -> None:
    kubevirt = parts.kubevirt
    data_claim(api_client, parts.namespace, "stranded-disk", "64Mi")
    parts.create(with_data_disk(sleeper_partition("stranded", vios_pool), "stranded-disk"))
    parts.wait_condition("stranded", "Ready", "True", timeout=BOOT_TIMEOUT)
    first = parts.vmi("stranded")
    source = first["status"]["nodeName"]
    target = other_node(kubevirt, source)
    disk = volume_of(parts, "stranded-disk")
    with console_of(kubevirt, parts.namespace, "stranded") as tty:
        tty.run(f"printf '{MARKER}' | dd of={DATA_DISK} conv=fsync 2>/dev/null; echo written")

    lost_nodes.append(source)
    assert kubevirt.power_off_node(source) == 1
    pin(parts, "stranded", target)
    # A VMI of its own asks B for the same disk: refused while A may still write it.
    intruder = intruder_vmi("intruder", target, "stranded-disk")
    intruder_uid = kubevirt.kube.create(VMIS.format(parts.namespace), intruder)["metadata"]["uid"]
    wait_for(lambda: multi_attach(parts, "intruder"), "the intruder waiting on Multi-Attach", 60)
    assert parts.vmi("stranded")["metadata"]["uid"] == first["metadata"]["uid"]
    assert parts.vmi("stranded")["status"]["phase"] == "Running"  # KubeVirt waits for a fence
    kubevirt.kube.delete(f"{VMIS.format(parts.namespace)}/intruder")
    wait_for(
        lambda: not launcher_pods(parts, "intruder", intruder_uid), "the intruder's pod gone", 60
    )
    assert ("attach", target) not in attach_history(kubevirt, disk)

    node = kubevirt.kube.get(f"{NODES_PATH}/{source}")
    taints = [*(node["spec"].get("taints") or []), {**OUT_OF_SERVICE, "effect": "NoExecute"}]
    kubevirt.kube.merge_patch(f"{NODES_PATH}/{source}", {"spec": {"taints": taints}})
    wait_for(
        lambda: (
            (parts.vmi("stranded") or {}).get("metadata", {}).get("uid") != first["metadata"]["uid"]
            and (parts.vmi("stranded") or {}).get("status", {}).get("phase") == "Running"
        ),
        "a new VMI running",
        BOOT_TIMEOUT,
    )
    assert parts.vmi("stranded")["status"]["nodeName"] == target
    assert launcher_nodes(parts, "stranded") == {target}
    with console_of(kubevirt, parts.namespace, "stranded") as tty:
        read = tty.run(f"dd if={DATA_DISK} bs={len(MARKER)} count=1 2>/dev/null; echo")
        assert MARKER in read, read
    history = attach_history(kubevirt, disk)
    assert history[-3:] == [("attach", source), ("detach", source), ("attach", target)], history
    assert two_writers(kubevirt.storage.attach_log_path) == []
    parts.delete("stranded")
    wait_for(lambda: kubevirt.guest(parts.namespace, "stranded") is None, "guest gone", 120)


def intruder_vmi(name: str, node: str, claim: str) -> dict:
    spec = real_guest_partition(name, "SecretVolume")["spec"]["vmTemplate"]["spec"]["template"]
    spec["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    spec["spec"]["domain"]["devices"]["disks"] = [{"name": "data", "disk": {"bus": "virtio"}}]
    spec["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    metadata = {"name": name, **spec["metadata"]}
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": metadata,
        "spec": spec["spec"],
    }


def multi_attach(parts: Partitions, name: str) -> bool:
    vmi = parts.vmi(name) or {}
    return any(
        c.get("type") == "Synchronized" and c.get("reason") == "MultiAttach"
        for c in (vmi.get("status") or {}).get("conditions") or []
    )
