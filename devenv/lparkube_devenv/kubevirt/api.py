"""Names of the KubeVirt API and a small JSON-over-REST client.

The stand-in talks to the API server with plain dicts (no generated models): KubeVirt objects
are custom resources anyway, and dicts survive odd or partial objects that models would reject.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

log = logging.getLogger("lparkube_devenv.kubevirt")

CORE_GROUP = "kubevirt.io"
CORE_VERSION = "v1"
SNAPSHOT_GROUP = "snapshot.kubevirt.io"
SNAPSHOT_VERSION = "v1beta1"
SUBRESOURCE_GROUP = "subresources.kubevirt.io"
SUBRESOURCE_VERSION = "v1"
NAMESPACE = "kubevirt"
SERVICE_NAME = "virt-api"
KUBEVIRT_VERSION = "v1.6.2"
LAUNCHER_IMAGE = f"quay.io/kubevirt/virt-launcher:{KUBEVIRT_VERSION}"

# Stand-in only knobs, set as annotations on a VMI (or its VM template) by tests.
STANDIN_PREFIX = "kubevirt-standin.lparkube.io/"
AGENT_ANNOTATION = STANDIN_PREFIX + "guest-agent"  # "connected" (default) or "disconnected"
IP_ANNOTATION = STANDIN_PREFIX + "ip-address"  # reported pod-network IP instead of a fake one
POWER_ANNOTATION = STANDIN_PREFIX + "guest-power"  # "off": the simulated guest powered itself off
RUNTIME_ANNOTATION = STANDIN_PREFIX + "runtime"  # SIMULATED or QEMU (a real guest)
SIMULATED, QEMU = "simulated", "qemu"


def runtime_of(vmi: dict, default: str) -> str:
    """How the stand-in runs this VMI: its annotation, else the installation's default."""
    annotations = (vmi.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(RUNTIME_ANNOTATION, default)
    return value if value in (SIMULATED, QEMU) else default


@dataclass(frozen=True)
class Resource:
    """One custom resource type: where it lives in the REST API."""

    group: str
    version: str
    plural: str
    kind: str

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """Collection or object path; a cluster-wide list when namespace is None."""
        base = f"/apis/{self.group}/{self.version}"
        if namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


VM = Resource(CORE_GROUP, CORE_VERSION, "virtualmachines", "VirtualMachine")
VMI = Resource(CORE_GROUP, CORE_VERSION, "virtualmachineinstances", "VirtualMachineInstance")
VMIM = Resource(
    CORE_GROUP, CORE_VERSION, "virtualmachineinstancemigrations", "VirtualMachineInstanceMigration"
)
SNAPSHOT = Resource(
    SNAPSHOT_GROUP, SNAPSHOT_VERSION, "virtualmachinesnapshots", "VirtualMachineSnapshot"
)
SNAPSHOT_CONTENT = Resource(
    SNAPSHOT_GROUP,
    SNAPSHOT_VERSION,
    "virtualmachinesnapshotcontents",
    "VirtualMachineSnapshotContent",
)
RESTORE = Resource(
    SNAPSHOT_GROUP, SNAPSHOT_VERSION, "virtualmachinerestores", "VirtualMachineRestore"
)

MERGE_PATCH = "application/merge-patch+json"


def now_iso() -> str:
    """The current time as Kubernetes writes timestamps (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str | None) -> datetime.datetime | None:
    """A Kubernetes timestamp back to an aware datetime; None when absent or malformed."""
    if not value:
        return None
    try:
        return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


def api_client(kubeconfig: Path) -> client.ApiClient:
    """A fresh ApiClient for one thread (urllib3 pools are not shared across our threads)."""
    return config.new_client_from_config(config_file=str(kubeconfig))


class Kube:
    """Minimal JSON REST client on top of the kubernetes ApiClient (auth, TLS, retries)."""

    def __init__(self, client_: client.ApiClient, timeout: float = 15.0):
        self.client = client_
        self.timeout = timeout
        self._lock = threading.Lock()

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path) -> Kube:
        return cls(api_client(kubeconfig))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict:
        """Send one request; returns the decoded JSON body ({} when empty). Raises ApiException."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, _ = self.client.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(method, url, headers, body, _request_timeout=self.timeout)
        data = response.read() or b""
        if not 200 <= response.status < 300:
            text = data.decode(errors="replace")
            raise client.ApiException(status=response.status, reason=response.reason, body=text)
        return json.loads(data) if data else {}

    def get(self, path: str) -> dict | None:
        """GET an object, None when it does not exist."""
        try:
            return self.request("GET", path)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def items(self, path: str) -> list[dict]:
        """The items of a list; empty when the resource type is not (yet) served."""
        try:
            return self.request("GET", path).get("items") or []
        except client.ApiException as error:
            if error.status == 404:
                return []
            raise

    def create(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, patch: dict) -> dict:
        return self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    def delete(self, path: str, *, uid: str | None = None, grace: int | None = None) -> bool:
        """Delete an object (optionally only the one with this UID; `grace` 0: at once, as a
        kubelet confirms a pod's end); False when already gone."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            self.request("DELETE", path, body)
            return True
        except client.ApiException as error:
            if error.status in (404, 409):
                return False
            raise

    def event(
        self,
        obj: dict,
        reason: str,
        message: str,
        kind_type: str = "Normal",
        *,
        component: str = "virt-controller",
        kind: str | None = None,
        api_version: str | None = None,
    ) -> None:
        """Record a core/v1 Event about obj, as virt-controller (or ``component``) does;
        ``kind``/``api_version`` name objects that carry none (list items). Cluster-scoped
        objects' events go to ``default``, as upstream recorders put them. Best effort."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        stamp = now_iso()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": api_version or obj.get("apiVersion"),
                "kind": kind or obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message,
            "type": kind_type,
            "source": {"component": component},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.create(f"/api/v1/namespaces/{namespace}/events", event)
        except Exception as error:  # events are best effort
            log.debug("event %s for %s not recorded: %s", reason, meta.get("name"), error)


def key(obj: dict) -> tuple[str, str]:
    """(namespace, name) of an object."""
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""
