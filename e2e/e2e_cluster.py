"""Pins and helpers for the kind + KubeVirt tests (fixtures live in conftest.py).

Everything the e2e tier downloads is pinned here: kind (checked against its published
SHA-256), the kind node image (by digest) and the KubeVirt release.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REQUIRED_ENV = "LPARKUBE_E2E_REQUIRED"  # "1": a missing Docker engine fails instead of skipping

KIND_VERSION = "v0.29.0"
KIND_SHA256 = {  # the release's published checksums, by (system, machine)
    ("linux", "x86_64"): "c72eda46430f065fb45c5f70e7c957cc9209402ef309294821978677c8fb3284",
}
KIND_NODE_IMAGE = (
    "kindest/node:v1.33.1@sha256:050072256b9a903bd914c0b2866828150cb229cea0efe5892e2b644d5dd3b34f"
)
CLUSTER_NAME = "lparkube-e2e"
# Two nodes, both running guests: a RemoteRestart moves a partition from one to the other. kind
# keeps the control-plane taint once a cluster has workers; the fixture removes it.
KIND_CONFIG = {
    "kind": "Cluster",
    "apiVersion": "kind.x-k8s.io/v1alpha4",
    "nodes": [{"role": "control-plane"}, {"role": "worker"}],
}
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane:NoSchedule"
KUBEVIRT_VERSION = "v1.6.3"
KUBEVIRT_RELEASE = f"https://github.com/kubevirt/kubevirt/releases/download/{KUBEVIRT_VERSION}"

IMAGE_REPOSITORY = "lparkube"
IMAGE_TAG = "e2e"
IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
RELEASE = "lparkube"
SYSTEM_NAMESPACE = "lparkube-system"
# The chart's default: the full name, since the guest's systemd-resolved applies search domains
# to single-label names only.
GATEWAY_URL = f"http://{RELEASE}-agent-gateway.{SYSTEM_NAMESPACE}.svc.cluster.local:8081"

Kubectl = Callable[..., str]
KubectlPlugin = Callable[..., subprocess.CompletedProcess]
T = TypeVar("T")


def docker_problem() -> str | None:
    """Why no Docker engine can run kind here, or None when one answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "Docker is not installed (no `docker` on PATH)"
    try:
        info = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker info` within 30 s"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines() or ["no output"]
        return f"the Docker engine is not reachable (`docker info`: {lines[-1].strip()})"
    return None


def cache_root() -> Path:
    """The cache hack/build-control-plane.sh uses (LPARKUBE_CACHE overrides it)."""
    if os.environ.get("LPARKUBE_CACHE"):
        return Path(os.environ["LPARKUBE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lparkube"


def pinned_kind() -> Path:
    """kind at KIND_VERSION: from the cache, else downloaded once and checked by SHA-256."""
    target = cache_root() / "bin" / f"kind-{KIND_VERSION}" / "kind"
    if target.is_file():
        return target
    system = (platform.system().lower(), platform.machine())
    expected = KIND_SHA256.get(system)
    if expected is None:
        raise RuntimeError(f"no pinned kind checksum for {system}; add it to KIND_SHA256")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(system[1], system[1])
    url = (
        f"https://github.com/kubernetes-sigs/kind/releases/download/{KIND_VERSION}/"
        f"kind-{system[0]}-{arch}"
    )
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise RuntimeError(f"{url}: SHA-256 {digest}, expected {expected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name("kind.partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.rename(target)
    return target


@dataclass(frozen=True)
class Tools:
    helm: str
    kubectl: str
    kind: Path


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    helm: Callable[..., str]


def run(argv: list[str], *, input: str | None = None, timeout: float = 600) -> str:
    """Run a command and return its stdout; on failure raise with all its output."""
    result = subprocess.run(
        argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed with exit code {result.returncode}:\n"
            f"{result.stderr}{result.stdout}"
        )
    return result.stdout


def get_json(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    return json.loads(kubectl("get", *args, "-o", "json"))


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status condition of type ``kind``, or {} when the object has none yet."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def wait_for(what: str, check: Callable[[], T], timeout: float, interval: float = 5) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
        except (AssertionError, KeyError, IndexError, ValueError) as error:
            last = error
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({last})")
        time.sleep(interval)
