"""Async access to the Kubernetes API for kopf handlers.

The official client is synchronous; its calls run in a bounded thread pool with a connection
pool of the same size, so many handlers can talk to the API server at once without blocking
kopf's event loop. Custom resources (ours and KubeVirt's) go through the generic
custom-objects API; KubeVirt's subresources through the paths virt-api serves.
"""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse

from lparkube.adapters.kubeconfig import load_configuration

T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


MANAGED_BY = {"app.kubernetes.io/managed-by": "lparkube"}  # on the objects lparkube makes


@dataclass(frozen=True)
class ResourceRef:
    """A custom resource's group, version and plural: what the custom-objects API needs."""

    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


PARTITION = ResourceRef("lparkube.io", "v1alpha1", "partitions")
SAVE_EVENT = ResourceRef("lparkube.io", "v1alpha1", "saveevents")
CONDITION_PROFILE = ResourceRef("lparkube.io", "v1alpha1", "conditionprofiles")
HIBERNATION_IMAGE = ResourceRef("lparkube.io", "v1alpha1", "hibernationimages")
VIRTUAL_MACHINE = ResourceRef("kubevirt.io", "v1", "virtualmachines")
VIRTUAL_MACHINE_INSTANCE = ResourceRef("kubevirt.io", "v1", "virtualmachineinstances")
VIRTUAL_MACHINE_SNAPSHOT = ResourceRef("snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshots")
KUBEVIRT_SUBRESOURCES = "/apis/subresources.kubevirt.io/v1"


def not_found(error: ApiException) -> bool:
    return error.status == 404


class KindNotServedError(ApiException):
    """The API server does not serve this kind at all (its CRD or API group is missing).

    Still the 404 ApiException it was, so code that handles API errors handles it too; its
    reason says which kind is missing."""

    def __init__(self, ref: ResourceRef, error: ApiException) -> None:
        reason = f"the API server does not serve {ref.plural}.{ref.group}/{ref.version}"
        super().__init__(status=error.status, reason=reason)
        self.body, self.headers, self.ref = error.body, error.headers, ref


def kind_not_served(error: ApiException) -> bool:
    """A 404 about the kind, not one object: the API server names no object in its answer
    (``details`` is empty, or the body is not a Status at all)."""
    if error.status != 404:
        return False
    try:
        details = json.loads(error.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return True
    return not details.get("name")


class Kube:
    """The operator's Kubernetes client: async methods over the official client."""

    def __init__(self, api_client: client.ApiClient, workers: int = 32) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self.closed = False

    @classmethod
    def connect(cls, kubeconfig: Path | None = None, workers: int = 32) -> Kube:
        """A client for the same cluster and user as kopf's login."""
        configuration = load_configuration(kubeconfig)
        configuration.connection_pool_maxsize = workers
        return cls(client.ApiClient(configuration), workers)

    def close(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking client call in the pool. Once the client is closed (the operator
        stopping: kopf's cleanup may run while daemons are still being stopped) a call is
        cancelled, so a daemon caught in it stops as cancelled instead of failing and being
        retried until kopf gives up on it."""
        loop = asyncio.get_running_loop()
        try:
            if self.closed:
                raise RuntimeError("closed")
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except RuntimeError:  # the pool shut down ("cannot schedule new futures")
            if self.closed:
                raise asyncio.CancelledError("the Kubernetes client is closed") from None
            raise

    async def call_json(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One client call whose answer is read as plain JSON (no model objects)."""
        response = await self.call(fn, *args, _preload_content=False, **kwargs)
        return json.loads(response.data)

    async def get(self, ref: ResourceRef, namespace: str | None, name: str) -> dict | None:
        """One object, or None when it does not exist; KindNotServedError when its kind is
        not served (a cluster without KubeVirt, say)."""
        try:
            if namespace is None:
                return await self.call(
                    self.custom.get_cluster_custom_object, ref.group, ref.version, ref.plural, name
                )
            return await self.call(
                self.custom.get_namespaced_custom_object,
                ref.group,
                ref.version,
                namespace,
                ref.plural,
                name,
            )
        except ApiException as error:
            if kind_not_served(error):
                raise KindNotServedError(ref, error) from error
            if not_found(error):
                return None
            raise

    async def list(
        self, ref: ResourceRef, namespace: str | None = None, label_selector: str = ""
    ) -> list[dict]:
        """All objects of a kind, in one namespace or everywhere."""
        args = (ref.group, ref.version)
        if namespace is None:
            result = await self.call(
                self.custom.list_cluster_custom_object,
                *args,
                ref.plural,
                label_selector=label_selector,
            )
        else:
            result = await self.call(
                self.custom.list_namespaced_custom_object,
                *args,
                namespace,
                ref.plural,
                label_selector=label_selector,
            )
        return result.get("items", [])

    async def create(self, ref: ResourceRef, namespace: str | None, body: dict) -> dict:
        body = {"apiVersion": ref.api_version, **body}
        if namespace is None:
            return await self.call(
                self.custom.create_cluster_custom_object, ref.group, ref.version, ref.plural, body
            )
        return await self.call(
            self.custom.create_namespaced_custom_object,
            ref.group,
            ref.version,
            namespace,
            ref.plural,
            body,
        )

    async def patch(
        self,
        ref: ResourceRef,
        namespace: str | None,
        name: str,
        patch: dict,
        *,
        status: bool = False,
    ) -> dict:
        """A JSON merge patch of the object, or of its status subresource."""
        method = self._patch_method(namespace is None, status)
        scope = () if namespace is None else (namespace,)
        return await self.call(
            method,
            ref.group,
            ref.version,
            *scope,
            ref.plural,
            name,
            patch,
            _content_type=MERGE_PATCH,
        )

    async def json_patch(
        self, ref: ResourceRef, namespace: str, name: str, operations: list[dict]
    ) -> dict:
        """A JSON patch (RFC 6902) of a namespaced object: its ``test`` operations make it a
        precondition (the API server answers 422 when one fails)."""
        return await self.call(
            self.custom.patch_namespaced_custom_object,
            ref.group,
            ref.version,
            namespace,
            ref.plural,
            name,
            operations,
            _content_type=JSON_PATCH,
        )

    async def get_claim(self, namespace: str, name: str) -> dict | None:
        """A PersistentVolumeClaim as the API server's JSON, or None."""
        path = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}"
        try:
            return await self.call(self._request, "GET", path, None)
        except ApiException as error:
            if not_found(error):
                return None
            raise

    async def list_path(self, path: str, **query: str) -> list[dict]:
        """The items of a list on a raw API path (`/api/v1/nodes`, a group's), with query
        parameters such as labelSelector or fieldSelector."""
        params = urllib.parse.urlencode({k: v for k, v in query.items() if v})
        answer = await self.call(self._request, "GET", f"{path}?{params}" if params else path, None)
        return list((answer or {}).get("items") or [])

    async def delete_path(self, path: str, *, grace_seconds: int | None = None) -> bool:
        """Delete the object at a raw API path (a pod, a VolumeAttachment); False when it was
        gone already. ``grace_seconds`` 0 force-deletes a pod whose kubelet cannot answer."""
        body = None if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
        try:
            await self.call(self._request, "DELETE", path, body)
        except ApiException as error:
            if not_found(error):
                return False
            raise
        return True

    async def get_volume(self, name: str) -> dict | None:
        """A PersistentVolume as the API server's JSON, or None."""
        try:
            return await self.call(self._request, "GET", f"/api/v1/persistentvolumes/{name}", None)
        except ApiException as error:
            if not_found(error):
                return None
            raise

    async def request_claim_size(self, namespace: str, name: str, size: str) -> None:
        """Ask for a larger claim (the StorageClass must allow expansion)."""
        path = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}"
        payload = json.dumps({"spec": {"resources": {"requests": {"storage": size}}}}).encode()
        await self.call(self._send, "PATCH", path, payload, MERGE_PATCH)

    def _patch_method(self, cluster: bool, status: bool) -> Callable[..., dict]:
        custom = self.custom
        if cluster:
            return (
                custom.patch_cluster_custom_object_status
                if status
                else custom.patch_cluster_custom_object
            )
        return (
            custom.patch_namespaced_custom_object_status
            if status
            else custom.patch_namespaced_custom_object
        )

    async def kubevirt_subresource(
        self,
        ref: ResourceRef,
        namespace: str,
        name: str,
        verb: str,
        *,
        method: str = "PUT",
        body: Any = None,
    ) -> Any:
        """Call virt-api, e.g. PUT virtualmachines/NAME/start, exactly as a cluster serves it."""
        path = f"{KUBEVIRT_SUBRESOURCES}/namespaces/{namespace}/{ref.plural}/{name}/{verb}"
        return await self.call(self._request, method, path, body)

    async def patch_status_encoded(
        self,
        ref: ResourceRef,
        namespace: str,
        name: str,
        payload: bytes,
        *,
        content_type: str = MERGE_PATCH,
    ) -> None:
        """Patch an object's status with a body encoded by the caller; the answer is dropped.

        For large statuses: the generated client would walk the body twice (validation and
        sanitising) and decode the whole object it answers with, holding the GIL the event
        loop needs; a JSON snapshot taken by the caller is also cheaper than a deep copy.
        """
        path = f"/apis/{ref.group}/{ref.version}/namespaces/{namespace}/{ref.plural}/{name}/status"
        await self.call(self._send, "PATCH", path, payload, content_type)

    def _send(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        content_type: str,
        *,
        read: bool = False,
    ) -> bytes:
        """One raw API request with a body the caller encoded; the answer's bytes when
        ``read``, else it is drained unparsed. Non-2xx answers raise ApiException."""
        api = self.api_client
        method, url, headers, _, _ = api.param_serialize(
            method,
            path,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"],
        )
        response = api.rest_client.pool_manager.request(
            method, url, body=payload, headers=headers, preload_content=False
        )
        try:
            if not 200 <= response.status < 300:
                answer = RESTResponse(response)
                answer.read()
                raise ApiException(http_resp=answer)
            if read:
                return response.read()
            response.drain_conn()
            return b""
        finally:
            response.release_conn()

    def _request(self, method: str, path: str, body: Any) -> Any:
        """One raw JSON request (the client's generated APIs do not know KubeVirt's paths)."""
        payload = None if body is None else json.dumps(body).encode()
        data = self._send(method, path, payload, "application/json", read=True)
        return json.loads(data) if data else None
