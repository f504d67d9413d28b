"""Helpers for the RemoteRestart integration tests: RemoteRestarts and their waits, the Leases of
an operation token, a snapshot of "the VM, its disks and every Lease" to compare before/after,
and dedicated stand-in nodes a test may power off or fence without disturbing other tests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hibernation_helpers import Images
from kubernetes import client
from partition_helpers import GROUP, VERSION, Partitions, wait_for
from sleeper_helpers import Sleeper

from lparkube.api.v1alpha1 import remoterestart as api
from lparkube_devenv.controlplane import wait_until
from lparkube_devenv.kubevirt import VM, StandIn
from lparkube_devenv.kubevirt.nodes import NODES_PATH, ensure_nodes

PLURAL = api.PLURAL
FENCE_TAINT = {"key": api.OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}
TERMINATION_TIMEOUT = 120.0


def create_restart(
    api_client: client.ApiClient, namespace: str, name: str, partition: str, **spec: Any
) -> dict:
    """Create a RemoteRestart of ``partition`` (spec fields as keyword arguments)."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {"partitionName": partition, **spec},
    }
    return client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )


def get_restart(api_client: client.ApiClient, namespace: str, name: str) -> dict:
    return client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )


def patch_restart(api_client: client.ApiClient, namespace: str, name: str, spec: dict) -> dict:
    """Merge ``spec`` into the RemoteRestart's spec (``stop``, say)."""
    return client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
    )


def condition(restart: dict, type_: str) -> dict:
    """The RemoteRestart's condition of this type ({} when absent)."""
    found = [c for c in (restart.get("status") or {}).get("conditions") or [] if c["type"] == type_]
    return found[0] if found else {}


def step(restart: dict, name: str) -> dict:
    """The status.steps entry of this step ({} when absent)."""
    steps = (restart.get("status") or {}).get("steps") or []
    return next((s for s in steps if s["name"] == name), {})


def wait_terminated(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    timeout: float = TERMINATION_TIMEOUT,
) -> dict:
    """The RemoteRestart once it has a terminationState."""

    def terminated() -> dict | None:
        restart = get_restart(api_client, namespace, name)
        return restart if (restart.get("status") or {}).get("terminationState") else None

    try:
        return wait_for(terminated, f"RemoteRestart {name} terminated", timeout)
    except TimeoutError as error:
        status = get_restart(api_client, namespace, name).get("status")
        raise AssertionError(f"{error}; its status: {status}") from None


def wait_waiting(
    api_client: client.ApiClient, namespace: str, name: str, reason: str, timeout: float = 60.0
) -> dict:
    """The RemoteRestart once a condition (Locked or Complete) says it waits for ``reason``."""

    def waiting() -> dict | None:
        restart = get_restart(api_client, namespace, name)
        reasons = {condition(restart, t).get("reason") for t in (api.LOCKED, api.COMPLETE)}
        return restart if reason in reasons else None

    try:
        return wait_for(waiting, f"RemoteRestart {name} waiting: {reason}", timeout)
    except TimeoutError as error:
        status = get_restart(api_client, namespace, name).get("status")
        raise AssertionError(f"{error}; its status: {status}") from None


def assert_terminated(restart: dict, state: str, reason: str | None = None) -> None:
    """terminationState/Code as ``state``, Complete saying so (``reason`` for a failure)."""
    status = restart["status"]
    assert status["terminationState"] == state, status
    assert status["terminationCode"] == api.TERMINATION_CODES[state]
    assert status.get("completionTime") and status.get("startTime")
    complete = condition(restart, api.COMPLETE)
    expected = api.RESTART_SUCCEEDED if state == api.RESTART_SUCCEEDED else reason
    if expected is not None:
        assert complete["reason"] == expected, complete


def events_of(
    api_client: client.ApiClient, namespace: str, name: str, kind: str = api.KIND
) -> set[tuple[str, str]]:
    """(type, reason) of the Events posted on the object ``kind``/``name``."""
    events = (
        client.CoreV1Api(api_client)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        .items
    )
    return {(e.type, e.reason) for e in events if e.involved_object.kind == kind}


def leases_of(api_client: client.ApiClient, token: str) -> list[dict]:
    """Every Lease (any namespace) labelled with this operation token."""
    found = client.CoordinationV1Api(api_client).list_lease_for_all_namespaces(
        label_selector=f"{api.OPERATION_TOKEN_LABEL}={token}", _preload_content=False
    )
    return json.loads(found.data).get("items") or []


def world_snapshot(
    kubevirt: StandIn, api_client: client.ApiClient, namespace: str, vm: str
) -> dict:
    """The VM (metadata labels/annotations, spec), its disks' claims (phase, volume, request)
    and every Lease of the namespace (name, holder, resourceVersion): equal before and after an
    operation that changed nothing."""
    found = kubevirt.kube.get(VM.path(namespace, vm)) or {}
    meta = found.get("metadata") or {}
    spec = found.get("spec") or {}
    core = client.CoreV1Api(api_client)
    claims = {}
    for volume in ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName") or (
            volume.get("dataVolume") or {}
        ).get("name")
        if claim:
            pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
            claims[claim] = (pvc.status.phase, pvc.spec.volume_name, pvc.spec.resources.requests)
    leases = client.CoordinationV1Api(api_client).list_namespaced_lease(namespace).items
    return {
        "vm": {
            "labels": meta.get("labels"),
            "annotations": meta.get("annotations"),
            "spec": spec,
        },
        "claims": claims,
        "leases": sorted(
            (lease.metadata.name, lease.spec.holder_identity, lease.metadata.resource_version)
            for lease in leases
        ),
    }


# --- dedicated nodes ----------------------------------------------------------------------------


class NodePool:
    """Stand-in nodes of one test, labelled ``label=value``: a VM whose nodeSelector is that
    label can only run on them, so powering one off or fencing it disturbs no other test."""

    def __init__(self, kubevirt: StandIn) -> None:
        self.kubevirt = kubevirt
        self.label, self.value = "lparkube.test/restart-pool", uuid.uuid4().hex[:6]
        self.names: list[str] = []

    @property
    def selector(self) -> dict[str, str]:
        return {self.label: self.value}

    def add(self) -> str:
        """A new Ready node in the pool."""
        name = f"node-rr-{self.value}-{len(self.names)}"
        ensure_nodes(self.kubevirt.kube, [name])
        self.kubevirt.kube.merge_patch(
            f"{NODES_PATH}/{name}", {"metadata": {"labels": self.selector}}
        )
        self.names.append(name)
        return name

    def power_off(self, name: str) -> None:
        """Cut the node's power and wait until it is no longer Ready."""
        self.kubevirt.power_off_node(name)
        wait_for(lambda: not self.ready(name), f"node {name} not Ready", 60)

    def isolate(self, name: str) -> None:
        """Cut the node off the network (its guests run on) and wait until it is not Ready."""
        self.kubevirt.isolate_node(name)
        wait_for(lambda: not self.ready(name), f"node {name} not Ready", 60)

    def fence(self, name: str) -> None:
        """The admin's fence: node.kubernetes.io/out-of-service=nodeshutdown:NoExecute."""
        node = self.kubevirt.kube.get(f"{NODES_PATH}/{name}") or {}
        taints = [*((node.get("spec") or {}).get("taints") or []), FENCE_TAINT]
        self.kubevirt.kube.merge_patch(f"{NODES_PATH}/{name}", {"spec": {"taints": taints}})

    def ready(self, name: str) -> bool:
        node = self.kubevirt.kube.get(f"{NODES_PATH}/{name}") or {}
        conditions = (node.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def close(self) -> None:
        for name in self.names:
            self.kubevirt.power_on_node(name)
            self.kubevirt.kube.delete(f"{NODES_PATH}/{name}")


@contextmanager
def node_pool(kubevirt: StandIn, node_monitor_grace: float = 2.0) -> Iterator[NodePool]:
    """A NodePool whose powered-off nodes turn NotReady after ``node_monitor_grace`` seconds."""
    saved = kubevirt.settings.node_monitor_grace
    kubevirt.settings.node_monitor_grace = node_monitor_grace
    pool = NodePool(kubevirt)
    try:
        yield pool
    finally:
        kubevirt.settings.node_monitor_grace = saved
        pool.close()


# --- steps, and waiting for a step (the refusal and killed-operator tests) ----------------------

STEP_POLL = 0.02  # seconds: a step may last a single pass of the operation (about a second)


def step_states(restart: dict) -> dict[str, str]:
    """Every step's status, by name."""
    return {s["name"]: s["status"] for s in (restart.get("status") or {}).get("steps") or []}


def wait_step(
    api_client: client.ApiClient, namespace: str, name: str, wanted: str, timeout: float = 60.0
) -> dict:
    """The RemoteRestart once status.step is ``wanted`` or a later step, or it terminated
    (polled every 20 ms: a pass may run several steps, and one may last a single pass)."""
    order = api.STEPS.index(wanted)

    def reached() -> dict | None:
        restart = get_restart(api_client, namespace, name)
        status = restart.get("status") or {}
        at = status.get("step")
        if status.get("terminationState") or (at in api.STEPS and api.STEPS.index(at) >= order):
            return restart
        return None

    return wait_until(reached, timeout, f"RemoteRestart {name} at {wanted}", interval=STEP_POLL)


def wait_vm_and_claims(
    kubevirt: StandIn, api_client: client.ApiClient, namespace: str, vm: str, timeout: float = 30
) -> dict:
    """world_snapshot once the VM exists and every claim of it is Bound."""

    def settled() -> dict | None:
        if kubevirt.kube.get(VM.path(namespace, vm)) is None:
            return None
        try:
            snapshot = world_snapshot(kubevirt, api_client, namespace, vm)
        except client.ApiException as error:
            if error.status == 404:  # a claim not made yet
                return None
            raise
        claims = snapshot["claims"].values()
        return snapshot if claims and all(c[0] == "Bound" for c in claims) else None

    return wait_for(settled, f"VM {vm} and its claims Bound", timeout)


def halt(parts: Partitions, name: str) -> str:
    """Stop the VM (runStrategy Halted) and wait until its VMI is gone: the source proven
    stopped. The node it ran on."""
    node = parts.vmi(name)["status"]["nodeName"]
    parts.kubevirt.kube.merge_patch(
        VM.path(parts.namespace, name), {"spec": {"runStrategy": "Halted"}}
    )
    wait_for(lambda: parts.vmi(name) is None, f"{name}'s VMI gone")
    return node


def boot_agent_on_target(parts: Partitions, guest_agent, sleeper: Sleeper, target: str):  # type: ignore[no-untyped-def]
    """Once the VMI runs on the target, the guest's agent starts there (a new process over the
    same guest tree: the same boot id, as after a resume)."""
    wait_for(
        lambda: (
            (vmi := parts.vmi(sleeper.name))
            and (vmi.get("status") or {}).get("phase") == "Running"
            and (vmi.get("status") or {}).get("nodeName") == target
        ),
        f"{sleeper.name} Running on {target}",
        TERMINATION_TIMEOUT,
    )
    return guest_agent(
        parts.namespace, sleeper.name, ip=sleeper.agent.ip, config=sleeper.fake.config()
    )


def hibernate_sleeper(parts: Partitions, images: Images, sleeper: Sleeper, image: str) -> None:
    """Hibernate a simulated sleeper through a HibernationImage ``image``; then its fake
    kernel is made ready to boot again (and restore) wherever the VM starts next."""
    images.create(image, sleeper.name)
    images.wait(image, "Captured", 60)
    wait_for(lambda: parts.vmi(sleeper.name) is None, "the hibernated VM halted", 60)
    assert sleeper.kernel is not None
    sleeper.kernel.close()
    power = sleeper.fake.files.power
    power.joinpath("state").unlink()
    power.joinpath("state").write_text("freeze mem disk\n")
    power.joinpath("resume").unlink()
    power.joinpath("resume").write_text("0:0\n")
