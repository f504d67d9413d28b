"""Consistency images (seed 002): one kopf daemon per Partition with failover enabled takes,
every consistencyImage.interval, a SaveEvent for the partition and then, only if it saved, a
VirtualMachineSnapshot of its VM; it lists the images in status.failover.consistencyImages
(newest last, at most keep) and deletes the snapshots pruned. None is taken while a failover
is under way.

Each pass reads the Partition, the pending image's SaveEvent and snapshot, asks
``domain/consistency_images.py`` for the next step and does it. The image is recorded as
pending before its objects are made (write-ahead), so a restarted operator goes on with it.
Status writes touch only the keys this daemon owns (pendingImage, consistencyImages,
nextConsistencyImageTime), guarded by the resourceVersion read: a conflict makes the next
pass decide again on what is there now.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lparkube import metrics
from lparkube.adapters.kube import (
    PARTITION,
    SAVE_EVENT,
    VIRTUAL_MACHINE_SNAPSHOT,
    Kube,
    ResourceRef,
)
from lparkube.api.v1alpha1 import failover as api
from lparkube.controllers.failover import failover_daemon
from lparkube.controllers.polling import pause
from lparkube.domain import consistency_images as ci
from lparkube.domain import failover as fo
from lparkube.domain.clock import utcnow

POLL_SECONDS = 1.0
CONFLICT, ALREADY_EXISTS = 409, 409
SKIPPED = "Skipped"  # the metric's label for an image not taken


class ConsistencyImages:
    """The consistency images of one Partition, pass after pass, until failover is off."""

    def __init__(
        self, kube: Kube, namespace: str, name: str, now: Callable[[], datetime] = utcnow
    ) -> None:
        self.kube, self.namespace, self.name, self.now = kube, namespace, name, now

    async def execute(self, stopped: kopf.DaemonStopped | None = None) -> None:
        swept = False
        while not (stopped and stopped.is_set()):
            partition = await self.kube.get(PARTITION, self.namespace, self.name)
            if partition is None or not fo.settings_of(partition).enabled:
                return
            try:
                if not swept:  # what an operator killed between a record and a delete left
                    await self.sweep(partition)
                    swept = True
                await self.run_pass(partition)
            except ApiException as error:
                if error.status != CONFLICT:
                    raise
                continue  # someone wrote first: read again, decide again
            await pause(stopped, POLL_SECONDS)

    async def run_pass(self, partition: dict[str, Any]) -> None:
        pending = ci.pending_image(partition)
        save = snapshot = None
        if pending:
            snapshot = await self.kube.get(
                VIRTUAL_MACHINE_SNAPSHOT, self.namespace, pending["snapshotName"]
            )
            if snapshot is None:
                save = await self.kube.get(SAVE_EVENT, self.namespace, pending["saveEvent"])
        now = self.now()
        step = ci.next_step(partition, save, snapshot, now)
        if step.action == ci.START:
            pending = ci.new_pending(partition, now)
            changes = {
                "pendingImage": pending,
                "nextConsistencyImageTime": fo.next_image_time(partition, now),
            }
            partition = await self.write(partition, changes)  # before anything is made
            await self.create(SAVE_EVENT, ci.save_event_body(partition, pending))
        elif step.action == ci.SAVE:
            await self.create(SAVE_EVENT, ci.save_event_body(partition, pending))
        elif step.action == ci.SNAPSHOT:
            vm_name = (partition.get("status") or {}).get("vmName") or self.name
            await self.create(
                VIRTUAL_MACHINE_SNAPSHOT, ci.snapshot_body(partition, pending, vm_name)
            )
        elif step.action == ci.RECORD:
            await self.record(partition, pending, snapshot or {}, now)
        elif step.action == ci.SKIP:
            await self.skip(partition, pending, step.message)

    async def record(
        self,
        partition: dict[str, Any],
        pending: Mapping[str, Any],
        snapshot: dict[str, Any],
        now: datetime,
    ) -> None:
        entry = ci.image_entry(pending, snapshot, now)
        images = fo.failover_status(partition).get("consistencyImages") or []
        kept, _ = fo.images_after(images, entry, fo.settings_of(partition).keep)
        written = await self.write(partition, {"consistencyImages": kept, "pendingImage": None})
        kopf.event(
            written, type="Normal", reason=api.CONSISTENCY_IMAGE_TAKEN_EVENT,
            message=ci.taken_message(entry),
        )  # fmt: skip
        metrics.CONSISTENCY_IMAGES.labels(entry["consistency"]).inc()
        await self.sweep(written)

    async def skip(self, partition: dict[str, Any], pending: Mapping[str, Any], why: str) -> None:
        written = await self.write(partition, {"pendingImage": None})
        next_time = fo.failover_status(written).get("nextConsistencyImageTime") or "?"
        kopf.event(
            written, type="Warning", reason=api.CONSISTENCY_IMAGE_SKIPPED_EVENT,
            message=f"no consistency image {pending.get('snapshotName')}: {why}; "
            f"next try at {next_time}"[:1024],
        )  # fmt: skip
        metrics.CONSISTENCY_IMAGES.labels(SKIPPED).inc()
        await self.sweep(written)

    async def sweep(self, partition: dict[str, Any]) -> None:
        """Delete this partition's consistency-image snapshots that are no longer kept."""
        kept = ci.kept_snapshots(partition)
        found = await self.kube.list(
            VIRTUAL_MACHINE_SNAPSHOT, self.namespace, ci.snapshot_selector(partition)
        )
        ref = VIRTUAL_MACHINE_SNAPSHOT
        for snapshot in found:
            name = snapshot["metadata"]["name"]
            if name not in kept:
                path = f"/apis/{ref.group}/{ref.version}/namespaces/{self.namespace}"
                await self.kube.delete_path(f"{path}/{ref.plural}/{name}")

    async def create(self, ref: ResourceRef, body: dict[str, Any]) -> None:
        """Idempotent by name: a pass that died after its create finds it made."""
        try:
            await self.kube.create(ref, self.namespace, body)
        except ApiException as error:
            if error.status != ALREADY_EXISTS:
                raise

    async def write(self, partition: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        """Only this daemon's keys of status.failover, guarded by the resourceVersion read."""
        meta = {"resourceVersion": partition["metadata"]["resourceVersion"]}
        body = {"metadata": meta, "status": {"failover": changes}}
        return await self.kube.patch(PARTITION, self.namespace, self.name, body, status=True)


@failover_daemon
async def partition_consistency_images(
    body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Take the Partition's consistency images on schedule, until failover is turned off."""
    meta = body.metadata
    with metrics.handler_run("partitions", "partition_consistency_images"):
        await ConsistencyImages(memo.kube, meta.namespace, meta.name).execute(stopped)
