"""KubeVirt's generated disks: names, labels and contents, read back with isoinfo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lparkube_devenv.qemu import isos

ISOINFO = "isoinfo"  # in the Debian package genisoimage, like genisoimage itself


@pytest.fixture(autouse=True)
def _iso_tools() -> None:
    for tool in (isos.GENISOIMAGE, ISOINFO):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: install the Debian package genisoimage (.ci/run does)")


def isoinfo(iso: Path, *args: str) -> str:
    run = subprocess.run([ISOINFO, "-i", str(iso), *args], capture_output=True, check=True)
    return run.stdout.decode()


def volume_id(iso: Path) -> str:
    line = next(x for x in isoinfo(iso, "-d").splitlines() if x.startswith("Volume id:"))
    return line.split(":", 1)[1].strip()


def rock_ridge_names(iso: Path) -> list[str]:
    lines = isoinfo(iso, "-R", "-l").splitlines()
    names = [line.split()[-1] for line in lines if line.startswith(("-", "d"))]
    return sorted(n for n in names if n not in (".", ".."))


def content(iso: Path, name: str) -> bytes:
    return subprocess.run(
        [ISOINFO, "-i", str(iso), "-R", "-x", f"/{name}"], capture_output=True, check=True
    ).stdout


def test_disks_are_named_as_virt_launcher_names_them(tmp_path: Path) -> None:
    assert isos.config_disk_path(tmp_path, "lparkube-agent") == (
        tmp_path / "config-disks" / "lparkube-agent.iso"
    )
    assert isos.nocloud_disk_path(tmp_path) == tmp_path / "cloud-init" / "noCloud.iso"


def test_a_secret_disk_holds_one_file_per_key_labelled_cfgdata(tmp_path: Path) -> None:
    files = {"key": b"\x00secret\xff", "config.json": b'{"a": 1}', "ca.crt": b"-----BEGIN"}
    iso = isos.config_disk(isos.config_disk_path(tmp_path, "lparkube-agent"), files)
    assert volume_id(iso) == "cfgdata"  # KubeVirt's label when the volume sets none
    assert rock_ridge_names(iso) == ["ca.crt", "config.json", "key"]
    assert {name: content(iso, name) for name in files} == files
    assert [p.name for p in iso.parent.iterdir()] == ["lparkube-agent.iso"]  # no staging left


def test_a_volume_label_names_the_disk(tmp_path: Path) -> None:
    iso = isos.config_disk(tmp_path / "x.iso", {"a": b"1"}, label="MYKEYS")
    assert volume_id(iso) == "MYKEYS"
    with pytest.raises(isos.IsoError, match="longer than 32"):
        isos.config_disk(tmp_path / "y.iso", {"a": b"1"}, label="L" * 33)


@pytest.mark.parametrize("key", ["../escape", "a/b", "..", "spa ce"])
def test_keys_that_are_no_file_names_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(isos.IsoError, match="not a valid key"):
        isos.config_disk(tmp_path / "x.iso", {key: b"1"})


def test_the_nocloud_seed_is_cidata_with_kubevirt_s_meta_data(tmp_path: Path) -> None:
    user_data = "#cloud-config\nwrite_files: []\n"
    meta = isos.nocloud_meta_data("5d307ca9-b3ef-428c-8861-06e72d69f223", "vm1")
    assert meta == '{"instance-id":"5d307ca9-b3ef-428c-8861-06e72d69f223","local-hostname":"vm1"}'
    iso = isos.nocloud_disk(isos.nocloud_disk_path(tmp_path), user_data, meta)
    assert volume_id(iso) == "cidata"
    assert rock_ridge_names(iso) == ["meta-data", "user-data"]
    assert content(iso, "user-data").decode() == user_data
    assert json.loads(content(iso, "meta-data")) == {
        "instance-id": "5d307ca9-b3ef-428c-8861-06e72d69f223",
        "local-hostname": "vm1",
    }


def test_network_config_is_there_only_when_given(tmp_path: Path) -> None:
    network = "version: 2\nethernets: {}\n"
    iso = isos.nocloud_disk(tmp_path / "n.iso", "#cloud-config\n", "{}", network)
    assert rock_ridge_names(iso) == ["meta-data", "network-config", "user-data"]
    assert content(iso, "network-config").decode() == network
    assert isos.nocloud_meta_data("i") == '{"instance-id":"i"}'
