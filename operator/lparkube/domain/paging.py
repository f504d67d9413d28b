"""A Partition's paging LU (``spec.paging``) as pure decisions: its size, whether its pool can
give it, the LU request, the disk it becomes on the VM and the PagingReady condition.

The paging LU is the guest's swap device and its hibernation target: a disk and volume
``lparkube-paging`` (serial ``lparkube-paging``, virtio), so the guest finds it at
``/dev/disk/by-id/virtio-lparkube-paging``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lparkube.api.v1alpha1 import partition as partition_api
from lparkube.api.v1alpha1 import vioscluster as pool_api
from lparkube.domain import logical_units as lu
from lparkube.domain.clock import parse_duration
from lparkube.domain.conditions import FALSE, TRUE, Condition
from lparkube.domain.vios_cluster import is_ready

PAGING_DISK = partition_api.PAGING_DISK
PAGING_READY = partition_api.PAGING_READY
MEMORY_FACTOR = 1.25  # the default size: the VM's memory x 1.25
SIZE_UNKNOWN = partition_api.PAGING_SIZE_UNKNOWN
MIB = 1 << 20
DEFAULT_INITIAL = "1Gi"
DEFAULT_LOCK_TIMEOUT = "5m"


def wanted(spec: Mapping[str, Any]) -> bool:
    """The Partition asks for a paging LU."""
    return spec.get("paging") is not None


def vm_memory_bytes(vm_spec: Mapping[str, Any] | None) -> int | None:
    """The guest's memory: domain.memory.guest, else resources.requests (or limits) memory."""
    domain = ((((vm_spec or {}).get("template") or {}).get("spec")) or {}).get("domain") or {}
    resources = domain.get("resources") or {}
    for value in (
        (domain.get("memory") or {}).get("guest"),
        (resources.get("requests") or {}).get("memory"),
        (resources.get("limits") or {}).get("memory"),
    ):
        size = lu.parse_size(value)
        if size:
            return size
    return None


def paging_size(spec: Mapping[str, Any], vm_spec: Mapping[str, Any] | None) -> int | None:
    """spec.paging.size, else the VM's memory x 1.25 rounded up to a whole MiB; None when
    neither is known."""
    explicit = lu.parse_size((spec.get("paging") or {}).get("size"))
    if explicit:
        return explicit
    memory = vm_memory_bytes(vm_spec)
    if memory is None:
        return None
    return math.ceil(memory * MEMORY_FACTOR / MIB) * MIB


@dataclass(frozen=True)
class PagingInput:
    """What the paging decision reads: the Partition, the VM spec it runs (its template, or
    the adopted VM's) and its VIOSCluster (None: not found)."""

    namespace: str
    uid: str
    spec: Mapping[str, Any]
    vm_spec: Mapping[str, Any] | None
    pool: Mapping[str, Any] | None

    @property
    def pool_name(self) -> str:
        return self.spec.get("viosClusterName") or ""

    @property
    def size(self) -> int | None:
        return paging_size(self.spec, self.vm_spec)


def refusal(reason: str, message: str) -> Condition:
    return Condition(PAGING_READY, FALSE, reason, message)


def pool_not_found(given: PagingInput) -> Condition | None:
    if given.pool is not None:
        return None
    return refusal(
        partition_api.POOL_NOT_FOUND,
        f"VIOSCluster {given.pool_name} does not exist; create it or name another in "
        "spec.viosClusterName",
    )


def pool_not_ready(given: PagingInput) -> Condition | None:
    ready = is_ready(given.pool)
    if ready is not None and ready.status == TRUE:
        return None
    why = f"{ready.reason}: {ready.message}" if ready else "its status is not evaluated yet"
    return refusal(
        partition_api.POOL_NOT_READY, f"VIOSCluster {given.pool_name} is not Ready ({why})"
    )


def size_unknown(given: PagingInput) -> Condition | None:
    if given.size is not None:
        return None
    return refusal(
        SIZE_UNKNOWN,
        "the paging LU's size is unknown: the VM names no memory (domain.memory.guest or "
        "resources.requests.memory); set spec.paging.size",
    )


def too_large(given: PagingInput) -> Condition | None:
    found = lu.refuse(lu_request(given))
    return refusal(found.reason, found.message) if found else None


Check = Callable[[PagingInput], Condition | None]
CHECKS: tuple[Check, ...] = (pool_not_found, pool_not_ready, size_unknown, too_large)


def paging_refusal(given: PagingInput) -> Condition | None:
    """The first check that refuses the paging LU, or None: it may be allocated."""
    return next((found for check in CHECKS if (found := check(given))), None)


def pool_settings(pool: Mapping[str, Any]) -> tuple[int, int | None, bool, float]:
    """(initial bytes, max bytes or None, reuse, lock timeout seconds) of a pool's spec."""
    spec = pool.get("spec") or {}
    thin = spec.get("thin") or {}
    initial = lu.parse_size(thin.get("initialSize") or DEFAULT_INITIAL) or 0
    timeout = parse_duration(spec.get("lockTimeout"), DEFAULT_LOCK_TIMEOUT).total_seconds()
    return initial, lu.parse_size(thin.get("maxSize")), spec.get("reuse", True), timeout


def lu_request(given: PagingInput) -> lu.LURequest:
    """The LU request for a pool that exists and a known size."""
    initial, maximum, reuse, _ = pool_settings(given.pool or {})
    return lu.LURequest(
        namespace=given.namespace,
        pool=given.pool_name,
        purpose=pool_api.PAGING,
        size_bytes=given.size or 0,
        partition_uid=given.uid,
        initial_bytes=initial,
        max_bytes=maximum,
        reuse=bool(reuse),
    )


def attached(claim: str, size_bytes: int) -> Condition:
    return Condition(
        PAGING_READY,
        TRUE,
        partition_api.PAGING_ATTACHED,
        f"paging LU {claim} ({lu.format_size(size_bytes)}) is the VM's disk {PAGING_DISK}",
    )


def status_paging(claim: str | None, size_bytes: int | None) -> dict[str, Any] | None:
    """status.paging, or None (removed) without a paging LU."""
    if not claim or not size_bytes:
        return None
    return {"claimName": claim, "size": lu.format_size(size_bytes)}


# --- the VM's disk ---------------------------------------------------------------------------


def with_paging_disk(vm_spec: Mapping[str, Any], claim: str | None) -> dict[str, Any]:
    """A copy of the VM spec with disk and volume lparkube-paging on PVC ``claim`` (or
    without them when ``claim`` is None)."""
    spec = copy.deepcopy(dict(vm_spec))
    pod = spec.setdefault("template", {}).setdefault("spec", {})
    devices = pod.setdefault("domain", {}).setdefault("devices", {})
    volumes = [v for v in pod.get("volumes") or [] if v.get("name") != PAGING_DISK]
    disks = [d for d in devices.get("disks") or [] if d.get("name") != PAGING_DISK]
    if claim:
        volumes.append({"name": PAGING_DISK, "persistentVolumeClaim": {"claimName": claim}})
        disks.append({"name": PAGING_DISK, "serial": PAGING_DISK, "disk": {"bus": "virtio"}})
    pod["volumes"] = volumes
    devices["disks"] = disks
    return spec


def disk_claim(vm_spec: Mapping[str, Any] | None) -> str | None:
    """The PVC behind a VM's lparkube-paging volume, if it has one."""
    pod = (((vm_spec or {}).get("template") or {}).get("spec")) or {}
    for volume in pod.get("volumes") or []:
        if volume.get("name") == PAGING_DISK:
            return (volume.get("persistentVolumeClaim") or {}).get("claimName")
    return None
