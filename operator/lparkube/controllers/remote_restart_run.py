"""One RemoteRestart's run: validate, lock, gather, configure the target, check the volumes,
restore or boot, verify, unlock; or terminate RestartFailed and undo (docs/api.md).

cluster-api's pattern, as in ``hibernation_run.py``: each pass reads the RemoteRestart, its
Partition, VM, VMI, image, the nodes and the partition's adapter Leases once into a scope, runs
the phase of the step the status names (and the following ones while they finish at once, so
the operator's share of a restart is one pass), and writes status at the end — and, write-ahead,
each time it moves on to a step within the pass, before that step touches anything. A step's
own reads (the pods of a node check, the volume attachments) are made by its phase only.

Every phase is safe to run again after the operator died in it: the Leases carry the token,
the VM's hold annotation records what the VM had and is written in one patch guarded by the
resourceVersion read, and a step moves on only in the status write that records it. The
partition never runs twice: nothing is started before the source is proven stopped and its
RWO volumes are released, and a rollback after a start was requested leaves the VM Halted.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lparkube import metrics
from lparkube.adapters.adapter_locks import AdapterLockedError, AdapterLocks, LockConflictError
from lparkube.adapters.kube import (
    HIBERNATION_IMAGE,
    PARTITION,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    KindNotServedError,
    Kube,
    ResourceRef,
)
from lparkube.api.v1alpha1 import remoterestart as api
from lparkube.controllers.polling import pause
from lparkube.domain import failover
from lparkube.domain import hibernation as h
from lparkube.domain import remote_restart as rr
from lparkube.domain.clock import parse_time, rfc3339, utcnow
from lparkube.domain.conditions import find, merge

POLL_SECONDS = 1.0
CONFLICT, UNPROCESSABLE = 409, 422
REMOTE_RESTART = ResourceRef("lparkube.io", "v1alpha1", api.PLURAL)
VIOS_CLUSTER = ResourceRef("lparkube.io", "v1alpha1", "viosclusters")
NETWORK_ATTACHMENT = ResourceRef("k8s.cni.cncf.io", "v1", "network-attachment-definitions")
LIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"
START_STEPS = frozenset({api.RESTORING_MEMORY, api.BOOTING})


@dataclass
class RestartScope:
    """What one pass read, and the status it will write."""

    restart: dict[str, Any]
    partition: dict[str, Any] | None
    vm: dict[str, Any] | None
    vmi: dict[str, Any] | None
    image: dict[str, Any] | None
    nodes: list[dict[str, Any]]
    leases: dict[str, dict[str, Any]]
    pool: dict[str, Any] | None
    now: datetime
    status: dict[str, Any] = field(default_factory=dict)
    waiting: rr.Refusal | None = None
    failure: rr.Refusal | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)  # type, reason, message

    @property
    def spec(self) -> dict[str, Any]:
        return self.restart.get("spec") or {}

    @property
    def step(self) -> str:
        return self.status.get("step") or api.VALIDATING

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self.status.get("steps") or []

    @property
    def terminated(self) -> bool:
        return bool(self.status.get("terminationState"))

    @property
    def target(self) -> str:
        return self.status.get("targetNodeName") or ""

    @property
    def vm_name(self) -> str:
        return (self.vm or {}).get("metadata", {}).get("name") or ""

    def step_started(self, name: str) -> datetime | None:
        return parse_time(next((s.get("startTime") for s in self.steps if s["name"] == name), None))


class RemoteRestartRun:
    """Runs one RemoteRestart to its termination state; resumes from status."""

    def __init__(
        self, kube: Kube, body: dict[str, Any], now: Callable[[], datetime] = utcnow
    ) -> None:
        self.kube, self.now = kube, now
        self.locks = AdapterLocks(kube, now)
        meta = body.get("metadata") or {}
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.partition_name = (body.get("spec") or {}).get("partitionName", "")

    async def execute(self, stopped: kopf.DaemonStopped | None = None) -> None:
        while not (stopped and stopped.is_set()):
            scope = await self.read()
            if scope is None or scope.terminated:
                return
            try:
                await self.run_pass(scope)
            except (LockConflictError, ApiException) as error:
                if isinstance(error, ApiException) and error.status not in (
                    CONFLICT,
                    UNPROCESSABLE,
                ):
                    raise
                continue  # someone wrote first: read again, decide again
            await self.write(scope)
            if scope.terminated:
                return
            await pause(stopped, POLL_SECONDS)

    # --- reading and writing once per pass ------------------------------------------------------

    async def read(self) -> RestartScope | None:
        restart = await self.kube.get(REMOTE_RESTART, self.namespace, self.name)
        if restart is None or (restart.get("metadata") or {}).get("uid") != self.uid:
            return None
        ns, spec = self.namespace, restart.get("spec") or {}
        partition = await self.kube.get(PARTITION, ns, self.partition_name)
        vm_name = ((partition or {}).get("status") or {}).get("vmName") or self.partition_name
        vm = await self.kube.get(VIRTUAL_MACHINE, ns, vm_name) if partition else None
        vmi = await self.kube.get(VIRTUAL_MACHINE_INSTANCE, ns, vm_name) if partition else None
        image_name = spec.get("hibernationImageName")
        image = await self.kube.get(HIBERNATION_IMAGE, ns, image_name) if image_name else None
        pool_name = spec.get("viosClusterName") or ((partition or {}).get("spec") or {}).get(
            "viosClusterName"
        )
        pool = await self.kube.get(VIOS_CLUSTER, None, pool_name) if pool_name else None
        nodes = await self.kube.list_path("/api/v1/nodes")
        leases = await self.locks.leases_of_partition(ns, self.partition_name)
        status = dict(restart.get("status") or {})
        return RestartScope(
            restart, partition, vm, vmi, image, nodes, leases, pool, self.now(), status
        )

    async def write(self, scope: RestartScope) -> None:
        stored = scope.restart.get("status") or {}
        generation = scope.restart["metadata"].get("generation", 1)
        desired = rr.conditions_from(
            scope.steps, scope.status.get("terminationState"), scope.failure, scope.waiting
        )
        scope.status["conditions"] = merge(stored.get("conditions"), desired, generation, scope.now)
        scope.status["observedGeneration"] = generation
        scope.status["progress"] = rr.progress(scope.steps)
        # Events are queued first: the terminal write makes kopf stop (and may cancel) this
        # daemon while the patch is still awaited.
        for type_, reason, message in scope.events:
            kopf.event(dict(scope.restart), type=type_, reason=reason, message=message)
            if scope.partition is not None:
                kopf.event(dict(scope.partition), type=type_, reason=reason, message=message)
        if scope.status != stored:
            await self.kube.patch(
                REMOTE_RESTART, self.namespace, self.name, {"status": scope.status}, status=True
            )

    # --- the pass -------------------------------------------------------------------------------

    async def run_pass(self, scope: RestartScope) -> None:
        if not scope.steps:
            self.begin(scope)
        cause = rr.termination_cause(scope.restart, scope.now, scope.step)
        if cause is not None:
            await self.terminate_failed(scope, cause)
            return
        if scope.status.get("locks") and not await self.renew(scope):
            return
        for _ in api.STEPS:  # each phase at most once a pass
            step = scope.step
            await PHASES[step](self, scope)
            if scope.terminated or scope.waiting is not None or scope.step == step:
                return
            if step in START_STEPS:  # the VM starts now: what this pass read is stale
                return
            # Write-ahead: the next step's effects come only once status names that step, so
            # an operator killed in them resumes there (not from a step whose reads they
            # changed, e.g. Validating a VM it already started).
            await self.checkpoint(scope)

    async def checkpoint(self, scope: RestartScope) -> None:
        """Write status now (and post the events so far), as the pass goes on."""
        await self.write(scope)
        scope.restart = {**scope.restart, "status": copy.deepcopy(scope.status)}
        scope.events.clear()

    def begin(self, scope: RestartScope) -> None:
        with_image = bool(scope.spec.get("hibernationImageName"))
        steps = rr.start_step(rr.steps_initial(with_image), api.VALIDATING, scope.now)
        scope.status.update(
            {
                "token": self.uid,
                "step": api.VALIDATING,
                "steps": steps,
                "startTime": rfc3339(scope.now),
            }
        )
        scope.events.append(
            ("Normal", api.RESTART_STARTED_EVENT, f"restarting Partition {self.partition_name}")
        )

    def advance(self, scope: RestartScope, message: str = "") -> None:
        started = scope.step_started(scope.step)
        if started is not None:
            seconds = max(0.0, (scope.now - started).total_seconds())
            metrics.REMOTE_RESTART_STEP_SECONDS.labels(step=scope.step).observe(seconds)
        steps, following = rr.advance(scope.steps, scope.step, scope.now, message)
        scope.status["steps"] = steps
        if following is not None:
            scope.status["step"] = following

    def wait(self, scope: RestartScope, refusal: rr.Refusal) -> None:
        scope.waiting = refusal
        scope.status["steps"] = rr.note_step(scope.steps, scope.step, refusal.message)

    async def renew(self, scope: RestartScope) -> bool:
        """Keep every lock held (recreating ours, never another's); False: the run ended."""
        try:
            await self.hold_locks(scope)
        except AdapterLockedError as error:
            await self.terminate_failed(scope, rr.Refusal(api.ADAPTER_LOCKED, str(error)))
            return False
        return True

    async def hold_locks(self, scope: RestartScope) -> None:
        adapters = rr.gathered_adapters(scope.image, scope.vm, scope.vmi)
        locks = rr.locks_for(self.partition_name, adapters)
        seconds = rr.lock_seconds(scope.restart, scope.pool)
        expires = await self.locks.hold(
            self.namespace,
            partition=self.partition_name,
            token=self.uid,
            locks=locks,
            seconds=seconds,
            leases=scope.leases,
        )
        scope.leases = await self.locks.leases_of_partition(self.namespace, self.partition_name)
        scope.status["locks"] = rr.status_locks(locks, expires)

    # --- phases ---------------------------------------------------------------------------------

    async def validating(self, scope: RestartScope) -> None:
        inp = await self.validation_input(scope)
        target = rr.validate(inp)
        if target.refusal is not None:
            await self.terminate_failed(scope, target.refusal)
            return
        scope.status["sourceNodeName"] = inp.source_node
        scope.status["targetNodeName"] = target.name
        self.advance(scope, f"target node {target.name}")

    async def validation_input(self, scope: RestartScope) -> rr.Input:
        others = await self.kube.list(REMOTE_RESTART, self.namespace)
        pods = await self.kube.list_path("/api/v1/pods", fieldSelector=LIVE_PODS)
        template = ((scope.vm or {}).get("spec") or {}).get("template") or {}
        claims = {
            name: await self.kube.get_claim(self.namespace, name)
            for name in rr.claim_names(template.get("spec") or {})
        }
        volumes = {}
        for pvc in claims.values():
            volume = ((pvc or {}).get("spec") or {}).get("volumeName")
            if volume:
                volumes[volume] = await self.kube.get_volume(volume)
        inp = rr.Input(
            scope.restart, scope.partition, scope.vm, scope.vmi, scope.image,
            tuple(others), tuple(scope.nodes), tuple(pods), scope.pool, claims, volumes,
        )  # fmt: skip
        networks = {name: await self.network(name) for name in rr.multus_networks(inp)}
        return dataclasses.replace(inp, networks=networks)

    async def network(self, name: str) -> dict[str, Any] | None:
        namespace, _, short = name.partition("/")
        try:
            return await self.kube.get(NETWORK_ATTACHMENT, namespace, short)
        except KindNotServedError:
            return None

    async def locking_adapters(self, scope: RestartScope) -> None:
        try:
            await self.hold_locks(scope)
        except AdapterLockedError as error:
            await self.terminate_failed(scope, rr.Refusal(api.ADAPTER_LOCKED, str(error)))
            return
        pods = await self.kube.list_path(
            f"/api/v1/namespaces/{self.namespace}/pods",
            labelSelector=f"{rr.LAUNCHER_VM_LABEL}={scope.vm_name}",
        )
        source = scope.status.get("sourceNodeName") or ""
        self_fenced = failover.self_fenced_on(scope.partition or {}, scope.vmi, source, scope.now)
        view = rr.SourceView(
            scope.vm_name, source, scope.vmi, scope.image, tuple(pods), tuple(scope.nodes),
            self_fenced,
        )  # fmt: skip
        refusal = rr.source_stop_refusal(view)
        if refusal is not None:
            if rr.source_hold_wanted(view, scope.vm):
                ops = rr.source_hold_patch(scope.vm or {}, self.uid)
                scope.vm = await self.kube.json_patch(
                    VIRTUAL_MACHINE, self.namespace, scope.vm_name, ops
                )
            stored = find((scope.restart.get("status") or {}).get("conditions"), api.LOCKED)
            if (stored or {}).get("reason") != api.WAITING_FOR_SOURCE_STOP:
                scope.events.append(("Warning", api.WAITING_FOR_SOURCE_STOP_EVENT, refusal.message))
            self.wait(scope, refusal)
            return
        self.advance(scope, f"{len(scope.status['locks'])} locks held; the source is stopped")

    async def gathering_configuration(self, scope: RestartScope) -> None:
        adapters = rr.gathered_adapters(scope.image, scope.vm, scope.vmi)
        scope.status["adapters"] = rr.status_adapters(adapters, api.ADAPTER_LOCKED_STATE)
        self.advance(scope, f"{len(adapters)} adapters")

    async def configuring_target_adapters(self, scope: RestartScope) -> None:
        if scope.vm is None:
            await self.terminate_failed(scope, rr.Refusal(api.VM_NOT_FOUND, "the VM is gone"))
            return
        adapters = rr.gathered_adapters(scope.image, scope.vm, scope.vmi)
        ops = rr.hold_patch(scope.vm, self.uid, scope.target, adapters)
        scope.vm = await self.kube.json_patch(VIRTUAL_MACHINE, self.namespace, scope.vm_name, ops)
        scope.status["adapters"] = rr.with_state(scope.status["adapters"], api.ADAPTER_CONFIGURED)
        message = f"VM {scope.vm_name} held and pinned to node {scope.target}"
        scope.events.append(("Normal", api.TARGET_CONFIGURED_EVENT, message))
        self.advance(scope, message)

    async def checking_adapters(self, scope: RestartScope) -> None:
        phase = ((scope.vmi or {}).get("status") or {}).get("phase")
        if scope.vmi is not None and phase not in rr.FINAL_VMI_PHASES:
            vmi_node = (scope.vmi.get("status") or {}).get("nodeName") or "no node"
            message = f"waiting for the VMI ({phase}, {vmi_node}) to stop"
            self.wait(scope, rr.Refusal(api.WAITING_FOR_SOURCE_STOP, message))
            return
        template = ((scope.vm or {}).get("spec") or {}).get("template") or {}
        claims = [
            pvc
            for name in rr.claim_names(template.get("spec") or {})
            if (pvc := await self.kube.get_claim(self.namespace, name)) is not None
        ]
        attachments = await self.kube.list_path("/apis/storage.k8s.io/v1/volumeattachments")
        refusal = rr.volume_release_refusal(claims, attachments, scope.target)
        if refusal is not None:
            self.wait(scope, refusal)
            return
        scope.status["adapters"] = rr.with_state(scope.status["adapters"], api.ADAPTER_VERIFIED)
        self.advance(scope, "no volume is attached to another node")

    async def restoring_memory(self, scope: RestartScope) -> None:
        image = scope.image or {}
        if not (image.get("spec") or {}).get("resume"):
            name = scope.spec["hibernationImageName"]
            await self.kube.patch(
                HIBERNATION_IMAGE, self.namespace, name, {"spec": {"resume": True}}
            )
            self.wait(scope, rr.Refusal(api.IN_PROGRESS, f"HibernationImage {name} resuming"))
            return
        resumed = find((image.get("status") or {}).get("conditions"), h.RESUMED) or {}
        if resumed.get("status") == "True":
            self.advance(scope, resumed.get("message") or "the image was restored")
            return
        if resumed.get("status") == "False" and resumed.get("reason") not in (
            h.IN_PROGRESS,
            h.NOT_REQUESTED,
        ):
            message = f"{resumed.get('reason')}: {resumed.get('message')}"
            await self.terminate_failed(scope, rr.Refusal(api.RESUME_FAILED, message))
            return
        self.wait(scope, rr.Refusal(api.IN_PROGRESS, "waiting for the guest to restore its image"))

    async def booting(self, scope: RestartScope) -> None:
        hold = rr.hold_of(scope.vm)
        if hold is None or hold.token != self.uid:
            await self.terminate_failed(
                scope, rr.Refusal(api.TARGET_START_FAILED, "the VM lost this operation's hold")
            )
            return
        strategy, start = rr.boot_run_strategy(hold)
        patch = {"spec": {"runStrategy": strategy}}
        await self.kube.patch(VIRTUAL_MACHINE, self.namespace, scope.vm_name, patch)
        if start:
            try:
                await self.kube.kubevirt_subresource(
                    VIRTUAL_MACHINE, self.namespace, scope.vm_name, "start", body={}
                )
            except ApiException as error:
                if error.status != CONFLICT:  # already started by a pass that died here
                    raise
        self.advance(scope, f"runStrategy {strategy}{' and started' if start else ''}")

    async def verifying(self, scope: RestartScope) -> None:
        started = scope.step_started(api.RESTORING_MEMORY) or scope.step_started(api.BOOTING)
        outcome = rr.verify(scope.vmi, scope.partition, scope.target, started, scope.image)
        if outcome.refusal is not None:
            await self.terminate_failed(scope, outcome.refusal)
            return
        if not outcome.done:
            self.wait(scope, rr.Refusal(api.IN_PROGRESS, outcome.message))
            return
        self.advance(scope, outcome.message)

    async def unlocking(self, scope: RestartScope) -> None:
        await self.release_vm(scope, None)
        await self.locks.release(self.namespace, self.uid)
        scope.status["locks"] = []
        scope.status["adapters"] = rr.with_state(scope.status["adapters"], api.ADAPTER_RELEASED)
        self.advance(scope, "the hold is removed and every lock released")
        message = f"Partition {self.partition_name} runs on node {scope.target}"
        self.terminate(
            scope, api.RESTART_SUCCEEDED, ("Normal", api.RESTART_SUCCEEDED_EVENT, message)
        )

    # --- termination ----------------------------------------------------------------------------

    async def terminate_failed(self, scope: RestartScope, cause: rr.Refusal) -> None:
        """Undo what this operation did (the VM's hold; a started VMI stopped), release every
        lock, and end RestartFailed naming the cause."""
        hold = rr.hold_of(scope.vm)
        if hold is not None and hold.token == self.uid:
            plan = rr.rollback_plan(hold, scope.steps)
            await self.release_vm(scope, plan.run_strategy)
        await self.locks.release(self.namespace, self.uid)
        scope.status["locks"] = []
        if scope.status.get("adapters"):
            scope.status["adapters"] = rr.with_state(scope.status["adapters"], api.ADAPTER_RELEASED)
        scope.status["steps"] = rr.fail_step(scope.steps, scope.step, scope.now, cause.message)
        scope.failure, scope.waiting = cause, None
        event = ("Warning", api.RESTART_FAILED_EVENT, f"{cause.reason}: {cause.message}")
        self.terminate(scope, api.RESTART_FAILED, event)

    async def release_vm(self, scope: RestartScope, strategy: str | None) -> None:
        hold = rr.hold_of(scope.vm)
        if scope.vm is None or hold is None or hold.token != self.uid:
            return
        patch = rr.release_patch(scope.vm, hold, strategy)
        await self.kube.patch(VIRTUAL_MACHINE, self.namespace, scope.vm_name, patch)

    def terminate(self, scope: RestartScope, state: str, event: tuple[str, str, str]) -> None:
        scope.status["terminationState"] = state
        scope.status["terminationCode"] = api.TERMINATION_CODES[state]
        scope.status["completionTime"] = rfc3339(scope.now)
        scope.events.append(event)
        metrics.REMOTE_RESTARTS.labels(result=state).inc()


PHASES = {
    api.VALIDATING: RemoteRestartRun.validating,
    api.LOCKING_ADAPTERS: RemoteRestartRun.locking_adapters,
    api.GATHERING_CONFIGURATION: RemoteRestartRun.gathering_configuration,
    api.CONFIGURING_TARGET_ADAPTERS: RemoteRestartRun.configuring_target_adapters,
    api.CHECKING_ADAPTERS: RemoteRestartRun.checking_adapters,
    api.RESTORING_MEMORY: RemoteRestartRun.restoring_memory,
    api.BOOTING: RemoteRestartRun.booting,
    api.VERIFYING: RemoteRestartRun.verifying,
    api.UNLOCKING: RemoteRestartRun.unlocking,
}


def unfinished(status: dict[str, Any] | None) -> bool:
    """Whether the RemoteRestart has work: no termination state yet."""
    return not (status or {}).get("terminationState")
