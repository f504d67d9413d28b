"""The plugin's view of the cluster: lparkube's kinds through the custom-objects API, with the
client's errors turned into messages a kubectl user can act on.

Three failures are told apart: an object that does not exist (``partitions.lparkube.io "web"
not found in namespace "shop"``), a kind the API server does not serve (lparkube's CRDs are not
installed), and an API server that cannot be reached (which server, and why).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from lparkube.adapters.kube import MERGE_PATCH, kind_not_served
from lparkube.api.resource import API_VERSION, GROUP, VERSION, CustomResource
from lparkube.kubectl_plugin.verb import NotFoundError, PluginError

T = TypeVar("T")
DEFAULT_NAMESPACE = "default"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
REQUEST_TIMEOUT = 30.0  # seconds for one request (a watch gets its own, longer one)
WATCH_SLICE = 60  # seconds one watch request lasts at most before it is made again
CRD_HINT = (
    "install lparkube's CRDs (helm install lparkube charts/lparkube, or kubectl apply -f crds/)"
)


def resource_name(kind: CustomResource) -> str:
    """``partitions.lparkube.io``, as kubectl names a kind in its messages."""
    return kind.crd_name


def object_ref(kind: CustomResource, name: str) -> str:
    """``saveevent.lparkube.io/save-web-x2k4z``, as ``kubectl create`` prints it."""
    return f"{kind.singular}.{GROUP}/{name}"


def connect(
    kubeconfig: str | None, context: str | None, request_timeout: timedelta | None = None
) -> tuple[Cluster, str]:
    """A client for the kubeconfig (``--kubeconfig``, else ``$KUBECONFIG``, else
    ``~/.kube/config``; in a pod without one, its service account) and the namespace of its
    context (``--context``, else the current one), ``default`` when the context names none.
    Each request may take ``request_timeout`` (REQUEST_TIMEOUT when None)."""
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        namespace = _context_namespace(kubeconfig, context)
    except (ConfigException, OSError) as error:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            namespace = _pod_namespace()
        else:
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise PluginError(
                f"cannot load the kubeconfig {where}: {error} (use --kubeconfig or $KUBECONFIG)"
            ) from None
    configuration.retries = 1  # fail fast when no API server listens
    seconds = request_timeout.total_seconds() if request_timeout else REQUEST_TIMEOUT
    return Cluster(client.ApiClient(configuration), seconds), namespace


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return ((chosen or {}).get("context") or {}).get("namespace") or DEFAULT_NAMESPACE


def _pod_namespace() -> str:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as file:
            return file.read().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


class Cluster:
    """Blocking calls on lparkube's namespaced kinds; every failure is a PluginError."""

    def __init__(self, api_client: client.ApiClient, request_timeout: float = REQUEST_TIMEOUT):
        self.api_client = api_client
        self.request_timeout = request_timeout
        self.objects = client.CustomObjectsApi(api_client)

    @property
    def server(self) -> str:
        return self.api_client.configuration.host

    def get(self, kind: CustomResource, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            kind,
            namespace,
            name,
            lambda: self.objects.get_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural, name, _request_timeout=self.request_timeout
            ),
        )

    def list(self, kind: CustomResource, namespace: str) -> list[dict[str, Any]]:
        answer = self._call(
            kind,
            namespace,
            None,
            lambda: self.objects.list_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural, _request_timeout=self.request_timeout
            ),
        )
        return answer.get("items") or []

    def create(self, kind: CustomResource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": API_VERSION, "kind": kind.kind, **body}
        return self._call(
            kind,
            namespace,
            None,
            lambda: self.objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural, body, _request_timeout=self.request_timeout
            ),
        )

    def merge_patch(
        self, kind: CustomResource, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        return self._call(
            kind,
            namespace,
            name,
            lambda: self.objects.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                kind.plural,
                name,
                patch,
                _content_type=MERGE_PATCH,
                _request_timeout=self.request_timeout,
            ),
        )

    def watch(
        self,
        kind: CustomResource,
        namespace: str,
        name: str,
        resource_version: str,
        seconds: float,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) for changes of one object after ``resource_version``, for at
        most ``seconds`` (and WATCH_SLICE); ends early when the watch expires (410 Gone)."""
        seconds = max(1, min(WATCH_SLICE, math.ceil(seconds)))
        stream = watch.Watch().stream(
            self.objects.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            kind.plural,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version,
            allow_watch_bookmarks=False,
            timeout_seconds=seconds,
            deserialize=False,
            _request_timeout=seconds + self.request_timeout,
        )
        try:
            for event in stream:
                yield event.get("type") or "", event.get("object") or {}
        except ApiException as error:
            if error.status != 410:  # 410 Gone: too old a resourceVersion; the caller re-reads
                raise api_error(kind, namespace, None, error) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise self.unreachable(error) from None

    def _call(
        self, kind: CustomResource, namespace: str, name: str | None, fn: Callable[[], T]
    ) -> T:
        try:
            return fn()
        except ApiException as error:
            raise api_error(kind, namespace, name, error) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise self.unreachable(error) from None

    def unreachable(self, error: Exception) -> PluginError:
        reason = getattr(error, "reason", None) or error
        return PluginError(f"cannot reach the Kubernetes API server at {self.server}: {reason}")


def api_error(
    kind: CustomResource, namespace: str, name: str | None, error: ApiException
) -> PluginError:
    """The message for an API server's refusal, as kubectl would say it."""
    what = resource_name(kind)
    if error.status == 404 and kind_not_served(error):
        return PluginError(f"the server does not serve {what} ({API_VERSION}): {CRD_HINT}")
    if error.status == 404 and name is not None and _details(error).get("name") == name:
        return NotFoundError(f'{what} "{name}" not found in namespace "{namespace}"')
    return PluginError(server_message(error))


def _status(error: ApiException) -> dict[str, Any]:
    try:
        status = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def _details(error: ApiException) -> dict[str, Any]:
    return _status(error).get("details") or {}


def server_message(error: ApiException) -> str:
    """The message of the API server's Status answer (``namespaces "x" not found``, a CEL
    rule's message), else the HTTP status and reason."""
    message = _status(error).get("message")
    return str(message) if message else f"the API server answered {error.status} {error.reason}"
