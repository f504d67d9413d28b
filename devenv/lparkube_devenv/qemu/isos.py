"""KubeVirt's generated disks as ISO 9660 images: config volumes and the NoCloud seed.

As virt-launcher builds them (KubeVirt v1.9, ``pkg/config/config.go`` and
``pkg/cloud-init/cloud-init.go``), with genisoimage standing in for xorrisofs and taking the
same options where it has them (``-partition_cyl_align on`` is xorrisofs' own):

* a ``secret`` or ``configMap`` volume becomes ``<volume>.iso`` holding one file per key,
  Rock Ridge and Joliet, volume id the volume's ``volumeLabel`` or else ``cfgdata``
  (``-follow-links -volid L -joliet -rock -graft-points``);
* a ``cloudInitNoCloud`` volume becomes ``noCloud.iso``, volume id ``cidata``, holding
  ``user-data``, ``meta-data`` (JSON: ``instance-id``, ``local-hostname``) and
  ``network-config`` when there is network data (``-volid cidata -joliet -rock``).

A Secret mounted in a real launcher pod also shows the kubelet's ``..data`` links, which
KubeVirt's ISO then carries as well; these ISOs hold the keys only.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

GENISOIMAGE = "genisoimage"
GENISOIMAGE_PACKAGE = "genisoimage"
CONFIG_LABEL = "cfgdata"  # KubeVirt's volume id when the volume has no volumeLabel
NOCLOUD_LABEL = "cidata"
MAX_LABEL = 32  # an ISO 9660 volume identifier is 32 characters
KEY_PATTERN = re.compile(r"^[-._a-zA-Z0-9]+$")  # a Secret's or ConfigMap's key
ISO_TIMEOUT = 60.0
FILE_MODE = 0o644  # a Secret volume's defaultMode; Rock Ridge keeps it


class IsoError(RuntimeError):
    """The image could not be made; the message says why."""


def config_disk_path(run_dir: Path, volume: str) -> Path:
    return run_dir / "config-disks" / f"{volume}.iso"


def nocloud_disk_path(run_dir: Path) -> Path:
    return run_dir / "cloud-init" / "noCloud.iso"


def nocloud_meta_data(instance_id: str, hostname: str | None = None) -> str:
    """meta-data as KubeVirt writes it: Go's compact JSON of its NoCloudMetadata."""
    meta: dict[str, str] = {"instance-id": instance_id}
    if hostname:
        meta["local-hostname"] = hostname
    return json.dumps(meta, separators=(",", ":"))


def config_disk(path: Path, files: Mapping[str, bytes], label: str | None = None) -> Path:
    """A Secret's or ConfigMap's data as an ISO: one file per key."""
    volume_id = _checked_label(label or CONFIG_LABEL)
    for key in files:
        if not KEY_PATTERN.match(key) or key in (".", ".."):
            raise IsoError(f"{key!r} is not a valid key for a file on a config disk")
    with _staging(path) as stage:
        grafts = []
        for key, content in sorted(files.items()):
            (stage / key).write_bytes(content)
            (stage / key).chmod(FILE_MODE)
            grafts.append(f"{key}={stage / key}")
        options = ["-follow-links", "-volid", volume_id, "-joliet", "-rock", "-graft-points"]
        _make_iso(path, [*options, *grafts])
    return path


def nocloud_disk(
    path: Path, user_data: str, meta_data: str, network_config: str | None = None
) -> Path:
    """The NoCloud seed: user-data, meta-data and network-config when given."""
    with _staging(path) as stage:
        content = stage / "content"
        content.mkdir()
        (content / "user-data").write_text(user_data)
        (content / "meta-data").write_text(meta_data)
        if network_config:
            (content / "network-config").write_text(network_config)
        _make_iso(path, ["-volid", NOCLOUD_LABEL, "-joliet", "-rock", str(content)])
    return path


def _checked_label(label: str) -> str:
    if len(label) > MAX_LABEL:
        raise IsoError(f"volume label {label!r} is longer than {MAX_LABEL} characters")
    return label


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A scratch directory next to ``path``, removed afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _make_iso(path: Path, arguments: list[str]) -> None:
    """Run genisoimage into a staging file and rename it into place, as KubeVirt does."""
    binary = shutil.which(GENISOIMAGE)
    if binary is None:
        raise IsoError(
            f"{GENISOIMAGE} is not installed: install the Debian package {GENISOIMAGE_PACKAGE} "
            "(.ci/run installs it)"
        )
    staging = path.with_name(f"{path.name}.staging")
    argv = [binary, "-quiet", "-input-charset", "utf-8", "-output", str(staging), *arguments]
    run = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=ISO_TIMEOUT)
    if run.returncode != 0:
        staging.unlink(missing_ok=True)
        raise IsoError(f"{GENISOIMAGE} failed ({run.returncode}): {run.stderr.strip()[-500:]}")
    staging.replace(path)
