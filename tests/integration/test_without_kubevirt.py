"""A cluster without KubeVirt: each Partition says so in a condition and one Warning (no raw
404 in the log), and comes to life by itself once KubeVirt's CRD is Established. Its own
control plane, since the session's has KubeVirt's stand-in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from conftest import OperatorProcess
from kubernetes import client, config
from partition_helpers import Partitions, partition_manifest, wait_for

from lparkube.config import DEFAULT_IDENTITY_SECRET
from lparkube_devenv.controlplane import REPO_ROOT, LocalControlPlane, free_port, install_crds
from lparkube_devenv.kubevirt import StandIn


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalControlPlane]:
    with LocalControlPlane(tmp_path_factory.mktemp("no-kubevirt")) as plane:
        with config.new_client_from_config(config_file=str(plane.kubeconfig)) as api:
            install_crds(api, REPO_ROOT / "crds")
        yield plane


def test_partitions_say_kubevirt_is_missing_until_it_is_installed(
    bare_cluster: LocalControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with config.new_client_from_config(config_file=str(bare_cluster.kubeconfig)) as api:
        core = client.CoreV1Api(api)
        namespace, lease_namespace = f"tenant-{uuid.uuid4().hex[:6]}", "lparkube-system"
        for name in (namespace, lease_namespace):
            core.create_namespace({"metadata": {"name": name}})
        workdir = tmp_path_factory.mktemp("operator-without-kubevirt")
        operator = OperatorProcess(
            bare_cluster.kubeconfig, lease_namespace, DEFAULT_IDENTITY_SECRET, workdir
        ).start()
        try:
            parts = Partitions(api, None, namespace)  # type: ignore[arg-type]
            log_start = operator.log_size()
            parts.create(partition_manifest("web-1", "127.0.0.61", free_port()))
            missing = wait_for(
                lambda: (
                    (c := parts.condition("web-1", "VMReady")).get("reason") == "KubeVirtMissing"
                    and c
                ),
                "VMReady=False KubeVirtMissing",
            )
            assert missing["status"] == "False"
            assert "KubeVirt is not installed" in missing["message"]
            assert "kubevirt.io/v1" in missing["message"]
            assert parts.condition("web-1", "Ready")["reason"] == "KubeVirtMissing"
            wait_for(lambda: "KubeVirtMissing" in parts.reasons("web-1"), "the Warning event")
            log = operator.log_since(log_start)
            assert "Traceback" not in log and "(404)" not in log, log[-3000:]
            assert "Handler 'partition_create' failed" not in log, "status says it, once"

            # KubeVirt arrives: its CRDs wake the Partition, which creates its VM, which then runs.
            standin = StandIn(
                bare_cluster.kubeconfig,
                tmp_path_factory.mktemp("late-kubevirt"),
                bare_cluster.front_proxy_ca,
            )
            standin.start()
            try:
                parts.kubevirt = standin
                parts.wait_condition("web-1", "VMReady", "True")
                assert parts.vm("web-1") is not None
                assert [r for r, _ in parts.events("web-1")].count("KubeVirtMissing") == 1
            finally:
                standin.stop()
        finally:
            operator.stop()
