"""TLS material for test agents, made by the operator's own identity code (no fixed keys)."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from kubernetes import client

from lparkube.adapters.agent_identity import AgentIdentity, OperatorCredentials
from lparkube.adapters.root_secret import ROOT_FIELD
from lparkube_agent.testing import TLSMaterial


def tls_material(
    credentials: OperatorCredentials, agent_files: dict[str, bytes] | None = None
) -> TLSMaterial:
    """An agent's files (from its key Secret, or made for ``tenant-a/web-1`` when not given)
    and the operator's certificate, both of one identity."""
    files = agent_files or _made_files(credentials.identity)
    cert = credentials.certificate
    return TLSMaterial(
        files["ca.crt"], files["tls.crt"], files["tls.key"], cert.cert_pem, cert.key_pem
    )


def _made_files(identity: AgentIdentity) -> dict[str, bytes]:
    made = identity.agent_credentials("tenant-a", "web-1", "test-uid")
    return {"ca.crt": made.ca_pem, "tls.crt": made.cert_pem, "tls.key": made.key_pem}


def standalone_credentials() -> OperatorCredentials:
    """A fresh identity for agents that run without an operator."""
    return OperatorCredentials.issue(secrets.token_bytes(32), datetime.now(UTC))


def cluster_credentials(
    api_client: client.ApiClient, namespace: str, secret: str
) -> OperatorCredentials:
    """The running operator's identity, from its root secret (read as the admin), with a
    certificate of the test's own: what a test needs to speak to agents as the operator."""
    data = client.CoreV1Api(api_client).read_namespaced_secret(secret, namespace).data or {}
    return OperatorCredentials.issue(base64.b64decode(data[ROOT_FIELD]), datetime.now(UTC))
