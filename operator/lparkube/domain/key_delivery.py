"""How the partition key reaches the guest: a secret disk or cloud-init, never cluster credentials.

Both ways reference the key Secret by name, so the key itself never appears in the VM spec:
with ``SecretVolume`` the Secret is a KubeVirt ``secret`` volume (disk serial ``lparkube``);
with ``CloudInit`` the whole user data (the template's own cloud-config plus two
``write_files`` entries) lives in the Secret and the cloud-init volume points at it.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import yaml

SECRET_VOLUME = "SecretVolume"
CLOUD_INIT = "CloudInit"
KEY_VOLUME = "lparkube-agent"
KEY_SERIAL = "lparkube"
CLOUD_INIT_VOLUME = "lparkube-cloudinit"
OPERATOR_VOLUMES = (KEY_VOLUME, CLOUD_INIT_VOLUME)
AGENT_DIRECTORY = "/etc/lparkube"
KEY_PATH = f"{AGENT_DIRECTORY}/key"
CONFIG_PATH = f"{AGENT_DIRECTORY}/config.json"
CLOUD_INIT_SOURCES = ("cloudInitNoCloud", "cloudInitConfigDrive")
CLOUD_CONFIG_HEADER = "#cloud-config"


class DeliveryError(ValueError):
    """The key cannot be delivered into this VM; the message says what to change."""


def _pod_spec(vm_spec: dict[str, Any]) -> dict[str, Any]:
    return vm_spec.setdefault("template", {}).setdefault("spec", {})


def _disks(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    devices = pod_spec.setdefault("domain", {}).setdefault("devices", {})
    return devices.setdefault("disks", [])


def _put(items: list[dict[str, Any]], item: dict[str, Any]) -> None:
    """Replace the entry with the same name, or append: injecting twice changes nothing."""
    for index, existing in enumerate(items):
        if existing.get("name") == item["name"]:
            items[index] = item
            return
    items.append(item)


def cloud_init_volume(vm_spec: dict[str, Any]) -> dict[str, Any] | None:
    """The VM's first cloud-init volume, if it has one."""
    volumes = (vm_spec.get("template") or {}).get("spec", {}).get("volumes") or []
    return next((v for v in volumes if any(s in v for s in CLOUD_INIT_SOURCES)), None)


def template_user_data(vm_spec: dict[str, Any]) -> str | None:
    """The cloud-init user data written inline in a VM spec (None when there is none)."""
    volume = cloud_init_volume(vm_spec)
    if volume is None:
        return None
    source = next(volume[s] for s in CLOUD_INIT_SOURCES if s in volume)
    if source.get("secretRef"):
        raise DeliveryError(
            f"keyDelivery CloudInit cannot extend volume {volume.get('name')!r}: its user data "
            "is in a Secret (secretRef); inline it as userData, or use keyDelivery SecretVolume"
        )
    if source.get("userDataBase64"):
        return base64.b64decode(source["userDataBase64"]).decode()
    return source.get("userData")


def user_data_with_files(user_data: str | None, files: dict[str, bytes]) -> str:
    """The cloud-config that writes the agent's files under /etc/lparkube, keeping the user's
    own; every file is root's, mode 0600 (the private keys among them)."""
    document = _cloud_config(user_data)
    ours = {f"{AGENT_DIRECTORY}/{name}" for name in files}
    kept = [f for f in document.get("write_files") or [] if f.get("path") not in ours]
    written = [
        {
            "path": f"{AGENT_DIRECTORY}/{name}",
            "encoding": "b64",
            "content": base64.b64encode(content).decode(),
            "owner": "root:root",
            "permissions": "0600",
        }
        for name, content in files.items()
    ]
    document["write_files"] = kept + written
    return f"{CLOUD_CONFIG_HEADER}\n{yaml.safe_dump(document, sort_keys=False)}"


def _cloud_config(user_data: str | None) -> dict[str, Any]:
    if not user_data or not user_data.strip():
        return {}
    if not user_data.lstrip().startswith(CLOUD_CONFIG_HEADER):
        raise DeliveryError(
            "keyDelivery CloudInit needs the template's cloud-init userData to be a "
            "#cloud-config document (scripts and MIME multipart cannot be extended); "
            "use keyDelivery SecretVolume instead"
        )
    try:
        document = yaml.safe_load(user_data)
    except yaml.YAMLError as exc:
        raise DeliveryError(f"the template's cloud-init userData is not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise DeliveryError("the template's cloud-init userData must be a YAML mapping")
    if not isinstance(document.get("write_files") or [], list):
        raise DeliveryError("the template's cloud-init write_files must be a list")
    return document


def with_key_delivery(vm_spec: dict[str, Any], delivery: str, secret_name: str) -> dict[str, Any]:
    """A copy of the VM spec whose guest receives the key Secret the chosen way."""
    spec = copy.deepcopy(vm_spec)
    pod = _pod_spec(spec)
    volumes = pod.setdefault("volumes", [])
    if delivery == CLOUD_INIT:
        existing = cloud_init_volume(spec)
        if existing is not None:
            source_name = next(s for s in CLOUD_INIT_SOURCES if s in existing)
            source = existing[source_name]
            for field in ("userData", "userDataBase64"):
                source.pop(field, None)
            source["secretRef"] = {"name": secret_name}
            return spec
        _put(volumes, {"name": CLOUD_INIT_VOLUME, "cloudInitNoCloud": _secret_ref(secret_name)})
        _put(_disks(pod), {"name": CLOUD_INIT_VOLUME, "disk": {"bus": "virtio"}})
        return spec
    _put(volumes, {"name": KEY_VOLUME, "secret": {"secretName": secret_name}})
    _put(_disks(pod), {"name": KEY_VOLUME, "serial": KEY_SERIAL, "disk": {"bus": "virtio"}})
    return spec


def _secret_ref(secret_name: str) -> dict[str, Any]:
    return {"secretRef": {"name": secret_name}}


def delivered(vm_spec: dict[str, Any], delivery: str, secret_name: str) -> bool:
    """The VM already hands this Secret to its guest the chosen way (as ``with_key_delivery``
    would add it; other fields of the user's own entries do not matter)."""
    pod = (vm_spec.get("template") or {}).get("spec") or {}
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    devices = (pod.get("domain") or {}).get("devices") or {}
    disks = {d.get("name"): d for d in devices.get("disks") or []}
    if delivery == CLOUD_INIT:
        source = (volumes.get(CLOUD_INIT_VOLUME) or {}).get("cloudInitNoCloud") or {}
        return (source.get("secretRef") or {}).get("name") == secret_name and (
            CLOUD_INIT_VOLUME in disks
        )
    secret = (volumes.get(KEY_VOLUME) or {}).get("secret") or {}
    disk = disks.get(KEY_VOLUME) or {}
    return secret.get("secretName") == secret_name and disk.get("serial") == KEY_SERIAL


def adoptable_delivery(vm_spec: dict[str, Any], delivery: str) -> None:
    """An adopted VM only gets volumes the operator adds, never a rewrite of the user's own."""
    if delivery == CLOUD_INIT and cloud_init_volume(vm_spec) is not None:
        volume = cloud_init_volume(vm_spec) or {}
        raise DeliveryError(
            f"the adopted VM already has cloud-init volume {volume.get('name')!r}, which lparkube "
            "does not rewrite; use keyDelivery SecretVolume, or write the key Secret's files "
            f"into {AGENT_DIRECTORY} yourself"
        )


def without_key_delivery(vm_spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of the VM spec without the volumes and disks the operator added."""
    spec = copy.deepcopy(vm_spec)
    pod = _pod_spec(spec)
    pod["volumes"] = [v for v in pod.get("volumes") or [] if v.get("name") not in OPERATOR_VOLUMES]
    disks = _disks(pod)
    disks[:] = [d for d in disks if d.get("name") not in OPERATOR_VOLUMES]
    return spec


def has_operator_volumes(vm_spec: dict[str, Any]) -> bool:
    volumes = (vm_spec.get("template") or {}).get("spec", {}).get("volumes") or []
    return any(v.get("name") in OPERATOR_VOLUMES for v in volumes)
