"""Failover run (seed 002): watches one Partition with failover enabled and carries each
failure through its phases, Detected -> Fencing -> Restoring -> Restarting -> Reconnecting ->
Done (or Stopped).

Each pass reads the Partition, VM, VMI and the VMI's node once into a ``FailoverScope``, asks
``domain/failover.py`` what to do, does it, and writes ``status.failover`` and the FailedOver
condition once, guarded by the resourceVersion it read. A failure is written before anything
acts on it (write-ahead), and so is each phase before its effects, so an operator killed at any
point resumes the same failover where it was. Nothing starts elsewhere before a fence proof.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lparkube import metrics
from lparkube.adapters.kube import (
    PARTITION,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    Kube,
    ResourceRef,
)
from lparkube.api.v1alpha1 import failover as api
from lparkube.api.v1alpha1 import remoterestart as rr_api
from lparkube.controllers.polling import pause
from lparkube.domain import failover as fo
from lparkube.domain import remote_restart as rr
from lparkube.domain.clock import parse_time, rfc3339, utcnow
from lparkube.domain.conditions import Condition, is_true, merge

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
CONFLICT, UNPROCESSABLE = 409, 422
REMOTE_RESTART = ResourceRef("lparkube.io", "v1alpha1", rr_api.PLURAL)
VM_RESTORE = ResourceRef("snapshot.kubevirt.io", "v1beta1", "virtualmachinerestores")
VOLUME_ATTACHMENTS = "/apis/storage.k8s.io/v1/volumeattachments"
GUEST_PANICKED_EVENT = "GuestPanicked"


@dataclass
class FailoverScope:
    """What one pass read, what it decided, and what it writes at the end."""

    partition: dict[str, Any]
    vm: dict[str, Any] | None
    vmi: dict[str, Any] | None
    node: dict[str, Any] | None
    now: datetime
    status: dict[str, Any]  # status.failover, changed by the phases
    condition: Condition | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def current(self) -> dict[str, Any]:
        return self.status.setdefault("current", {})

    @property
    def phase(self) -> str:
        return (self.status.get("current") or {}).get("phase") or ""

    @property
    def namespace(self) -> str:
        return self.partition["metadata"]["namespace"]

    @property
    def name(self) -> str:
        return self.partition["metadata"]["name"]

    @property
    def vm_name(self) -> str:
        return (self.partition.get("status") or {}).get("vmName") or self.name

    def view(self) -> dict[str, Any]:
        """The Partition as the domain sees it after this pass's changes."""
        status = {**(self.partition.get("status") or {}), "failover": self.status}
        return {**self.partition, "status": status}

    def advance(self, phase: str) -> None:
        self.current["phase"] = phase

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


class FailoverRun:
    """The failovers of one Partition, pass after pass, until failover is turned off."""

    def __init__(
        self, kube: Kube, namespace: str, name: str, now: Callable[[], datetime] = utcnow
    ) -> None:
        self.kube, self.namespace, self.name, self.now = kube, namespace, name, now

    async def execute(self, stopped: kopf.DaemonStopped | None = None) -> None:
        while not (stopped and stopped.is_set()):
            scope = await self.read()
            if scope is None:
                return
            try:
                await self.run_pass(scope)
                await self.write(scope)
            except ApiException as error:
                if error.status not in (CONFLICT, UNPROCESSABLE):
                    raise
                continue  # someone wrote first: read again, decide again
            await pause(stopped, POLL_SECONDS)

    # --- reading and writing once per pass ----------------------------------------------------

    async def read(self) -> FailoverScope | None:
        partition = await self.kube.get(PARTITION, self.namespace, self.name)
        if partition is None or not fo.settings_of(partition).enabled:
            return None
        vm_name = (partition.get("status") or {}).get("vmName") or self.name
        vm = await self.kube.get(VIRTUAL_MACHINE, self.namespace, vm_name)
        vmi = await self.kube.get(VIRTUAL_MACHINE_INSTANCE, self.namespace, vm_name)
        current = fo.current_failure(partition)
        node_name = ((vmi or {}).get("status") or {}).get("nodeName") or current.get("nodeName")
        node = await self._node(node_name) if node_name else None
        status = dict(fo.failover_status(partition))
        if status.get("current"):
            status["current"] = dict(status["current"])
        return FailoverScope(partition, vm, vmi, node, self.now(), status)

    async def _node(self, name: str) -> dict[str, Any] | None:
        nodes = await self.kube.list_path("/api/v1/nodes", fieldSelector=f"metadata.name={name}")
        return nodes[0] if nodes else None

    async def write(self, scope: FailoverScope) -> None:
        """status.failover and FailedOver, guarded by the resourceVersion read (a conflict
        makes the pass run again on what is there now); the events once it is stored."""
        stored = scope.partition.get("status") or {}
        patch: dict[str, Any] = {}
        if scope.status != (stored.get("failover") or {}):
            patch["failover"] = scope.status
        if scope.condition is not None:
            generation = scope.partition["metadata"].get("generation", 0)
            merged = merge(stored.get("conditions"), [scope.condition], generation, scope.now)
            if merged != stored.get("conditions"):
                patch["conditions"] = merged
        if patch:
            meta = {"resourceVersion": scope.partition["metadata"]["resourceVersion"]}
            written = await self.kube.patch(
                PARTITION, self.namespace, self.name, {"metadata": meta, "status": patch},
                status=True,
            )  # fmt: skip
            scope.partition = written
        for type_, reason, message in scope.events:
            kopf.event(dict(scope.partition), type=type_, reason=reason, message=message)
        scope.events.clear()

    async def checkpoint(self, scope: FailoverScope) -> None:
        """Write-ahead: the phase entered is stored before its effects."""
        await self.write(scope)

    # --- the pass -----------------------------------------------------------------------------

    async def run_pass(self, scope: FailoverScope) -> None:
        if scope.phase not in fo.UNFINISHED_PHASES:
            await self.take_restarts(scope)
            await self.detect(scope)
        for _ in api.PHASES:  # each phase at most once a pass
            phase = scope.phase
            handler = PHASES.get(phase)
            if handler is None:
                return
            await handler(self, scope)
            if scope.phase == phase:
                return
            await self.checkpoint(scope)

    async def take_restarts(self, scope: FailoverScope) -> None:
        """A running VM's restarts become failover's (runStrategy Manual, the user's recorded):
        KubeVirt would restart a failed VMI by itself at once, from the same disk."""
        ops = fo.take_restarts_patch(scope.partition, scope.vm, scope.vmi)
        if ops is not None:
            scope.vm = await self.kube.json_patch(
                VIRTUAL_MACHINE, self.namespace, scope.vm_name, ops
            )

    async def detect(self, scope: FailoverScope) -> None:
        panicked = await self._panicked(scope)
        crash_dumps = ((scope.partition.get("spec") or {}).get("crashDump") or {}).get("enabled")
        observed = fo.Observed(
            scope.partition, scope.vm, scope.vmi, scope.node, scope.now,
            panicked=panicked, crash_dumps=crash_dumps is True,
        )  # fmt: skip
        failure = fo.detect_failure(observed)
        if failure is None:
            return
        choice = fo.choose_image(scope.partition, scope.now)
        ident = uuid.uuid4().hex[:16]
        scope.status["current"] = fo.new_failure(observed, failure, choice, ident)
        scope.status["failures"] = int(scope.status.get("failures") or 0) + 1
        scope.status["lastFailureTime"] = rfc3339(scope.now)
        scope.condition = Condition.of(api.FAILED_OVER, False, api.FAILING_OVER, failure.message)
        scope.event("Warning", api.FAILURE_DETECTED_EVENT, f"{failure.reason}: {failure.message}")
        metrics.FAILURES.labels(failure.reason).inc()
        await self.checkpoint(scope)  # recorded before anything acts on it

    async def _panicked(self, scope: FailoverScope) -> bool:
        """A GuestPanicked event names the VMI (read only for a Failed VMI)."""
        status = (scope.vmi or {}).get("status") or {}
        if status.get("phase") != "Failed":
            return False
        uid = scope.vmi["metadata"].get("uid", "")
        events = await self.kube.list_path(
            f"/api/v1/namespaces/{self.namespace}/events",
            fieldSelector=f"involvedObject.uid={uid},reason={GUEST_PANICKED_EVENT}",
        )
        return bool(events)

    # --- phases ---------------------------------------------------------------------------------

    async def detected(self, scope: FailoverScope) -> None:
        """Hold the VM Halted (KubeVirt must not start it anywhere by itself), or stop here
        after repeated failures."""
        await self._hold(scope)
        if scope.current.get("image") is None:
            self._finish(scope, api.STOPPED)
            reason = scope.current.get("imageReason") or "repeated failures"
            message = f"not restarted: {reason}; start VM {scope.vm_name} to try again"
            scope.condition = Condition.of(api.FAILED_OVER, False, api.REPEATED_FAILURES, message)
            scope.event("Warning", api.FAILOVER_STOPPED_EVENT, message)
            return
        image = scope.current["image"]
        scope.event(
            "Normal", api.FAILOVER_STARTED_EVENT,
            f"failing over from the {image.lower()} image ({scope.current.get('imageReason')})",
        )  # fmt: skip
        scope.advance(api.FENCING)

    async def _hold(self, scope: FailoverScope) -> None:
        vm = scope.vm
        if vm is None or rr.run_strategy(vm) == "Halted":
            return
        ops = [
            {"op": "test", "path": "/metadata/resourceVersion",
             "value": vm["metadata"]["resourceVersion"]},
            {"op": "add", "path": "/spec/runStrategy", "value": "Halted"},
        ]  # fmt: skip
        if "running" in (vm.get("spec") or {}):
            ops.append({"op": "remove", "path": "/spec/running"})
        scope.vm = await self.kube.json_patch(VIRTUAL_MACHINE, self.namespace, scope.vm_name, ops)

    async def fencing(self, scope: FailoverScope) -> None:
        """Wait for the proof that the old instance cannot run; on a self-fence, release what
        the lost node still holds: its launcher pod and its volume attachments."""
        pods = await self._launcher_pods(scope)
        node_name = scope.current.get("nodeName") or ""
        view = fo.FenceView(
            scope.view(), node_name, scope.vmi, scope.node, tuple(pods),
            fo.instance_spec(scope.current), scope.now,
        )  # fmt: skip
        fence = fo.fence_proof(view)
        if fence.by is None:
            scope.condition = Condition.of(
                api.FAILED_OVER, False, api.WAITING_FOR_FENCE, fence.message
            )
            return
        scope.current["fence"] = {
            "by": fence.by, "at": rfc3339(fence.at or scope.now), "message": fence.message,
        }  # fmt: skip
        if fence.by == api.SELF_FENCED:
            await self._release(scope, node_name, pods)
        scope.condition = Condition.of(api.FAILED_OVER, False, api.FAILING_OVER, fence.message)
        scope.advance(api.RESTORING)

    async def _launcher_pods(self, scope: FailoverScope) -> list[dict[str, Any]]:
        return await self.kube.list_path(
            f"/api/v1/namespaces/{self.namespace}/pods",
            labelSelector=f"{rr.LAUNCHER_VM_LABEL}={scope.vm_name}",
        )

    async def _release(
        self, scope: FailoverScope, node_name: str, pods: list[dict[str, Any]]
    ) -> None:
        """What a real cluster needs before the claims attach elsewhere: the old launcher
        pod force-deleted (its kubelet cannot confirm) and the VolumeAttachments of the VM's
        claims on that node deleted (the attach/detach controller would wait 6 minutes)."""
        for pod in pods:
            if (pod.get("spec") or {}).get("nodeName") == node_name:
                path = f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}"
                await self.kube.delete_path(path, grace_seconds=0)
        volumes = await self._volume_names(scope)
        for attachment in await self.kube.list_path(VOLUME_ATTACHMENTS):
            spec = attachment.get("spec") or {}
            volume = (spec.get("source") or {}).get("persistentVolumeName")
            if spec.get("nodeName") == node_name and volume in volumes:
                await self.kube.delete_path(
                    f"{VOLUME_ATTACHMENTS}/{attachment['metadata']['name']}"
                )

    async def _volume_names(self, scope: FailoverScope) -> set[str]:
        names = set()
        template = (((scope.vm or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        for claim in rr.claim_names(template):
            pvc = await self.kube.get_claim(self.namespace, claim)
            volume = ((pvc or {}).get("spec") or {}).get("volumeName")
            if volume:
                names.add(volume)
        return names

    async def restoring(self, scope: FailoverScope) -> None:
        """Once the old VMI is gone: the newest consistency snapshot restored onto the VM
        (a VirtualMachineRestore), or the boot disk switched to the boot image."""
        if scope.vmi is not None:
            phase = (scope.vmi.get("status") or {}).get("phase") or "?"
            message = f"waiting for the failed VMI ({phase}) to go before the restore"
            scope.condition = Condition.of(api.FAILED_OVER, False, api.FAILING_OVER, message)
            return
        if scope.current.get("image") == api.BOOT_IMAGE:
            await self._boot_image(scope)
            scope.advance(api.RESTARTING)
            return
        if await self._restored(scope):
            scope.advance(api.RESTARTING)

    async def _restored(self, scope: FailoverScope) -> bool:
        newest = fo.newest_image(scope.view()) or {}
        name = scope.current.get("restoreName") or fo.restart_name(
            scope.vm_name, scope.current["id"]
        )
        if not scope.current.get("restoreName"):
            scope.current["snapshotName"] = newest.get("name")
            scope.current["restoreName"] = name
            await self.checkpoint(scope)
        restore = await self.kube.get(VM_RESTORE, self.namespace, name)
        if restore is None:
            body = {
                "kind": "VirtualMachineRestore",
                "metadata": {
                    "name": name,
                    "labels": {
                        api.PURPOSE_LABEL: "restore",
                        rr_api.OPERATION_TOKEN_LABEL: scope.current["id"],
                    },
                },
                "spec": {
                    "target": fo.restore_patch_target(scope.vm_name),
                    "virtualMachineSnapshotName": scope.current.get("snapshotName"),
                },
            }
            await self.kube.create(VM_RESTORE, self.namespace, body)
            return False
        return ((restore.get("status") or {}).get("complete")) is True

    async def _boot_image(self, scope: FailoverScope) -> None:
        vm = scope.vm or {}
        spec = vm.get("spec") or {}
        disk = fo.boot_disk(spec)
        volumes = ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []
        index = next((i for i, v in enumerate(volumes) if v.get("name") == disk), None)
        if index is None:
            return
        settings = fo.settings_of(scope.partition)
        source = fo.boot_volume(settings.boot_image, scope.vm_name, scope.current["id"])
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion",
             "value": vm["metadata"]["resourceVersion"]},
            {"op": "replace", "path": f"/spec/template/spec/volumes/{index}",
             "value": {"name": disk, **source}},
        ]  # fmt: skip
        if "dataVolume" in source:
            template = dict(settings.boot_image.get("dataVolumeTemplate") or {})
            template["metadata"] = {
                **(template.get("metadata") or {}),
                "name": source["dataVolume"]["name"],
            }
            path = "/spec/dataVolumeTemplates"
            ops.append(
                {"op": "add", "path": f"{path}/-", "value": template}
                if spec.get("dataVolumeTemplates")
                else {"op": "add", "path": path, "value": [template]}
            )
        scope.vm = await self.kube.json_patch(VIRTUAL_MACHINE, self.namespace, scope.vm_name, ops)

    async def restarting(self, scope: FailoverScope) -> None:
        """A RemoteRestart without an image to a node failover.nodeSelector allows (it starts
        the held VM as Manual)."""
        name = scope.current.get("restartName") or fo.restart_name(scope.name, scope.current["id"])
        restart = await self.kube.get(REMOTE_RESTART, self.namespace, name)
        if restart is None:
            if not scope.current.get("restartName"):
                scope.current["restartName"] = name
                await self.checkpoint(scope)
            await self._create_restart(scope, name)
            return
        status = restart.get("status") or {}
        state = status.get("terminationState")
        if state == rr_api.RESTART_FAILED:
            message = f"RemoteRestart {name} failed: {_complete_message(status)}"
            self._finish(scope, api.STOPPED)
            scope.condition = Condition.of(api.FAILED_OVER, False, api.FAILOVER_FAILED, message)
            scope.event("Warning", api.FAILOVER_STOPPED_EVENT, message)
        elif state == rr_api.RESTART_SUCCEEDED:
            scope.advance(api.RECONNECTING)  # the VM runs Manual: restarts stay failover's

    async def _create_restart(self, scope: FailoverScope, name: str) -> None:
        settings = fo.settings_of(scope.partition)
        spec: dict[str, Any] = {"partitionName": scope.name}
        if settings.node_selector:
            spec["targetNodeSelector"] = dict(settings.node_selector)
        body = {
            "kind": rr_api.KIND,
            "metadata": {
                "name": name,
                "labels": {
                    api.PURPOSE_LABEL: "restart",
                    rr_api.OPERATION_TOKEN_LABEL: scope.current["id"],
                },
            },
            "spec": spec,
        }
        await self.kube.create(REMOTE_RESTART, self.namespace, body)
        detected = parse_time(scope.current.get("detectedAt"))
        fence = (scope.current.get("fence") or {}).get("by") or "?"
        if detected is not None:
            seconds = (scope.now - detected).total_seconds()
            metrics.FAILOVER_RESTART_REQUEST_SECONDS.labels(fence).observe(seconds)

    async def reconnecting(self, scope: FailoverScope) -> None:
        """Done once the guest's agent reported since the failure and is connected (the
        RemoteRestart verified its first report), or the restarted VMI ended: a new failure is
        then decided on its own."""
        status = scope.partition.get("status") or {}
        heard = parse_time((status.get("agent") or {}).get("lastHeartbeatTime"))
        detected = parse_time(scope.current.get("detectedAt"))
        connected = is_true(status.get("conditions"), "AgentConnected")
        phase = ((scope.vmi or {}).get("status") or {}).get("phase")
        reported = connected and heard is not None and detected is not None and heard > detected
        if not reported and phase not in fo.FINAL_VMI_PHASES:
            return
        image = scope.current.get("image")
        self._finish(scope, api.DONE)
        scope.status["lastImage"] = image
        reason = api.FROM_BOOT_IMAGE if image == api.BOOT_IMAGE else api.FROM_CONSISTENCY_IMAGE
        node = ((scope.vmi or {}).get("status") or {}).get("nodeName") or "?"
        message = f"restarted on node {node} from the {str(image).lower()} image"
        scope.condition = Condition.of(api.FAILED_OVER, True, reason, message)
        scope.event("Normal", api.FAILED_OVER_EVENT, message)

    def _finish(self, scope: FailoverScope, result: str) -> None:
        scope.advance(result)
        scope.current["completedAt"] = rfc3339(scope.now)
        scope.status["history"] = fo.history_after(scope.status.get("history") or [], scope.current)
        metrics.FAILOVERS.labels(scope.current.get("image") or "none", result).inc()


def _complete_message(status: dict[str, Any]) -> str:
    complete = next(
        (c for c in status.get("conditions") or [] if c.get("type") == rr_api.COMPLETE), {}
    )
    return complete.get("message") or status.get("terminationState") or "?"


PHASES: dict[str, Callable[[FailoverRun, FailoverScope], Any]] = {
    api.DETECTED: FailoverRun.detected,
    api.FENCING: FailoverRun.fencing,
    api.RESTORING: FailoverRun.restoring,
    api.RESTARTING: FailoverRun.restarting,
    api.RECONNECTING: FailoverRun.reconnecting,
}
