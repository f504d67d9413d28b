"""Certificates of the stand-in's virt-api: its own CA and a serving cert for the Service name
the aggregator dials (virt-api.kubevirt.svc), plus the TLS context that checks that callers
present the API server's front-proxy client certificate."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from lparkube_devenv.certs import create_ca, issue

from .api import NAMESPACE, SERVICE_NAME

SERVICE_DNS = (
    SERVICE_NAME,
    f"{SERVICE_NAME}.{NAMESPACE}",
    f"{SERVICE_NAME}.{NAMESPACE}.svc",
    f"{SERVICE_NAME}.{NAMESPACE}.svc.cluster.local",
    "localhost",
)


@dataclass(frozen=True)
class ServingCerts:
    ca_cert: Path
    cert: Path
    key: Path

    def ca_bundle(self) -> bytes:
        return self.ca_cert.read_bytes()


def make_serving_certs(directory: Path) -> ServingCerts:
    """A fresh CA (like virt-operator's kubevirt.io CA) and virt-api's serving certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = create_ca(directory, "virt-api-ca", "kubevirt.io")
    serving = issue(
        ca,
        directory,
        "virt-api",
        "virt-api",
        dns_names=SERVICE_DNS,
        ip_addresses=("127.0.0.1",),
        server=True,
    )
    return ServingCerts(ca.cert_path, serving.cert_path, serving.key_path)


def server_context(certs: ServingCerts, client_ca: Path) -> ssl.SSLContext:
    """TLS for the listener: our cert; client certs are verified against client_ca if given.

    Verification is optional at the TLS layer so that /healthz works without a certificate;
    the handler refuses API requests that came without a verified one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certs.cert), str(certs.key))
    context.load_verify_locations(cafile=str(client_ca))
    context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["http/1.1"])
    return context


def peer_common_name(sock: ssl.SSLSocket) -> str | None:
    """CN of the verified client certificate, None when the client sent none."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    subject = x509.load_der_x509_certificate(der).subject
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
