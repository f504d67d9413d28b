"""Fixtures for the Helm chart tests: the project-built helm and a renderer around it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from chart_helpers import CHART_DIR, KUBE_VERSION, Helm, Render

from lparkube_devenv.controlplane import ensure_binaries, find_tool


@pytest.fixture(scope="session")
def helm_path() -> str:
    """helm as built by hack/build-control-plane.sh (with the control plane, from Go modules)."""
    if shutil.which("go") is None:
        pytest.skip(
            "Go is not installed: helm is built from Go modules by hack/build-control-plane.sh"
        )
    return find_tool("helm", ensure_binaries())


@pytest.fixture(scope="session")
def helm(helm_path: str, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """``helm(*args, check=True)``: the real helm, with its caches in a temporary directory."""
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        "HOME": str(home),  # helm's Kubernetes client caches discovery under $HOME/.kube
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "PATH": "/usr/bin:/bin",
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [helm_path, *args], capture_output=True, text=True, timeout=120, env=env, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}{result.stdout}")
        return result

    return run


@pytest.fixture(scope="session")
def render(helm: Helm) -> Render:
    """``render(*flags, release="lparkube", namespace="lparkube-system")``: parsed objects."""

    def run(
        *flags: str, release: str = "lparkube", namespace: str = "lparkube-system"
    ) -> list[dict]:
        result = helm(
            "template", release, str(CHART_DIR), "--namespace", namespace,
            "--kube-version", KUBE_VERSION, *flags,
        )  # fmt: skip
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return run
