"""What failover needs of the stand-in, proven on real guests: the i6300esb watchdog powers a
guest off when nobody pets it and its VMI ends as KubeVirt's does; a snapshot of a running
guest holds its disk as it was, and a restore brings exactly that back on a new claim."""

from __future__ import annotations

import base64
import time

import pytest
from kubernetes import client
from partition_helpers import SUB, subresource, wait_for
from test_standin_real_guests import BOOT_TIMEOUT, Guests, vmi_manifest

from lparkube_devenv.kubevirt import RESTORE, SNAPSHOT, VM, StandIn

pytestmark = pytest.mark.realguest

WATCHDOG_TIMEOUT = 4  # seconds, set by the guest with WDIOC_SETTIMEOUT
DATA_DISK = "/dev/disk/by-id/virtio-data"
# Opens /dev/watchdog, sets its timeout, pets it three times, then stops petting without the
# magic close: the device keeps counting.
PETTER = (
    "import fcntl, os, struct, time\n"
    "fd = os.open('/dev/watchdog', os.O_WRONLY)\n"
    f"fcntl.ioctl(fd, 0xC0045706, struct.pack('i', {WATCHDOG_TIMEOUT}))\n"
    "got = struct.unpack('i', fcntl.ioctl(fd, 0x80045707, struct.pack('i', 0)))[0]\n"
    "print('lparkube-test: armed', got, flush=True)\n"
    "for _ in range(3):\n"
    "    os.write(fd, b'.')\n"
    "    time.sleep(1)\n"
    "print('lparkube-test: stopped petting', flush=True)\n"
    "time.sleep(3600)\n"
)


@pytest.fixture
def guests(kubevirt: StandIn, api_client: client.ApiClient, namespace: str) -> Guests:
    return Guests(kubevirt, api_client, namespace)


def test_an_unpetted_watchdog_powers_the_guest_off_and_the_vmi_fails(guests: Guests) -> None:
    manifest = vmi_manifest("watched")
    watchdog = {"name": "lparkube-watchdog", "i6300esb": {"action": "poweroff"}}
    manifest["spec"]["domain"]["devices"]["watchdog"] = watchdog
    guests.create(manifest)
    guests.wait_phase("watched", "Running")
    console = guests.console("watched")
    assert console.run("ls /dev/watchdog").strip() == "/dev/watchdog"  # i6300esb loaded
    encoded = base64.b64encode(PETTER.encode()).decode()
    write = f"import base64; open('/tmp/petter.py', 'wb').write(base64.b64decode('{encoded}'))"
    console.run(f'python3 -c "{write}"')
    launcher = guests.kubevirt.guest(guests.ns, "watched").launcher
    console.send_line("python3 /tmp/petter.py &")
    console.wait_for(f"lparkube-test: armed {WATCHDOG_TIMEOUT}", 60)
    console.wait_for("lparkube-test: stopped petting", 30)
    stopped = time.monotonic()
    status = launcher.wait_exit(WATCHDOG_TIMEOUT + 10)
    print(f"QEMU gone {time.monotonic() - stopped:.1f} s after the last pet")
    assert time.monotonic() - stopped <= WATCHDOG_TIMEOUT + 5
    # QEMU's watchdog action poweroff exits at once (no SHUTDOWN event): libvirt calls that
    # shutoff/crashed, and virt-handler fails the VMI.
    assert (status.watchdog, status.state, status.exit_code) == ("poweroff", "crashed", 0)
    failed = guests.wait_phase("watched", "Failed", 60)
    assert "reason" not in failed["status"]
    assert ("Warning", "Stopped") in guests.events("watched")


def vm_manifest(name: str, claim: str) -> dict:
    template = vmi_manifest(name, claim=claim)
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "Always",
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }


def test_a_snapshot_of_a_running_guest_restores_its_disk_on_a_new_claim(guests: Guests) -> None:
    guests.claim("disk", "ReadWriteOnce", size="64Mi")
    guests.kubevirt.kube.create(VM.path(guests.ns), vm_manifest("saved", "disk"))
    guests.wait_phase("saved", "Running")
    console = guests.console("saved")
    console.run(f"printf 'before the snapshot' | dd of={DATA_DISK} bs=512 conv=notrunc,fsync")
    snapshot = {
        "apiVersion": "snapshot.kubevirt.io/v1beta1",
        "kind": "VirtualMachineSnapshot",
        "metadata": {"name": "point"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "saved"}},
    }
    guests.kubevirt.kube.create(SNAPSHOT.path(guests.ns), snapshot)
    done = wait_for(
        lambda: (
            (guests.kubevirt.kube.get(SNAPSHOT.path(guests.ns, "point")) or {})
            .get("status", {})
            .get("phase")
            == "Succeeded"
        ),
        "snapshot Succeeded",
        60,
    )
    assert done
    launcher = guests.kubevirt.guest(guests.ns, "saved").launcher
    assert launcher.status.state == "running"  # its CPUs ran again after the copy
    console.run(f"printf 'after the snapshot!' | dd of={DATA_DISK} bs=512 conv=notrunc,fsync")

    restore = {
        "apiVersion": "snapshot.kubevirt.io/v1beta1",
        "kind": "VirtualMachineRestore",
        "metadata": {"name": "back"},
        "spec": {
            "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "saved"},
            "virtualMachineSnapshotName": "point",
            "targetReadinessPolicy": "StopTarget",
        },
    }
    created = guests.kubevirt.kube.create(RESTORE.path(guests.ns), restore)
    wait_for(
        lambda: (
            (guests.kubevirt.kube.get(RESTORE.path(guests.ns, "back")) or {})
            .get("status", {})
            .get("complete")
        ),
        "restore complete",
        BOOT_TIMEOUT,
    )
    vm = guests.kubevirt.kube.get(VM.path(guests.ns, "saved"))
    claim = f"restore-{created['metadata']['uid']}-data"
    volumes = vm["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["persistentVolumeClaim"]["claimName"] == claim
    assert vm["spec"]["runStrategy"] == "Halted"  # StopTarget stopped it; the restore keeps that
    path = f"{SUB}/{guests.ns}/virtualmachines/saved/start"
    assert subresource(guests.api, "PUT", path, {})[0] == 202
    guests.wait_phase("saved", "Running")
    console = guests.console("saved")
    console.wait_for("# ", 60)  # the shell is up, past the boot's own lines
    assert console.run(f"head -c 19 {DATA_DISK}").endswith("before the snapshot")
