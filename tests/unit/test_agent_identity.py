"""Partition keys and TLS identities derived from the operator's root secret, over real TLS."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lparkube.adapters import agent_identity
from lparkube.adapters.agent_identity import AgentIdentity

ROOT = bytes(range(32))
NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def identity() -> AgentIdentity:
    return AgentIdentity(ROOT)


def test_keys_are_bound_to_namespace_name_and_uid(identity: AgentIdentity) -> None:
    key = identity.partition_key("tenant-a", "web", "uid-1")
    assert len(key) == 32
    assert key == AgentIdentity(ROOT).partition_key("tenant-a", "web", "uid-1")
    others = {
        identity.partition_key("tenant-b", "web", "uid-1"),
        identity.partition_key("tenant-a", "web-2", "uid-1"),
        identity.partition_key("tenant-a", "web", "uid-2"),
        AgentIdentity(bytes(32)).partition_key("tenant-a", "web", "uid-1"),
        # a separator in a name cannot make two partitions share a key
        identity.partition_key("tenant-a", "web\0uid-1", ""),
    }
    assert key not in others and len(others) == 5


def test_agent_credentials_are_deterministic(identity: AgentIdentity) -> None:
    first = identity.agent_credentials("tenant-a", "web", "uid-1")
    again = AgentIdentity(ROOT).agent_credentials("tenant-a", "web", "uid-1")
    assert first == again
    assert first.key == identity.partition_key("tenant-a", "web", "uid-1")
    assert first.key_pem != identity.agent_credentials("tenant-a", "web", "uid-2").key_pem


def test_a_short_root_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        AgentIdentity(b"short")


def _files(tmp_path: Path, cert: bytes, key: bytes, ca: bytes) -> tuple[Path, Path, Path]:
    paths = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    for path, data in zip(paths, (cert, key, ca), strict=True):
        path.write_bytes(data)
    return paths


@pytest.fixture
def agent_server(identity: AgentIdentity, tmp_path: Path) -> Iterator[tuple[str, int, list]]:
    """A TLS server configured the way the guest agent is (files, stdlib ssl, client certs
    required); records each accepted peer's certificate or handshake error."""
    creds = identity.agent_credentials("tenant-a", "web", "uid-1")
    cert, key, ca = _files(tmp_path, creds.cert_pem, creds.key_pem, creds.ca_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(ca)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    seen.append(tls.getpeercert())
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as exc:
                seen.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[0], listener.getsockname()[1], seen
    listener.close()


def test_the_operator_verifies_the_agent_by_name(identity: AgentIdentity, agent_server) -> None:
    host, port, seen = agent_server
    context = agent_identity.client_context(identity, identity.issue_operator_certificate(NOW))
    name = agent_identity.agent_server_name("tenant-a/web")
    with context.wrap_socket(socket.create_connection((host, port)), server_hostname=name) as tls:
        assert tls.recv(2) == b"ok"
        assert agent_identity.peer_partition(tls.getpeercert()) == "tenant-a/web"
    other = agent_identity.agent_server_name("tenant-a/db")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        context.wrap_socket(socket.create_connection((host, port)), server_hostname=other)
    assert ("URI", agent_identity.OPERATOR_URI) in seen[0]["subjectAltName"]


def test_a_foreign_ca_is_refused_both_ways(identity: AgentIdentity, agent_server) -> None:
    host, port, seen = agent_server
    stranger = AgentIdentity(bytes(32))
    context = agent_identity.client_context(stranger, stranger.issue_operator_certificate(NOW))
    name = agent_identity.agent_server_name("tenant-a/web")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        context.wrap_socket(socket.create_connection((host, port)), server_hostname=name)
    # The agent refused the stranger's client certificate as well.
    deadline = threading.Event()
    for _ in range(50):
        if seen:
            break
        deadline.wait(0.05)
    assert seen and isinstance(seen[-1], ssl.SSLError)


def test_peer_partition_reads_only_partition_uris() -> None:
    assert agent_identity.peer_partition(None) is None
    assert (
        agent_identity.peer_partition({"subjectAltName": (("URI", "lparkube:operator"),)}) is None
    )
    sans = (("DNS", "x"), ("URI", "lparkube:partition:ns/name"))
    assert agent_identity.peer_partition({"subjectAltName": sans}) == "ns/name"
