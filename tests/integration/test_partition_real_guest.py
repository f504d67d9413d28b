"""Partitions whose VMs run as real guests: the stand-in boots each VMI as a QEMU virtual machine
with the Debian guest image, and the real agent inside takes its key from what the Partition's
key delivery put into the VM (a secret disk, or a NoCloud seed), then reports to the operator's
gateway through the guest's user network."""

from __future__ import annotations

import pytest
from kubernetes import client
from partition_helpers import GROUP, VERSION, Partitions, wait_for

from lparkube_devenv.kubevirt import StandIn
from lparkube_devenv.kubevirt.api import RUNTIME_ANNOTATION

pytestmark = pytest.mark.realguest

BOOT_TIMEOUT = 240.0  # software emulation on a loaded 2-core machine


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
