"""RemoteRestarts that must not go ahead, refused by the real operator (the session's) against
the real API server and the KubeVirt stand-in: each ends RestartFailed/1 with Complete's
reason naming the cause, the VM (spec, labels, annotations), its PVCs and every Lease of the
namespace exactly as before. One whose target fails after it was configured removes what it
made there and releases every lock; of two RemoteRestarts of one partition made at once,
exactly one proceeds.

The cheap tier: simulated VMIs; a real agent over a fake guest tree only where an image is
captured. The table's partitions are Halted VMs with a PVC root (a DataVolume), made once for
the module on nodes of its own (remote_restart_helpers.NodePool): validation needs no running
guest, and a node the module makes NotReady or taints disturbs no other test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hibernation_helpers import Images
from kubernetes import client
from partition_helpers import Partitions, partition_manifest, wait_for
from remote_restart_helpers import (
    NodePool,
    assert_terminated,
    condition,
    create_restart,
    get_restart,
    leases_of,
    node_pool,
    patch_restart,
    step_states,
    wait_step,
    wait_terminated,
    wait_vm_and_claims,
    wait_waiting,
    world_snapshot,
)
from sleeper_helpers import Sleepers, with_persistent_root

from lparkube.api.v1alpha1 import remoterestart as api
from lparkube_devenv.controlplane import free_port
from lparkube_devenv.kubevirt import StandIn
from lparkube_devenv.kubevirt.nodes import NODES_PATH

pytestmark = pytest.mark.usefixtures("operator")

REFUSAL_TIMEOUT = 30.0
HOSTNAME = "kubernetes.io/hostname"
TEST_TAINT = {"key": "lparkube.test/dedicated", "value": "db", "effect": "NoSchedule"}
_ips = (f"127.0.90.{n}" for n in range(2, 250))


def halted(name: str, **template_spec: Any) -> dict:
    """A Partition of a Halted VM with a PVC root; ``template_spec`` is merged into its VMI
    template's spec (a nodeSelector, an affinity, ...)."""
    manifest = with_persistent_root(partition_manifest(name, next(_ips), free_port()))
    vm = manifest["spec"]["vmTemplate"]["spec"]
    vm["runStrategy"] = "Halted"
    vm["template"]["spec"].update(template_spec)
    return manifest


def with_memory(manifest: dict, guest: str) -> dict:
    domain = manifest["spec"]["vmTemplate"]["spec"]["template"]["spec"]["domain"]
    domain["memory"] = {"guest": guest}
    return manifest


def with_missing_network(manifest: dict) -> dict:
    """A second interface on a multus network whose NetworkAttachmentDefinition is not there."""
    template = manifest["spec"]["vmTemplate"]["spec"]["template"]["spec"]
    template["domain"]["devices"]["interfaces"].append({"name": "storage", "bridge": {}})
    template["networks"].append({"name": "storage", "multus": {"networkName": "storage-net"}})
    return manifest


@dataclass
class Stage:
    """A namespace of Halted partitions; nodes of its own: ``home`` and ``target`` in the
    module's VIOSCluster, ``outside`` not."""

    api: client.ApiClient
    parts: Partitions
    nodes: NodePool
    home: str
    target: str
    outside: str

    @property
    def namespace(self) -> str:
        return self.parts.namespace

    def snapshot(self, vm: str) -> dict:
        return world_snapshot(self.parts.kubevirt, self.api, self.namespace, vm)


def staged_partitions(home: str) -> dict[str, dict]:
    """The module's Halted partitions, by name."""
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": HOSTNAME, "operator": "In", "values": [home]}]}
        ]}}}  # fmt: skip
    return {
        "plain": halted("plain"),
        "pinned": halted("pinned", nodeSelector={HOSTNAME: home}),
        "affine": halted("affine", affinity=affinity),
        "big": with_memory(halted("big"), "48Gi"),  # a stand-in node has 32Gi
        "netted": with_missing_network(halted("netted")),
        "twins": halted("twins"),
        "doomed": halted("doomed"),
    }


@pytest.fixture(scope="module")
def stage(api_client: client.ApiClient, kubevirt: StandIn) -> Iterator[Stage]:
    namespace = f"rr-refusals-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": namespace, "labels": {"lparkube.test": "true"}}})
    custom = client.CustomObjectsApi(api_client)
    with node_pool(kubevirt) as nodes:
        home, target, outside = nodes.add(), nodes.add(), nodes.add()
        kubevirt.kube.merge_patch(f"{NODES_PATH}/{outside}", {"metadata": {"labels": {
            nodes.label: None}}})  # fmt: skip
        pool = f"rr-{nodes.value}"
        custom.create_cluster_custom_object("lparkube.io", "v1alpha1", "viosclusters", {
            "apiVersion": "lparkube.io/v1alpha1", "kind": "VIOSCluster",
            "metadata": {"name": pool},
            "spec": {"nodeSelector": {"matchLabels": nodes.selector},
                     "storage": {"storageClassName": "lparkube-thin"}},
        })  # fmt: skip
        parts = Partitions(api_client, kubevirt, namespace)
        manifests = staged_partitions(home)
        for manifest in manifests.values():
            manifest["spec"]["viosClusterName"] = pool
            parts.create(manifest)
        for name in manifests:
            wait_vm_and_claims(kubevirt, api_client, namespace, name)
        yield Stage(api_client, parts, nodes, home, target, outside)
        custom.delete_cluster_custom_object("lparkube.io", "v1alpha1", "viosclusters", pool)
        core.delete_namespace(namespace, propagation_policy="Background")


def set_taint(kubevirt: StandIn, node: str, taint: dict | None) -> None:
    """Add ``taint`` to the node (None: remove the test's taint); other taints are kept."""
    current = kubevirt.kube.request("GET", f"{NODES_PATH}/{node}")
    kept = [t for t in current["spec"].get("taints") or [] if t.get("key") != TEST_TAINT["key"]]
    taints = [*kept, taint] if taint else kept
    kubevirt.kube.merge_patch(f"{NODES_PATH}/{node}", {"spec": {"taints": taints or None}})


@pytest.fixture
def staged(stage: Stage) -> Iterator[Stage]:
    """The stage, its target node Ready and untainted again after the test."""
    yield stage
    set_taint(stage.parts.kubevirt, stage.target, None)
    stage.parts.kubevirt.set_node_ready(stage.target, True)


def refused(api_client: client.ApiClient, namespace: str, name: str, reason: str) -> dict:
    """The RemoteRestart once it ended: RestartFailed/1, Complete=False for ``reason``."""
    restart = wait_terminated(api_client, namespace, name, REFUSAL_TIMEOUT)
    assert_terminated(restart, api.RESTART_FAILED, reason)
    assert condition(restart, api.COMPLETE)["status"] == "False"
    return restart


@dataclass(frozen=True)
class Case:
    partition: str
    target: str  # "home", "target" or "outside": the stage's node
    reason: str
    names: Callable[[Stage], str]  # what the message must say
    arrange: Callable[[Stage], None] = lambda stage: None


CASES = {
    "target NotReady": Case(
        "plain", "target", api.TARGET_NOT_READY, lambda s: f"node {s.target} is not Ready",
        lambda s: s.parts.kubevirt.set_node_ready(s.target, False)),
    "not a VIOS node": Case(
        "plain", "outside", api.TARGET_NOT_VIOS_NODE,
        lambda s: f"node {s.outside} is not a VIOS node"),
    "the VM's nodeSelector": Case(
        "pinned", "target", api.NODE_SELECTOR_MISMATCH, lambda s: f"{HOSTNAME}={s.home}"),
    "the VM's required affinity": Case(
        "affine", "target", api.AFFINITY_MISMATCH,
        lambda s: f"node {s.target} does not satisfy the VM's required node affinity"),
    "a taint the VM does not tolerate": Case(
        "plain", "target", api.TAINT_NOT_TOLERATED,
        lambda s: "lparkube.test/dedicated=db:NoSchedule",
        lambda s: set_taint(s.parts.kubevirt, s.target, TEST_TAINT)),
    "too little memory": Case(
        "big", "target", api.INSUFFICIENT_MEMORY, lambda s: "memory to spare"),
    "a missing network": Case(
        "netted", "target", api.NETWORK_NOT_FOUND, lambda s: "storage-net not found"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_restart_that_fails_validation_ends_restart_failed_touching_nothing(
    case: Case, staged: Stage
) -> None:
    before = staged.snapshot(case.partition)
    case.arrange(staged)
    name = f"{case.partition}-{uuid.uuid4().hex[:5]}"
    target = getattr(staged, case.target)
    create_restart(staged.api, staged.namespace, name, case.partition, targetNodeName=target)
    restart = refused(staged.api, staged.namespace, name, case.reason)
    message = condition(restart, api.COMPLETE)["message"]
    assert case.names(staged) in message, message
    states = step_states(restart)
    assert states.pop(api.VALIDATING) == api.FAILED, states
    assert api.DONE not in states.values() and api.RUNNING not in states.values(), states
    assert staged.snapshot(case.partition) == before
    assert leases_of(staged.api, restart["metadata"]["uid"]) == []


# --- refusals that need a guest ---------------------------------------------------------------


def has_volume(vm: dict | None, name: str) -> bool:
    return any(v["name"] == name for v in (vm or {})["spec"]["template"]["spec"]["volumes"])


def test_an_image_whose_adapters_no_longer_fit_the_vm_is_refused(
    api_client: client.ApiClient, parts: Partitions, sleepers: Sleepers
) -> None:
    """Hibernated, then the Partition's VM gains a disk: the image no longer fits."""
    sleepers.create("sleeper")
    images = Images(api_client, parts.namespace)
    images.create("sleeper-1", "sleeper", saveFirst=False)
    captured = images.wait("sleeper-1", "Captured", 60)
    assert condition(captured, "Captured")["status"] == "True", captured["status"]
    wait_for(lambda: parts.vmi("sleeper") is None, "the VMI gone: hibernated")
    template = parts.get("sleeper")["spec"]["vmTemplate"]["spec"]["template"]["spec"]
    template["domain"]["devices"]["disks"].append({"name": "scratch", "disk": {"bus": "virtio"}})
    template["volumes"].append({"name": "scratch", "emptyDisk": {"capacity": "1Gi"}})
    parts.custom.patch_namespaced_custom_object(
        "lparkube.io", "v1alpha1", parts.namespace, "partitions", "sleeper",
        {"spec": {"vmTemplate": {"spec": {"template": {"spec": template}}}}},
    )  # fmt: skip
    wait_for(lambda: has_volume(parts.vm("sleeper"), "scratch"), "the VM with the new disk")
    before = world_snapshot(parts.kubevirt, api_client, parts.namespace, "sleeper")
    create_restart(api_client, parts.namespace, "sleeper-move", "sleeper",
                   hibernationImageName="sleeper-1")  # fmt: skip
    restart = refused(api_client, parts.namespace, "sleeper-move", api.IMAGE_ADAPTERS_DO_NOT_FIT)
    assert "scratch" in condition(restart, api.COMPLETE)["message"]
    assert world_snapshot(parts.kubevirt, api_client, parts.namespace, "sleeper") == before
    assert leases_of(api_client, restart["metadata"]["uid"]) == []


def test_a_source_neither_stopped_nor_fenced_ends_source_not_stopped_at_the_deadline(
    api_client: client.ApiClient, parts: Partitions, nodes: NodePool
) -> None:
    """The VM runs on, and its node is never fenced: the restart waits (Locked=False,
    WaitingForSourceStop, saying what to do) with its locks held, then at its short deadline
    ends SourceNotStopped, the locks released and nothing of the VM changed (the same VMI runs).

    (A lost node is not the case here: the stand-in's simulated VMIs have no launcher pods, so
    once KubeVirt replaced the Failed VMI nothing would show the guest may still run there;
    the real-guest tier, whose VMIs have launcher pods, covers the lost node.)"""
    source = nodes.add()
    manifest = with_persistent_root(partition_manifest("stuck", next(_ips), free_port()))
    manifest["spec"]["vmTemplate"]["spec"]["template"]["spec"]["nodeSelector"] = nodes.selector
    parts.create(manifest)
    wait_for(
        lambda: ((parts.vmi("stuck") or {}).get("status") or {}).get("phase") == "Running",
        "stuck's VMI Running",
    )
    running = parts.vmi("stuck")["metadata"]["uid"]
    target = nodes.add()
    before = world_snapshot(parts.kubevirt, api_client, parts.namespace, "stuck")
    create_restart(api_client, parts.namespace, "stuck-move", "stuck", targetNodeName=target,
                   deadline="12s")  # fmt: skip
    waiting = wait_waiting(api_client, parts.namespace, "stuck-move", api.WAITING_FOR_SOURCE_STOP)
    locked = condition(waiting, api.LOCKED)
    assert locked["status"] == "False"
    assert f"VMI stuck is Running on node {source} (Ready): stop VM stuck" in locked["message"]
    assert api.FENCE_TAINT_TEXT in locked["message"]
    token = waiting["metadata"]["uid"]
    assert leases_of(api_client, token), "its locks are held while it waits"
    refused(api_client, parts.namespace, "stuck-move", api.SOURCE_NOT_STOPPED)
    assert world_snapshot(parts.kubevirt, api_client, parts.namespace, "stuck") == before
    assert leases_of(api_client, token) == []
    assert parts.vmi("stuck")["metadata"]["uid"] == running


# --- two at once; a failure on the configured target --------------------------------------------


def test_of_two_restarts_of_one_partition_made_at_once_exactly_one_proceeds(
    staged: Stage,
) -> None:
    first, second = "twins-1", "twins-2"  # made in this order: the first is the older
    for name in (first, second):
        create_restart(staged.api, staged.namespace, name, "twins", targetNodeName=staged.target)
    loser = refused(staged.api, staged.namespace, second, api.ANOTHER_RESTART_IN_PROGRESS)
    assert first in condition(loser, api.COMPLETE)["message"]
    assert step_states(loser)[api.VALIDATING] == api.FAILED
    assert leases_of(staged.api, loser["metadata"]["uid"]) == []
    winner = wait_step(staged.api, staged.namespace, first, api.BOOTING, REFUSAL_TIMEOUT)
    assert "terminationState" not in winner["status"], winner["status"]
    assert step_states(winner)[api.LOCKING_ADAPTERS] == api.DONE
    # No agent ever connects: the test ends it as an orchestrator would.
    patch_restart(staged.api, staged.namespace, first, {"stop": api.STOP_FAILED})
    ended = wait_terminated(staged.api, staged.namespace, first, REFUSAL_TIMEOUT)
    assert_terminated(ended, api.RESTART_FAILED, api.STOPPED_BY_USER)
    assert leases_of(staged.api, ended["metadata"]["uid"]) == []
    assert get_restart(staged.api, staged.namespace, second)["status"]["terminationCode"] == 1


def test_a_target_that_fails_after_it_was_configured_is_undone_and_every_lock_released(
    staged: Stage,
) -> None:
    """The target node gets a NoExecute taint the VM does not tolerate once the VM was started
    there: its launcher is evicted and the VMI fails (no pod), the restart ends
    TargetStartFailed, no VMI runs, the hold is gone (the VM stays Halted: started once, never
    twice) and no Lease of the operation is left."""
    parts = staged.parts
    before = staged.snapshot("doomed")
    create_restart(staged.api, staged.namespace, "doomed-move", "doomed",
                   targetNodeName=staged.target)  # fmt: skip
    wait_for(
        lambda: ((parts.vmi("doomed") or {}).get("status") or {}).get("phase") == "Running",
        "the VMI Running on the target",
    )
    assert parts.vmi("doomed")["status"]["nodeName"] == staged.target
    held = parts.vm("doomed")
    assert api.HOLD_ANNOTATION in held["metadata"]["annotations"]
    assert held["spec"]["template"]["spec"]["nodeSelector"][HOSTNAME] == staged.target
    token = held["metadata"]["labels"][api.OPERATION_TOKEN_LABEL]
    assert leases_of(staged.api, token)
    set_taint(parts.kubevirt, staged.target, {**TEST_TAINT, "effect": "NoExecute"})
    restart = refused(staged.api, staged.namespace, "doomed-move", api.TARGET_START_FAILED)
    assert restart["metadata"]["uid"] == token
    vmi = parts.vmi("doomed")
    assert vmi is None or vmi["status"].get("phase") in ("Failed", "Succeeded"), vmi["status"]
    after = staged.snapshot("doomed")
    assert after["vm"]["spec"]["runStrategy"] == "Halted"
    assert after["vm"]["spec"]["template"] == before["vm"]["spec"]["template"], "pin removed"
    assert (after["vm"]["labels"], after["vm"]["annotations"]) == (
        before["vm"]["labels"], before["vm"]["annotations"],
    )  # fmt: skip
    assert (after["claims"], after["leases"]) == (before["claims"], before["leases"])
    assert leases_of(staged.api, token) == []
