"""virt-api's aggregated API (subresources.kubevirt.io/v1) over HTTPS.

The kube-apiserver proxies /apis/subresources.kubevirt.io/... here with its front-proxy client
certificate and the caller's identity in X-Remote-User/X-Remote-Group. Like virt-api we trust
those headers only on a connection whose client certificate chains to the front-proxy CA and
has an allowed name, and we ask the API server (SubjectAccessReview) whether the user may.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes.client import ApiException

from .actions import Actions, Call, StatusError, status_body
from .api import KUBEVIRT_VERSION, SUBRESOURCE_GROUP, SUBRESOURCE_VERSION, Kube, log
from .tls import peer_common_name

GROUP_VERSION = f"{SUBRESOURCE_GROUP}/{SUBRESOURCE_VERSION}"
SUBRESOURCES = (
    "virtualmachines/start",
    "virtualmachines/stop",
    "virtualmachines/restart",
    "virtualmachines/migrate",
    "virtualmachines/memorydump",
    "virtualmachines/removememorydump",
    "virtualmachines/addvolume",
    "virtualmachines/removevolume",
    "virtualmachines/expand-spec",
    "virtualmachineinstances/pause",
    "virtualmachineinstances/unpause",
    "virtualmachineinstances/freeze",
    "virtualmachineinstances/unfreeze",
    "virtualmachineinstances/softreboot",
    "virtualmachineinstances/guestosinfo",
    "virtualmachineinstances/userlist",
    "virtualmachineinstances/filesystemlist",
    "virtualmachineinstances/addvolume",
    "virtualmachineinstances/removevolume",
    "virtualmachineinstances/console",
    "virtualmachineinstances/vnc",
    "virtualmachineinstances/portforward",
)
OBJECT_PATH = re.compile(
    rf"^/apis/{re.escape(GROUP_VERSION)}/namespaces/(?P<ns>[^/]+)/"
    r"(?P<resource>virtualmachines|virtualmachineinstances)/(?P<name>[^/]+)/(?P<sub>[a-z/-]+)$"
)
VERBS = {"GET": "get", "PUT": "update", "POST": "create", "DELETE": "delete", "PATCH": "patch"}


def api_group() -> dict:
    version = {"groupVersion": GROUP_VERSION, "version": SUBRESOURCE_VERSION}
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": SUBRESOURCE_GROUP,
        "versions": [version],
        "preferredVersion": version,
    }


def resource_list() -> dict:
    resources = [
        {"name": name, "singularName": "", "namespaced": True, "kind": "", "verbs": []}
        for name in SUBRESOURCES
    ]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": resources,
    }


def version_info() -> dict:
    return {
        "gitVersion": KUBEVIRT_VERSION,
        "gitCommit": "lparkube-standin",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a",
        "compiler": "python",
        "platform": "linux/amd64",
    }


STATIC_GETS = {
    "/": lambda: {
        "paths": [
            "/apis",
            f"/apis/{SUBRESOURCE_GROUP}",
            f"/apis/{GROUP_VERSION}",
            "/healthz",
            "/version",
        ]
    },
    "/apis": lambda: {"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]},
    f"/apis/{SUBRESOURCE_GROUP}": api_group,
    f"/apis/{GROUP_VERSION}": resource_list,
    "/version": version_info,
    f"/apis/{GROUP_VERSION}/version": version_info,
    "/openapi/v2": lambda: {
        "swagger": "2.0",
        "info": {"title": "KubeVirt API", "version": KUBEVIRT_VERSION},
        "paths": {},
    },
    "/openapi/v3": lambda: {"paths": {}},
}
HEALTH_PATHS = ("/healthz", "/readyz", "/livez", f"/apis/{GROUP_VERSION}/healthz")


class SubresourceServer(ThreadingHTTPServer):
    """HTTPS server; the TLS handshake happens in the request thread, not in accept()."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        actions: Actions,
        kube: Kube,
        ssl_context,
        allowed_names: tuple[str, ...],
        authorize: bool,
    ):
        super().__init__(("127.0.0.1", 0), Handler)
        self.socket = ssl_context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )
        self.actions, self.kube = actions, kube
        self.allowed_names, self.authorize = allowed_names, authorize
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        self.thread = threading.Thread(target=self.serve_forever, name="virt-api", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address) -> None:
        log.debug("virt-api stand-in: connection from %s failed", client_address, exc_info=True)


class Handler(BaseHTTPRequestHandler):
    server: SubresourceServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.request.settimeout(30)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("virt-api stand-in: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # --- plumbing ---------------------------------------------------------------------------------

    def _send(self, code: int, body: Any = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise StatusError(
                400, "BadRequest", f"Can not unmarshal Request body to struct: {error}"
            ) from error
        if not isinstance(body, dict):
            raise StatusError(400, "BadRequest", "Can not unmarshal Request body to struct")
        return body

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path in HEALTH_PATHS:
                self._send(200, "ok")
                return
            self._authenticate()
            if method == "GET" and path in STATIC_GETS:
                self._send(200, STATIC_GETS[path]())
                return
            match = OBJECT_PATH.match(path)
            if not match:
                raise StatusError(
                    404, "NotFound", "the server could not find the requested resource"
                )
            call = Call(
                method=method,
                namespace=match["ns"],
                resource=match["resource"],
                name=match["name"],
                subresource=match["sub"],
                body=self._read_body(),
                user=self.headers.get("X-Remote-User", ""),
            )
            self._authorize(call)
            self._send(*self.server.actions.handle(call))
        except StatusError as error:
            self._send(error.code, error.body())
        except ApiException as error:
            self._send(error.status or 500, _api_error_body(error))
        except Exception as error:  # never drop the connection without an answer
            log.warning("virt-api stand-in: %s %s failed: %s", method, path, error)
            self._send(500, status_body(500, "InternalError", str(error)))

    def _authenticate(self) -> None:
        """Only the API server (front-proxy client certificate) may call us."""
        name = peer_common_name(self.request)
        if name is None:
            raise StatusError(401, "Unauthorized", "a client certificate is required")
        if self.server.allowed_names and name not in self.server.allowed_names:
            raise StatusError(
                401,
                "Unauthorized",
                f"client certificate {name!r} is not an allowed requestheader name",
            )

    def _authorize(self, call: Call) -> None:
        """Ask the API server whether X-Remote-User may use this subresource (as virt-api does)."""
        if not self.server.authorize:
            return
        user = self.headers.get("X-Remote-User")
        if not user:
            raise StatusError(401, "Unauthorized", "no X-Remote-User header in the proxied request")
        extra: dict[str, list[str]] = {}
        for header, value in self.headers.items():
            if header.lower().startswith("x-remote-extra-"):
                extra.setdefault(header[len("x-remote-extra-") :].lower(), []).append(value)
        attributes = {
            "namespace": call.namespace,
            "verb": VERBS.get(call.method, call.method.lower()),
            "group": SUBRESOURCE_GROUP,
            "version": SUBRESOURCE_VERSION,
            "resource": call.resource,
            "subresource": call.subresource,
            "name": call.name,
        }
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": self.headers.get_all("X-Remote-Group") or [],
                "extra": extra,
                "resourceAttributes": attributes,
            },
        }
        result = self.server.kube.create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews", review
        )
        if not (result.get("status") or {}).get("allowed"):
            message = (
                f'{call.resource}.{SUBRESOURCE_GROUP} "{call.name}" is forbidden: '
                f'User "{user}" cannot {attributes["verb"]} resource '
                f'"{call.resource}/{call.subresource}" in API group "{SUBRESOURCE_GROUP}" '
                f'in the namespace "{call.namespace}"'
            )
            raise StatusError(403, "Forbidden", message)


def _api_error_body(error: ApiException) -> dict:
    try:
        body = json.loads(error.body or "")
        if isinstance(body, dict) and body.get("kind") == "Status":
            return body
    except ValueError:
        pass
    return status_body(
        error.status or 500, error.reason or "InternalError", str(error.body or error)
    )
