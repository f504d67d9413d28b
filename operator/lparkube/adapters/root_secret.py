"""The operator's root secret: one Secret in its own namespace, made on first start.

Every partition key and TLS identity is derived from it (``agent_identity``), so this is the
only Secret the operator reads, and it reads it by name: the chart grants ``get`` on this one
name and ``create`` in the release namespace, and nothing on Secrets elsewhere but ``create``
and ``patch`` of the key Secrets it owns. Replicas starting at once race to create it; the
loser reads the winner's.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime

from kubernetes.client.exceptions import ApiException

from lparkube.adapters.agent_identity import ROOT_BYTES, OperatorCredentials
from lparkube.adapters.kube import Kube, not_found

ROOT_FIELD = "root"


class RootSecretError(RuntimeError):
    """The Secret exists but holds no usable root; the operator must not replace it."""


def _root_of(data: dict | None, where: str) -> bytes:
    try:
        root = base64.b64decode((data or {}).get(ROOT_FIELD) or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RootSecretError(f"Secret {where}: data.{ROOT_FIELD} is not base64") from exc
    if len(root) < ROOT_BYTES:
        raise RootSecretError(
            f"Secret {where}: data.{ROOT_FIELD} needs {ROOT_BYTES} bytes; every partition key "
            "derives from it, so restore it from a backup rather than replacing it"
        )
    return root


async def load_or_create_root(kube: Kube, namespace: str, name: str) -> bytes:
    """The root secret; created (random) when the Secret does not exist yet."""
    where = f"{namespace}/{name}"
    try:
        secret = await kube.call(kube.core.read_namespaced_secret, name, namespace)
        return _root_of(secret.data, where)
    except ApiException as error:
        if not not_found(error):
            raise
    root = secrets.token_bytes(ROOT_BYTES)
    body = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "lparkube"},
            "annotations": {
                "lparkube.io/purpose": (
                    "every Partition's agent key and TLS identity derive from data.root; "
                    "deleting it cuts every guest agent off until its VM restarts"
                )
            },
        },
        "type": "Opaque",
        "data": {ROOT_FIELD: base64.b64encode(root).decode()},
    }
    try:
        await kube.call(kube.core.create_namespaced_secret, namespace, body)
        return root
    except ApiException as error:
        if error.status != 409:
            raise
    secret = await kube.call(kube.core.read_namespaced_secret, name, namespace)
    return _root_of(secret.data, where)


async def operator_credentials(kube: Kube, namespace: str, name: str) -> OperatorCredentials:
    """The identity from the root secret, and a certificate for this process."""
    root = await load_or_create_root(kube, namespace, name)
    return OperatorCredentials.issue(root, datetime.now(UTC))
