"""virt-api's HTTPS front: only the API server's proxy certificate gets in, the user must be
authorized, discovery documents are well-formed, errors are Status objects."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from lparkube_devenv.certs import create_ca, issue
from lparkube_devenv.kubevirt.actions import Actions
from lparkube_devenv.kubevirt.api import VM
from lparkube_devenv.kubevirt.fake import FakeKube
from lparkube_devenv.kubevirt.subresources import SubresourceServer
from lparkube_devenv.kubevirt.tls import make_serving_certs, server_context


class Reviewer(FakeKube):
    """Answers SubjectAccessReviews: only alice may."""

    def create(self, path: str, body: dict) -> dict:
        if path.endswith("subjectaccessreviews"):
            self.reviewed = body["spec"]
            return {"status": {"allowed": body["spec"]["user"] == "alice"}}
        return super().create(path, body)


def client_pair(directory: Path, common_name: str) -> tuple[Path, Path, Path]:
    """A CA plus a client certificate it signed: (ca, cert, key)."""
    ca = create_ca(directory, f"{common_name}-ca", "front-proxy-ca")
    client = issue(ca, directory, common_name, common_name)
    return ca.cert_path, client.cert_path, client.key_path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[SubresourceServer, Path, Path, Path, Reviewer]]:
    serving = make_serving_certs(tmp_path / "serving")
    proxy_ca, cert, key = client_pair(tmp_path, "front-proxy-client")
    kube = Reviewer()
    vm = {"metadata": {"name": "vm", "namespace": "ns"}, "spec": {"runStrategy": "Halted"}}
    kube.put(VM.path("ns", "vm"), vm)
    server = SubresourceServer(
        Actions(kube), kube, server_context(serving, proxy_ca), ("front-proxy-client",), True
    )
    server.start()
    yield server, serving.ca_cert, cert, key, kube
    server.stop()


def request(
    server: SubresourceServer,
    ca: Path,
    method: str,
    path: str,
    cert: tuple[Path, Path] | None = None,
    *,
    body: bytes | None = None,
    user: str | None = "alice",
) -> tuple[int, dict | None]:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = True
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    headers = {"X-Remote-User": user, "X-Remote-Group": "system:authenticated"} if user else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, json.loads(data) if data else None


def test_discovery_with_proxy_certificate(setup) -> None:
    server, ca, cert, key, _ = setup
    code, body = request(server, ca, "GET", "/apis/subresources.kubevirt.io/v1", (cert, key))
    assert code == 200 and body["kind"] == "APIResourceList"
    names = {r["name"] for r in body["resources"]}
    assert {
        "virtualmachines/start",
        "virtualmachineinstances/pause",
        "virtualmachines/expand-spec",
    } <= names
    code, body = request(server, ca, "GET", "/apis", (cert, key))
    assert body["groups"][0]["name"] == "subresources.kubevirt.io"
    assert request(server, ca, "GET", "/version", (cert, key))[1]["gitVersion"].startswith("v1.")


def test_health_needs_no_certificate_but_the_api_does(setup) -> None:
    server, ca, *_ = setup
    assert request(server, ca, "GET", "/healthz")[0] == 200
    code, body = request(server, ca, "GET", "/apis/subresources.kubevirt.io/v1")
    assert code == 401 and body["kind"] == "Status"


def test_other_client_names_are_refused(setup, tmp_path: Path) -> None:
    server, ca, *_ = setup
    _, cert, key = client_pair(tmp_path, "intruder")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        # signed by another CA: the TLS handshake itself fails
        request(server, ca, "GET", "/apis", (cert, key))


def test_authorized_user_starts_vm(setup) -> None:
    server, ca, cert, key, kube = setup
    path = "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/vm/start"
    assert request(server, ca, "PUT", path, (cert, key)) == (202, None)
    assert kube.reviewed["resourceAttributes"]["subresource"] == "start"
    assert kube.reviewed["resourceAttributes"]["verb"] == "update"
    assert kube.reviewed["groups"] == ["system:authenticated"]
    assert kube.get(VM.path("ns", "vm"))["spec"]["runStrategy"] == "Always"


def test_unauthorized_user_and_bad_bodies(setup) -> None:
    server, ca, cert, key, _ = setup
    path = "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/vm/start"
    code, body = request(server, ca, "PUT", path, (cert, key), user="mallory")
    assert code == 403 and body["reason"] == "Forbidden"
    code, body = request(server, ca, "PUT", path, (cert, key), body=b"{not json")
    assert code == 400 and body["reason"] == "BadRequest"
    code, body = request(server, ca, "PUT", path, (cert, key), user=None)
    assert code == 401
    code, body = request(
        server, ca, "GET", "/apis/subresources.kubevirt.io/v1/nothing", (cert, key)
    )
    assert code == 404
