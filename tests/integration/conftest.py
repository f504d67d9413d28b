"""The KubeVirt stand-in on the session's control plane (fixture ``kubevirt``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lparkube_devenv.controlplane import LocalControlPlane
from lparkube_devenv.kubevirt import StandIn
from lparkube_devenv.kubevirt.logic import DRAIN_TAINT
from lparkube_devenv.kubevirt.nodes import NODES_PATH, ensure_nodes


@pytest.fixture(scope="session")
def kubevirt(
    control_plane: LocalControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StandIn]:
    """A running KubeVirt stand-in (CRDs, controller, virt-api) with nodes node-a/b/c."""
    standin = StandIn(
        control_plane.kubeconfig,
        tmp_path_factory.mktemp("kubevirt"),
        control_plane.front_proxy_ca,
    )
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def healthy_nodes(kubevirt: StandIn) -> Iterator[tuple[str, ...]]:
    """The stand-in's node names; every node is Ready, uncordoned and untainted afterwards."""
    yield kubevirt.node_names
    for name in kubevirt.node_names:
        node = kubevirt.kube.request("GET", f"{NODES_PATH}/{name}")
        taints = [t for t in node["spec"].get("taints") or [] if t.get("key") != DRAIN_TAINT]
        spec = {"unschedulable": None, "taints": taints or None}
        kubevirt.kube.merge_patch(f"{NODES_PATH}/{name}", {"spec": spec})
    ensure_nodes(kubevirt.kube, kubevirt.node_names)
