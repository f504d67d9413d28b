"""Releasing a lost node's instance without fencing the node, as failover's self-fence path
does on a real cluster: the VM held Halted, the old launcher pod force-deleted, then the
VolumeAttachment of its RWO claim deleted. KubeVirt lets the VMI go (Failed, then its
finalizer); the real attach/detach controller keeps the volume on the dead node while only
the pod is gone (maxWaitForUnmountDuration: 6 minutes) and lets it attach elsewhere once its
reconciler's sync (every minute) finds the VolumeAttachment gone."""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from test_standin_failover_real_guests import vm_manifest
from test_standin_real_guests import BOOT_TIMEOUT, Guests, _launcher, _ready, lost_node

from lparkube_devenv.controlplane import wait_until
from lparkube_devenv.kubevirt import VM, StandIn
from lparkube_devenv.kubevirt.storage import DRIVER, two_writers
from lparkube_devenv.kubevirt.storage.names import ATTACHMENTS_PATH, attachment_name

pytestmark = pytest.mark.realguest
__all__ = ["lost_node"]  # the fixture, a node of the test's own
SYNC_PERIOD = 60.0  # kube-controller-manager's --attach-detach-reconcile-sync-period


@pytest.fixture
def guests(kubevirt: StandIn, api_client: client.ApiClient, namespace: str) -> Guests:
    return Guests(kubevirt, api_client, namespace)


def wait_for(predicate, what: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    return wait_until(predicate, timeout, what, interval=0.2)


def test_a_lost_nodes_instance_is_released_by_pod_and_attachment_deletion(
    guests: Guests, lost_node: str, healthy_nodes: tuple[str, ...]
) -> None:
    kube, other = guests.kubevirt.kube, healthy_nodes[0]
    guests.claim("disk", "ReadWriteOnce")
    manifest = vm_manifest("moved", "disk")
    manifest["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": lost_node}
    kube.create(VM.path(guests.ns), manifest)
    first = guests.wait_phase("moved", "Running")
    guests.kubevirt.power_off_node(lost_node)
    wait_for(lambda: _ready(guests, lost_node) == "Unknown", "the node Ready=Unknown")

    # Fencing: the VM held Halted. KubeVirt deletes the VMI; its finalizer keeps it while its
    # launcher pod (deleted too, but nobody on the dead node confirms) is there.
    kube.merge_patch(VM.path(guests.ns, "moved"), {"spec": {"runStrategy": "Halted"}})
    wait_for(lambda: guests.vmi("moved")["metadata"].get("deletionTimestamp"), "VMI deleted")
    pod = wait_for(
        lambda: (
            _launcher(guests, "moved")["metadata"].get("deletionTimestamp")
            and _launcher(guests, "moved")
        ),
        "launcher pod deleted",
    )
    time.sleep(2.0)
    assert guests.vmi("moved")["metadata"]["uid"] == first["metadata"]["uid"]

    # The pod force-deleted: a running VMI without its pod fails and, final and podless, goes.
    name = pod["metadata"]["name"]
    kube.delete(f"/api/v1/namespaces/{guests.ns}/pods/{name}", grace=0)
    wait_for(lambda: not guests.vmi("moved"), "the old VMI gone")

    # Started on another node: the RWO volume is still attached to the dead node (in use by
    # its silent kubelet, no out-of-service taint, 6 minutes not passed).
    spec = {"runStrategy": "Always", "template": {"spec": {"nodeSelector": {
        "kubernetes.io/hostname": other}}}}  # fmt: skip
    kube.merge_patch(VM.path(guests.ns, "moved"), {"spec": spec})
    wait_for(
        lambda: guests.condition("moved", "Synchronized").get("reason") == "MultiAttach",
        "the new VMI refused with Multi-Attach",
    )
    volume = kube.get(f"/api/v1/namespaces/{guests.ns}/persistentvolumeclaims/disk")
    held = attachment_name(volume["spec"]["volumeName"], DRIVER, lost_node)
    assert kube.get(f"{ATTACHMENTS_PATH}/{held}") is not None

    # The VolumeAttachment deleted: detached at once by the attacher, and attached on the
    # other node at the attach/detach controller's next sync.
    kube.delete(f"{ATTACHMENTS_PATH}/{held}")
    began = time.monotonic()
    running = guests.wait_phase("moved", "Running", SYNC_PERIOD + BOOT_TIMEOUT)
    print(f"attachment deleted -> running elsewhere in {time.monotonic() - began:.1f} s")
    assert running["status"]["nodeName"] == other
    assert two_writers(guests.kubevirt.storage.attach_log_path) == []
