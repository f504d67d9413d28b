"""ThinStorage: the ``thin.lparkube.io`` CSI driver, its sidecars and the kubelets' volume part.

One daemon thread polls the storage objects and plays, in this order, the kubelets'
registration, external-provisioner (provision, reclaim), external-resizer and
external-attacher; the real kube-controller-manager does the rest (persistentvolume-binder
binds, attach/detach creates and deletes VolumeAttachments, expander names the resizer,
pvc/pv-protection, pod GC and taint eviction). The methods below are what virt-launcher and
virt-handler stand-ins need from the node side.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kubernetes.client import ApiException

from ..api import Kube, log
from ..logic import dig
from ..loop import PollingLoop
from . import attacher, provisioner, resizer
from .attachlog import AttachLog
from .backing import BackingError, BackingStore, copy_data
from .events import record
from .kubelet import Kubelets
from .names import (
    ATTACHMENTS_PATH,
    CLAIMS_PATH,
    CLASSES_PATH,
    DRIVER,
    DRIVERS_PATH,
    NODES_PATH,
    VOLUMES_PATH,
)
from .objects import (
    capacity_bytes,
    csi_driver,
    is_ours,
    storage_class,
    volume_mode,
    volume_namespace,
)
from .readiness import AttachState, Readiness, volume_ready
from .world import StorageWorld, by_key

ATTACH_LOG = "attach.log"
VOLUMES_DIR = "volumes"
SNAPSHOTS_DIR = "snapshots"


@dataclass
class StorageSettings:
    interval: float = 0.3  # idle polling period, seconds
    busy_interval: float = 0.05  # right after a write
    usage_interval: float = 1.0  # how often used-bytes annotations are refreshed
    default_class: bool = True  # lparkube-thin is the cluster's default StorageClass


class Backing(NamedTuple):
    path: Path  # a sparse file (Block) or a directory (Filesystem)
    volume_mode: str
    access_modes: tuple[str, ...]


class ThinStorage(PollingLoop):
    """Start with :meth:`start`; everything else may be called from any thread."""

    name = "thin storage"

    def __init__(self, kubeconfig: Path, workdir: Path, settings: StorageSettings | None = None):
        super().__init__()
        self.workdir = Path(workdir)
        self.settings = settings or StorageSettings()
        self.store = BackingStore(self.workdir / VOLUMES_DIR)
        self.snapshots = BackingStore(self.workdir / SNAPSHOTS_DIR)  # <namespace>/<snapshot>
        self.attach_log = AttachLog(self.workdir / ATTACH_LOG)
        self.kube = Kube.from_kubeconfig(kubeconfig)  # the loop thread's own client
        self._api = Kube.from_kubeconfig(kubeconfig)  # for callers, one at a time
        self._api_lock = threading.Lock()
        self.kubelets = Kubelets()
        self.identity = f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:4]}-{DRIVER}"
        self.components = {
            "provisioner": f"{DRIVER}_lparkube-standin_{uuid.uuid4()}",
            "resizer": f"external-resizer {DRIVER}",
        }
        self.refusals_seen: set[tuple] = set()
        self._warned: dict[str, str] = {}
        self._usage_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def attach_log_path(self) -> Path:
        return self.attach_log.path

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Install the StorageClass and CSIDriver, register the nodes, run the loop."""
        self.store.root.mkdir(parents=True, exist_ok=True)
        install(self.kube, CLASSES_PATH, storage_class(self.settings.default_class))
        install(self.kube, DRIVERS_PATH, csi_driver())
        self.kubelets.register(self.kube, self.kube.items(NODES_PATH))
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name="thin-storage", daemon=True
        )
        self._thread.start()
        log.info("thin storage: %s running, volumes under %s", DRIVER, self.store.root)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
            self._thread = None

    def tick(self) -> None:
        world = self.observe()
        if self.kubelets.register(self.kube, world.nodes.values()):
            self.wrote()
        provisioner.provision_claims(self, world)
        provisioner.reclaim_volumes(self, world)
        resizer.resize_claims(self, world)
        attacher.sync_attachments(self, world)
        if time.monotonic() - self._usage_at >= self.settings.usage_interval:
            self._usage_at = time.monotonic()
            provisioner.refresh_usage(self, world)

    def observe(self) -> StorageWorld:
        items = self.kube.items
        refusals = self.kube.request(
            "GET", "/api/v1/events", query={"fieldSelector": "reason=FailedAttachVolume"}
        )
        return StorageWorld(
            nodes={dig(n, "metadata", "name"): n for n in items(NODES_PATH)},
            claims=by_key(items(CLAIMS_PATH)),
            volumes={dig(v, "metadata", "name"): v for v in items(VOLUMES_PATH)},
            attachments=items(ATTACHMENTS_PATH),
            refusals=refusals.get("items") or [],
        )

    # --- helpers for the sidecar steps (loop thread) --------------------------------------------

    def guard(self, step, *args) -> None:
        """Run one step for one object; an error is logged (rate-limited) and retried next pass."""
        try:
            step(self, *args)
        except Exception as error:
            name = dig(args[0], "metadata", "name", default="") if args else ""
            self._report(f"{step.__module__}.{step.__name__} {name}", error)

    def event(
        self, obj: dict, kind: str, reason: str, message: str, role: str, *, warning: bool = False
    ) -> None:
        component = self.components[role]
        record(self.kube, obj, kind, reason, message, component=component, warning=warning)

    def warn_once(self, obj: dict, kind: str, reason: str, message: str, role: str) -> None:
        """A Warning event, not repeated while the object keeps failing the same way."""
        uid = dig(obj, "metadata", "uid", default="")
        if self._warned.get(uid) != message:
            self._warned[uid] = message
            self.event(obj, kind, reason, message, role, warning=True)

    def record(self, event: str, attachment: dict, volume: dict, message: str = "") -> None:
        node = dig(attachment, "spec", "nodeName", default="")
        self.attach_log.append(
            event,
            volume=dig(attachment, "spec", "source", "persistentVolumeName", default=""),
            node=node,
            access_modes=dig(volume, "spec", "accessModes", default=[]) or [],
            claim=attacher.claim_key(volume),
            pods=attacher.pods_using(self, volume, node) if volume else [],
            attachment=dig(attachment, "metadata", "name", default=""),
            message=message,
        )

    # --- the node side: what virt-launcher / virt-handler stand-ins call -----------------------

    def volume_ready(self, namespace: str, pod: str) -> Readiness:
        """(ok, reason, message): every PVC of the pod attached to its node, as the kubelet
        waits for it; reasons Attached, Unscheduled, NodeNotFound, ClaimNotFound,
        ClaimPending, MultiAttach (with the controller's message), AttachFailed, Attaching."""
        with self._api_lock:
            api = self._api
            found = api.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
            if found is None:
                return Readiness(False, "PodNotFound", f'pod "{pod}" not found')
            node_name = dig(found, "spec", "nodeName")
            node = api.get(f"{NODES_PATH}/{node_name}") if node_name else None
            claims = {
                dig(c, "metadata", "name"): c
                for c in api.items(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims")
            }
            volumes = {dig(v, "metadata", "name"): v for v in api.items(VOLUMES_PATH)}
            events = (
                api.request(
                    "GET",
                    f"/api/v1/namespaces/{namespace}/events",
                    query={
                        "fieldSelector": f"involvedObject.uid={dig(found, 'metadata', 'uid')},"
                        "reason=FailedAttachVolume"
                    },
                ).get("items")
                or []
            )
            attachments = api.items(ATTACHMENTS_PATH)
        events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return volume_ready(found, AttachState(claims, volumes, node, attachments, events))

    def backing(self, namespace: str, claim: str) -> Backing:
        """Where the claim's data is; LookupError while it is not bound to a volume of ours."""
        with self._api_lock:
            found = self._api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
            volume_name = dig(found, "spec", "volumeName")
            volume = self._api.get(f"{VOLUMES_PATH}/{volume_name}") if volume_name else None
        ref = dig(volume, "spec", "claimRef", default={}) or {}
        bound = (
            ref.get("uid") == dig(found, "metadata", "uid") and ref.get("namespace") == namespace
        )
        if (
            volume is None
            or not bound
            or not is_ours(volume)
            or volume_namespace(volume) != namespace
        ):
            raise LookupError(
                f"persistentvolumeclaim {namespace}/{claim} is not bound to a {DRIVER} volume"
            )
        try:
            path = self.store.path(namespace, volume_name)
        except BackingError as error:
            raise LookupError(str(error)) from error
        return Backing(
            path, volume_mode(volume), tuple(dig(volume, "spec", "accessModes", default=[]))
        )

    # --- the CSI snapshotter's part: what the VirtualMachineSnapshot stand-in calls ------------

    def take_snapshot(self, namespace: str, claim: str, name: str) -> int:
        """CreateSnapshot: the claim's volume as it is now, copied (data extents only) to the
        snapshot ``name`` of ``namespace``; its restore size in bytes (the volume's). The caller
        makes sure nothing writes meanwhile. LookupError while the claim is not bound to one of
        this driver's volumes."""
        backing = self.backing(namespace, claim)
        target = self.snapshots.path(namespace, name)
        self.snapshots.remove(target)  # a snapshot taken again starts afresh
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        copy_data(backing.path, target)
        with self._api_lock:
            found = self._api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
        return capacity_bytes(found or {}, "status", "capacity")

    def delete_snapshot(self, namespace: str, name: str) -> None:
        """DeleteSnapshot; idempotent."""
        self.snapshots.remove(self.snapshots.path(namespace, name))

    def mount_volumes(self, namespace: str, pod: str) -> bool:
        """The pod's kubelet takes its volumes in use (node ``status.volumesInUse``), as it does
        as soon as it has the pod, before they are attached; False if its node is powered off."""
        with self._api_lock:
            return self.kubelets.mount(self._api, namespace, pod)

    def unmount_volumes(self, namespace: str, pod: str, node: str | None = None) -> bool:
        """The pod's volumes are unmounted (out of ``volumesInUse``) on ``node`` (default:
        wherever they were mounted): from now on the controller may detach them once the pod
        is gone; False (they stay in use) if a node holding them is powered off."""
        with self._api_lock:
            return self.kubelets.unmount(self._api, namespace, pod, node)

    def power_off(self, node: str) -> None:
        """The node's kubelet is gone: its volumes stay in use; nothing is registered there."""
        self.kubelets.power_off(node)

    def power_on(self, node: str) -> None:
        """The node is back with an empty kubelet: nothing mounted, registered again."""
        with self._api_lock:
            self.kubelets.power_on(self._api, node)
        self.kick()


def install(kube: Kube, collection: str, body: dict) -> None:
    """Create an object, or replace what an earlier run left (recreated if immutable)."""
    path = f"{collection}/{body['metadata']['name']}"
    current = kube.get(path)
    if current is None:
        kube.create(collection, body)
        return
    metadata = {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
    try:
        kube.request("PUT", path, {**body, "metadata": metadata})
    except ApiException as error:
        if error.status != 422:
            raise
        kube.delete(path)
        kube.create(collection, body)
