"""The KubeVirt stand-in with real guests: VMIs of the QEMU runtime follow what their QEMU
process and the Debian kernel inside really do (power-off, pause, panic), RWO volumes are never
attached on two nodes, and a node that loses power follows KubeVirt's rules."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from partition_helpers import SUB, subresource, wait_for

from lparkube_devenv.kubevirt import VMI, StandIn
from lparkube_devenv.kubevirt.api import RUNTIME_ANNOTATION
from lparkube_devenv.kubevirt.nodes import NODES_PATH, ensure_nodes
from lparkube_devenv.kubevirt.storage import two_writers
from lparkube_devenv.qemu.console import SerialConsole

pytestmark = pytest.mark.realguest

BOOT_TIMEOUT = 240.0
OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown"}


def vmi_manifest(name: str, *, node: str | None = None, claim: str | None = None) -> dict:
    spec: dict = {
        "domain": {
            "memory": {"guest": "256Mi"},
            "devices": {"panicDevices": [{"model": "isa"}]},
        },
        "terminationGracePeriodSeconds": 20,
    }
    if claim:
        spec["domain"]["devices"]["disks"] = [{"name": "data", "disk": {"bus": "virtio"}}]
        spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "annotations": {RUNTIME_ANNOTATION: "qemu"}},
        "spec": spec,
    }


class Guests:
    """Real-guest VMIs in one namespace, deleted after the test."""

    def __init__(self, kubevirt: StandIn, api: client.ApiClient, namespace: str) -> None:
        self.kubevirt, self.api, self.ns = kubevirt, api, namespace

    def create(self, body: dict) -> None:
        self.kubevirt.kube.create(VMI.path(self.ns), body)

    def vmi(self, name: str) -> dict:
        return self.kubevirt.kube.get(VMI.path(self.ns, name)) or {}

    def phase(self, name: str) -> str:
        return (self.vmi(name).get("status") or {}).get("phase", "")

    def condition(self, name: str, kind: str) -> dict:
        found = [c for c in self.vmi(name).get("status", {}).get("conditions") or []]
        return next((c for c in found if c.get("type") == kind), {})

    def wait_phase(self, name: str, phase: str, timeout: float = BOOT_TIMEOUT) -> dict:
        return wait_for(
            lambda: self.phase(name) == phase and self.vmi(name), f"{name} {phase}", timeout
        )

    def console(self, name: str) -> SerialConsole:
        guest = self.kubevirt.guest(self.ns, name)
        assert guest is not None, f"{name} runs no guest"
        files = guest.launcher.files
        console = SerialConsole(files.serial_socket, files.serial_log)
        console.wait_for("lparkube-guest: userspace up", BOOT_TIMEOUT)
        return console

    def events(self, name: str) -> list[tuple[str, str]]:
        listed = client.CoreV1Api(self.api).list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name}"
        )
        return [(e.type, e.reason) for e in listed.items]

    def claim(self, name: str, mode: str, size: str = "32Mi") -> None:
        body = {
            "metadata": {"name": name},
            "spec": {
                "accessModes": [mode],
                "volumeMode": "Block",
                "resources": {"requests": {"storage": size}},
            },
        }
        client.CoreV1Api(self.api).create_namespaced_persistent_volume_claim(self.ns, body)

    def delete(self, name: str) -> None:
        self.kubevirt.kube.delete(VMI.path(self.ns, name))


@pytest.fixture
def guests(kubevirt: StandIn, api_client: client.ApiClient, namespace: str) -> Guests:
    return Guests(kubevirt, api_client, namespace)


def test_a_guest_power_off_succeeds_and_pause_round_trips(guests: Guests) -> None:
    guests.create(vmi_manifest("calm"))
    guests.wait_phase("calm", "Running")
    console = guests.console("calm")
    path = f"{SUB}/{guests.ns}/virtualmachineinstances/calm"
    assert subresource(guests.api, "PUT", f"{path}/pause", {})[0] == 202
    wait_for(lambda: guests.condition("calm", "Paused").get("status") == "True", "Paused")
    assert guests.kubevirt.guest(guests.ns, "calm").launcher.status.state == "paused"
    assert subresource(guests.api, "PUT", f"{path}/unpause", {})[0] == 202
    wait_for(lambda: not guests.condition("calm", "Paused"), "unpaused")
    assert console.run("echo alive") == "alive\n"  # the guest runs again
    console.send_line("poweroff")
    guests.wait_phase("calm", "Succeeded", 120)


def test_a_guest_panic_gives_guest_panicked_and_fails_the_vmi(guests: Guests) -> None:
    guests.create(vmi_manifest("crashy"))
    guests.wait_phase("crashy", "Running")
    guests.console("crashy").send_line("echo c > /proc/sysrq-trigger")
    failed = guests.wait_phase("crashy", "Failed", 120)
    assert "reason" not in failed["status"]  # KubeVirt gives only NodeUnresponsive a reason
    assert {("Warning", "GuestPanicked"), ("Warning", "Stopped")} <= set(guests.events("crashy"))
    assert guests.kubevirt.guest(guests.ns, "crashy") is None  # the domain was destroyed


def test_an_rwo_volume_waits_for_its_first_node_and_rwx_does_not(
    guests: Guests, healthy_nodes: tuple[str, ...]
) -> None:
    first, second = healthy_nodes[:2]
    guests.claim("rwo", "ReadWriteOnce")
    guests.create(vmi_manifest("holder", node=first, claim="rwo"))
    guests.wait_phase("holder", "Running")
    guests.create(vmi_manifest("waiter", node=second, claim="rwo"))
    waiting = wait_for(
        lambda: (
            guests.condition("waiter", "Synchronized").get("reason") == "MultiAttach"
            and guests.condition("waiter", "Synchronized")
        ),
        "waiter refused with Multi-Attach",
        60,
    )
    assert "Multi-Attach" in waiting["message"]
    assert (
        guests.phase("waiter") == "Scheduling"
        and guests.kubevirt.guest(guests.ns, "waiter") is None
    )
    guests.delete("holder")  # its pod goes, the volume is released, then attached on `second`
    guests.wait_phase("waiter", "Running")
    guests.delete("waiter")

    guests.claim("rwx", "ReadWriteMany")
    guests.create(vmi_manifest("left", node=first, claim="rwx"))
    guests.create(vmi_manifest("right", node=second, claim="rwx"))
    guests.wait_phase("left", "Running")
    guests.wait_phase("right", "Running")
    for name in ("left", "right"):
        guests.delete(name)
    assert two_writers(guests.kubevirt.storage.attach_log_path) == []


def test_thin_volume_grows_and_stays_thin_after_a_boot(guests: Guests) -> None:
    guests.claim("thin", "ReadWriteOnce", size="256Mi")
    guests.create(vmi_manifest("thin-user", claim="thin"))
    guests.wait_phase("thin-user", "Running")
    console = guests.console("thin-user")
    assert console.run("blockdev --getsize64 /dev/disk/by-id/virtio-data").strip() == str(256 << 20)
    backing = guests.kubevirt.storage.backing(guests.ns, "thin").path
    assert backing.stat().st_size == 256 << 20
    assert backing.stat().st_blocks * 512 < (256 << 20) // 100  # a boot wrote nothing there
    core = client.CoreV1Api(guests.api)
    patch = {"spec": {"resources": {"requests": {"storage": "512Mi"}}}}
    core.patch_namespaced_persistent_volume_claim("thin", guests.ns, patch)
    wait_for(
        lambda: (
            core.read_namespaced_persistent_volume_claim("thin", guests.ns).status.capacity[
                "storage"
            ]
            == "512Mi"
        ),
        "status.capacity grown",
        60,
    )
    assert backing.stat().st_size == 512 << 20
    guests.delete("thin-user")


def test_an_expanded_claim_grows_the_running_guest_s_disk(guests: Guests) -> None:
    """KubeVirt's ExpandDisks: the resizer grows the volume, then the running guest's disk is
    resized through QMP block_resize and the guest's kernel sees the new capacity."""
    disk = "/dev/disk/by-id/virtio-data"
    guests.claim("grown", "ReadWriteOnce", size="64Mi")
    guests.create(vmi_manifest("grower", claim="grown"))
    guests.wait_phase("grower", "Running")
    console = guests.console("grower")
    console.wait_for("# ", 60)
    assert console.run(f"blockdev --getsize64 {disk}").strip() == str(64 << 20)
    console.run(f"printf 'kept across the resize' | dd of={disk} bs=512 conv=notrunc,fsync")
    core = client.CoreV1Api(guests.api)
    patch = {"spec": {"resources": {"requests": {"storage": "192Mi"}}}}
    core.patch_namespaced_persistent_volume_claim("grown", guests.ns, patch)
    wait_for(
        lambda: console.run(f"blockdev --getsize64 {disk}").strip() == str(192 << 20),
        "the guest sees its disk at 192Mi",
        60,
    )
    claim = core.read_namespaced_persistent_volume_claim("grown", guests.ns)
    assert claim.status.capacity["storage"] == "192Mi"
    backing = guests.kubevirt.storage.backing(guests.ns, "grown").path
    assert backing.stat().st_size == 192 << 20
    assert "capacity change" in console.run("dmesg | grep vd")  # the kernel was told
    assert console.run(f"head -c 22 {disk}") == "kept across the resize"
    launcher = guests.kubevirt.guest(guests.ns, "grower").launcher
    assert launcher.disk_capacity("data") == 192 << 20
    guests.delete("grower")


@pytest.fixture
def lost_node(kubevirt: StandIn) -> Iterator[str]:
    """A node of its own, so powering it off disturbs no other test."""
    name = f"node-power-{uuid.uuid4().hex[:4]}"
    ensure_nodes(kubevirt.kube, [name])
    saved = kubevirt.settings.node_monitor_grace
    kubevirt.settings.node_monitor_grace = 2.0
    yield name
    kubevirt.settings.node_monitor_grace = saved
    kubevirt.power_on_node(name)
    kubevirt.kube.delete(f"{NODES_PATH}/{name}")


def test_a_powered_off_node_kills_its_guests_and_its_vmis_follow_kubevirts_rules(
    guests: Guests, lost_node: str
) -> None:
    guests.create(vmi_manifest("stranded", node=lost_node))
    guests.wait_phase("stranded", "Running")
    guest = guests.kubevirt.guest(guests.ns, "stranded")
    assert guest is not None
    pid = guest.launcher.pid
    assert guests.kubevirt.power_off_node(lost_node) == 1
    assert not _alive(pid)  # killed at once, with the node
    wait_for(lambda: _ready(guests, lost_node) == "Unknown", "the node Ready=Unknown", 60)
    assert guests.phase("stranded") == "Running"  # KubeVirt waits: its pod is still "running"
    node = guests.kubevirt.kube.get(f"{NODES_PATH}/{lost_node}")
    taints = [*(node["spec"].get("taints") or []), {**OUT_OF_SERVICE, "effect": "NoExecute"}]
    guests.kubevirt.kube.merge_patch(f"{NODES_PATH}/{lost_node}", {"spec": {"taints": taints}})
    # Fenced: taint eviction deletes the launcher pod (it stays, terminating: no kubelet
    # confirms it), pod GC force-deletes it, and only then the VMI fails.
    wait_for(lambda: _launcher(guests, "stranded")["metadata"].get("deletionTimestamp"), "evicted")
    assert guests.phase("stranded") == "Running"
    guests.wait_phase("stranded", "Failed", 120)
    assert _launcher(guests, "stranded") == {}


def _launcher(guests: Guests, name: str) -> dict:
    uid = guests.vmi(name)["metadata"]["uid"]
    pods = guests.kubevirt.kube.items(f"/api/v1/namespaces/{guests.ns}/pods")
    found = [p for p in pods if p["metadata"]["labels"].get("kubevirt.io/created-by") == uid]
    return found[0] if found else {}


def _ready(guests: Guests, node: str) -> str:
    conditions = guests.kubevirt.kube.get(f"{NODES_PATH}/{node}")["status"]["conditions"]
    return next(c["status"] for c in conditions if c["type"] == "Ready")


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_stop_start_and_restart_act_on_the_qemu_process(guests: Guests) -> None:
    vm = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "cycled"},
        "spec": {"runStrategy": "Always", "template": vmi_manifest("cycled")},
    }
    vm["spec"]["template"].pop("apiVersion")
    vm["spec"]["template"].pop("kind")
    guests.kubevirt.kube.create(f"/apis/kubevirt.io/v1/namespaces/{guests.ns}/virtualmachines", vm)
    guests.wait_phase("cycled", "Running")
    console = guests.console("cycled")
    # The stop below presses the ACPI power button: acpid must be there to hear it.
    wait_for(lambda: console.run("pidof acpid").strip(), "acpid running", 60)
    first = guests.kubevirt.guest(guests.ns, "cycled")
    path = f"{SUB}/{guests.ns}/virtualmachines/cycled"
    assert subresource(guests.api, "PUT", f"{path}/stop", {})[0] == 202
    wait_for(lambda: first.launcher.status.exited, "QEMU exited", 60)
    assert first.launcher.status.state == "shutdown"  # the guest powered off, no kill needed
    wait_for(lambda: not guests.vmi("cycled"), "the VMI gone", 60)
    assert subresource(guests.api, "PUT", f"{path}/start", {})[0] == 202
    started = guests.wait_phase("cycled", "Running")
    assert subresource(guests.api, "PUT", f"{path}/restart", {})[0] == 202
    restarted = wait_for(
        lambda: (
            guests.phase("cycled") == "Running"
            and guests.vmi("cycled")["metadata"]["uid"] != started["metadata"]["uid"]
            and guests.vmi("cycled")
        ),
        "a new VMI running",
        BOOT_TIMEOUT,
    )
    guest = guests.kubevirt.guest(guests.ns, "cycled")
    assert guest is not None and guest.launcher.pid != first.launcher.pid
    assert restarted["metadata"]["uid"] != started["metadata"]["uid"]
