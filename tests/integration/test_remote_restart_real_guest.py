"""RemoteRestarts of real guests (issue 13's acceptance at the real-guest tier): the real
operator, the stand-in's QEMU guests and the real agent, on nodes of the test's own.

* A guest hibernated on node A (a HibernationImage) is resumed on node B by a RemoteRestart
  from that image: the new QEMU process runs on B and its kernel restores the image from the
  paging LU, which detached from A before it attached on B: the same boot id, the counter's
  process going on in memory, every step Done, RestartSucceeded/0, no lock left.
* A guest running from its disk on node A when A loses power: a RemoteRestart from disk waits
  (and says so) while A is not fenced; the disk stays attached to A and the VMI stays as KubeVirt
  keeps it. Once A has the out-of-service taint the guest boots on B from the same disk and finds
  what it wrote there on A.

The attach log never shows a single-node volume attached on two nodes.
"""

from __future__ import annotations

import pytest
from hibernation_helpers import Images
from hibernation_helpers import condition as image_condition
from kubernetes import client
from partition_helpers import Partitions, wait_for
from remote_restart_helpers import (
    NodePool,
    assert_terminated,
    condition,
    create_restart,
    events_of,
    leases_of,
    wait_terminated,
    wait_waiting,
)
from test_hibernation_real_guest import (
    HIBERNATE_TIMEOUT,
    console_of,
    counter,
    sleeper_partition,
    start_counter,
)
from test_partition_real_guest import BOOT_TIMEOUT, data_claim, with_data_disk

from lparkube.api.v1alpha1 import remoterestart as api
from lparkube_devenv.kubevirt import StandIn
from lparkube_devenv.kubevirt.storage import two_writers
from lparkube_devenv.kubevirt.storage.attachlog import read_entries

pytestmark = pytest.mark.realguest

MARKER = "written on the first node"
DATA_DISK = "/dev/disk/by-id/virtio-data"


def on_pool(partition: dict, nodes: NodePool) -> dict:
    """The partition's VM runs only on the test's own nodes."""
    spec = partition["spec"]["vmTemplate"]["spec"]["template"]["spec"]
    spec["nodeSelector"] = dict(nodes.selector)
    return partition


def launcher_nodes(parts: Partitions, name: str) -> set[str]:
    """The nodes of the launcher pods of the VM's current VMI."""
    uid = (parts.vmi(name) or {}).get("metadata", {}).get("uid")
    pods = parts.kubevirt.kube.items(f"/api/v1/namespaces/{parts.namespace}/pods")
    return {
        p["spec"].get("nodeName")
        for p in pods
        if uid and p["metadata"].get("labels", {}).get("kubevirt.io/created-by") == uid
    }


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


def assert_all_done(restart: dict, unused: str) -> None:
    """RestartSucceeded/0, every step Done but the one this kind of restart skips, nothing
    left locked."""
    assert_terminated(restart, api.RESTART_SUCCEEDED)
    statuses = {s["name"]: s["status"] for s in restart["status"]["steps"]}
    assert statuses == {**dict.fromkeys(api.STEPS, api.DONE), unused: api.SKIPPED}, statuses
    assert restart["status"].get("locks") in (None, [])
    assert {a["state"] for a in restart["status"]["adapters"]} == {api.ADAPTER_RELEASED}


def assert_released(
    parts: Partitions, api_client: client.ApiClient, restart: dict, name: str
) -> dict:
    """No Lease of the operation left; the VM no longer held (its own nodeSelector back)."""
    assert leases_of(api_client, restart["metadata"]["uid"]) == []
    vm = parts.vm(name)
    assert api.HOLD_ANNOTATION not in (vm["metadata"].get("annotations") or {})
    assert api.OPERATION_TOKEN_LABEL not in (vm["metadata"].get("labels") or {})
    return vm


def test_a_guest_hibernated_on_one_node_is_resumed_on_another_by_a_remote_restart(
    operator,
    parts: Partitions,
    api_client: client.ApiClient,
    vios_pool: str,
    nodes: NodePool,
) -> None:
    kubevirt = parts.kubevirt
    source = nodes.add()
    parts.create(on_pool(sleeper_partition("roamer", vios_pool), nodes))
    status = parts.wait_condition("roamer", "Ready", "True", timeout=BOOT_TIMEOUT)
    wait_for(
        lambda: (parts.status("roamer").get("agent") or {}).get("paging", {}).get("active"),
        "the paging LU is the guest's swap",
        120,
    )
    assert parts.vmi("roamer")["status"]["nodeName"] == source
    boot_id = parts.status("roamer")["agent"]["bootId"]
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
    assert image_condition(image, "Captured")["status"] == "True", image["status"]
    wait_for(lambda: parts.vmi("roamer") is None, "the VMI gone (the VM halted)", 120)
    target = nodes.add()

    create_restart(
        api_client,
        parts.namespace,
        "roamer-move",
        "roamer",
        hibernationImageName="roamer-1",
        targetNodeName=target,
    )
    done = wait_terminated(api_client, parts.namespace, "roamer-move", BOOT_TIMEOUT)
    assert_all_done(done, api.BOOTING)
    assert (done["status"]["sourceNodeName"], done["status"]["targetNodeName"]) == (source, target)
    vm = assert_released(parts, api_client, done, "roamer")
    assert vm["spec"]["template"]["spec"]["nodeSelector"] == nodes.selector
    assert parts.vmi("roamer")["status"]["nodeName"] == target
    assert launcher_nodes(parts, "roamer") == {target}
    resumed = image_condition(images.get("roamer-1"), "Resumed")
    assert (resumed["status"], resumed["reason"]) == ("True", "ImageRestored")
    assert parts.status("roamer")["agent"]["bootId"] == boot_id
    with console_of(kubevirt, parts.namespace, "roamer") as tty:
        assert tty.run("cat /proc/sys/kernel/random/boot_id").strip() == boot_id
        same_pid, after = counter(tty)
        assert same_pid == pid and after >= before  # the same process, its count in memory
    history = attach_history(kubevirt, paging)
    assert history[-3:] == [("attach", source), ("detach", source), ("attach", target)], history
    assert two_writers(kubevirt.storage.attach_log_path) == []
    parts.delete("roamer")
    wait_for(lambda: kubevirt.guest(parts.namespace, "roamer") is None, "guest gone", 120)


def test_a_guest_whose_node_lost_power_is_restarted_from_its_disk_once_the_node_is_fenced(
    operator,
    parts: Partitions,
    api_client: client.ApiClient,
    vios_pool: str,
    nodes: NodePool,
) -> None:
    kubevirt = parts.kubevirt
    source = nodes.add()
    data_claim(api_client, parts.namespace, "stranded-disk", "64Mi")
    partition = with_data_disk(sleeper_partition("stranded", vios_pool), "stranded-disk")
    parts.create(on_pool(partition, nodes))
    parts.wait_condition("stranded", "Ready", "True", timeout=BOOT_TIMEOUT)
    first = parts.vmi("stranded")
    assert first["status"]["nodeName"] == source
    disk = volume_of(parts, "stranded-disk")
    with console_of(kubevirt, parts.namespace, "stranded") as tty:
        tty.run(f"printf '{MARKER}' | dd of={DATA_DISK} conv=fsync 2>/dev/null; echo written")
    target = nodes.add()
    nodes.power_off(source)

    create_restart(api_client, parts.namespace, "stranded-move", "stranded", targetNodeName=target)
    waiting = wait_waiting(
        api_client, parts.namespace, "stranded-move", api.WAITING_FOR_SOURCE_STOP
    )
    locked = condition(waiting, api.LOCKED)
    assert locked["status"] == "False"
    assert source in locked["message"] and api.FENCE_TAINT_TEXT in locked["message"], locked
    assert not waiting["status"].get("terminationState")
    warning = ("Warning", api.WAITING_FOR_SOURCE_STOP_EVENT)
    wait_for(
        lambda: warning in events_of(api_client, parts.namespace, "stranded-move"),
        "the WaitingForSourceStop event",
    )
    # Nothing moved: the VMI is as KubeVirt keeps it on a lost node, the disk stays on A.
    vmi = parts.vmi("stranded")
    assert (vmi["metadata"]["uid"], vmi["status"]["phase"]) == (first["metadata"]["uid"], "Running")
    assert ("attach", target) not in attach_history(kubevirt, disk)

    nodes.fence(source)
    done = wait_terminated(api_client, parts.namespace, "stranded-move", BOOT_TIMEOUT)
    assert_all_done(done, api.RESTORING_MEMORY)
    assert (done["status"]["sourceNodeName"], done["status"]["targetNodeName"]) == (source, target)
    vm = assert_released(parts, api_client, done, "stranded")
    assert vm["spec"]["template"]["spec"]["nodeSelector"] == nodes.selector
    assert vm["spec"]["runStrategy"] == "Always"
    vmi = parts.vmi("stranded")
    assert vmi["metadata"]["uid"] != first["metadata"]["uid"]
    assert (vmi["status"]["phase"], vmi["status"]["nodeName"]) == ("Running", target)
    assert launcher_nodes(parts, "stranded") == {target}
    with console_of(kubevirt, parts.namespace, "stranded") as tty:
        read = tty.run(f"dd if={DATA_DISK} bs={len(MARKER)} count=1 2>/dev/null; echo")
        assert MARKER in read, read  # booted from the same disk
    history = attach_history(kubevirt, disk)
    assert history[-3:] == [("attach", source), ("detach", source), ("attach", target)], history
    assert two_writers(kubevirt.storage.attach_log_path) == []
    parts.delete("stranded")
    wait_for(lambda: kubevirt.guest(parts.namespace, "stranded") is None, "guest gone", 120)
