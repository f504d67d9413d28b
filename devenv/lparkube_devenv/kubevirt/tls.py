"""Certificates of the stand-in's virt-api: its own CA and a serving cert for the Service name
the aggregator dials (virt-api.kubevirt.svc), plus the TLS context that checks that callers
present the API server's front-proxy client certificate."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


def certificate(
    subject: str, issuer: x509.Name | None, key, signer, extensions: list[tuple[object, bool]]
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def write_pair(path: Path, cert: x509.Certificate, key) -> tuple[Path, Path]:
    key_path = path.with_suffix(".key")
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return path, key_path


def make_serving_certs(directory: Path) -> ServingCerts:
    """A fresh CA (like virt-operator's kubevirt.io CA) and virt-api's serving certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate(
        "kubevirt.io",
        None,
        ca_key,
        ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True)],
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(d) for d in SERVICE_DNS]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = certificate(
        "virt-api",
        ca.subject,
        key,
        ca_key,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName(sans), False),
        ],
    )
    ca_cert, _ = write_pair(directory / "virt-api-ca.crt", ca, ca_key)
    cert_path, key_path = write_pair(directory / "virt-api.crt", cert, key)
    return ServingCerts(ca_cert, cert_path, key_path)


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
