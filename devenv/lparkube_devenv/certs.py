"""PKI for the local control plane: CAs, serving and client certificates, service-account keys.

Everything is generated with the ``cryptography`` package and written as PEM files. Keys are
ECDSA P-256 (fast to generate, accepted by every Kubernetes component).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/12"
APISERVER_SERVICE_IP = "10.96.0.1"
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
FRONT_PROXY_CLIENT = "front-proxy-client"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, in memory and on disk."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class Pki:
    """Every credential the control plane needs, as file paths."""

    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    front_proxy_ca: KeyPair
    front_proxy_client: KeyPair
    sa_private_key: Path
    sa_public_key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key) -> KeyPair:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private_key_pem(key))
    key_path.chmod(0o600)
    return KeyPair(cert, key, cert_path, key_path)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM of a private key, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf only signs (ECDSA needs no key encipherment)."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def create_ca(directory: Path, stem: str, common_name: str) -> KeyPair:
    """Create a self-signed CA certificate and key as ``<stem>.crt``/``<stem>.key``."""
    key = _new_key()
    name = _name(common_name)
    usage = _key_usage(ca=True)
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, stem, cert, key)


def issue(
    ca: KeyPair,
    directory: Path,
    stem: str,
    common_name: str,
    *,
    orgs: tuple[str, ...] = (),
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    server: bool = False,
) -> KeyPair:
    """Issue a leaf certificate signed by ``ca``: a server cert (with SANs) or a client cert."""
    key = _new_key()
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    usage = _key_usage(ca=False)
    builder = (
        _builder(_name(common_name, orgs), ca.cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    sans = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _write(directory, stem, builder.sign(ca.key, hashes.SHA256()), key)


def create_sa_keys(directory: Path) -> tuple[Path, Path]:
    """Create the service-account token signing key pair; returns (private, public) paths."""
    key = _new_key()
    private, public = directory / "sa.key", directory / "sa.pub"
    private.write_bytes(private_key_pem(key))
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def generate_pki(directory: Path) -> Pki:
    """Generate the complete PKI of a local control plane into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = create_ca(directory, "ca", "lparkube-local-ca")
    front_proxy_ca = create_ca(directory, "front-proxy-ca", "lparkube-front-proxy-ca")
    sa_private, sa_public = create_sa_keys(directory)
    return Pki(
        ca=ca,
        apiserver=issue(
            ca,
            directory,
            "apiserver",
            "kube-apiserver",
            dns_names=APISERVER_DNS_NAMES,
            ip_addresses=("127.0.0.1", APISERVER_SERVICE_IP),
            server=True,
        ),
        admin=issue(ca, directory, "admin", "lparkube-admin", orgs=("system:masters",)),
        controller_manager=issue(
            ca, directory, "controller-manager", "system:kube-controller-manager"
        ),
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=issue(
            front_proxy_ca, directory, "front-proxy-client", FRONT_PROXY_CLIENT
        ),
        sa_private_key=sa_private,
        sa_public_key=sa_public,
    )
