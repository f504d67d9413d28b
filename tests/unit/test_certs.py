"""The control plane's PKI: right identities, SANs, usages and chains."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lparkube_devenv import certs


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.Pki:
    return certs.generate_pki(tmp_path_factory.mktemp("pki"))


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _subject(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [a.value for a in cert.subject.get_attributes_for_oid(oid)]


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_leaf_certificates_chain_to_their_ca(pki: certs.Pki) -> None:
    pairs = [
        (pki.apiserver, pki.ca),
        (pki.admin, pki.ca),
        (pki.controller_manager, pki.ca),
        (pki.front_proxy_client, pki.front_proxy_ca),
    ]
    for leaf, ca in pairs:
        cert = _load(leaf.cert_path)
        cert.verify_directly_issued_by(_load(ca.cert_path))
        with pytest.raises((ValueError, InvalidSignature)):
            other = pki.front_proxy_ca if ca is pki.ca else pki.ca
            cert.verify_directly_issued_by(_load(other.cert_path))


def test_apiserver_serving_cert_names(pki: certs.Pki) -> None:
    cert = _load(pki.apiserver.cert_path)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "kubernetes.default.svc"} <= set(sans.get_values_for_type(x509.DNSName))
    ips = set(sans.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.96.0.1")} <= ips
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_identities(pki: certs.Pki) -> None:
    admin = _load(pki.admin.cert_path)
    assert _subject(admin, NameOID.ORGANIZATION_NAME) == ["system:masters"]
    assert _eku(admin) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    kcm = _load(pki.controller_manager.cert_path)
    assert _subject(kcm, NameOID.COMMON_NAME) == ["system:kube-controller-manager"]
    proxy = _load(pki.front_proxy_client.cert_path)
    assert _subject(proxy, NameOID.COMMON_NAME) == [certs.FRONT_PROXY_CLIENT]


def test_cas_are_cas_and_keys_are_private(pki: certs.Pki) -> None:
    for ca in (pki.ca, pki.front_proxy_ca):
        constraints = _load(ca.cert_path).extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.value.ca
    for key in (pki.ca.key_path, pki.admin.key_path, pki.sa_private_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_service_account_keys_match(pki: certs.Pki) -> None:
    private = serialization.load_pem_private_key(pki.sa_private_key.read_bytes(), None)
    public = serialization.load_pem_public_key(pki.sa_public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key().public_numbers() == public.public_numbers()
