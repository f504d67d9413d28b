"""The operator stopped or killed in the middle of a RemoteRestart: the operation's token
carries it over, it never runs the partition twice, and its locks are only ever leases that
run out.

* Stopped (SIGTERM) while the operation holds its locks (at Verifying: the VM held, pinned and
  started on the target, waiting for an agent that never connects): after the lock timeout
  every Lease of the token has run out, and nothing was removed (the VM, its hold, its PVC, the
  VMI). Started again, the operator takes its locks back under the same token; stopped by the
  orchestrator (spec.stop: Failed) it releases them.
* Killed (SIGKILL) at each step in turn (one run per step, then started again): every run ends
  RestartSucceeded, with one VMI started (on the target) over the whole run, no Lease of the
  token left, and no moment the stand-in's attach log shows the VM's RWO root attached on two
  nodes. A pass runs every step that finishes at once and writes status at its end, so most
  steps never show in status.step: the kill comes at the first sign of the step instead, read
  every 2 ms (KILL_POINTS): a first lock Lease, the VM's hold, the target's VMI, the hold gone.
  RestoringMemory, which a boot from disk skips, has a run of its own: a hibernated sleeper,
  the kill once its image was told to resume.

The cheap tier: simulated VMIs, a real agent over a fake guest tree (it keeps reporting while
the VM is stopped, so Verifying finds it connected once the VMI runs on the target); an operator
process of this module's own (the session operator is stopped meanwhile).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from conftest import OperatorProcess
from hibernation_helpers import Images
from kubernetes import client, watch
from partition_helpers import Partitions, partition_manifest, wait_for
from remote_restart_helpers import (
    NodePool,
    assert_terminated,
    boot_agent_on_target,
    condition,
    create_restart,
    get_restart,
    halt,
    hibernate_sleeper,
    leases_of,
    patch_restart,
    step_states,
    wait_step,
    wait_terminated,
    wait_vm_and_claims,
    world_snapshot,
)
from sleeper_helpers import Sleepers, with_persistent_root

from lparkube.api.v1alpha1 import remoterestart as api
from lparkube.domain.conditions import TRUE
from lparkube_devenv.controlplane import free_port, wait_until
from lparkube_devenv.kubevirt.storage import two_writers

KILL_INTERVAL = 0.002  # seconds between reads while waiting for a kill point
VMIS, PLURAL = ("kubevirt.io", "v1"), "virtualmachineinstances"
CONVERGE_TIMEOUT = 60.0
LOCK_TIMEOUT = 5  # seconds, spec.lockTimeout


class Watch:
    """Watches the namespace's VMIs (the API's watch: every change, none missed) in a thread:
    every VMI made over the run, and the node of each one that ran."""

    def __init__(self, parts: Partitions, name: str) -> None:
        self.custom = client.CustomObjectsApi(parts.core.api_client)
        self.namespace, self.name = parts.namespace, name
        self.made: list[str] = []  # uids, in order
        self.running: dict[str, str] = {}  # uid -> node
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="vmi-watch", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        listed = self.custom.list_namespaced_custom_object(*VMIS, self.namespace, PLURAL)
        for vmi in listed["items"]:
            self._saw(vmi)
        version = listed["metadata"]["resourceVersion"]
        self._started.set()
        while not self._stop.is_set():
            stream = watch.Watch().stream(
                self.custom.list_namespaced_custom_object, *VMIS, self.namespace, PLURAL,
                resource_version=version, timeout_seconds=1,
            )  # fmt: skip
            for event in stream:
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._saw(event["object"])

    def _saw(self, vmi: dict) -> None:
        if vmi["metadata"]["name"] != self.name:
            return
        uid = vmi["metadata"]["uid"]
        if uid not in self.made:
            self.made.append(uid)
        status = vmi.get("status") or {}
        if status.get("phase") == "Running":
            self.running.setdefault(uid, status.get("nodeName"))


def double_attached(parts: Partitions) -> list:
    """Every moment the attach log shows one of the namespace's RWO volumes on two nodes."""
    claims = parts.core.list_namespaced_persistent_volume_claim(parts.namespace).items
    volumes = {pvc.spec.volume_name for pvc in claims if pvc.spec.volume_name}
    log = parts.kubevirt.storage.attach_log_path
    return [v for v in two_writers(log) if v.volume in volumes]


def held_leases(parts: Partitions, token: str) -> list[str]:
    """Leases of the namespace whose holder is the token (live or not)."""
    leases = client.CoordinationV1Api(parts.core.api_client).list_namespaced_lease(parts.namespace)
    return [lease.metadata.name for lease in leases.items if lease.spec.holder_identity == token]


def lease_expiries(parts: Partitions, restart: dict) -> dict[str, datetime]:
    """When each Lease of the operation's token runs out unless renewed."""
    coordination = client.CoordinationV1Api(parts.core.api_client)
    selector = f"{api.OPERATION_TOKEN_LABEL}={restart['metadata']['uid']}"
    leases = coordination.list_namespaced_lease(parts.namespace, label_selector=selector).items
    return {
        lease.metadata.name: (lease.spec.renew_time or lease.spec.acquire_time)
        + timedelta(seconds=lease.spec.lease_duration_seconds)
        for lease in leases
    }


def at_step(step: str) -> Callable[[Partitions, dict], bool]:
    """status.step shows ``step`` or a later one (or the operation ended)."""

    def shown(parts: Partitions, restart: dict) -> bool:
        found = get_restart(parts.core.api_client, parts.namespace, restart["metadata"]["name"])
        status = found.get("status") or {}
        at = status.get("step")
        reached = at in api.STEPS and api.STEPS.index(at) >= api.STEPS.index(step)
        return bool(reached or status.get("terminationState"))

    return shown


def annotations(parts: Partitions) -> dict:
    return (parts.vm("mover") or {}).get("metadata", {}).get("annotations") or {}


# The first sign of each step (boot from disk: RestoringMemory is Skipped); a kill point of None
# kills at once, before the operator's first pass wrote anything.
KILL_POINTS: dict[str, Callable[[Partitions, dict], bool] | None] = {
    api.VALIDATING: None,
    api.LOCKING_ADAPTERS: lambda parts, restart: bool(
        leases_of(parts.core.api_client, restart["metadata"]["uid"])
    ),  # a first lock taken
    api.GATHERING_CONFIGURATION: at_step(api.GATHERING_CONFIGURATION),  # or a later step
    api.CONFIGURING_TARGET_ADAPTERS: lambda parts, _: api.HOLD_ANNOTATION in annotations(parts),
    api.CHECKING_ADAPTERS: at_step(api.CHECKING_ADAPTERS),
    api.BOOTING: lambda parts, _: parts.vmi("mover") is not None,  # the target start requested
    api.VERIFYING: at_step(api.VERIFYING),
    api.UNLOCKING: lambda parts, _: (
        (parts.vmi("mover") or {}).get("status", {}).get("phase") == "Running"
        and api.HOLD_ANNOTATION not in annotations(parts)
    ),  # the hold removed: the unlock began
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_the_operator_killed_at_a_restart_step_converges(
    point: str,
    crashing_operator: OperatorProcess,
    sleepers: Sleepers,
    parts: Partitions,
    nodes: NodePool,
) -> None:
    api_client, namespace = parts.core.api_client, parts.namespace
    source = nodes.add()
    sleepers.create("mover", paging=False, kernel=False, node_selector=nodes.selector)
    assert halt(parts, "mover") == source
    target = nodes.add()
    started = time.monotonic()
    with Watch(parts, "mover") as watch:
        made = create_restart(api_client, namespace, "mover-move", "mover",
                              targetNodeName=target, lockTimeout=f"{LOCK_TIMEOUT}s",
                              deadline="2m")  # fmt: skip
        try:
            sign = KILL_POINTS[point]
            if sign is not None:
                wait_until(lambda: sign(parts, made), 30, f"{point}'s sign",
                           interval=KILL_INTERVAL)  # fmt: skip
            crashing_operator.kill()
            killed_at = get_restart(api_client, namespace, "mover-move").get("status") or {}
            seen = (f"{len(leases_of(api_client, made['metadata']['uid']))} Leases, VM held: "
                    f"{api.HOLD_ANNOTATION in annotations(parts)}, VMI "
                    f"{((parts.vmi('mover') or {}).get('status') or {}).get('phase')}")  # fmt: skip
        finally:
            crashing_operator.start()
        restart = wait_terminated(api_client, namespace, "mover-move", CONVERGE_TIMEOUT)
        wait_for(lambda: ((parts.vmi("mover") or {}).get("status") or {}).get("phase")
                 == "Running", "the VMI Running")  # fmt: skip
    print(f"\nkilled at {point} (the operation showed {killed_at.get('step')}, "
          f"{killed_at.get('terminationState') or 'not terminated'}; {seen}); converged "
          f"{time.monotonic() - started:.1f} s after it was made")  # fmt: skip

    assert_terminated(restart, api.RESTART_SUCCEEDED)
    assert set(step_states(restart).values()) <= {api.DONE, api.SKIPPED}, step_states(restart)
    assert len(watch.made) == 1, f"VMIs made: {watch.made}, ran: {watch.running}"
    assert list(watch.running.values()) == [target], f"VMIs that ran: {watch.running}"
    token = restart["metadata"]["uid"]
    assert leases_of(api_client, token) == []
    assert held_leases(parts, token) == []
    assert double_attached(parts) == []
    vm = parts.vm("mover")
    assert api.HOLD_ANNOTATION not in (vm["metadata"].get("annotations") or {})
    assert api.OPERATION_TOKEN_LABEL not in (vm["metadata"].get("labels") or {})


def test_the_operator_killed_while_restoring_memory_converges(
    crashing_operator: OperatorProcess,
    sleepers: Sleepers,
    parts: Partitions,
    nodes: NodePool,
    guest_agent,  # type: ignore[no-untyped-def]
) -> None:
    """RestoringMemory, the step a boot from disk skips: killed once the image was told to
    resume, the operator started again finds the same operation and the same image resuming;
    one VMI, on the target, the same boot id, no Lease left."""
    api_client, namespace = parts.core.api_client, parts.namespace
    images = Images(api_client, namespace)
    nodes.add()
    sleeper = sleepers.create("sleepy", node_selector=nodes.selector)
    boot_id = parts.status("sleepy")["agent"]["bootId"]
    hibernate_sleeper(parts, images, sleeper, "sleepy-img")
    target = nodes.add()
    with Watch(parts, "sleepy") as watch:
        create_restart(api_client, namespace, "sleepy-move", "sleepy",
                       hibernationImageName="sleepy-img", targetNodeName=target,
                       lockTimeout=f"{LOCK_TIMEOUT}s", deadline="2m")  # fmt: skip
        try:
            wait_until(lambda: (images.get("sleepy-img").get("spec") or {}).get("resume"), 30,
                       "the image told to resume", interval=KILL_INTERVAL)  # fmt: skip
            crashing_operator.kill()
        finally:
            crashing_operator.start()
        boot_agent_on_target(parts, guest_agent, sleeper, target)
        restart = wait_terminated(api_client, namespace, "sleepy-move", CONVERGE_TIMEOUT)
    assert_terminated(restart, api.RESTART_SUCCEEDED)
    assert step_states(restart)[api.RESTORING_MEMORY] == api.DONE
    assert len(watch.made) == 1, f"VMIs made: {watch.made}, ran: {watch.running}"
    assert list(watch.running.values()) == [target], f"VMIs that ran: {watch.running}"
    assert parts.status("sleepy")["agent"]["bootId"] == boot_id
    token = restart["metadata"]["uid"]
    assert leases_of(api_client, token) == [] and held_leases(parts, token) == []
    assert double_attached(parts) == []


def test_the_operator_stopped_while_holding_locks_lets_them_run_out_removing_nothing(
    crashing_operator: OperatorProcess, parts: Partitions, nodes: NodePool
) -> None:
    api_client, namespace, kubevirt = parts.core.api_client, parts.namespace, parts.kubevirt
    target = nodes.add()
    manifest = with_persistent_root(partition_manifest("holder", "127.0.91.2", free_port()))
    manifest["spec"]["vmTemplate"]["spec"]["runStrategy"] = "Halted"
    manifest["spec"]["vmTemplate"]["spec"]["template"]["spec"]["nodeSelector"] = nodes.selector
    parts.create(manifest)
    wait_vm_and_claims(kubevirt, api_client, namespace, "holder")
    create_restart(api_client, namespace, "holder-move", "holder", targetNodeName=target,
                   lockTimeout=f"{LOCK_TIMEOUT}s", deadline="3m")  # fmt: skip
    restart = wait_step(api_client, namespace, "holder-move", api.VERIFYING, 30)
    assert "terminationState" not in restart["status"], restart["status"]
    assert condition(restart, api.LOCKED)["status"] == TRUE
    locks = lease_expiries(parts, restart)
    assert locks, "the operation holds its adapter locks"
    vmi = wait_for(
        lambda: (v := parts.vmi("holder")) and (v.get("status") or {}).get("phase") == "Running"
        and v,
        "the VMI Running on the target",
    )  # fmt: skip

    assert crashing_operator.stop() == 0
    before = world_snapshot(kubevirt, api_client, namespace, "holder")
    assert api.HOLD_ANNOTATION in before["vm"]["annotations"]  # held, and stays so
    wait_for(
        lambda: all(at < datetime.now(UTC) for at in lease_expiries(parts, restart).values()),
        "every lock run out",
        timeout=LOCK_TIMEOUT + 15,
    )
    assert set(lease_expiries(parts, restart)) == set(locks), "no Lease was deleted or added"
    assert world_snapshot(kubevirt, api_client, namespace, "holder") == before, "nothing changed"
    assert parts.vmi("holder")["metadata"]["uid"] == vmi["metadata"]["uid"]

    crashing_operator.start()
    wait_for(
        lambda: (expiries := lease_expiries(parts, restart))
        and all(at > datetime.now(UTC) for at in expiries.values()),
        "the locks taken again under the same token",
        timeout=30,
    )  # fmt: skip
    patch_restart(api_client, namespace, "holder-move", {"stop": api.STOP_FAILED})
    ended = wait_terminated(api_client, namespace, "holder-move", CONVERGE_TIMEOUT)
    assert_terminated(ended, api.RESTART_FAILED, api.STOPPED_BY_USER)
    assert leases_of(api_client, ended["metadata"]["uid"]) == []
    after = world_snapshot(kubevirt, api_client, namespace, "holder")
    assert api.HOLD_ANNOTATION not in (after["vm"]["annotations"] or {})
    assert after["vm"]["spec"]["runStrategy"] == "Halted"  # started on the target once: stopped
    assert after["claims"] == before["claims"]
