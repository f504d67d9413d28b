"""The reconcile loop that plays virt-controller and virt-handler.

A polling loop rather than watches: each pass lists the (few) KubeVirt objects and nodes, then
moves every object at most one step. The loop runs faster right after it wrote something or was
kicked by the subresource API, and never dies on an odd object: each object is reconciled in
its own try block.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from kubernetes.client import ApiException

from . import guest_lifecycle, migration, nodes, restores, snapshots, vm, vmi
from .api import (
    QEMU,
    RESTORE,
    SIMULATED,
    SNAPSHOT,
    SNAPSHOT_CONTENT,
    VM,
    VMI,
    VMIM,
    Kube,
    key,
    runtime_of,
)
from .hosts import Hosts, no_real_guests
from .logic import POD_NETWORK, dig, is_final
from .loop import PollingLoop
from .virt_launcher import LAUNCHER_PODS


@dataclass
class Settings:
    """Knobs of the simulated KubeVirt installation."""

    interval: float = 0.4  # idle polling period, seconds
    busy_interval: float = 0.05  # period right after a write
    restart_delay: float = 1.0  # how long a Failed VMI stays visible before a restart
    default_eviction_strategy: str = "None"  # KubeVirt CR spec.configuration.evictionStrategy
    migration_timeout: float = 60.0  # a migration without a target node fails after this
    require_pvcs: bool = True  # VMIs wait (ErrorPvcNotFound) until their PVCs exist
    pod_network: str = str(POD_NETWORK)  # where VMI addresses come from (make run: loopback)
    guest_runtime: str = SIMULATED  # a VMI's runtime unless annotated (RUNTIME_ANNOTATION)
    guest_network: str = "127.78.0.0/16"  # real guests' pod addresses: QEMU listens on them
    heartbeat_interval: float = 60.0  # virt-handler's kubevirt.io/heartbeat period (KubeVirt: 1m)
    heartbeat_timeout: float = 300.0  # virt-controller's node controller (KubeVirt: 5m)
    node_monitor_grace: float = 40.0  # a silent kubelet's node turns Ready=Unknown (k8s: 40s)


@dataclass
class World:
    """One consistent-enough view of the cluster for a pass."""

    nodes: dict[str, dict] = field(default_factory=dict)
    vms: dict[tuple[str, str], dict] = field(default_factory=dict)
    vmis: dict[tuple[str, str], dict] = field(default_factory=dict)
    migrations: list[dict] = field(default_factory=list)
    snapshots: list[dict] = field(default_factory=list)
    snapshot_contents: dict[tuple[str, str], dict] = field(default_factory=dict)
    restores: list[dict] = field(default_factory=list)
    pvcs: dict[tuple[str, str], dict] = field(default_factory=dict)
    launcher_pods: list[dict] = field(default_factory=list)  # of VMIs run as real guests
    pod_network: IPv4Network | IPv6Network = POD_NETWORK
    guest_runtime: str = SIMULATED  # Settings.guest_runtime: the default runtime of a VMI

    def load(self) -> Counter:
        """Live VMIs per node, for least-loaded placement."""
        return Counter(
            dig(v, "status", "nodeName")
            for v in self.vmis.values()
            if dig(v, "status", "nodeName") and not is_final(v)
        )

    def used_ips(self) -> set[str]:
        reported = {
            i.get("ipAddress")
            for v in self.vmis.values()
            for i in dig(v, "status", "interfaces", default=[]) or []
            if isinstance(i, dict) and i.get("ipAddress")
        }
        return reported | {dig(p, "status", "podIP") for p in self.launcher_pods} - {None}


def _hosts(ctl: Controller, world: World, _: None) -> None:
    """The nodes' kubelets and virt-handlers: heartbeats, launcher pods, guests."""
    ctl.hosts.reconcile(ctl, world)


def _node_lifecycle(ctl: Controller, world: World, node: dict) -> None:
    """Node-lifecycle controller's part: taints follow the Ready condition."""
    if nodes.sync_taints(ctl.kube, node):
        ctl.wrote()


class Controller(PollingLoop):
    """Owns the loop thread; the reconcile steps live in vm, vmi, migration, snapshots and
    restores."""

    name = "kubevirt stand-in"

    def __init__(
        self,
        kube: Kube,
        settings: Settings | None = None,
        *,
        hosts: Hosts | None = None,
        storage: Any = None,
        wall_clock: Callable[[], float] = time.time,
    ):
        super().__init__()
        self.kube = kube
        self.settings = settings or Settings()
        self.hosts = hosts or Hosts(no_real_guests)  # the nodes' machines, for real guests
        self.storage = storage  # thin volumes and attachments (storage.py)
        self.wall_clock = wall_clock
        self.started_once: set[str] = set()  # VM UIDs that started (for runStrategy Once)

    def tick(self) -> None:
        world = self.observe()
        for node in list(world.nodes.values()):
            self._guard(_node_lifecycle, world, node)
        for obj in list(world.vms.values()):
            self._guard(vm.reconcile, world, obj)
        self._guard(_hosts, world, None)
        for obj in list(world.vmis.values()):
            real = runtime_of(obj, self.settings.guest_runtime) == QEMU
            self._guard(guest_lifecycle.reconcile if real else vmi.reconcile, world, obj)
        self._guard(migration.evacuate, world, None)
        for obj in world.migrations:
            self._guard(migration.reconcile, world, obj)
        for obj in world.snapshots:
            self._guard(snapshots.reconcile_snapshot, world, obj)
        for obj in list(world.snapshot_contents.values()):
            self._guard(snapshots.reconcile_content, world, obj)
        for obj in world.restores:
            self._guard(restores.reconcile_restore, world, obj)

    def observe(self) -> World:
        items = self.kube.items
        return World(
            nodes={dig(n, "metadata", "name"): n for n in items("/api/v1/nodes")},
            vms={key(o): o for o in items(VM.path())},
            vmis={key(o): o for o in items(VMI.path())},
            migrations=items(VMIM.path()),
            snapshots=items(SNAPSHOT.path()),
            snapshot_contents={key(o): o for o in items(SNAPSHOT_CONTENT.path())},
            restores=items(RESTORE.path()),
            pvcs={key(o): o for o in items("/api/v1/persistentvolumeclaims")},
            launcher_pods=items(LAUNCHER_PODS),  # filtered by the API server
            pod_network=ip_network(self.settings.pod_network),
            guest_runtime=self.settings.guest_runtime,
        )

    def _guard(self, step, world: World, obj: dict | None) -> None:
        try:
            step(self, world, obj)
        except Exception as error:
            name = "/".join(key(obj)) if obj else step.__name__
            self._report(f"{step.__module__}.{step.__name__} {name}", error)

    # --- writes -------------------------------------------------------------------------------

    def patch(self, path: str, obj: dict, patch: dict, *, status: bool = False) -> bool:
        """Merge-patch obj guarded by its resourceVersion; False on a conflict (retried later)."""
        body = {**patch, "metadata": {**patch.get("metadata", {})}}
        body["metadata"]["resourceVersion"] = dig(obj, "metadata", "resourceVersion")
        try:
            self.kube.merge_patch(path + ("/status" if status else ""), body)
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        self.wrote()
        return True

    def create(self, path: str, body: dict) -> dict | None:
        try:
            created = self.kube.create(path, body)
        except ApiException as error:
            if error.status == 409:
                return None
            raise
        self.wrote()
        return created

    def delete(self, path: str, obj: dict) -> bool:
        deleted = self.kube.delete(path, uid=dig(obj, "metadata", "uid"))
        if deleted:
            self.wrote()
        return deleted

    def event(self, obj: dict, reason: str, message: str, kind_type: str = "Normal") -> None:
        self.kube.event(obj, reason, message, kind_type)
