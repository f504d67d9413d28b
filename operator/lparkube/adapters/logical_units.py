"""Thin LUs on the API server: labelled PVCs and their claim Leases, read into
``logical_units.LogicalUnit``s, and the domain's decisions carried out.

An LU is a PVC labelled ``lparkube.io/vios-cluster`` and ``lparkube.io/lu-purpose``. A claim:

1. the Lease ``lu-<pvc>`` in the PVC's namespace, held by the Partition's uid for the pool's
   lockTimeout: created; one that ran out is deleted as read (resourceVersion precondition)
   and created anew, so two claimants of one LU cannot both hold it;
2. the PVC patched with the claim (label ``lparkube.io/partition``, annotation
   ``lparkube.io/claimed-by``) and, for Expand, the larger request, guarded by the
   resourceVersion the decision was made from (Create: the PVC is created with the claim);
3. committed: annotation ``lparkube.io/claim-committed`` = the uid, guarded by the
   resourceVersion of step 2; then the Lease is deleted.

A conflict anywhere means someone else moved first: read again and decide again. A claimant
that dies between 1 and 3 leaves an uncommitted claim whose Lease runs out: the LU is free
again, nothing was deleted. Lease times are wall-clock (the API server's objects are shared
between processes); ``clock`` is injectable.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lparkube.adapters.kube import JSON_PATCH, MANAGED_BY, MERGE_PATCH, Kube, ResourceRef
from lparkube.adapters.lease import decode_spec, encode_spec
from lparkube.api.v1alpha1.vioscluster import (
    CLAIM_COMMITTED_ANNOTATION,
    CLAIMED_BY_ANNOTATION,
    LEASE_PREFIX,
    LU_PURPOSE_LABEL,
    VIOS_CLUSTER_LABEL,
)
from lparkube.domain import logical_units as lu
from lparkube.domain.leadership import LeaseRecord
from lparkube.domain.partition import PARTITION_LABEL
from lparkube.domain.saving import label_value

VIOS_CLUSTER = ResourceRef("lparkube.io", "v1alpha1", "viosclusters")
MAX_ATTEMPTS = 64  # each conflict means another claimant won an LU: at most one per LU
CONFLICT_PAUSE = 0.05  # seconds, times a random factor, before reading again
CONFLICT, NOT_FOUND, UNPROCESSABLE = 409, 404, 422  # 422: a JSON patch's test failed
# A test hook: called with (step, pvc name) once the claim is written and not yet committed.
Hook = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class ClaimedLU:
    """An LU this Partition now holds (committed)."""

    name: str
    namespace: str
    size_bytes: int
    action: str  # Reuse, Expand or Create (what this allocation did)


@dataclass(frozen=True)
class Storage:
    """How a new LU's PVC is made: the pool's spec.storage."""

    storage_class: str
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)
    volume_mode: str = "Block"

    @classmethod
    def of(cls, pool: Mapping[str, Any]) -> Storage:
        storage = (pool.get("spec") or {}).get("storage") or {}
        return cls(
            storage.get("storageClassName") or "",
            tuple(storage.get("accessModes") or ("ReadWriteOnce",)),
            storage.get("volumeMode") or "Block",
        )


class ConflictError(Exception):
    """Someone else wrote first; read again and decide again."""


def lease_name(pvc: str) -> str:
    return f"{LEASE_PREFIX}{pvc}"


def pool_selector(pool: str, purpose: str | None = None) -> str:
    selector = f"{VIOS_CLUSTER_LABEL}={label_value(pool)}"
    return f"{selector},{LU_PURPOSE_LABEL}={purpose}" if purpose else selector


def lease_expiry(lease: Mapping[str, Any] | None) -> tuple[str, float] | None:
    """(holder, when it runs out, epoch seconds) of a Lease, or None."""
    if lease is None:
        return None
    record = decode_spec(lease.get("spec") or {})
    renewed = record.renew_time or record.acquire_time
    if renewed is None or not record.holder:
        return None
    return record.holder, renewed.timestamp() + record.duration_seconds


def to_unit(
    pvc: Mapping[str, Any], lease: Mapping[str, Any] | None, now: float, pool: str
) -> lu.LogicalUnit:
    """An LU as the domain sees it. A committed claim holds without a lock; a live Lease
    whose holder has not committed marks it being claimed (by the Lease's holder, even before
    the PVC shows the claim); an uncommitted claim whose Lease ran out is free again."""
    meta = pvc.get("metadata") or {}
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    claimed = notes.get(CLAIMED_BY_ANNOTATION) if PARTITION_LABEL in labels else None
    committed = notes.get(CLAIM_COMMITTED_ANNOTATION)
    lock = lease_expiry(lease)
    claimed_by, expires = None, None
    if claimed and committed == claimed:
        claimed_by = claimed
    elif lock is not None and lock[1] > now:
        claimed_by, expires = lock
    elif claimed:
        claimed_by, expires = claimed, lock[1] if lock and lock[0] == claimed else 0.0
    request = ((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}
    return lu.LogicalUnit(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        pool=pool,  # read by its label, whose value may be a shortened name
        purpose=labels.get(LU_PURPOSE_LABEL, ""),
        requested_bytes=lu.parse_size(request.get("storage")) or 0,
        claimed_by=claimed_by,
        lock_expires=expires,
        deleting=bool(meta.get("deletionTimestamp")),
        bound=(pvc.get("status") or {}).get("phase") == "Bound",
    )


class LogicalUnits:
    """Reads and claims LUs through the operator's Kube client."""

    def __init__(
        self,
        kube: Kube,
        clock: Callable[[], float] = time.time,
        hook: Hook | None = None,
    ) -> None:
        self.kube = kube
        self.coordination = client.CoordinationV1Api(kube.api_client)
        self.clock = clock
        self.hook = hook

    # --- reads ----------------------------------------------------------------------------

    async def _read(
        self, namespace: str | None, selector: str
    ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
        """The PVCs and Leases with these labels, in one namespace or all."""
        core, coordination = self.kube.core, self.coordination
        if namespace is None:
            pvcs = await self.kube.call_json(
                core.list_persistent_volume_claim_for_all_namespaces, label_selector=selector
            )
            leases = await self.kube.call_json(
                coordination.list_lease_for_all_namespaces, label_selector=selector
            )
        else:
            pvcs = await self.kube.call_json(
                core.list_namespaced_persistent_volume_claim, namespace, label_selector=selector
            )
            leases = await self.kube.call_json(
                coordination.list_namespaced_lease, namespace, label_selector=selector
            )
        by_name = {
            (item["metadata"]["namespace"], item["metadata"]["name"]): item
            for item in leases.get("items") or []
        }
        return pvcs.get("items") or [], by_name

    async def pool_units(self, pool: str) -> list[lu.LogicalUnit]:
        """Every LU of the pool, in every namespace (for the VIOSCluster's counts)."""
        pvcs, leases = await self._read(None, pool_selector(pool))
        now = self.clock()
        return [to_unit(p, _lease_of(p, leases), now, pool) for p in pvcs]

    async def units(
        self, namespace: str, pool: str, purpose: str
    ) -> list[tuple[lu.LogicalUnit, dict[str, Any], dict[str, Any] | None]]:
        """The namespace's LUs of this pool and purpose: (unit, PVC, its Lease)."""
        pvcs, leases = await self._read(namespace, pool_selector(pool, purpose))
        now = self.clock()
        return [
            (to_unit(p, _lease_of(p, leases), now, pool), p, _lease_of(p, leases)) for p in pvcs
        ]

    # --- allocation -----------------------------------------------------------------------

    async def allocate(
        self,
        request: lu.LURequest,
        partition: str,
        storage: Storage,
        lock_seconds: float,
    ) -> ClaimedLU | lu.LURefusal:
        """Claim an LU for ``request`` (Reuse, Expand or Create, as the domain decides); on a
        conflict read again and decide again."""
        for _ in range(MAX_ATTEMPTS):
            read = await self.units(request.namespace, request.pool, request.purpose)
            decision = lu.allocate(request, [unit for unit, _, _ in read], self.clock())
            if isinstance(decision, lu.LURefusal):
                return decision
            found = {unit.name: (pvc, lease) for unit, pvc, lease in read}
            try:
                if decision.unit is None:
                    return await self._create(request, partition, storage, lock_seconds)
                pvc, lease = found[decision.unit.name]
                return await self._claim(
                    request,
                    partition=partition,
                    decision=decision,
                    pvc=pvc,
                    lease=lease,
                    lock_seconds=lock_seconds,
                )
            except ConflictError:
                await asyncio.sleep(CONFLICT_PAUSE * random.random())
        raise ConflictError(f"LU allocation in {request.namespace} kept conflicting")

    async def _claim(
        self,
        request: lu.LURequest,
        *,
        partition: str,
        decision: lu.Allocation,
        pvc: dict[str, Any],
        lease: dict[str, Any] | None,
        lock_seconds: float,
    ) -> ClaimedLU:
        meta = pvc["metadata"]
        name, uid = meta["name"], request.partition_uid
        notes = meta.get("annotations") or {}
        size = max(decision.size_bytes, decision.unit.requested_bytes if decision.unit else 0)
        held = (
            notes.get(CLAIMED_BY_ANNOTATION) == uid and notes.get(CLAIM_COMMITTED_ANNOTATION) == uid
        )
        if held and decision.action == lu.REUSE:
            return ClaimedLU(name, request.namespace, size, decision.action)
        taken = await self._take_lease(request, name, lease, lock_seconds)
        try:
            patch: dict[str, Any] = {
                "metadata": {
                    "resourceVersion": meta["resourceVersion"],
                    "labels": {PARTITION_LABEL: label_value(partition)},
                    "annotations": {
                        CLAIMED_BY_ANNOTATION: uid,
                        CLAIM_COMMITTED_ANNOTATION: uid if held else None,
                    },
                }
            }
            if decision.action == lu.EXPAND:
                patch["spec"] = {"resources": {"requests": {"storage": str(size)}}}
            claimed = await self._patch_pvc(request.namespace, name, patch)
            if not held:
                await self._commit(request.namespace, claimed, uid)
        except ConflictError:
            await self._drop_lease(request.namespace, name, taken)
            raise
        await self._drop_lease(request.namespace, name, taken)
        return ClaimedLU(name, request.namespace, size, decision.action)

    async def _create(
        self, request: lu.LURequest, partition: str, storage: Storage, lock_seconds: float
    ) -> ClaimedLU:
        size = max(request.size_bytes, request.initial_bytes)
        name = new_name(request.pool, request.purpose)
        taken = await self._take_lease(request, name, None, lock_seconds)
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": name,
                "namespace": request.namespace,
                "labels": {
                    **MANAGED_BY,
                    VIOS_CLUSTER_LABEL: label_value(request.pool),
                    LU_PURPOSE_LABEL: request.purpose,
                    PARTITION_LABEL: label_value(partition),
                },
                "annotations": {CLAIMED_BY_ANNOTATION: request.partition_uid},
            },
            "spec": {
                "storageClassName": storage.storage_class,
                "accessModes": list(storage.access_modes),
                "volumeMode": storage.volume_mode,
                "resources": {"requests": {"storage": str(size)}},
            },
        }
        try:
            created = await self.kube.call_json(
                self.kube.core.create_namespaced_persistent_volume_claim, request.namespace, body
            )
        except ApiException as error:
            await self._drop_lease(request.namespace, name, taken)
            if error.status == CONFLICT:
                raise ConflictError(name) from error
            raise
        await self._commit(request.namespace, created, request.partition_uid)
        await self._drop_lease(request.namespace, name, taken)
        return ClaimedLU(name, request.namespace, size, lu.CREATE)

    async def _commit(self, namespace: str, pvc: dict[str, Any], uid: str) -> None:
        """The claim is set up: mark it committed, only while it is still ours (a JSON patch
        whose ``test`` the API server applies atomically with the ``add``: the PV binder's
        own writes to the PVC do not get in the way, another claimant's claim does)."""
        name = pvc["metadata"]["name"]
        if self.hook is not None:
            await self.hook("claimed", name)
        patch = [
            {"op": "test", "path": f"/metadata/annotations/{_pointer(CLAIMED_BY_ANNOTATION)}",
             "value": uid},
            {"op": "add", "path": f"/metadata/annotations/{_pointer(CLAIM_COMMITTED_ANNOTATION)}",
             "value": uid},
        ]  # fmt: skip
        await self._patch_pvc(namespace, name, patch, content_type=JSON_PATCH)

    async def _patch_pvc(
        self, namespace: str, name: str, patch: Any, content_type: str = MERGE_PATCH
    ) -> dict:
        try:
            return await self.kube.call_json(
                self.kube.core.patch_namespaced_persistent_volume_claim,
                name,
                namespace,
                patch,
                _content_type=content_type,
            )
        except ApiException as error:
            # 422 is a failed ``test`` only for a JSON patch; for a merge patch it is Invalid
            lost = (CONFLICT, NOT_FOUND, UNPROCESSABLE) if content_type == JSON_PATCH else (
                CONFLICT, NOT_FOUND)  # fmt: skip
            if error.status in lost:
                raise ConflictError(name) from error
            raise

    # --- the claim Lease ------------------------------------------------------------------

    async def _take_lease(
        self,
        request: lu.LURequest,
        pvc: str,
        lease: dict[str, Any] | None,
        lock_seconds: float,
    ) -> dict[str, Any]:
        """Hold ``lu-<pvc>``: create it, or replace it when it ran out or is ours already."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        record = LeaseRecord(
            holder=request.partition_uid,
            duration_seconds=max(1, round(lock_seconds)),
            acquire_time=now,
            renew_time=now,
        )
        namespace, name = request.namespace, lease_name(pvc)
        try:
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": {
                            **MANAGED_BY,
                            VIOS_CLUSTER_LABEL: label_value(request.pool),
                            LU_PURPOSE_LABEL: request.purpose,
                        },
                    },
                    "spec": encode_spec(record),
                }
                return await self.kube.call_json(
                    self.coordination.create_namespaced_lease, namespace, body
                )
            lock = lease_expiry(lease)
            if lock is not None and lock[0] != request.partition_uid and lock[1] > self.clock():
                raise ConflictError(name)
            # Ran out, or ours: deleted (only as read) and made anew. Never updated, so the
            # operator needs no right to take over any other Lease.
            await self._drop_lease(namespace, pvc, lease, strict=True)
            return await self._take_lease(request, pvc, None, lock_seconds)
        except ApiException as error:
            if error.status in (CONFLICT, NOT_FOUND):
                raise ConflictError(name) from error
            raise

    async def _drop_lease(
        self, namespace: str, pvc: str, lease: dict[str, Any], *, strict: bool = False
    ) -> None:
        """Delete the claim Lease as read (not one someone has replaced since); ``strict``:
        a Lease already gone or changed is a conflict."""
        options = {"preconditions": {"resourceVersion": lease["metadata"]["resourceVersion"]}}
        try:
            await self.kube.call(
                self.coordination.delete_namespaced_lease,
                lease_name(pvc),
                namespace,
                body=options,
            )
        except ApiException as error:
            if error.status not in (CONFLICT, NOT_FOUND):
                raise
            if strict:
                raise ConflictError(lease_name(pvc)) from error

    # --- release --------------------------------------------------------------------------

    async def release(
        self,
        namespace: str,
        partition: str,
        uid: str,
        reuse_of: Callable[[str], Awaitable[bool]],
        purpose: str | None = None,
    ) -> list[tuple[str, str]]:
        """Give back every LU this Partition (by uid) claims, of one purpose or all: with the
        pool's ``reuse`` the claim is removed and the PVC stays, free; otherwise the PVC is
        deleted. ``reuse_of(pool label)`` answers for each pool. Returns (pvc, what was done)."""
        selector = f"{PARTITION_LABEL}={label_value(partition)},{VIOS_CLUSTER_LABEL}"
        if purpose:
            selector += f",{LU_PURPOSE_LABEL}={purpose}"
        done: list[tuple[str, str]] = []
        for _ in range(MAX_ATTEMPTS):
            pvcs = await self.kube.call_json(
                self.kube.core.list_namespaced_persistent_volume_claim,
                namespace,
                label_selector=selector,
            )
            mine = [
                p
                for p in pvcs.get("items") or []
                if (p["metadata"].get("annotations") or {}).get(CLAIMED_BY_ANNOTATION) == uid
                and not p["metadata"].get("deletionTimestamp")
            ]
            try:
                for pvc in mine:
                    done.append(await self._release_one(namespace, pvc, reuse_of))
            except ConflictError:
                continue
            return done
        raise ConflictError(f"releasing the LUs of {namespace}/{partition} kept conflicting")

    async def _release_one(
        self, namespace: str, pvc: dict[str, Any], reuse_of: Callable[[str], Awaitable[bool]]
    ) -> tuple[str, str]:
        meta = pvc["metadata"]
        name = meta["name"]
        if await reuse_of((meta.get("labels") or {}).get(VIOS_CLUSTER_LABEL, "")):
            patch = {
                "metadata": {
                    "resourceVersion": meta["resourceVersion"],
                    "labels": {PARTITION_LABEL: None},
                    "annotations": {CLAIMED_BY_ANNOTATION: None, CLAIM_COMMITTED_ANNOTATION: None},
                }
            }
            await self._patch_pvc(namespace, name, patch)
            return name, "Released"
        options = {"preconditions": {"resourceVersion": meta["resourceVersion"]}}
        try:
            await self.kube.call(
                self.kube.core.delete_namespaced_persistent_volume_claim,
                name,
                namespace,
                body=options,
            )
        except ApiException as error:
            if error.status == CONFLICT:
                raise ConflictError(name) from error
            if error.status != NOT_FOUND:
                raise
        return name, "Deleted"


async def storage_class(kube: Kube, name: str) -> dict[str, Any] | None:
    """The StorageClass (as JSON), or None when there is none of that name."""
    if not name:
        return None
    storage = client.StorageV1Api(kube.api_client)
    try:
        response = await kube.call(storage.read_storage_class, name, _preload_content=False)
    except ApiException as error:
        if error.status == NOT_FOUND:
            return None
        raise
    return json.loads(response.data)


def new_name(pool: str, purpose: str) -> str:
    """A fresh PVC name: ``<pool>-<purpose>-<random>`` (a DNS subdomain; its Lease name
    ``lu-<pvc>`` fits too)."""
    base = pool[:200].rstrip("-.")
    return f"{base}-{purpose}-{secrets.token_hex(4)}"


def _pointer(key: str) -> str:
    """An annotation key as a JSON pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _lease_of(
    pvc: Mapping[str, Any], leases: Mapping[tuple[str, str], dict[str, Any]]
) -> dict[str, Any] | None:
    meta = pvc.get("metadata") or {}
    return leases.get((meta.get("namespace", ""), lease_name(meta.get("name", ""))))
