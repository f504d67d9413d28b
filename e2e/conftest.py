"""kind + KubeVirt fixtures: a kind cluster, KubeVirt with emulation, the image, the chart.

Tests that use the ``kind_cluster`` fixture need a Docker engine. Where there is none they are
skipped with the exact reason (no docker binary, or ``docker info`` failing), and nothing
else is skipped. With ``LPARKUBE_E2E_REQUIRED=1`` (the e2e workflow) a missing engine is an
error instead, so a broken runner cannot pass by skipping.

Pass ``--keep-cluster`` (pytest-kind's option) to keep the cluster for debugging; its
kubeconfig is ``.pytest-kind/lparkube-e2e/kubeconfig``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e_cluster import (
    CLUSTER_NAME,
    CONTROL_PLANE_TAINT,
    IMAGE,
    IMAGE_REPOSITORY,
    IMAGE_TAG,
    KIND_CONFIG,
    KIND_NODE_IMAGE,
    KUBEVIRT_RELEASE,
    KUBEVIRT_VERSION,
    RELEASE,
    REQUIRED_ENV,
    SYSTEM_NAMESPACE,
    Kubectl,
    KubectlPlugin,
    Release,
    Tools,
    docker_problem,
    pinned_kind,
    run,
)
from pytest_kind import KindCluster

from lparkube_devenv.controlplane import REPO_ROOT, ensure_binaries, find_tool

E2E_DIR = Path(__file__).resolve().parent
_skip_reasons: list[str] = []  # why the kind tests were skipped, for the terminal summary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip exactly the tests that need a kind cluster, when Docker cannot run one."""
    needs_kind = [
        item
        for item in items
        if E2E_DIR in Path(item.path).parents
        and "kind_cluster" in getattr(item, "fixturenames", ())
    ]
    if not needs_kind or os.environ.get(REQUIRED_ENV) == "1":
        return
    problem = docker_problem()
    if problem is None:
        return
    _skip_reasons.append(problem)
    marker = pytest.mark.skip(reason=f"kind + KubeVirt e2e needs a Docker engine: {problem}")
    for item in needs_kind:
        item.add_marker(marker)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say why the kind tests did not run, also without ``-rs``."""
    if _skip_reasons:
        terminalreporter.write_line(
            f"e2e: kind + KubeVirt tests skipped: {_skip_reasons[0]} (see e2e/README.md)"
        )


@pytest.fixture(scope="session")
def tools() -> Tools:
    """The project's pinned helm (and kubectl when the machine has none), and pinned kind."""
    problem = docker_problem()
    if problem:  # reached only with LPARKUBE_E2E_REQUIRED=1
        pytest.fail(f"{REQUIRED_ENV}=1 but {problem}")
    bin_dir = ensure_binaries()
    kubectl = shutil.which(find_tool("kubectl", bin_dir))
    assert kubectl, "no kubectl (hack/build-control-plane.sh builds one when the machine has none)"
    return Tools(helm=find_tool("helm", bin_dir), kubectl=kubectl, kind=pinned_kind())


@pytest.fixture(scope="session")
def kind_cluster(
    request: pytest.FixtureRequest, tools: Tools, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KindCluster]:
    """A two-node kind cluster at the pinned node image (reused if it already exists), guests
    schedulable on both nodes."""
    name = request.config.getoption("cluster_name")
    cluster = KindCluster(
        CLUSTER_NAME if name == "pytest-kind" else name,
        image=KIND_NODE_IMAGE,
        kind_path=tools.kind,
        kubectl_path=Path(tools.kubectl),
    )
    config_file = tmp_path_factory.mktemp("kind") / "cluster.yaml"
    config_file.write_text(yaml.safe_dump(KIND_CONFIG))
    cluster.create(config_file)
    subprocess.run(  # fails harmlessly where the taint is gone already (a reused cluster)
        [tools.kubectl, f"--kubeconfig={cluster.kubeconfig_path}", "taint", "nodes", "--all",
         f"{CONTROL_PLANE_TAINT}-"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    yield cluster
    if not request.config.getoption("keep_cluster"):
        cluster.delete()


@pytest.fixture(scope="session")
def kubectl(kind_cluster: KindCluster, tools: Tools) -> Kubectl:
    """``kubectl(*args, input=None, timeout=600)`` against the kind cluster; stdout as str."""

    def call(*args: str, input: str | None = None, timeout: float = 600) -> str:
        argv = [tools.kubectl, f"--kubeconfig={kind_cluster.kubeconfig_path}", *args]
        return run(argv, input=input, timeout=timeout)

    return call


@pytest.fixture(scope="session")
def kubectl_lparkube(kind_cluster: KindCluster, tools: Tools) -> KubectlPlugin:
    """``kubectl_lparkube(*args, timeout=600)``: ``kubectl lparkube ARGS`` as a user runs it
    (the installed plugin on PATH, KUBECONFIG the kind cluster's), run to its end."""

    def call(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(kind_cluster.kubeconfig_path)}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run(
            [tools.kubectl, "lparkube", *args],
            capture_output=True, text=True, timeout=timeout, env=env, check=False,
        )  # fmt: skip

    return call


@pytest.fixture(scope="session")
def kubevirt(kubectl: Kubectl) -> str:
    """KubeVirt at KUBEVIRT_VERSION with software emulation (kind nodes have no /dev/kvm)."""
    kubectl("apply", "-f", f"{KUBEVIRT_RELEASE}/kubevirt-operator.yaml")
    kubevirt_cr = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
        "spec": {
            "configuration": {"developerConfiguration": {"useEmulation": True}},
            "imagePullPolicy": "IfNotPresent",
        },
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(kubevirt_cr))
    kubectl(
        "-n", "kubevirt", "wait", "kubevirt/kubevirt", "--for=condition=Available",
        "--timeout=20m", timeout=1260,
    )  # fmt: skip
    return KUBEVIRT_VERSION


@pytest.fixture(scope="session")
def operator_image(kind_cluster: KindCluster) -> str:
    """The operator image built from this checkout's Dockerfile and loaded into kind."""
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    ).stdout.strip()
    run(
        ["docker", "build", "--build-arg", f"REVISION={revision or 'unknown'}", "-t", IMAGE,
         str(REPO_ROOT)],
        timeout=1200,
    )  # fmt: skip
    kind_cluster.load_docker_image(IMAGE)
    return IMAGE


@pytest.fixture(scope="session")
def helm_release(
    kind_cluster: KindCluster, tools: Tools, kubevirt: str, operator_image: str
) -> Release:
    """``helm install`` of charts/lparkube with the e2e image; the last test uninstalls it."""

    def helm(*args: str, timeout: float = 900) -> str:
        argv = [tools.helm, f"--kubeconfig={kind_cluster.kubeconfig_path}", *args]
        return run(argv, timeout=timeout)

    helm(
        "install", RELEASE, str(REPO_ROOT / "charts" / "lparkube"),
        "--namespace", SYSTEM_NAMESPACE, "--create-namespace",
        "--set", f"image.repository={IMAGE_REPOSITORY}",
        "--set", f"image.tag={IMAGE_TAG}",
        "--set", "image.pullPolicy=Never",
        "--wait", "--timeout", "10m",
    )  # fmt: skip
    return Release(RELEASE, SYSTEM_NAMESPACE, helm)
