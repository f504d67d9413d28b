"""StandIn: a KubeVirt installation in one process, on a real API server.

start() installs KubeVirt's CRDs, registers the virt-api aggregated API (namespace kubevirt,
Service virt-api of type ExternalName -> localhost, APIService v1.subresources.kubevirt.io),
creates fake worker nodes and runs the controller and the HTTPS server in daemon threads.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from kubernetes.client import ApiException

from . import crds, nodes
from .actions import Actions
from .api import (
    AGENT_ANNOTATION,
    NAMESPACE,
    POWER_ANNOTATION,
    SERVICE_NAME,
    SUBRESOURCE_GROUP,
    SUBRESOURCE_VERSION,
    VMI,
    Kube,
    api_client,
    log,
)
from .controller import Controller, Settings
from .hosts import GuestFactory, Hosts
from .qemu_guest import HostService, QemuGuest, QemuGuests, RunImage
from .storage import ThinStorage
from .subresources import SubresourceServer
from .tls import make_serving_certs, server_context

APISERVICE_NAME = f"{SUBRESOURCE_VERSION}.{SUBRESOURCE_GROUP}"
APISERVICE_PATH = f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE_NAME}"
DEFAULT_NODES = ("node-a", "node-b", "node-c")


class StandIn:
    """KubeVirt stand-in: CRDs + virt-controller/virt-handler loop + virt-api subresources."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        front_proxy_ca: Path,
        nodes: Iterable[str] = DEFAULT_NODES,
        *,
        settings: Settings | None = None,
        allowed_names: tuple[str, ...] = ("front-proxy-client",),
        authorize: bool = True,
        host_services: Iterable[HostService] = (),
        kernel_images: Mapping[str, Path] | None = None,
        guest_launcher: GuestFactory | None = None,
    ):
        self.kubeconfig = Path(kubeconfig)
        self.workdir = Path(workdir)
        self.front_proxy_ca = Path(front_proxy_ca)
        self.node_names = tuple(nodes)
        self.settings = settings or Settings()
        self.allowed_names = allowed_names
        self.authorize = authorize
        self.kube = Kube.from_kubeconfig(self.kubeconfig)
        self.storage = ThinStorage(self.kubeconfig, self.workdir)  # thin volumes, attach/detach
        self.host_services = tuple(host_services)
        self.guest_image = RunImage(self.workdir / "guest-image")
        launcher = guest_launcher or QemuGuests(
            Kube.from_kubeconfig(self.kubeconfig),
            self.storage,
            self.workdir,
            self.guest_image.kernel_boot,
            services=self.host_services,
            kernel_images=dict(kernel_images or {}),  # kernelBoot image -> its files here
        )
        self.hosts = Hosts(launcher)
        self.controller: Controller | None = None
        self.server: SubresourceServer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StandIn:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.server.port if self.server else 0

    def start(self, timeout: float = 60.0) -> None:
        """Install and run everything; returns once the aggregated API is Available."""
        self._stop.clear()
        crds.install(self.kube, timeout)
        nodes.ensure_nodes(self.kube, self.node_names)
        self.storage.start()
        self.controller = Controller(
            Kube(api_client(self.kubeconfig)),
            self.settings,
            hosts=self.hosts,
            storage=self.storage,
        )
        self._thread = threading.Thread(
            target=self.controller.run, args=(self._stop,), name="virt-controller", daemon=True
        )
        self._thread.start()
        certs = make_serving_certs(self.workdir / "virt-api-pki")
        context = server_context(certs, self.front_proxy_ca)
        actions = Actions(
            Kube(api_client(self.kubeconfig)), self.controller.kick, self.hosts.guest_of
        )
        self.server = SubresourceServer(
            actions, Kube(api_client(self.kubeconfig)), context, self.allowed_names, self.authorize
        )
        self.server.start()
        self._register(certs.ca_bundle())
        self._wait_available(time.monotonic() + timeout)
        log.info("KubeVirt stand-in running; virt-api on 127.0.0.1:%d", self.port)

    def stop(self, unregister: bool = True) -> None:
        """Stop the threads; by default also remove the APIService (it would point nowhere)."""
        self._stop.set()
        if self.controller:
            self.controller.kick()
        if unregister:
            try:
                self.kube.delete(APISERVICE_PATH)
            except Exception as error:  # the API server may already be gone
                log.debug("APIService not removed: %s", error)
        if self.server:
            self.server.stop()
            self.server = None
        if self._thread:
            self._thread.join(timeout=10)
            self._thread = None
        self.hosts.stop_all()
        self.storage.stop()

    # --- aggregation -------------------------------------------------------------------------

    def _ensure(self, path: str, collection: str, body: dict) -> None:
        """Create, or replace what is there (a previous run may have left other ports)."""
        current = self.kube.get(path)
        if current is None:
            self.kube.create(collection, body)
            return
        body = {
            **body,
            "metadata": {
                **body["metadata"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            },
        }
        self.kube.request("PUT", path, body)

    def _register(self, ca_bundle: bytes) -> None:
        try:
            self.kube.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        except ApiException as error:
            if error.status != 409:
                raise
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": SERVICE_NAME,
                "namespace": NAMESPACE,
                "labels": {"kubevirt.io": "virt-api"},
            },
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [
                    {"name": "https", "port": self.port, "protocol": "TCP", "targetPort": self.port}
                ],
            },
        }
        services = f"/api/v1/namespaces/{NAMESPACE}/services"
        self._ensure(f"{services}/{SERVICE_NAME}", services, service)
        apiservice = {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE_NAME, "labels": {"kubevirt.io": "virt-api-aggregator"}},
            "spec": {
                "group": SUBRESOURCE_GROUP,
                "version": SUBRESOURCE_VERSION,
                "service": {"namespace": NAMESPACE, "name": SERVICE_NAME, "port": self.port},
                "caBundle": base64.b64encode(ca_bundle).decode(),
                "groupPriorityMinimum": 1000,
                "versionPriority": 15,
            },
        }
        self._ensure(APISERVICE_PATH, "/apis/apiregistration.k8s.io/v1/apiservices", apiservice)

    def _wait_available(self, deadline: float) -> None:
        conditions: list = []
        while time.monotonic() < deadline:
            current = self.kube.get(APISERVICE_PATH) or {}
            conditions = (current.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions):
                return
            time.sleep(0.2)
        raise TimeoutError(f"APIService {APISERVICE_NAME} not Available: {conditions}")

    # --- test helpers ------------------------------------------------------------------------

    def set_agent_connected(self, namespace: str, name: str, connected: bool) -> None:
        """Connect or disconnect the simulated guest agent of a VMI."""
        value = "connected" if connected else "disconnected"
        self.kube.merge_patch(
            VMI.path(namespace, name), {"metadata": {"annotations": {AGENT_ANNOTATION: value}}}
        )
        if self.controller:
            self.controller.kick()

    def power_off_guest(self, namespace: str, name: str) -> None:
        """The simulated guest of a Running VMI powers itself off (a shutdown or a suspend to
        disk from inside): within a pass its VMI turns Succeeded, as KubeVirt shows a guest's
        own power-off, and the VM's run strategy decides what follows (Always: a new VMI;
        Manual, Halted: none). A real guest (QEMU) powers off by itself."""
        self.kube.merge_patch(
            VMI.path(namespace, name), {"metadata": {"annotations": {POWER_ANNOTATION: "off"}}}
        )
        if self.controller:
            self.controller.kick()

    def host_service(self, name: str) -> HostService:
        """The host service real guests reach by this name."""
        return next(s for s in self.host_services if s.name == name)

    def guest(self, namespace: str, name: str) -> QemuGuest | None:
        """The real guest of a VMI (its QEMU: console, QMP), when it runs as one."""
        vmi = self.kube.get(VMI.path(namespace, name))
        uid = str(((vmi or {}).get("metadata") or {}).get("uid") or "")
        guest = self.hosts.guest_of(uid) if uid else None
        return guest if isinstance(guest, QemuGuest) else None

    def power_off_node(self, name: str) -> int:
        """Cut a node's power: its guests die at once, its kubelet and virt-handler go silent
        (see hosts.py); returns how many guests were killed."""
        killed = self.hosts.power_off(name)
        self.storage.power_off(name)
        if self.controller:
            self.controller.kick()
        return killed

    def isolate_node(self, name: str) -> None:
        """Cut a node off the network: its kubelet and virt-handler go silent, its guests run
        on and reach nothing outside the node (see hosts.py); ``power_on_node`` ends it."""
        self.hosts.isolate(name)
        self.storage.power_off(name)
        if self.controller:
            self.controller.kick()

    def power_on_node(self, name: str) -> None:
        """The node boots again: its kubelet reports Ready and finds its old guests gone."""
        self.hosts.power_on(name)
        self.storage.power_on(name)
        nodes.set_ready(self.kube, name, True)
        if self.controller:
            self.controller.kick()

    def set_node_ready(self, name: str, ready: bool) -> None:
        nodes.set_ready(self.kube, name, ready)
        if self.controller:
            self.controller.kick()
