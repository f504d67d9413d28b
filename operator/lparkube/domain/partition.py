"""Partition rules as pure functions: the spec with defaults, the key Secret, the VM, adoption.

Controllers read the Partition and its VM, call these, and write what they return; so every
decision (what the VM looks like, who owns what) is tested here without a cluster. Status and
conditions are in ``partition_status``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from lparkube.domain import failover, key_delivery, paging
from lparkube.domain.clock import parse_duration

API_VERSION = "lparkube.io/v1alpha1"
KIND = "Partition"
PARTITION_LABEL = "lparkube.io/partition"
DEFAULT_PORT = 8443
DEFAULT_HEARTBEAT_TIMEOUT = "90s"
MAX_REPORT_INTERVAL = 30
SECRET_KEY = "key"
SECRET_CA = "ca.crt"
SECRET_CERT = "tls.crt"
SECRET_TLS_KEY = "tls.key"
SECRET_CONFIG = "config.json"
SECRET_USERDATA = "userdata"
LAST_APPLIED = "lparkube.io/last-applied-template"
RUN_FIELDS = ("runStrategy", "running")  # after creation, start/stop own these, not the template

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_PARTITION_ID = re.compile(rf"({_DNS_LABEL})/({_DNS_LABEL}(\.{_DNS_LABEL})*)")


@dataclass(frozen=True)
class AgentSpec:
    """spec.agent with defaults applied."""

    port: int
    key_secret_name: str
    key_delivery: str
    heartbeat_timeout: float

    @property
    def report_interval(self) -> int:
        """A third of the timeout, so two lost reports in a row do not yet mean a lost agent."""
        return max(1, min(MAX_REPORT_INTERVAL, int(self.heartbeat_timeout // 3)))


def agent_spec(name: str, spec: dict[str, Any]) -> AgentSpec:
    agent = spec.get("agent") or {}
    return AgentSpec(
        port=int(agent.get("port") or DEFAULT_PORT),
        key_secret_name=agent.get("keySecretName") or f"{name}-agent-key",
        key_delivery=agent.get("keyDelivery") or key_delivery.SECRET_VOLUME,
        heartbeat_timeout=parse_duration(
            agent.get("heartbeatTimeout"), DEFAULT_HEARTBEAT_TIMEOUT
        ).total_seconds(),
    )


def is_adoption(spec: dict[str, Any]) -> bool:
    return bool(spec.get("vmName"))


def vm_name(name: str, spec: dict[str, Any]) -> str:
    """An adopted VM keeps its name; a created one is named after the Partition."""
    return spec.get("vmName") or name


def partition_id(namespace: str, name: str) -> str:
    """The agent protocol's name of a partition (header X-Lparkube-Partition)."""
    return f"{namespace}/{name}"


def parse_partition_id(text: str) -> tuple[str, str] | None:
    """(namespace, name) from ``namespace/name``, or None if either is not a valid name."""
    match = _PARTITION_ID.fullmatch(text) if len(text) <= 317 else None
    return (match.group(1), match.group(3)) if match else None


# --- ownership ---------------------------------------------------------------------------


def owner_reference(partition: dict[str, Any], *, controller: bool) -> dict[str, Any]:
    """A created VM is controlled (and blocks the Partition's deletion until it is gone); an
    adopted VM only names the Partition, so deleting the Partition never deletes it."""
    meta = partition["metadata"]
    ref = {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"]}
    if controller:
        ref.update(controller=True, blockOwnerDeletion=True)
    return ref


def controlled_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


# --- the key Secret ------------------------------------------------------------------------


def agent_config(partition: str, agent: AgentSpec, operator_url: str) -> dict[str, Any]:
    """The guest agent's config.json (docs/agent-protocol.md); no cluster credentials."""
    return {
        "partition": partition,
        "listen": f"0.0.0.0:{agent.port}",
        "operatorURL": operator_url,
        "reportIntervalSeconds": agent.report_interval,
    }


@dataclass(frozen=True)
class AgentCredentials:
    """What one partition's guest receives besides its config (docs/agent-protocol.md): the
    HMAC key, the CA it pins, and its own TLS certificate and private key (PEM)."""

    key: bytes
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def secret_files(
    partition: dict[str, Any], agent: AgentSpec, credentials: AgentCredentials, operator_url: str
) -> dict[str, bytes]:
    """The files the guest receives, by name (the Secret's keys, the names on the secret disk
    and under /etc/lparkube): key, ca.crt, tls.crt, tls.key and config.json."""
    meta = partition["metadata"]
    config = agent_config(partition_id(meta["namespace"], meta["name"]), agent, operator_url)
    return {
        SECRET_KEY: credentials.key,
        SECRET_CA: credentials.ca_pem,
        SECRET_CERT: credentials.cert_pem,
        SECRET_TLS_KEY: credentials.key_pem,
        SECRET_CONFIG: (json.dumps(config, indent=2) + "\n").encode(),
    }


def secret_data(
    partition: dict[str, Any], agent: AgentSpec, credentials: AgentCredentials, operator_url: str
) -> dict[str, str]:
    """The key Secret's data (base64 values): the guest's files and, for CloudInit, the user
    data that writes them."""
    files = secret_files(partition, agent, credentials, operator_url)
    if agent.key_delivery == key_delivery.CLOUD_INIT:
        spec = partition.get("spec") or {}
        template = (spec.get("vmTemplate") or {}).get("spec") or {}
        user_data = key_delivery.template_user_data(template)
        files[SECRET_USERDATA] = key_delivery.user_data_with_files(user_data, files).encode()
    return {k: base64.b64encode(v).decode() for k, v in files.items()}


def key_secret(partition: dict[str, Any], agent: AgentSpec, data: dict[str, str]) -> dict[str, Any]:
    """A new key Secret, controlled by the Partition: the garbage collector deletes it with the
    Partition, and the operator rewrites only a Secret that names it so."""
    meta = partition["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": agent.key_secret_name,
            "namespace": meta["namespace"],
            "labels": {PARTITION_LABEL: meta["name"]},
            "ownerReferences": [owner_reference(partition, controller=True)],
        },
        "data": data,
    }


def owned_secret_patch(partition_uid: str, data: dict[str, str]) -> list[dict[str, Any]]:
    """A JSON patch that rewrites the data of a key Secret only if the Partition controls it:
    the API server applies the ``test`` and the ``replace`` atomically, so a user's own Secret
    of that name is never written (the patch fails instead)."""
    return [
        {"op": "test", "path": "/metadata/ownerReferences/0/uid", "value": partition_uid},
        {"op": "test", "path": "/metadata/ownerReferences/0/controller", "value": True},
        {"op": "replace", "path": "/data", "value": data},
    ]


def data_digest(data: dict[str, str]) -> str:
    """A short fingerprint of Secret data, to skip rewriting what was already written."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --- the VirtualMachine --------------------------------------------------------------------


def vm_from_template(
    partition: dict[str, Any], agent: AgentSpec, paging_claim: str | None = None
) -> dict[str, Any]:
    """The VM the Partition creates: its template, labelled, owned, with the key delivered,
    given its claim the paging LU as disk lparkube-paging, and with failover's self-fence the
    i6300esb watchdog (action poweroff)."""
    meta = partition["metadata"]
    template = copy.deepcopy(partition["spec"]["vmTemplate"])
    labels = {**((template.get("metadata") or {}).get("labels") or {})}
    labels[PARTITION_LABEL] = meta["name"]
    spec = key_delivery.with_key_delivery(
        template.get("spec") or {}, agent.key_delivery, agent.key_secret_name
    )
    if paging_claim:
        spec = paging.with_paging_disk(spec, paging_claim)
    if failover.settings_of(partition).fencing_by_watchdog:
        spec = failover.with_watchdog(spec)
    pod_meta = spec.setdefault("template", {}).setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), PARTITION_LABEL: meta["name"]}
    vm_meta: dict[str, Any] = {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(partition, controller=True)],
    }
    annotations = dict((template.get("metadata") or {}).get("annotations") or {})
    annotations[LAST_APPLIED] = json.dumps(_managed(spec), sort_keys=True, separators=(",", ":"))
    vm_meta["annotations"] = annotations
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": vm_meta,
        "spec": spec,
    }


def _managed(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in RUN_FIELDS}


def template_patch(
    vm: dict[str, Any],
    partition: dict[str, Any],
    agent: AgentSpec,
    paging_claim: str | None = None,
) -> dict[str, Any] | None:
    """The merge patch that brings an owned VM to an edited vmTemplate, or None if current.

    Like ``kubectl apply``, it changes what the template changed since it was last applied
    (kept in an annotation) and removes what the template dropped, leaving what KubeVirt
    filled in (defaults, firmware UUID) alone. The run strategy is not managed after creation:
    start, stop and restarts change it.
    """
    desired = vm_from_template(partition, agent, paging_claim)
    meta = vm.get("metadata") or {}
    current = meta.get("annotations") or {}
    wanted = desired["metadata"]["annotations"]
    labels = desired["metadata"]["labels"]
    spec_patch = merge_diff(_last_applied(current), _managed(desired["spec"]))
    if (
        not spec_patch
        and current.get(LAST_APPLIED) == wanted[LAST_APPLIED]
        and labels.items() <= (meta.get("labels") or {}).items()
        and wanted.items() <= current.items()
    ):
        return None
    patch: dict[str, Any] = {
        "metadata": {
            "labels": labels,
            "annotations": wanted,
            "resourceVersion": meta.get("resourceVersion"),
        }
    }
    if spec_patch:
        patch["spec"] = spec_patch
    return patch


def _last_applied(annotations: dict[str, str]) -> dict[str, Any]:
    try:
        last = json.loads(annotations.get(LAST_APPLIED) or "{}")
    except ValueError:
        return {}
    return last if isinstance(last, dict) else {}


def merge_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            if sub := merge_diff(before, value):
                patch[key] = sub
        elif key not in old or before != value:
            patch[key] = value
    return patch
