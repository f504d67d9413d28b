"""A RemoteRestart's adapter locks: coordination.k8s.io Leases, one per adapter and side, held
by the operation token (docs/api.md, "RemoteRestart").

Like the LU claim Leases (``adapters/logical_units.py``), a Lease is only ever created or
deleted as read (a resourceVersion precondition), never updated: renewing our own Lease and
taking over one that ran out are both a delete of the object read followed by a create, so two
operations can never both hold one, and the operator needs no right to update any Lease. A
conflict means someone moved first: the caller reads again on its next pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lparkube.adapters.kube import MANAGED_BY, Kube
from lparkube.adapters.lease import decode_spec, encode_spec
from lparkube.api.v1alpha1.remoterestart import OPERATION_TOKEN_LABEL
from lparkube.domain import remote_restart as rr
from lparkube.domain.clock import utcnow
from lparkube.domain.leadership import LeaseRecord
from lparkube.domain.partition import PARTITION_LABEL
from lparkube.domain.saving import label_value

CONFLICT, NOT_FOUND = 409, 404


class LockConflictError(Exception):
    """A Lease changed since it was read: read again and decide again."""


class AdapterLockedError(Exception):
    """Another operation holds a live lock on one of the adapters."""


class AdapterLocks:
    """Takes, renews and releases one operation's adapter Leases in one namespace."""

    def __init__(self, kube: Kube, clock: Callable[[], datetime] = utcnow) -> None:
        self.kube = kube
        self.api = client.CoordinationV1Api(kube.api_client)
        self.clock = clock

    async def leases_of_partition(self, namespace: str, partition: str) -> dict[str, dict]:
        """The namespace's adapter Leases of this partition, any token, by name."""
        selector = f"{PARTITION_LABEL}={label_value(partition)}"
        found = await self.kube.call_json(
            self.api.list_namespaced_lease, namespace, label_selector=selector
        )
        return {lease["metadata"]["name"]: lease for lease in found.get("items") or []}

    async def leases_of_token(self, namespace: str | None, token: str) -> list[dict]:
        """The Leases labelled with this operation token (in every namespace without one)."""
        selector = f"{OPERATION_TOKEN_LABEL}={token}"
        if namespace is None:
            fn, args = self.api.list_lease_for_all_namespaces, ()
        else:
            fn, args = self.api.list_namespaced_lease, (namespace,)
        found = await self.kube.call_json(fn, *args, label_selector=selector)
        return list(found.get("items") or [])

    async def hold(
        self,
        namespace: str,
        *,
        partition: str,
        token: str,
        locks: Sequence[rr.Lock],
        seconds: float,
        leases: Mapping[str, dict] | None = None,
    ) -> datetime:
        """Hold every lock (create, keep, renew or take over); when the earliest of them runs
        out. AdapterLockedError names the first adapter another operation holds; nothing is
        taken before every lock was checked."""
        if leases is None:
            leases = await self.leases_of_partition(namespace, partition)
        now = self.clock()
        actions = []
        for lock in locks:
            lease = leases.get(lock.lease)
            record = decode_spec(lease.get("spec") or {}) if lease else None
            action = rr.lock_action(record, token, now, seconds)
            if action == rr.REFUSE:
                raise AdapterLockedError(
                    f"{lock.side} adapter {lock.adapter_id} is locked by operation "
                    f"{record.holder if record else '?'} (Lease {lock.lease})"
                )
            actions.append((lock, lease, action))
        earliest: datetime | None = None
        for lock, lease, action in actions:
            if action == rr.KEEP and lease is not None:
                expiry = rr.lease_expiry(decode_spec(lease.get("spec") or {}))
            else:
                if lease is not None:
                    await self.delete_as_read(lease)
                expiry = await self.create(
                    namespace, partition=partition, token=token, lock=lock, seconds=seconds, now=now
                )
            if expiry is not None and (earliest is None or expiry < earliest):
                earliest = expiry
        return earliest or now

    async def create(
        self,
        namespace: str,
        *,
        partition: str,
        token: str,
        lock: rr.Lock,
        seconds: float,
        now: datetime,
    ) -> datetime | None:
        record = LeaseRecord(token, max(1, round(seconds)), now, now)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": lock.lease,
                "namespace": namespace,
                "labels": {
                    **MANAGED_BY,
                    OPERATION_TOKEN_LABEL: token,
                    PARTITION_LABEL: label_value(partition),
                },
            },
            "spec": encode_spec(record),
        }
        try:
            await self.kube.call_json(self.api.create_namespaced_lease, namespace, body)
        except ApiException as error:
            if error.status == CONFLICT:
                raise LockConflictError(lock.lease) from error
            raise
        return rr.lease_expiry(record)

    async def delete_as_read(self, lease: Mapping[str, Any], *, strict: bool = True) -> None:
        """Delete the Lease only if it is still the one read; ``strict``: one already changed
        or gone is a conflict."""
        meta = lease["metadata"]
        options = {"preconditions": {"resourceVersion": meta["resourceVersion"]}}
        try:
            await self.kube.call(
                self.api.delete_namespaced_lease, meta["name"], meta["namespace"], body=options
            )
        except ApiException as error:
            if error.status not in (CONFLICT, NOT_FOUND):
                raise
            if strict:
                raise LockConflictError(meta["name"]) from error

    async def release(self, namespace: str, token: str) -> int:
        """Delete every Lease of this token (as read); how many were deleted."""
        leases = await self.leases_of_token(namespace, token)
        for lease in leases:
            holder = (lease.get("spec") or {}).get("holderIdentity")
            if holder == token:
                await self.delete_as_read(lease, strict=False)
        return len(leases)
