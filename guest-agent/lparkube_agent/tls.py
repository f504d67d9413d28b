"""TLS for both directions of the agent channel, pinned to what key delivery hands the guest.

The guest receives the operator's CA (``ca.crt``) and its own certificate and private key
(``tls.crt``, ``tls.key``) next to the partition key. It trusts that CA and nothing else (no
system or cluster CA), and it talks only to a peer whose certificate carries the operator's
identity: the agent's endpoint requires the operator's client certificate, and reports go
only to a gateway that shows the operator's serving certificate. Another partition's agent
holds a certificate from the same CA, but not the operator's identity.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

OPERATOR_URI = "lparkube:operator"


class NotOperatorError(ssl.SSLError):
    """The peer's certificate is from the operator's CA but does not name the operator."""


@dataclass(frozen=True)
class TLSFiles:
    """Where the guest keeps the CA it pins and its own certificate and key (PEM)."""

    ca: Path
    cert: Path
    key: Path


def _context(purpose: int, files: TLSFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    return context


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """The agent's endpoint: its certificate, and a client certificate from the CA required."""
    return _context(ssl.PROTOCOL_TLS_SERVER, files)


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """Reports to the gateway: the CA verifies it, ``check_operator`` checks who it is (the
    gateway is reached by any name or address, so the identity is in the URI, not the host)."""
    context = _context(ssl.PROTOCOL_TLS_CLIENT, files)
    context.check_hostname = False
    return context


def is_operator(peer_cert: dict | None) -> bool:
    """Whether a verified peer certificate (``SSLSocket.getpeercert()``) names the operator."""
    sans = (peer_cert or {}).get("subjectAltName", ())
    return ("URI", OPERATOR_URI) in sans


def check_operator(sock: ssl.SSLSocket) -> None:
    """Raise NotOperatorError unless the peer of this handshaken socket is the operator."""
    if not is_operator(sock.getpeercert()):
        raise NotOperatorError("the peer's certificate does not name the lparkube operator")
