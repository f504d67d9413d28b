"""Who is who on the agent channel: partition keys and TLS identities, all from one root secret.

The operator keeps a single random root secret in its own namespace. From it, and from nothing
else, it derives:

- each partition's HMAC key (``partition_key``), bound to the Partition's uid, so signing and
  verifying never read a tenant's Secret and a Partition recreated under the same name gets a
  new key;
- an Ed25519 certificate authority, and for each partition a deterministic Ed25519 certificate
  (``agent_credentials``) that reaches the guest with the key: the guest pins the CA, the
  operator checks the partition's name in the certificate;
- the operator's own serving and client certificates, issued afresh at every start.

Identities live in subjectAltNames: ``lparkube:operator`` for the operator, and for an agent
the URI ``lparkube:partition:<namespace>/<name>`` plus a DNS name (the operator connects with it
as ``server_hostname``, so OpenSSL checks the agent before a byte of the request is sent).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ssl
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lparkube.domain.partition import AgentCredentials
from lparkube_agent.tls import OPERATOR_URI

ROOT_BYTES = 32  # as long as a partition key

PARTITION_URI_PREFIX = "lparkube:partition:"
AGENT_DNS_SUFFIX = ".partition.lparkube"
# Fixed validity of derived certificates, so they are the same bytes whenever they are made;
# 9999-12-31T23:59:59Z is RFC 5280's "no well-defined expiration". The key and the uid-bound
# HMAC key are what a stolen certificate would also need.
DERIVED_NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DERIVED_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
OPERATOR_CERT_VALIDITY = datetime.timedelta(days=365)
CA_NAME = "lparkube agent CA"
OPERATOR_NAME = "lparkube-operator"


def _derive(root: bytes, purpose: str, *parts: str) -> bytes:
    """32 bytes for one purpose; parts are separated by NUL, which no Kubernetes name holds."""
    message = "\0".join((purpose, *parts)).encode()
    return hmac.new(root, message, hashlib.sha256).digest()


def partition_uri(partition: str) -> str:
    """The agent's identity URI for ``namespace/name``."""
    return f"{PARTITION_URI_PREFIX}{partition}"


def agent_server_name(partition: str) -> str:
    """The DNS name in the agent's certificate: a fixed-length label, whatever the names' length."""
    return hashlib.sha256(partition.encode()).hexdigest()[:40] + AGENT_DNS_SUFFIX


def _pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _serial(seed: bytes) -> int:
    return int.from_bytes(seed[:19], "big") | 1  # positive, at most 20 octets


@dataclass(frozen=True)
class OperatorCertificate:
    cert_pem: bytes
    key_pem: bytes


class AgentIdentity:
    """Everything derived from the root secret; cheap to ask again (agent credentials cached)."""

    def __init__(self, root: bytes) -> None:
        if len(root) < ROOT_BYTES:
            raise ValueError(f"the operator's root secret needs {ROOT_BYTES} bytes")
        self._root = root
        seed = _derive(root, "lparkube agent CA v1")
        self._ca_key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(_name(CA_NAME))
            .issuer_name(_name(CA_NAME))
            .public_key(self._ca_key.public_key())
            .serial_number(_serial(seed))
            .not_valid_before(DERIVED_NOT_BEFORE)
            .not_valid_after(DERIVED_NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._ca_key, None)
        )
        self.ca_pem = _cert_pem(self.ca)
        self.agent_credentials = lru_cache(maxsize=20_000)(self._agent_credentials)

    def partition_key(self, namespace: str, name: str, uid: str) -> bytes:
        """The HMAC key of the Partition with this uid (docs/agent-protocol.md)."""
        return _derive(self._root, "lparkube partition key v1", namespace, name, uid)

    def _agent_credentials(self, namespace: str, name: str, uid: str) -> AgentCredentials:
        partition = f"{namespace}/{name}"
        seed = _derive(self._root, "lparkube agent TLS v1", namespace, name, uid)
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        sans = [
            x509.UniformResourceIdentifier(partition_uri(partition)),
            x509.DNSName(agent_server_name(partition)),
        ]
        cert = self._issue(
            _name(partition[:64]),
            key.public_key(),
            _serial(seed),
            sans,
            (DERIVED_NOT_BEFORE, DERIVED_NOT_AFTER),
        )
        return AgentCredentials(
            key=self.partition_key(namespace, name, uid),
            ca_pem=self.ca_pem,
            cert_pem=_cert_pem(cert),
            key_pem=_pem(key),
        )

    def issue_operator_certificate(self, now: datetime.datetime) -> OperatorCertificate:
        """A fresh key and certificate naming the operator (serving and client use)."""
        key = ed25519.Ed25519PrivateKey.generate()
        sans = [x509.UniformResourceIdentifier(OPERATOR_URI)]
        validity = (now - datetime.timedelta(minutes=5), now + OPERATOR_CERT_VALIDITY)
        cert = self._issue(
            _name(OPERATOR_NAME), key.public_key(), x509.random_serial_number(), sans, validity
        )
        return OperatorCertificate(_cert_pem(cert), _pem(key))

    def _issue(
        self,
        subject: x509.Name,
        public_key: ed25519.Ed25519PublicKey,
        serial: int,
        sans: list[x509.GeneralName],
        validity: tuple[datetime.datetime, datetime.datetime],
    ) -> x509.Certificate:
        """A leaf certificate for either end of a TLS connection, signed by the CA."""
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self._ca_key, None)
        )


@dataclass(frozen=True)
class OperatorCredentials:
    """The running operator's side of the channel: the derived identity and this process's
    own certificate, as the TLS contexts its client and its gateway use."""

    identity: AgentIdentity
    certificate: OperatorCertificate

    @classmethod
    def issue(cls, root: bytes, now: datetime.datetime) -> OperatorCredentials:
        identity = AgentIdentity(root)
        return cls(identity, identity.issue_operator_certificate(now))

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.identity, self.certificate)

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.identity, self.certificate)


def _load_chain(context: ssl.SSLContext, cert: OperatorCertificate) -> None:
    """ssl reads a certificate chain only from files: a private temporary directory, removed
    as soon as it is loaded."""
    with tempfile.TemporaryDirectory(prefix="lparkube-tls-") as directory:
        cert_path, key_path = Path(directory, "tls.crt"), Path(directory, "tls.key")
        cert_path.write_bytes(cert.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(cert.key_pem)
        context.load_cert_chain(cert_path, key_path)


def client_context(identity: AgentIdentity, cert: OperatorCertificate) -> ssl.SSLContext:
    """The operator calling agents: trusts only the CA, checks the agent's name (pass
    ``agent_server_name(partition)`` as server_hostname), shows the operator's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=identity.ca_pem.decode())
    _load_chain(context, cert)
    return context


def server_context(identity: AgentIdentity, cert: OperatorCertificate) -> ssl.SSLContext:
    """The agent gateway: serves the operator's certificate, requires a CA-issued client one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=identity.ca_pem.decode())
    _load_chain(context, cert)
    return context


def peer_partition(peer_cert: dict | None) -> str | None:
    """The partition a verified peer certificate (``SSLSocket.getpeercert()``) names, if any."""
    for kind, value in (peer_cert or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith(PARTITION_URI_PREFIX):
            return value[len(PARTITION_URI_PREFIX) :]
    return None
