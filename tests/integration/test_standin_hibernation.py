"""Hibernation and resume of a VirtualMachine's real guest through the KubeVirt stand-in.

The VM's guest (QEMU, the guest image) has a thin Block PVC as its paging disk (serial
``lparkube-paging``) and hibernates onto it, as the agent will do (typed on the console here):
its VMI goes Succeeded, the VM (RerunOnFailure) stays stopped, the PVC's file holds the image.
Set to Always, the VM gets a new VMI, hence a new QEMU process (and a new NIC MAC, derived from
the new VMI's uid), whose kernel restores the image: the same boot id and the same tasks.
"""

from __future__ import annotations

import pytest
from kubernetes import client
from partition_helpers import wait_for

from lparkube_devenv.kubevirt import VMI, StandIn
from lparkube_devenv.kubevirt.api import RUNTIME_ANNOTATION, VM
from lparkube_devenv.qemu import hibernation
from lparkube_devenv.qemu.console import SerialConsole

pytestmark = pytest.mark.realguest

BOOT_TIMEOUT = 300.0
PAGING_CLAIM = "sleeper-paging"


def paging_claim(api: client.ApiClient, namespace: str) -> None:
    body = {
        "metadata": {"name": PAGING_CLAIM},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Block",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    client.CoreV1Api(api).create_namespaced_persistent_volume_claim(namespace, body)


def vm_manifest(name: str) -> dict:
    disk = {"name": "paging", "disk": {"bus": "virtio"}, "serial": hibernation.PAGING_SERIAL}
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "RerunOnFailure",
            "template": {
                "metadata": {"annotations": {RUNTIME_ANNOTATION: "qemu"}},
                "spec": {
                    "domain": {
                        "memory": {"guest": "512Mi"},
                        "devices": {
                            "disks": [disk],
                            "interfaces": [{"name": "default", "masquerade": {}}],
                        },
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [
                        {"name": "paging", "persistentVolumeClaim": {"claimName": PAGING_CLAIM}}
                    ],
                    "terminationGracePeriodSeconds": 20,
                },
            },
        },
    }


def running_guest(kubevirt: StandIn, namespace: str, name: str) -> hibernation.RunningGuest:
    """The VMI's QEMU once it runs and its console's shell answers."""
    vmi = wait_for(
        lambda: (
            (kubevirt.kube.get(VMI.path(namespace, name)) or {}).get("status", {}).get("phase")
            == "Running"
            and kubevirt.guest(namespace, name)
        ),
        f"{name} Running",
        BOOT_TIMEOUT,
    )
    launcher = vmi.launcher
    console = SerialConsole(launcher.files.serial_socket, launcher.files.serial_log)
    hibernation.wait_responsive(console, BOOT_TIMEOUT)
    return hibernation.RunningGuest(launcher, console, 0.0)


def test_a_vm_s_guest_hibernates_onto_its_paging_pvc_and_its_next_vmi_resumes_it(
    kubevirt: StandIn, api_client: client.ApiClient, namespace: str
) -> None:
    paging_claim(api_client, namespace)
    kubevirt.kube.create(VM.path(namespace), vm_manifest("sleeper"))
    guest = running_guest(kubevirt, namespace, "sleeper")
    first_uid = kubevirt.kube.get(VMI.path(namespace, "sleeper"))["metadata"]["uid"]
    assert "/dev/vd" in hibernation.enable_swap(guest.console)
    boot_id = guest.console.run("cat /proc/sys/kernel/random/boot_id").strip()
    guest.console.run("(sh -c 'echo $$ >/tmp/sleeper.pid; exec sleep 100000' &)")
    sleeper = guest.console.run("cat /tmp/sleeper.pid").strip()
    assert sleeper.isdigit(), sleeper

    hibernated = hibernation.hibernate(guest, 600)
    assert hibernated.status.by_guest and hibernated.copied_pages > 0, hibernated.status
    wait_for(
        lambda: (
            (kubevirt.kube.get(VMI.path(namespace, "sleeper")) or {}).get("status", {}).get("phase")
            == "Succeeded"
        ),
        "the hibernated guest's VMI Succeeded",
        120,
    )
    log_end = guest.console.mark()  # the next QEMU of this VM appends to the same log
    backing = kubevirt.storage.backing(namespace, PAGING_CLAIM).path
    assert hibernation.swap_signature(backing) == hibernation.HIBERNATE_MAGIC
    assert hibernation.disk_usage(backing) >= hibernated.image_bytes

    kubevirt.kube.merge_patch(VM.path(namespace, "sleeper"), {"spec": {"runStrategy": "Always"}})
    wait_for(
        lambda: (
            (kubevirt.kube.get(VMI.path(namespace, "sleeper")) or {})
            .get("metadata", {})
            .get("uid", first_uid)
            != first_uid
        ),
        "a new VMI",
        120,
    )
    resumed = running_guest(kubevirt, namespace, "sleeper")
    try:
        boot_log = resumed.console.text(log_end)
        assert hibernation.RESUME_LOOKING in boot_log, boot_log[-2000:]
        assert hibernation.RESUME_NONE not in boot_log, boot_log[-2000:]
        assert resumed.console.run("cat /proc/sys/kernel/random/boot_id").strip() == boot_id
        cmdline = resumed.console.run(f"tr '\\0' ' ' </proc/{sleeper}/cmdline").strip()
        assert cmdline == "sleep 100000", cmdline  # the same process, still sleeping
        assert hibernation.swap_signature(backing) == hibernation.SWAP_MAGIC
    finally:
        resumed.console.close()
    kubevirt.kube.delete(VM.path(namespace, "sleeper"))
