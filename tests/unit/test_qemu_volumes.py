"""Each disk's volume resolved to a host file: PVCs, the operator's key Secret, NoCloud seeds."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from lparkube.domain import key_delivery
from lparkube_devenv.qemu import isos
from lparkube_devenv.qemu.machine import Backing, SpecError, domain_from_vmi
from lparkube_devenv.qemu.volumes import (
    EPHEMERAL_DISK_BYTES,
    ClaimVolume,
    ConfigVolume,
    EphemeralVolume,
    NoCloudVolume,
    hostname,
    resolve_volumes,
    volume_plan,
)

ROOT_DISK = {"name": "root", "disk": {"bus": "virtio"}}
ROOT_VOLUME = {"name": "root", "persistentVolumeClaim": {"claimName": "vm1-root"}}


def operator_vmi(delivery: str) -> dict:
    """The VMI the stand-in makes from a VM the operator gave the key Secret ``vm1-key``."""
    vm_spec = {"template": {"spec": {
        "domain": {"memory": {"guest": "256Mi"}, "devices": {"disks": [ROOT_DISK]}},
        "volumes": [ROOT_VOLUME],
    }}}  # fmt: skip
    delivered = key_delivery.with_key_delivery(vm_spec, delivery, "vm1-key")
    return {"metadata": {"name": "vm1", "namespace": "ns"}, "spec": delivered["template"]["spec"]}


def isoinfo(iso: Path, *args: str) -> bytes:
    return subprocess.run(
        ["isoinfo", "-i", str(iso), *args], capture_output=True, check=True
    ).stdout


def test_the_plan_says_what_each_disk_s_volume_needs() -> None:
    vmi = operator_vmi(key_delivery.SECRET_VOLUME)
    vmi["spec"]["volumes"].append({"name": "dump", "memoryDump": {"claimName": "d"}})
    assert volume_plan(vmi) == {
        "root": ClaimVolume("vm1-root"),
        "lparkube-agent": ConfigVolume("secret", "vm1-key"),
    }  # a volume no disk uses (the memory dump's) needs nothing
    cloud = operator_vmi(key_delivery.CLOUD_INIT)
    assert volume_plan(cloud)["lparkube-cloudinit"] == NoCloudVolume(user_data_secret="vm1-key")


def test_inline_and_base64_user_data_and_the_other_sources() -> None:
    volumes = [
        {"name": "a", "cloudInitNoCloud": {"userDataBase64": base64.b64encode(b"#x").decode(),
                                           "networkData": "version: 2"}},
        {"name": "b", "dataVolume": {"name": "dv"}},
        {"name": "c", "configMap": {"name": "cm", "volumeLabel": "CM"}},
        {"name": "d", "persistentVolumeClaim": {"claimName": "ro", "readOnly": True}},
    ]  # fmt: skip
    vmi = {"spec": {"domain": {"devices": {"disks": [{"name": v["name"]} for v in volumes]}},
                    "volumes": volumes}}  # fmt: skip
    assert volume_plan(vmi) == {
        "a": NoCloudVolume(user_data="#x", network_data="version: 2"),
        "b": ClaimVolume("dv"),
        "c": ConfigVolume("configMap", "cm", "CM"),
        "d": ClaimVolume("ro", readonly=True),
    }


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ({"name": "x", "hostDisk": {"path": "/p"}}, "hostDisk volume"),
        ({"name": "x", "cloudInitConfigDrive": {"userData": "#"}}, "cloudInitConfigDrive"),
        ({"name": "x", "cloudInitNoCloud": {}}, "is required for a cloud-init data source"),
    ],
)
def test_volumes_the_stand_in_cannot_attach_are_refused(volume: dict, message: str) -> None:
    vmi = {"spec": {"domain": {"devices": {"disks": [{"name": "x"}]}}, "volumes": [volume]}}
    with pytest.raises(SpecError, match=message):
        volume_plan(vmi)


def test_container_and_empty_disks_are_new_thin_files_each_run(tmp_path: Path) -> None:
    volumes = [
        {"name": "root", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}},
        {"name": "scratch", "emptyDisk": {"capacity": "64Mi"}},
    ]
    vmi = {"metadata": {"name": "vm", "uid": "u"},
           "spec": {"domain": {"devices": {"disks": [{"name": "root"}, {"name": "scratch"}]}},
                    "volumes": volumes}}  # fmt: skip
    assert volume_plan(vmi) == {
        "root": EphemeralVolume(EPHEMERAL_DISK_BYTES),
        "scratch": EphemeralVolume(64 * 2**20),
    }
    first = resolve_volumes(vmi, tmp_path, claim_file=Path, secret_data=dict)
    first["scratch"].path.write_bytes(b"left over")
    again = resolve_volumes(vmi, tmp_path, claim_file=Path, secret_data=dict)
    scratch = again["scratch"].path
    assert scratch.stat().st_size == 64 * 2**20
    assert scratch.open("rb").read(9) == b"\0" * 9  # emptied: ephemeral
    assert again["root"].path.stat().st_size == EPHEMERAL_DISK_BYTES
    assert again["root"].path.stat().st_blocks == 0  # thin


def test_a_disk_without_its_volume_is_refused() -> None:
    with pytest.raises(SpecError, match="no volume of that name"):
        volume_plan({"spec": {"domain": {"devices": {"disks": [{"name": "x"}]}}}})


def test_hostname_as_kubevirt_sanitizes_it() -> None:
    assert hostname({"metadata": {"name": "web.example"}}) == "web"
    assert hostname({"metadata": {"name": "a" * 70}}) == "a" * 63
    assert hostname({"metadata": {"name": "vm"}, "spec": {"hostname": "given"}}) == "given"


def test_secret_volume_delivery_becomes_the_lparkube_disk(tmp_path: Path) -> None:
    vmi = operator_vmi(key_delivery.SECRET_VOLUME)
    secret = {"key": b"k" * 32, "config.json": b'{"port": 8443}'}
    backings = resolve_volumes(
        vmi, tmp_path, claim_file=lambda claim: Path(f"/pv/{claim}/disk.img"),
        secret_data={"vm1-key": secret}.__getitem__,
    )  # fmt: skip
    assert backings["root"] == Backing(Path("/pv/vm1-root/disk.img"), host_locks=False)
    iso = backings["lparkube-agent"].path
    assert iso == tmp_path / "config-disks" / "lparkube-agent.iso"
    assert isoinfo(iso, "-R", "-x", "/config.json") == b'{"port": 8443}'
    disks = domain_from_vmi(vmi, backings).disks
    assert [(d.name, d.serial) for d in disks] == [("root", "root"), ("lparkube-agent", "lparkube")]


def test_cloud_init_delivery_becomes_a_nocloud_seed(tmp_path: Path) -> None:
    vmi = operator_vmi(key_delivery.CLOUD_INIT)
    user_data = key_delivery.user_data_with_files(None, {"key": b"k"})
    backings = resolve_volumes(
        vmi, tmp_path, claim_file=lambda claim: tmp_path / claim,
        secret_data={"vm1-key": {"userdata": user_data.encode()}}.__getitem__,
    )  # fmt: skip
    iso = backings["lparkube-cloudinit"].path
    assert iso == isos.nocloud_disk_path(tmp_path)
    assert isoinfo(iso, "-R", "-x", "/user-data").decode() == user_data
    meta = json.loads(isoinfo(iso, "-R", "-x", "/meta-data"))
    assert meta == {"instance-id": domain_from_vmi(vmi, backings).uuid, "local-hostname": "vm1"}


def test_a_secret_without_user_data_says_which_keys_it_needs(tmp_path: Path) -> None:
    vmi = operator_vmi(key_delivery.CLOUD_INIT)
    with pytest.raises(SpecError, match="userdata, userData"):
        resolve_volumes(vmi, tmp_path, lambda c: tmp_path, {"vm1-key": {"other": b""}}.__getitem__)
