"""Shared fixtures: one real local control plane per session, API client, namespaces, kubectl.

Tests under ``tests/integration`` get the ``integration`` marker automatically. The control
plane is skipped only when Go is missing (its binaries are built from Go modules); any other
problem starting it is an error, never a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from lparkube_devenv.controlplane import REPO_ROOT, LocalControlPlane, find_tool, install_crds

INTEGRATION_DIR = Path(__file__).parent / "integration"
REALGUEST_DIR = Path(__file__).parent / "realguest"
STATUS_FILE_ENV = "LPARKUBE_PYTEST_STATUS_FILE"  # .ci/run reads pytest's exit status from it

Kubectl = Callable[..., subprocess.CompletedProcess]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration as ``integration``, under tests/realguest as
    ``realguest`` (``-m "not realguest"`` leaves the QEMU tier out)."""
    for item in items:
        parents = Path(item.path).parents
        if INTEGRATION_DIR in parents:
            item.add_marker(pytest.mark.integration)
        if REALGUEST_DIR in parents:
            item.add_marker(pytest.mark.realguest)


_TIER_SECONDS = {"realguest": 0.0, "all": 0.0}  # setup + call + teardown, summed


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _TIER_SECONDS["all"] += report.duration
    if "realguest" in report.keywords:
        _TIER_SECONDS["realguest"] += report.duration


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """The real-guest tier's share of the run (CI's time budget is watched by it)."""
    total, real = _TIER_SECONDS["all"], _TIER_SECONDS["realguest"]
    if total > 0:
        share = f"{real:.0f} s of {total:.0f} s in tests ({100 * real / total:.0f}%)"
        terminalreporter.write_line(f"real-guest tier: {share}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Record pytest's exit status for .ci/run (make hides it)."""
    path = os.environ.get(STATUS_FILE_ENV)
    if path:
        Path(path).write_text(f"{int(exitstatus)}\n")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalControlPlane]:
    """A running etcd + kube-apiserver + kube-controller-manager with the project's CRDs."""
    if shutil.which("go") is None:
        pytest.skip(
            "Go is not installed: the local control plane (etcd, kube-apiserver, "
            "kube-controller-manager) is built from Go modules by hack/build-control-plane.sh"
        )
    with LocalControlPlane(tmp_path_factory.mktemp("control-plane")) as plane:
        with config.new_client_from_config(config_file=str(plane.kubeconfig)) as api:
            install_crds(api, REPO_ROOT / "crds")
        yield plane


@pytest.fixture(scope="session")
def kubeconfig(control_plane: LocalControlPlane) -> Path:
    """Path of the admin kubeconfig (user in group system:masters)."""
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """A kubernetes ApiClient authenticated as the admin."""
    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        yield api


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"{slug or 'test'}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test; deleted afterwards (without waiting)."""
    name = _namespace_name(request.node.name)
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name, "labels": {"lparkube.test": "true"}}})
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except client.ApiException as error:
        if error.status not in (404, 409):
            raise


@pytest.fixture(scope="session")
def kubectl(control_plane: LocalControlPlane) -> Kubectl:
    """``kubectl(*args, check=True, input=None)``: the real kubectl against the control plane."""
    exe = find_tool("kubectl", control_plane.bin_dir)

    def run(
        *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        argv = [exe, f"--kubeconfig={control_plane.kubeconfig}", *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed with exit code {result.returncode}:\n"
                f"{result.stderr}{result.stdout}"
            )
        return result

    return run
