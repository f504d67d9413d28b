"""Each disk's volume, resolved to a host file: a PVC's file, or an ISO made for the run.

``volume_plan`` (pure) says what every disk's volume needs; ``resolve_volumes`` makes it so,
writing the ISOs into the run directory and asking the caller for what lives in the API:

* ``claim_file(claim)`` -> the file backing a PVC (a Block volume's file, or a Filesystem
  volume's ``disk.img``, as KubeVirt uses a file system PVC);
* ``secret_data(name)`` / ``config_map_data(name)`` -> the object's data, decoded, by key.

Volume types: ``persistentVolumeClaim``, ``dataVolume`` (its PVC has the DataVolume's name),
``secret``, ``configMap`` and ``cloudInitNoCloud``. A volume no disk uses (a memory dump
target, say) needs nothing here. Other types raise ``SpecError``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import isos
from .machine import Backing, SpecError, firmware_uuid, whole

USER_DATA_KEYS = ("userdata", "userData")  # KubeVirt's resolveNoCloudSecrets
NETWORK_DATA_KEYS = ("networkdata", "networkData")
HOSTNAME_MAX = 63


@dataclass(frozen=True)
class ClaimVolume:
    claim: str
    readonly: bool = False


@dataclass(frozen=True)
class ConfigVolume:
    kind: str  # secret | configMap
    name: str
    label: str | None = None


@dataclass(frozen=True)
class NoCloudVolume:
    user_data: str | None = None
    user_data_secret: str | None = None
    network_data: str | None = None
    network_data_secret: str | None = None


@dataclass(frozen=True)
class EphemeralVolume:
    """A containerDisk (images are never pulled: it starts empty) or an emptyDisk."""

    size: int


VolumeSource = ClaimVolume | ConfigVolume | NoCloudVolume | EphemeralVolume
EPHEMERAL_DISK_BYTES = 1 << 30  # a containerDisk's size here


def volume_plan(vmi: Mapping[str, Any]) -> dict[str, VolumeSource]:
    """What each volume a disk uses needs, by volume name (pure)."""
    spec = vmi.get("spec") or {}
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    disks = ((spec.get("domain") or {}).get("devices") or {}).get("disks") or []
    plan: dict[str, VolumeSource] = {}
    for disk in disks:
        name = disk.get("name")
        if name not in volumes:
            raise SpecError(f"disk {name!r} has no volume of that name in spec.volumes")
        plan[name] = _source(volumes[name])
    return plan


def _source(volume: Mapping[str, Any]) -> VolumeSource:
    for kind, read in _SOURCES.items():
        if kind in volume:
            return read(volume[kind] or {}, volume.get("name"))
    kind = next((key for key in volume if key != "name"), "none")
    raise SpecError(
        f"volume {volume.get('name')!r} is a {kind} volume, which the stand-in cannot attach "
        f"(it has {', '.join(_SOURCES)})"
    )


def _claim(source: Mapping[str, Any], _name: Any) -> ClaimVolume:
    return ClaimVolume(source.get("claimName", ""), bool(source.get("readOnly")))


def _data_volume(source: Mapping[str, Any], _name: Any) -> ClaimVolume:
    return ClaimVolume(source.get("name", ""))


def _secret(source: Mapping[str, Any], _name: Any) -> ConfigVolume:
    return ConfigVolume("secret", source.get("secretName", ""), source.get("volumeLabel"))


def _config_map(source: Mapping[str, Any], _name: Any) -> ConfigVolume:
    return ConfigVolume("configMap", source.get("name", ""), source.get("volumeLabel"))


def _container_disk(_source: Mapping[str, Any], _name: Any) -> EphemeralVolume:
    return EphemeralVolume(EPHEMERAL_DISK_BYTES)


def _empty_disk(source: Mapping[str, Any], _name: Any) -> EphemeralVolume:
    return EphemeralVolume(whole(source.get("capacity") or "1Gi"))


def _nocloud(source: Mapping[str, Any], name: str | None) -> NoCloudVolume:
    plan = NoCloudVolume(
        user_data=_inline(source, "userData", "userDataBase64"),
        user_data_secret=(source.get("secretRef") or {}).get("name"),
        network_data=_inline(source, "networkData", "networkDataBase64"),
        network_data_secret=(source.get("networkDataSecretRef") or {}).get("name"),
    )
    if not any(vars(plan).values()):
        raise SpecError(
            f"volume {name!r}: userDataBase64, userData, networkDataBase64 or networkData "
            "is required for a cloud-init data source"
        )
    return plan


_SOURCES = {
    "persistentVolumeClaim": _claim,
    "dataVolume": _data_volume,
    "secret": _secret,
    "configMap": _config_map,
    "cloudInitNoCloud": _nocloud,
    "containerDisk": _container_disk,
    "emptyDisk": _empty_disk,
}


def _inline(source: Mapping[str, Any], raw: str, encoded: str) -> str | None:
    if source.get(raw):
        return source[raw]
    if source.get(encoded):
        return base64.b64decode(source[encoded]).decode()
    return None


def hostname(vmi: Mapping[str, Any]) -> str:
    """spec.hostname, else the name up to its first dot, at most 63 characters (KubeVirt)."""
    given = (vmi.get("spec") or {}).get("hostname")
    if given:
        return given
    return ((vmi.get("metadata") or {}).get("name") or "").split(".")[0][:HOSTNAME_MAX]


def resolve_volumes(
    vmi: Mapping[str, Any],
    run_dir: Path,
    claim_file: Callable[[str], Path],
    secret_data: Callable[[str], Mapping[str, bytes]],
    config_map_data: Callable[[str], Mapping[str, bytes]] | None = None,
) -> dict[str, Backing]:
    """Every disk's backing file, the ISOs written into ``run_dir`` (by volume name)."""
    backings = {}
    for volume, source in volume_plan(vmi).items():
        if isinstance(source, ClaimVolume):
            path = Path(claim_file(source.claim))
            backings[volume] = Backing(path, readonly=source.readonly, host_locks=False)
        elif isinstance(source, ConfigVolume):
            read = secret_data if source.kind == "secret" else config_map_data
            if read is None:
                raise SpecError(f"volume {volume!r}: no way to read ConfigMap {source.name!r}")
            path = isos.config_disk_path(run_dir, volume)
            backings[volume] = Backing(isos.config_disk(path, read(source.name), source.label))
        elif isinstance(source, EphemeralVolume):
            backings[volume] = Backing(_ephemeral_disk(run_dir, volume, source.size))
        else:
            backings[volume] = Backing(_nocloud_disk(vmi, run_dir, source, secret_data))
    return backings


def _ephemeral_disk(run_dir: Path, volume: str, size: int) -> Path:
    """A new, empty, sparse file: an ephemeral disk does not outlive its VMI."""
    path = run_dir / "ephemeral" / f"{volume}.img"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def _nocloud_disk(
    vmi: Mapping[str, Any],
    run_dir: Path,
    source: NoCloudVolume,
    secret_data: Callable[[str], Mapping[str, bytes]],
) -> Path:
    user_data = source.user_data or _from_secret(
        secret_data, source.user_data_secret, USER_DATA_KEYS
    )
    network_data = source.network_data or _from_secret(
        secret_data, source.network_data_secret, NETWORK_DATA_KEYS
    )
    meta_data = isos.nocloud_meta_data(firmware_uuid(vmi), hostname(vmi))
    path = isos.nocloud_disk_path(run_dir)
    return isos.nocloud_disk(path, user_data or "", meta_data, network_data)


def _from_secret(
    secret_data: Callable[[str], Mapping[str, bytes]], name: str | None, keys: tuple[str, ...]
) -> str | None:
    if not name:
        return None
    data = secret_data(name)
    found = next((data[key] for key in keys if key in data), None)
    if found is None:
        raise SpecError(f"Secret {name!r} has none of the keys {', '.join(keys)}")
    return found.decode()
