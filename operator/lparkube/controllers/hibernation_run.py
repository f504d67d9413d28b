"""One HibernationImage's run: capture (save, LU, adapters, suspend, power-off) and resume.

cluster-api's pattern: each pass reads the image, its Partition, VM, VMI, sibling images and
SaveEvent once into a scope, runs the phase of the step the status names, and writes status
once at the end. Every phase is safe to run again after the operator died in it: the SaveEvent
has a fixed name, the LU request only grows, the VM patch carries the run strategy it replaced
in an annotation on the VM itself, and the agent hibernates at most once per image id (it
journals the run). The step moves on only in the status write that records what the phase
did, so a restarted operator repeats at most one idempotent phase.

The order keeps the invariant that no image is `Captured` unless the guest's kernel wrote it
and powered the VM off: the VM's run strategy becomes `Manual` before the instruction (so the
powered-off VMI is not restarted), `Captured` is written while the VMI is still there to prove
it `Succeeded`, and only then is the VM halted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lparkube.adapters.guest_agent import AgentClient, AgentError, AgentTarget
from lparkube.adapters.kube import (
    HIBERNATION_IMAGE,
    PARTITION,
    SAVE_EVENT,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    Kube,
)
from lparkube.api.v1alpha1.hibernationimage import RUN_STRATEGY_ANNOTATION
from lparkube.controllers.polling import pause
from lparkube.domain import hibernation as h
from lparkube.domain import logical_units as lu
from lparkube.domain.clock import rfc3339, utcnow
from lparkube.domain.conditions import Condition, find, merge
from lparkube.domain.paging import PAGING_DISK, vm_memory_bytes
from lparkube.domain.partition import PARTITION_LABEL

POLL_SECONDS = 1.0
AGENT_TIMEOUT = 15.0
TOO_SMALL = "TooSmall"  # the agent's refusal while the guest has not yet seen its grown disk
CONFLICT, UNPROCESSABLE = 409, 422  # a write lost to another writer; a JSON patch test failed
HIBERNATED = "Hibernated"  # captured, the VM halted: nothing to do until a resume is asked
FAILED = "Failed"
FINAL_STEPS = frozenset({h.RESUMED, FAILED})


def step_of(status: dict[str, Any] | None) -> str:
    return ((status or {}).get("progress") or {}).get("step") or h.VALIDATING


def unfinished(spec: dict[str, Any], status: dict[str, Any]) -> bool:
    """Whether the image's run has work: a capture under way, or a resume asked for."""
    step = step_of(status)
    if step in FINAL_STEPS:
        return False
    return step != HIBERNATED or bool(spec.get("resume"))


@dataclass
class HibernationScope:
    """What one pass read, and the status it will write."""

    view: h.HibernationView
    paging_claim: dict[str, Any] | None  # the LU's PVC (read in the PreparingLU step only)
    now: datetime
    status: dict[str, Any] = field(default_factory=dict)
    conditions: list[Condition] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # type, reason, message

    @property
    def step(self) -> str:
        return step_of(self.status)

    def advance(self, step: str) -> None:
        self.status["progress"] = h.progress(step, self.status.get("imageBytes"))


class HibernationRun:
    """Runs one image until its capture ends or its resume does; resumes from status."""

    def __init__(
        self,
        kube: Kube,
        agents: AgentClient,
        body: dict[str, Any],
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.kube, self.agents, self.now = kube, agents, now
        meta = body.get("metadata") or {}
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.partition_name = (body.get("spec") or {}).get("partitionName", "")

    async def execute(self, stopped: kopf.DaemonStopped | None = None) -> None:
        while not (stopped and stopped.is_set()):
            scope = await self.read()
            if scope is None or not unfinished(scope.view.spec, scope.status):
                return
            try:
                await PHASES[scope.step](self, scope)
            except ApiException as error:
                if error.status not in (CONFLICT, UNPROCESSABLE):
                    raise
                scope.events.clear()  # the VM moved under us: read again, decide again
                continue
            await self.write(scope)
            await pause(stopped, POLL_SECONDS)

    # --- reading and writing once per pass ------------------------------------------------------

    async def read(self) -> HibernationScope | None:
        image = await self.kube.get(HIBERNATION_IMAGE, self.namespace, self.name)
        if image is None or (image.get("metadata") or {}).get("uid") != self.uid:
            return None
        ns, name = self.namespace, self.partition_name
        partition = await self.kube.get(PARTITION, ns, name)
        vm_name = ((partition or {}).get("status") or {}).get("vmName") or name
        vm = await self.kube.get(VIRTUAL_MACHINE, ns, vm_name) if partition else None
        vmi = await self.kube.get(VIRTUAL_MACHINE_INSTANCE, ns, vm_name) if partition else None
        status = dict(image.get("status") or {})
        step = step_of(status)
        siblings = await self.siblings() if step == h.VALIDATING else []
        save_name = save_event_name(self.name)
        save = await self.kube.get(SAVE_EVENT, ns, save_name) if step == h.SAVING else None
        claim = (status.get("lu") or {}).get("claimName")
        reading_lu = claim and step == h.PREPARING_LU
        paging_claim = await self.kube.get_claim(ns, claim) if reading_lu else None
        view = h.HibernationView(image, partition, vm, vmi, tuple(siblings), save)
        return HibernationScope(view, paging_claim, self.now(), status)

    async def siblings(self) -> list[dict[str, Any]]:
        """The other images of this partition (only the Validating step asks)."""
        images = await self.kube.list(HIBERNATION_IMAGE, self.namespace)
        return [
            i
            for i in images
            if i["metadata"]["uid"] != self.uid
            and (i.get("spec") or {}).get("partitionName") == self.partition_name
        ]

    async def write(self, scope: HibernationScope) -> None:
        stored = scope.view.status
        generation = scope.view.image["metadata"].get("generation", 1)
        scope.status["conditions"] = merge(
            stored.get("conditions"), scope.conditions, generation, scope.now
        )
        scope.status["observedGeneration"] = generation
        if scope.status != stored:
            await self.kube.patch(
                HIBERNATION_IMAGE, self.namespace, self.name, {"status": scope.status}, status=True
            )
        for type_, reason, message in scope.events:
            kopf.event(dict(scope.view.image), type=type_, reason=reason, message=message)

    # --- capture phases -------------------------------------------------------------------------

    async def validating(self, scope: HibernationScope) -> None:
        refusal = h.capture_refusal(scope.view)
        if refusal is not None:
            self.fail(scope, refusal)
            return
        view = scope.view
        agent = view.partition_status.get("agent") or {}
        scope.status.update(
            {
                "sourceNodeName": (view.vmi or {}).get("status", {}).get("nodeName"),
                "memoryBytes": vm_memory_bytes((view.vm or {}).get("spec"))
                or (agent.get("memory") or {}).get("totalBytes")
                or 0,
                "kernelRelease": agent.get("kernelRelease"),
                "bootId": agent.get("bootId"),
                "lu": {"claimName": view.partition_status["paging"]["claimName"]},
            }
        )
        scope.conditions = [h_in_progress("validated; saving the applications first")]
        scope.advance(h.SAVING if view.spec.get("saveFirst", True) else h.PREPARING_LU)

    async def saving(self, scope: HibernationScope) -> None:
        save = scope.view.save_event
        if save is None:
            await self.kube.create(SAVE_EVENT, self.namespace, self.save_event(scope))
            scope.status["saveEvent"] = save_event_name(self.name)
            return
        complete = find((save.get("status") or {}).get("conditions"), "Complete") or {}
        if complete.get("status") != "True":
            if h.past_deadline(scope.view.image, scope.now):
                self.fail(scope, h.Refusal(h.DEADLINE_EXCEEDED, "the save did not finish in time"))
            return
        scope.conditions = [h_in_progress(f"saved first ({complete.get('reason')})")]
        scope.advance(h.PREPARING_LU)

    def save_event(self, scope: HibernationScope) -> dict[str, Any]:
        return {
            "kind": "SaveEvent",
            "metadata": {
                "name": save_event_name(self.name),
                "labels": {PARTITION_LABEL: self.partition_name},
                "ownerReferences": [owner_reference(scope.view.image)],
            },
            "spec": {
                "reason": "Other",
                "message": f"before HibernationImage {self.name}",
                "targets": {"partitions": [self.partition_name]},
            },
        }

    async def preparing_lu(self, scope: HibernationScope) -> None:
        needed = h.image_bytes_needed(scope.status["memoryBytes"])
        claim = scope.status["lu"]["claimName"]
        pvc = scope.paging_claim
        if pvc is None:
            self.fail(scope, h.Refusal(h.NO_PAGING_LU, f"the paging LU {claim} is gone"))
            return
        requested = lu.parse_size(_dig(pvc, "spec", "resources", "requests", "storage")) or 0
        capacity = lu.parse_size(_dig(pvc, "status", "capacity", "storage")) or 0
        scope.status["lu"] = {"claimName": claim, "requestedBytes": max(requested, needed)}
        if requested < needed:
            await self.kube.request_claim_size(self.namespace, claim, lu.format_size(needed))
            scope.events.append(
                ("Normal", "LUExpanded", f"paging LU {claim} expanded to {needed} bytes")
            )
            return
        if capacity < needed:
            if h.past_deadline(scope.view.image, scope.now):
                self.fail(scope, h.Refusal(h.DEADLINE_EXCEEDED, f"LU {claim} did not grow in time"))
            return
        scope.advance(h.CAPTURING_ADAPTERS)

    async def capturing_adapters(self, scope: HibernationScope) -> None:
        view = scope.view
        if view.vm is None:
            self.fail(scope, h.Refusal(h.PARTITION_NOT_FOUND, "the Partition's VM is gone"))
            return
        adapters = h.capture_adapters(view.vm, view.vmi)
        scope.status["adapters"] = adapters
        scope.status["machine"] = h.capture_machine(view.vm)
        previous = run_strategy_before(view.vm)  # kept on the VM by a pass that died here
        scope.status["runStrategy"] = previous
        await self.hold_restarts(view.vm, previous, h.pinned_macs_patch(view.vm, adapters))
        scope.advance(h.SUSPENDING)

    async def suspending(self, scope: HibernationScope) -> None:
        """Send the instruction (again, after a restart: the agent runs an id once). A VMI
        already Succeeded means it went through before the operator could record it: the run
        strategy is Manual since the phase before, so only the guest powered it off."""
        if _dig(scope.view.vmi, "status", "phase") != "Succeeded":
            deadline = h.deadline_time(scope.view.image) or scope.now
            instruction = {"id": self.uid, "serial": PAGING_DISK, "deadline": rfc3339(deadline)}
            try:
                await self.agents.hibernate(
                    agent_target(scope.view), instruction, timeout=AGENT_TIMEOUT
                )
            except AgentError as error:
                await self.instruction_failed(scope, error)
                return
        scope.status["requestedTime"] = rfc3339(scope.now)
        scope.conditions = [h_in_progress("the guest is writing its memory to the paging LU")]
        scope.advance(h.POWERING_OFF)

    async def instruction_failed(self, scope: HibernationScope, error: AgentError) -> None:
        """A guest that refuses ends the capture; an agent not reached (or one whose grown disk
        the guest has not seen yet) is retried to the deadline. An ended capture hands the VM
        back running, as it was."""
        if error.reason == "refused" and error.refusal != TOO_SMALL:
            refusal = h.Refusal(h.GUEST_REFUSED, f"the guest refused ({error.refusal}): {error}")
        elif h.past_deadline(scope.view.image, scope.now):
            refusal = h.Refusal(h.DEADLINE_EXCEEDED, f"the deadline passed; last answer: {error}")
        else:
            scope.conditions = [h_in_progress(f"retrying the agent: {error}")]
            return
        await self.release_restarts(scope)
        self.fail(scope, refusal)

    async def powering_off(self, scope: HibernationScope) -> None:
        outcome = h.power_off_outcome(scope.view, scope.now)
        scope.conditions = [outcome.condition]
        if not outcome.done:
            return
        if outcome.condition.status != "True":
            await self.release_restarts(scope)
            self.fail(scope, h.Refusal(outcome.condition.reason, outcome.condition.message))
            return
        scope.status["capturedTime"] = rfc3339(scope.now)
        scope.events.append(("Normal", h.IMAGE_CAPTURED, outcome.condition.message))
        scope.advance(h.CAPTURED)

    async def captured(self, scope: HibernationScope) -> None:
        """Captured is on record: now the VM may be halted (its VMI deleted)."""
        if scope.view.vm is not None and run_strategy(scope.view.vm) != "Halted":
            await self.set_run_strategy(scope.view.vm, "Halted")
        scope.conditions = [Condition.of(h.READY, True, h.IMAGE_CAPTURED, "ready to resume")]
        scope.advance(HIBERNATED)

    # --- resume phases --------------------------------------------------------------------------

    async def hibernated(self, scope: HibernationScope) -> None:
        scope.advance(h.CHECKING_ADAPTERS)
        await self.checking_adapters(scope)

    async def checking_adapters(self, scope: HibernationScope) -> None:
        refusal = h.resume_refusal(scope.view)
        if refusal is not None:
            scope.conditions = [Condition.of(h.RESUMED, False, refusal.reason, refusal.message)]
            return
        scope.status["resumeStartedTime"] = rfc3339(scope.now)
        await self.release_restarts(scope, fallback=scope.status.get("runStrategy") or "Always")
        scope.conditions = [
            Condition.of(h.RESUMED, False, h.IN_PROGRESS, "the VM is starting from its image")
        ]
        scope.advance(h.RESTORING)

    async def restoring(self, scope: HibernationScope) -> None:
        condition = h.restore_outcome(scope.view)
        scope.conditions = [condition]
        if condition.reason == h.IN_PROGRESS:
            return
        scope.status["resumedTime"] = rfc3339(scope.now)
        copied = scope.view.agent_hibernation.get("imageBytes")
        if isinstance(copied, int) and copied > 0:  # known once the restored kernel logged it
            scope.status["imageBytes"] = copied
        scope.conditions.append(Condition.of(h.READY, False, h.RESUMED, "the image was used"))
        event = "Normal" if condition.status == "True" else "Warning"
        scope.events.append((event, condition.reason, condition.message))
        scope.advance(h.RESUMED)

    # --- helpers --------------------------------------------------------------------------------

    def fail(self, scope: HibernationScope, refusal: h.Refusal) -> None:
        scope.conditions = [
            Condition.of(h.CAPTURED, False, refusal.reason, refusal.message),
            Condition.of(h.READY, False, refusal.reason, refusal.message),
        ]
        scope.events.append(("Warning", refusal.reason, refusal.message))
        scope.advance(FAILED)

    async def hold_restarts(
        self, vm: dict[str, Any], previous: str, interfaces: list | None
    ) -> None:
        """runStrategy Manual (a powered-off guest stays off), the old one kept on the VM."""
        patch = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": vm["metadata"]["resourceVersion"],
            },
            {"op": "add", "path": "/spec/runStrategy", "value": "Manual"},
        ]
        if "running" in (vm.get("spec") or {}):  # KubeVirt takes one of running, runStrategy
            patch.append({"op": "remove", "path": "/spec/running"})
        annotations = vm["metadata"].get("annotations") or {}
        if RUN_STRATEGY_ANNOTATION not in annotations:
            patch.append(annotation_op(annotations, previous))
        if interfaces is not None:
            path = "/spec/template/spec/domain/devices/interfaces"
            patch.append({"op": "replace", "path": path, "value": interfaces})
        await self.kube.json_patch(VIRTUAL_MACHINE, self.namespace, vm["metadata"]["name"], patch)

    async def set_run_strategy(self, vm: dict[str, Any], strategy: str) -> None:
        await self.kube.patch(
            VIRTUAL_MACHINE,
            self.namespace,
            vm["metadata"]["name"],
            {"spec": {"runStrategy": strategy}},
        )

    async def release_restarts(self, scope: HibernationScope, fallback: str | None = None) -> None:
        """The VM back with the run strategy it had (a failed capture, a resume)."""
        vm = scope.view.vm
        annotations = ((vm or {}).get("metadata") or {}).get("annotations") or {}
        previous = annotations.get(RUN_STRATEGY_ANNOTATION) or fallback
        if vm is None or previous is None:
            return
        patch = {
            "metadata": {"annotations": {RUN_STRATEGY_ANNOTATION: None}},
            "spec": {"runStrategy": previous},
        }
        await self.kube.patch(VIRTUAL_MACHINE, self.namespace, vm["metadata"]["name"], patch)


PHASES = {
    h.VALIDATING: HibernationRun.validating,
    h.SAVING: HibernationRun.saving,
    h.PREPARING_LU: HibernationRun.preparing_lu,
    h.CAPTURING_ADAPTERS: HibernationRun.capturing_adapters,
    h.SUSPENDING: HibernationRun.suspending,
    h.POWERING_OFF: HibernationRun.powering_off,
    h.CAPTURED: HibernationRun.captured,
    HIBERNATED: HibernationRun.hibernated,
    h.CHECKING_ADAPTERS: HibernationRun.checking_adapters,
    h.RESTORING: HibernationRun.restoring,
}


def h_in_progress(message: str) -> Condition:
    return Condition.of(h.CAPTURED, False, h.IN_PROGRESS, message)


def save_event_name(image: str) -> str:
    return f"{image}-save"[:253]


def owner_reference(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": obj.get("apiVersion", "lparkube.io/v1alpha1"),
        "kind": obj.get("kind", "HibernationImage"),
        "name": meta["name"],
        "uid": meta["uid"],
    }


def run_strategy_before(vm: dict[str, Any]) -> str:
    annotations = (vm.get("metadata") or {}).get("annotations") or {}
    return annotations.get(RUN_STRATEGY_ANNOTATION) or run_strategy(vm)


def run_strategy(vm: dict[str, Any]) -> str:
    spec = vm.get("spec") or {}
    if spec.get("runStrategy"):
        return spec["runStrategy"]
    return "Always" if spec.get("running") else "Halted"


def annotation_op(annotations: dict[str, str], value: str) -> dict[str, Any]:
    if not annotations:
        return {
            "op": "add",
            "path": "/metadata/annotations",
            "value": {RUN_STRATEGY_ANNOTATION: value},
        }
    key = RUN_STRATEGY_ANNOTATION.replace("~", "~0").replace("/", "~1")
    return {"op": "add", "path": f"/metadata/annotations/{key}", "value": value}


def agent_target(view: h.HibernationView) -> AgentTarget:
    meta = view.partition["metadata"]
    endpoint = (view.partition_status.get("agent") or {}).get("endpoint") or ""
    return AgentTarget(meta["namespace"], meta["name"], meta["uid"], endpoint)


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        obj = (obj or {}).get(key) if isinstance(obj, dict) else None
    return obj
