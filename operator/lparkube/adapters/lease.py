"""Reads and writes the operator's coordination.k8s.io/v1 Lease.

Writes carry the resourceVersion that was read, so two replicas racing for the same Lease
cannot both win: the loser gets a conflict and retries on its next round. Bodies are plain
JSON so Lease times keep the exact RFC 3339 microsecond form the API server requires.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lparkube.domain.clock import parse_time
from lparkube.domain.leadership import LeaseRecord

_MANAGED_BY = {"app.kubernetes.io/managed-by": "lparkube"}


class LeaseError(Exception):
    """A Lease call failed; the elector retries these."""


class LeaseConflictError(LeaseError):
    """Someone else wrote the Lease since we read it."""


class LeaseNamespaceMissingError(Exception):
    """The Lease's namespace does not exist: a deployment error, not something to retry."""


@dataclass(frozen=True)
class StoredLease:
    """A Lease as read from the API server: the decoded record and the raw object."""

    record: LeaseRecord
    raw: dict[str, Any]


class LeaseStore:
    """The one Lease object ``namespace/name``, through a synchronous API client."""

    def __init__(
        self, api: client.ApiClient, namespace: str, name: str, timeout: float = 5.0
    ) -> None:
        self._api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self._timeout = timeout

    def get(self) -> StoredLease | None:
        """The current Lease, or None when it does not exist yet."""
        try:
            response = self._api.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _translate(exc, self.namespace) from exc
        return _stored(response)

    def create(self, record: LeaseRecord) -> StoredLease:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": _MANAGED_BY},
            "spec": encode_spec(record),
        }
        try:
            response = self._api.create_namespaced_lease(
                self.namespace, body, _preload_content=False, _request_timeout=self._timeout
            )
        except ApiException as exc:
            raise _translate(exc, self.namespace) from exc
        return _stored(response)

    def update(self, record: LeaseRecord, current: StoredLease) -> StoredLease:
        """Replace the spec of ``current``; LeaseConflictError if it changed meanwhile."""
        body = copy.deepcopy(current.raw)
        body["spec"] = {**body.get("spec", {}), **encode_spec(record)}
        try:
            response = self._api.replace_namespaced_lease(
                self.name, self.namespace, body, _preload_content=False,
                _request_timeout=self._timeout,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                raise LeaseConflictError("Lease was deleted since it was read") from exc
            raise _translate(exc, self.namespace) from exc
        return _stored(response)


def encode_spec(record: LeaseRecord) -> dict[str, Any]:
    return {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration_seconds,
        "acquireTime": _micro_time(record.acquire_time),
        "renewTime": _micro_time(record.renew_time),
        "leaseTransitions": record.transitions,
    }


def decode_spec(spec: dict[str, Any]) -> LeaseRecord:
    return LeaseRecord(
        holder=spec.get("holderIdentity") or "",
        duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=parse_time(spec.get("acquireTime")),
        renew_time=parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def _stored(response: Any) -> StoredLease:
    raw = json.loads(response.data)
    return StoredLease(record=decode_spec(raw.get("spec") or {}), raw=raw)


def _translate(exc: ApiException, namespace: str) -> Exception:
    if exc.status == 404:
        return LeaseNamespaceMissingError(
            f"namespace {namespace!r} for the leader-election Lease does not exist; "
            "create it (the Helm chart does) or pass --lease-namespace"
        )
    if exc.status == 409:
        return LeaseConflictError(f"Lease changed concurrently: {exc.reason}")
    return LeaseError(f"Lease request failed: {exc.status} {exc.reason}")


def _micro_time(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
