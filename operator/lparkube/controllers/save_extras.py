"""The parts of a SaveEvent run beyond the agents: pod save hooks (the seed's "hypervisor
processes") and, for backups, the VM snapshot taken once a partition's applications saved.
Both record into the run's status writer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import kopf
from kubernetes.client.exceptions import ApiException

from lparkube.adapters import pod_hooks
from lparkube.adapters.kube import VIRTUAL_MACHINE_SNAPSHOT, Kube
from lparkube.adapters.status_writer import StatusWriter
from lparkube.domain import saving
from lparkube.domain.clock import rfc3339

SNAPSHOT_POLL = 1.0


class PodHooks:
    """Calls the save hooks of pods on the affected nodes, once per pod per SaveEvent."""

    def __init__(
        self, kube: Kube, writer: StatusWriter, body: dict[str, Any], system_ns: str
    ) -> None:
        self.kube, self.writer, self.body, self.system_ns = kube, writer, body, system_ns
        self.spec = body.get("spec") or {}
        self.namespace = (body.get("metadata") or {}).get("namespace", "")

    async def call_all(self, request: dict[str, Any]) -> None:
        """POST ``request`` to every hook not called yet (after a restart: the rest)."""
        nodes = {i["nodeName"] for i in self.writer.status["partitions"] if i.get("nodeName")}
        if node := self.spec["targets"].get("nodeName"):
            nodes.add(node)
        if not nodes:
            return
        scope = saving.list_scope(self.namespace, self.system_ns, self.spec["targets"])
        pods = await pod_hooks.hook_pods(self.kube, nodes, scope)
        done = {saving.entry_key(p) for p in self.writer.status.get("pods") or []}
        todo = [p for p in pods if saving.entry_key(p["metadata"]) not in done]
        if not todo:
            return
        timeout = saving.parse_duration(
            self.spec.get("applicationTimeout"), saving.DEFAULT_APPLICATION_TIMEOUT
        ).total_seconds()
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._call(session, p, request, timeout) for p in todo))

    async def _call(
        self, session: aiohttp.ClientSession, pod: dict, request: dict, timeout: float
    ) -> None:
        hook = saving.parse_save_hook(pod["metadata"]["annotations"][saving.SAVE_HOOK_ANNOTATION])
        ip = (pod.get("status") or {}).get("podIP")
        if hook.error:
            entry = saving.pod_entry(pod, saving.FAILED, 0, hook.error)
        elif not ip:
            entry = saving.pod_entry(pod, "Failed", 0, "the pod has no IP address")
        else:
            host = f"[{ip}]" if ":" in ip else ip
            url = f"http://{host}:{hook.port}{hook.path}"
            result = await pod_hooks.call_hook(session, url, request, timeout)
            entry = saving.pod_entry(pod, result.outcome, result.millis, result.message)
        others = [
            p
            for p in self.writer.status.get("pods") or []
            if saving.entry_key(p) != saving.entry_key(entry)
        ]
        self.writer.set("pods", sorted([*others, entry], key=saving.entry_key))
        if entry["outcome"] != saving.SAVED:
            kopf.event(
                self.body,
                type="Warning",
                reason="SaveFailed",
                message=f"pod {entry['namespace']}/{entry['name']}: {entry['outcome']}: "
                f"{entry.get('message', '')}"[:1024],
            )


Lookup = Callable[[saving.Target], Awaitable[saving.Target | None]]


class Snapshots:
    """Backup SaveEvents (snapshotAfterSave): one VirtualMachineSnapshot per saved partition."""

    def __init__(self, kube: Kube, writer: StatusWriter, body: dict[str, Any]) -> None:
        self.kube, self.writer, self.body = kube, writer, body
        self.name = (body.get("metadata") or {}).get("name", "")
        spec = body.get("spec") or {}
        self.wanted = bool(spec.get("snapshotAfterSave")) and spec.get("reason") == "Backup"

    def on_resume(self, saved: Iterable[tuple[str, str]], lookup: Lookup) -> list[asyncio.Task]:
        """Partitions that saved before a restart but whose snapshot is not ready yet."""
        if not self.wanted:
            return []
        ready = {
            (s["namespace"], s["partition"])
            for s in self.writer.status.get("snapshots") or []
            if s.get("readyToUse")
        }
        return [
            asyncio.create_task(self._take_found(saving.Target(ns, name, vm_name=name), lookup))
            for ns, name in saved
            if (ns, name) not in ready
        ]

    async def _take_found(self, target: saving.Target, lookup: Lookup) -> None:
        await self.take(await lookup(target) or target)

    async def take(self, target: saving.Target) -> None:
        """Take the VM's snapshot (idempotent by name) and record it until readyToUse."""
        try:
            await self._take(target)
        except ApiException as error:
            kopf.event(
                self.body,
                type="Warning",
                reason="SnapshotFailed",
                message=f"{target.ref}: {error.status} {error.reason}"[:1024],
            )

    async def _take(self, target: saving.Target) -> None:
        name = saving.snapshot_name(self.name, target.vm_name)
        body = saving.snapshot_body(name, target.name, target.vm_name, self.name)
        if await self.kube.get(VIRTUAL_MACHINE_SNAPSHOT, target.namespace, name) is None:
            await self.kube.create(VIRTUAL_MACHINE_SNAPSHOT, target.namespace, body)
            kopf.event(
                self.body,
                type="Normal",
                reason="Snapshot",
                message=f"{target.ref}: VirtualMachineSnapshot {name} of {target.vm_name}",
            )
        ready = False
        self._record(target, name, ready)
        while not ready:
            await asyncio.sleep(SNAPSHOT_POLL)
            found = await self.kube.get(VIRTUAL_MACHINE_SNAPSHOT, target.namespace, name)
            ready = bool(((found or {}).get("status") or {}).get("readyToUse"))
        self._record(target, name, ready)

    def _record(self, target: saving.Target, name: str, ready: bool) -> None:
        entry = saving.snapshot_entry(target.namespace, target.name, name, ready)
        others = [
            s
            for s in self.writer.status.get("snapshots") or []
            if (s.get("namespace"), s.get("partition")) != target.key
        ]
        self.writer.set("snapshots", sorted([*others, entry], key=_snapshot_key))

    def note(self) -> str:
        """For the completion message: how many snapshots are ready."""
        snaps = self.writer.status.get("snapshots") or []
        ready = sum(1 for s in snaps if s.get("readyToUse"))
        return f"; {ready} of {len(snaps)} snapshots ready"


def _snapshot_key(entry: dict[str, Any]) -> tuple[str, str]:
    return (entry.get("namespace", ""), entry.get("partition", ""))


def deadline_request(uid: str, reason: str, deadline: Any) -> dict[str, Any]:
    """The JSON body pod save hooks receive."""
    return {"id": uid, "reason": reason, "deadline": rfc3339(deadline)}
