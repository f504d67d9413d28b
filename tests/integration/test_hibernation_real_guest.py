"""HibernationImage end to end: the real operator, the stand-in's QEMU guests and the real agent.

A Partition with a paging LU from a VIOSCluster boots the guest image; the agent makes the LU
its swap. In the guest a counter keeps its count only in memory and nano holds an unsaved
buffer. Creating a HibernationImage saves first (the SaveEvent), captures the adapters, and the
agent's signed hibernate instruction makes the guest's kernel write its memory to the LU and
power off: `Captured`, the QEMU process gone, the VM halted. Asking to resume starts the VM
again: a new QEMU process whose kernel restores the image, the same boot id, the counter's
process going on, nano's buffer still unsaved until a SaveEvent saves it.
"""

from __future__ import annotations

import time

import pytest
from hibernation_helpers import Images, condition
from kubernetes import client
from partition_helpers import GROUP, VERSION, Partitions, wait_for
from saving_helpers import results, wait_complete
from test_partition_real_guest import BOOT_TIMEOUT, real_guest_partition

from lparkube_devenv.kubevirt import StandIn
from lparkube_devenv.qemu.console import SerialConsole

pytestmark = pytest.mark.realguest

HIBERNATE_TIMEOUT = 300.0
TYPED = "typed before hibernating"


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


def sleeper_partition(name: str, pool: str, paging_size: str | None = None) -> dict:
    manifest = real_guest_partition(name, "SecretVolume")
    manifest["spec"]["viosClusterName"] = pool
    manifest["spec"]["paging"] = {"size": paging_size} if paging_size else {}
    return manifest


def console_of(kubevirt: StandIn, namespace: str, name: str) -> SerialConsole:
    guest = kubevirt.guest(namespace, name)
    assert guest is not None
    return SerialConsole(guest.launcher.files.serial_socket, guest.launcher.files.serial_log)


def start_counter(tty: SerialConsole) -> None:
    """A counter whose count is only in its shell's memory (it writes it out every second)."""
    tty.run(
        "(sh -c 'echo $$ > /tmp/counter.pid; i=0; "
        "while sleep 1; do i=$((i+1)); echo $i > /tmp/counter.count; done' &)"
    )


def start_counter_and_nano(tty: SerialConsole) -> None:
    """The counter, and nano under `lparkube-agent run` with an unsaved line."""
    start_counter(tty)
    tty.run("printf 'first line\\n' > /root/notes.txt && mkfifo /tmp/nano.keys")
    tty.run("(sleep 100000 > /tmp/nano.keys &)")
    tty.run(
        "(TERM=xterm HOME=/root lparkube-agent run -- nano /root/notes.txt "
        "< /tmp/nano.keys > /tmp/nano.screen 2>&1 &)"
    )
    wait_for(lambda: "nano" in tty.run("lparkube-agent list"), "nano registered", 60)
    tty.run(f"printf '{TYPED} ' > /tmp/nano.keys")
    wait_for(lambda: TYPED in tty.run("cat /tmp/nano.screen"), "typed into nano", 60)


def counter(tty: SerialConsole) -> tuple[str, int]:
    pid = tty.run("cat /tmp/counter.pid").strip()
    count = tty.run("cat /tmp/counter.count").strip()
    return pid, int(count or 0)


def refuse_a_changed_vm_then_resume(parts: Partitions, images: Images) -> None:
    """A VM whose memory changed since the capture is not started; put back, it resumes."""
    name = parts.vm("sleeper")["metadata"]["name"]

    def set_memory(size: str) -> None:
        patch = {"spec": {"template": {"spec": {"domain": {"memory": {"guest": size}}}}}}
        parts.custom.patch_namespaced_custom_object(
            "kubevirt.io", "v1", parts.namespace, "virtualmachines", name, patch
        )

    set_memory("1Gi")
    images.resume("sleeper-1")
    refused = condition(images.wait("sleeper-1", "Resumed", 60), "Resumed")
    assert (refused["status"], refused["reason"]) == ("False", "AdapterConfigurationChanged")
    assert "memory changed from '512Mi' to '1Gi'" in refused["message"]
    assert parts.vm("sleeper")["spec"]["runStrategy"] == "Halted" and parts.vmi("sleeper") is None
    set_memory("512Mi")
    wait_for(
        lambda: (
            condition(images.get("sleeper-1"), "Resumed")["reason"] != "AdapterConfigurationChanged"
        ),
        "the resume going on once the VM is as captured",
        60,
    )


def save_nano(api_client: client.ApiClient, namespace: str, tty: SerialConsole) -> None:
    """A SaveEvent for the partition: nano writes its buffer, as before hibernating."""
    save = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SaveEvent",
        "metadata": {"name": "after-resume"},
        "spec": {"reason": "Manual", "targets": {"partitions": ["sleeper"]}},
    }
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "saveevents", save
    )
    done = wait_complete(api_client, namespace, "after-resume", timeout=150)
    [result] = results(done, namespace).values()
    assert {a["name"]: a["outcome"] for a in result["applications"]} == {"nano": "Saved"}
    saved = tty.run("cat /root/notes.txt")
    assert TYPED in saved and "first line" in saved, saved


def test_a_real_guest_hibernates_to_its_paging_lu_and_resumes_in_a_new_qemu_process(
    operator,
    parts: Partitions,
    kubevirt: StandIn,
    api_client: client.ApiClient,
    vios_pool: str,
) -> None:
    # a paging LU smaller than the guest's memory: the capture must grow it first
    parts.create(sleeper_partition("sleeper", vios_pool, paging_size="256Mi"))
    status = parts.wait_condition("sleeper", "Ready", "True", timeout=BOOT_TIMEOUT)
    claim = status["paging"]["claimName"]
    wait_for(
        lambda: (parts.status("sleeper").get("agent") or {}).get("paging", {}).get("active"),
        "the paging LU is the guest's swap",
        120,
    )
    boot_id = parts.status("sleeper")["agent"]["bootId"]
    first_qemu = kubevirt.guest(parts.namespace, "sleeper").launcher.pid
    tty = console_of(kubevirt, parts.namespace, "sleeper")
    with tty:
        start_counter_and_nano(tty)
        assert tty.run("cat /proc/sys/kernel/random/boot_id").strip() == boot_id
        pid, before = counter(tty)

    images = Images(api_client, parts.namespace)
    started = time.monotonic()
    images.create("sleeper-1", "sleeper", saveFirst=False)  # nano's buffer stays unsaved
    image = images.wait("sleeper-1", "Captured", HIBERNATE_TIMEOUT)
    captured_after = time.monotonic() - started
    assert condition(image, "Captured")["status"] == "True", image["status"]
    status = image["status"]
    assert status["bootId"] == boot_id and status["lu"]["claimName"] == claim
    assert status["memoryBytes"] == 512 * 2**20
    assert {a["id"] for a in status["adapters"]} >= {"disk/lparkube-paging", "interface/default"}
    assert "saveEvent" not in status
    wait_for(lambda: kubevirt.guest(parts.namespace, "sleeper") is None, "QEMU gone", 120)
    wait_for(lambda: parts.vmi("sleeper") is None, "the VMI gone (the VM halted)", 120)
    assert parts.vm("sleeper")["spec"]["runStrategy"] == "Halted"
    backing = kubevirt.storage.backing(parts.namespace, claim).path
    used, apparent = backing.stat().st_blocks * 512, backing.stat().st_size
    assert apparent >= status["memoryBytes"], "the LU was expanded to hold the image"
    assert 0 < used < apparent

    refuse_a_changed_vm_then_resume(parts, images)
    started = time.monotonic()
    image = images.wait("sleeper-1", "Resumed", BOOT_TIMEOUT)
    resumed_after = time.monotonic() - started
    assert condition(image, "Resumed")["status"] == "True", condition(image, "Resumed")["message"]
    assert kubevirt.guest(parts.namespace, "sleeper").launcher.pid != first_qemu
    assert parts.status("sleeper")["agent"]["bootId"] == boot_id
    assert used >= image["status"]["imageBytes"] > 0, "the LU holds what the kernel copied"
    with console_of(kubevirt, parts.namespace, "sleeper") as tty:
        same_pid, after = counter(tty)
        assert same_pid == pid and after >= before
        assert tty.run(f"kill -0 {pid} && echo alive").strip().endswith("alive")
        assert TYPED not in tty.run("cat /root/notes.txt")  # still unsaved
        save_nano(api_client, parts.namespace, tty)
    print(
        f"\nhibernate -> Captured {captured_after:.1f} s; resume -> Resumed {resumed_after:.1f} s"
    )
    parts.delete("sleeper")
    wait_for(lambda: kubevirt.guest(parts.namespace, "sleeper") is None, "guest gone", 120)
