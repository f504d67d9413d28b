"""Partitions whose VMs run as real guests: the stand-in boots each VMI as a QEMU virtual machine
with the Debian guest image, and the real agent inside takes its key from what the Partition's
key delivery put into the VM (a secret disk, or a NoCloud seed), then reports to the operator's
gateway through the guest's user network."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
from kubernetes import client
from partition_helpers import GROUP, SUB, VERSION, Partitions, subresource, wait_for
from saving_helpers import results, wait_complete

from lparkube_devenv.kubevirt import StandIn
from lparkube_devenv.kubevirt.api import RUNTIME_ANNOTATION
from lparkube_devenv.qemu.console import SerialConsole

pytestmark = pytest.mark.realguest

BOOT_TIMEOUT = 240.0  # software emulation on a loaded 2-core machine
PT_LOAD, PT_NOTE = 1, 4


def real_guest_partition(name: str, delivery: str) -> dict:
    template = {
        "metadata": {"annotations": {RUNTIME_ANNOTATION: "qemu"}},
        "spec": {
            "domain": {
                "memory": {"guest": "512Mi"},
                "devices": {
                    "interfaces": [{"name": "default", "masquerade": {}}],
                    "panicDevices": [{"model": "pvpanic"}],
                },
            },
            "networks": [{"name": "default", "pod": {}}],
        },
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Partition",
        "metadata": {"name": name},
        "spec": {
            "vmTemplate": {"spec": {"runStrategy": "Always", "template": template}},
            "agent": {"port": 8443, "keyDelivery": delivery, "heartbeatTimeout": "30s"},
        },
    }


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


@pytest.mark.parametrize("delivery", ["SecretVolume", "CloudInit"])
def test_a_partition_boots_the_debian_kernel_and_its_agent_connects(
    operator, parts: Partitions, kubevirt: StandIn, delivery: str
) -> None:
    name = f"real-{delivery.lower()}"
    parts.create(real_guest_partition(name, delivery))
    status = parts.wait_condition(name, "Ready", "True", timeout=BOOT_TIMEOUT)
    agent = status["agent"]
    image = kubevirt.guest_image.get()
    assert agent["kernelRelease"] == image.kernel_release
    assert agent["vmcoreinfo"]["address"].startswith("0x") and agent["vmcoreinfo"]["size"] > 0
    vmi = parts.vmi(name)
    [pod] = [
        p
        for p in kubevirt.kube.items(f"/api/v1/namespaces/{parts.namespace}/pods")
        if p["metadata"]["labels"].get("kubevirt.io/created-by") == vmi["metadata"]["uid"]
    ]
    assert pod["spec"]["nodeName"] == vmi["status"]["nodeName"]
    assert vmi["status"]["interfaces"][0]["ipAddress"] == pod["status"]["podIP"]
    guest = kubevirt.guest(parts.namespace, name)
    assert guest is not None and guest.state() == "running"
    console = guest.launcher.files.serial_log.read_text(errors="replace")
    assert "lparkube-guest: agent started" in console
    parts.delete(name)
    wait_for(lambda: kubevirt.guest(parts.namespace, name) is None, "the guest powered off", 120)


def data_claim(api_client: client.ApiClient, namespace: str, name: str, size: str) -> None:
    """A thin Block volume (the stand-in's default StorageClass), ReadWriteOnce."""
    body = {
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Block",
            "resources": {"requests": {"storage": size}},
        },
    }
    client.CoreV1Api(api_client).create_namespaced_persistent_volume_claim(namespace, body)


def with_data_disk(partition: dict, claim: str) -> dict:
    spec = partition["spec"]["vmTemplate"]["spec"]["template"]["spec"]
    spec["domain"]["devices"]["disks"] = [{"name": "data", "disk": {"bus": "virtio"}}]
    spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    return partition


EDITS = {"nano": ("typed in nano ", "typed in nano"), "vim": ("Gotyped in vim", "typed in vim")}


def start_editor(console: SerialConsole, editor: str) -> None:
    """The editor on /mnt/data/<editor>.txt under `lparkube-agent run`, its keyboard a FIFO."""
    path, keys = f"/mnt/data/{editor}.txt", f"/tmp/{editor}.keys"
    console.run(f"printf 'first line\\n' > {path} && mkfifo {keys}")
    console.run(f"(sleep 100000 > {keys} &)")  # holds the FIFO open between our writes
    console.run(
        f"(TERM=xterm HOME=/root lparkube-agent run -- {editor} {path} "
        f"< {keys} > /tmp/{editor}.screen 2>&1 &)"
    )
    wait_for(lambda: editor in console.run("lparkube-agent list"), f"{editor} registered", 60)


def test_a_save_event_gets_real_editors_in_the_guest_to_write_their_edits(
    operator, parts: Partitions, kubevirt: StandIn, api_client: client.ApiClient
) -> None:
    data_claim(api_client, parts.namespace, "editor-data", "64Mi")
    partition = with_data_disk(real_guest_partition("editors", "SecretVolume"), "editor-data")
    partition["metadata"]["labels"] = {"tier": "editors"}
    parts.create(partition)
    parts.wait_condition("editors", "Ready", "True", timeout=BOOT_TIMEOUT)
    guest = kubevirt.guest(parts.namespace, "editors")
    assert guest is not None
    with SerialConsole(guest.launcher.files.serial_socket, guest.launcher.files.serial_log) as tty:
        disk = "/dev/disk/by-id/virtio-data"
        tty.run(f"mke2fs -q {disk} && mkdir -p /mnt/data && mount {disk} /mnt/data", 120)
        for editor, (keys, text) in EDITS.items():
            start_editor(tty, editor)
            tty.run(f"printf '{keys}' > /tmp/{editor}.keys")
            wait_for(lambda e=editor, t=text: t in tty.run(f"cat /tmp/{e}.screen"), "typed", 60)
            assert text not in tty.run(f"cat /mnt/data/{editor}.txt")  # unsaved so far

        save = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SaveEvent",
            "metadata": {"name": "save-editors"},
            "spec": {
                "reason": "Manual",
                "targets": {"selector": {"matchLabels": {"tier": "editors"}}},
                "deadline": "2m",
                "applicationTimeout": "30s",
            },
        }
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            GROUP, VERSION, parts.namespace, "saveevents", save
        )
        done = wait_complete(api_client, parts.namespace, "save-editors", timeout=150)
        [result] = results(done, parts.namespace).values()
        outcomes = {app["name"]: app["outcome"] for app in result["applications"]}
        assert outcomes == {"nano": "Saved", "vim": "Saved"}, result
        tty.run("sync")
        for editor, (_, text) in EDITS.items():
            saved = tty.run(f"cat /mnt/data/{editor}.txt")
            assert text in saved and "first line" in saved, saved
        tty.run("kill $(pidof nano vim) 2>/dev/null; sleep 1; umount /mnt/data && sync", 60)
    parts.delete("editors")
    wait_for(lambda: kubevirt.guest(parts.namespace, "editors") is None, "guest gone", 120)
    backing = kubevirt.storage.backing(parts.namespace, "editor-data").path
    for editor, (_, text) in EDITS.items():  # read back from the disk itself, on the host
        found = subprocess.run(
            ["debugfs", "-R", f"cat /{editor}.txt", str(backing)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert text in found, found


def physical_bytes(dump: Path, address: int, size: int) -> bytes:
    """`size` bytes at a guest-physical address of an ELF memory dump (its PT_LOAD segments)."""
    with dump.open("rb") as elf:
        header = elf.read(64)
        assert header[:4] == b"\x7fELF" and header[4] == 2  # ELF64
        (phoff,) = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        for index in range(phnum):
            elf.seek(phoff + index * phentsize)
            kind, _, offset, _, paddr, filesz, _, _ = struct.unpack("<IIQQQQQQ", elf.read(56))
            if kind == PT_LOAD and paddr <= address < paddr + filesz:
                elf.seek(offset + address - paddr)
                return elf.read(size)
    raise AssertionError(f"no PT_LOAD segment of {dump} holds {address:#x}")


def notes(dump: Path) -> list[bytes]:
    """The names and types of the dump's ELF notes (name + type, e.g. b'CORE:1')."""
    found = []
    with dump.open("rb") as elf:
        header = elf.read(64)
        (phoff,) = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        for index in range(phnum):
            elf.seek(phoff + index * phentsize)
            kind, _, offset, _, _, filesz, _, _ = struct.unpack("<IIQQQQQQ", elf.read(56))
            if kind != PT_NOTE:
                continue
            elf.seek(offset)
            data, at = elf.read(filesz), 0
            while at + 12 <= len(data):
                namesz, descsz, note_type = struct.unpack_from("<III", data, at)
                name = data[at + 12 : at + 12 + namesz].rstrip(b"\0")
                found.append(name + b":" + str(note_type).encode())
                at += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return found


def test_a_memory_dump_holds_the_kernels_vmcoreinfo_where_the_agent_said(
    operator, parts: Partitions, kubevirt: StandIn, api_client: client.ApiClient
) -> None:
    body = {
        "metadata": {"name": "dump"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    client.CoreV1Api(api_client).create_namespaced_persistent_volume_claim(parts.namespace, body)
    parts.create(real_guest_partition("dumped", "SecretVolume"))
    status = parts.wait_condition("dumped", "Ready", "True", timeout=BOOT_TIMEOUT)
    vmcoreinfo = status["agent"]["vmcoreinfo"]
    path = f"{SUB}/{parts.namespace}/virtualmachines/dumped/memorydump"
    assert subresource(api_client, "PUT", path, {"claimName": "dump"})[0] == 202
    seen: list[str] = []

    def completed() -> dict | None:
        request = (parts.vm("dumped").get("status") or {}).get("memoryDumpRequest") or {}
        if request.get("phase") and request["phase"] not in seen:
            seen.append(request["phase"])
        return request if request.get("phase") in ("Completed", "Failed") else None

    request = wait_for(completed, "the memory dump done", 180)
    assert request["phase"] == "Completed", request
    phases = ["Associating", "InProgress", "Unmounting", "Completed"]
    assert seen == sorted(seen, key=phases.index) and "InProgress" in seen  # in KubeVirt's order
    dump = kubevirt.storage.backing(parts.namespace, "dump").path / request["fileName"]
    assert re.fullmatch(r"dumped-dump-\d{8}-\d{6}\.memory\.dump", request["fileName"])
    text = physical_bytes(dump, int(vmcoreinfo["address"], 16), vmcoreinfo["size"])
    release = status["agent"]["kernelRelease"]
    assert f"OSRELEASE={release}\n".encode() in text, text[:200]
    assert not any(n.startswith(b"VMCOREINFO") for n in notes(dump))  # KubeVirt sets none
    pvc = client.CoreV1Api(api_client).read_namespaced_persistent_volume_claim(
        "dump", parts.namespace
    )
    assert pvc.metadata.annotations["kubevirt.io/memory-dump"] == request["fileName"]
    parts.delete("dumped")
