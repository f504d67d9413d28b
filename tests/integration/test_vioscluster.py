"""VIOSCluster status on the real control plane with the real operator: it follows its nodes,
its StorageClass and its LUs (counts, never a list) within seconds, with Events."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from lparkube.adapters.kube import Kube
from lparkube.adapters.logical_units import LogicalUnits, Storage
from lparkube.domain.logical_units import PAGING, LURequest
from lparkube_devenv.controlplane import wait_until
from lparkube_devenv.kubevirt import StandIn
from lparkube_devenv.kubevirt.nodes import NODES_PATH, ensure_nodes, set_ready

pytestmark = pytest.mark.usefixtures("operator")

GROUP, VERSION, PLURAL = "lparkube.io", "v1alpha1", "viosclusters"
TIMEOUT = 20.0  # "within seconds"
MI = 1 << 20
SCRIPT = Path(__file__).with_name("lu_allocate_and_wait.py")


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    return wait_until(predicate, timeout, what, interval=0.1)


class Pools:
    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.made: list[str] = []

    def create(self, name: str, storage_class: str = "lparkube-thin", **spec: Any) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VIOSCluster",
            "metadata": {"name": name},
            "spec": {"storage": {"storageClassName": storage_class}, **spec},
        }
        self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
        self.made.append(name)

    def status(self, name: str) -> dict:
        pool = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        return pool.get("status") or {}

    def ready(self, name: str) -> dict:
        found = [c for c in self.status(name).get("conditions") or [] if c["type"] == "Ready"]
        return found[0] if found else {}

    def wait_ready(self, name: str, status: str, reason: str) -> dict:
        return wait_for(
            lambda: (
                (self.ready(name).get("status"), self.ready(name).get("reason")) == (status, reason)
                and self.status(name)
            ),
            f"VIOSCluster {name} Ready={status} ({reason}); last {self.ready(name)}",
        )

    def events(self, name: str) -> set[str]:
        events = self.core.list_event_for_all_namespaces(
            field_selector=f"involvedObject.name={name}"
        ).items
        return {e.reason for e in events if e.involved_object.kind == "VIOSCluster"}

    def delete_all(self) -> None:
        for name in self.made:
            try:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            except client.ApiException as error:
                if error.status != 404:
                    raise


@pytest.fixture
def pools(api_client: client.ApiClient) -> Iterator[Pools]:
    made = Pools(api_client)
    yield made
    made.delete_all()


@pytest.fixture
def pool_name() -> str:
    return f"vios-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def node_label(pool_name: str) -> dict[str, str]:
    return {"lparkube.test/vios": pool_name}


@pytest.fixture
def extra_node(kubevirt: StandIn, pool_name: str, node_label) -> Iterator[Callable[[], str]]:
    """Adds a Ready node labelled for the pool; removed after the test."""
    names: list[str] = []

    def add() -> str:
        name = f"{pool_name}-node-{len(names)}"
        ensure_nodes(kubevirt.kube, [name])
        kubevirt.kube.merge_patch(f"{NODES_PATH}/{name}", {"metadata": {"labels": node_label}})
        names.append(name)
        return name

    yield add
    for name in names:
        kubevirt.kube.delete(f"{NODES_PATH}/{name}")


def test_status_follows_nodes_joining_leaving_and_readiness(
    pools: Pools, pool_name: str, node_label, extra_node, kubevirt: StandIn
) -> None:
    pools.create(pool_name, nodeSelector={"matchLabels": node_label})
    empty = pools.wait_ready(pool_name, "False", "NoReadyNodes")
    assert (empty["nodes"], empty["readyNodes"]) == ([], 0)
    assert "none match" in pools.ready(pool_name)["message"]

    node = extra_node()
    joined = pools.wait_ready(pool_name, "True", "PoolReady")
    assert joined["nodes"] == [{"name": node, "ready": True}]
    assert joined["readyNodes"] == 1
    wait_for(lambda: {"NodeJoined", "PoolNotReady", "PoolReady"} <= pools.events(pool_name),
             "NodeJoined, PoolNotReady and PoolReady events")  # fmt: skip

    set_ready(kubevirt.kube, node, False)
    down = pools.wait_ready(pool_name, "False", "NoReadyNodes")
    assert down["nodes"] == [{"name": node, "ready": False}]

    kubevirt.kube.delete(f"{NODES_PATH}/{node}")
    wait_for(lambda: pools.status(pool_name).get("nodes") == [], "the node gone from status")
    wait_for(lambda: "NodeLeft" in pools.events(pool_name), "a NodeLeft event")


def test_ready_needs_a_storage_class_that_expands(
    pools: Pools, pool_name: str, api_client: client.ApiClient
) -> None:
    storage = client.StorageV1Api(api_client)
    class_name = f"{pool_name}-fixed"
    pools.create(pool_name, storage_class=class_name)
    missing = pools.wait_ready(pool_name, "False", "StorageClassNotFound")
    assert class_name in missing["conditions"][0]["message"]
    body = {
        "metadata": {"name": class_name},
        "provisioner": "thin.lparkube.io",
        "allowVolumeExpansion": False,
    }
    storage.create_storage_class(body)
    try:
        fixed = pools.wait_ready(pool_name, "False", "ExpansionNotAllowed")
        assert "allowVolumeExpansion" in fixed["conditions"][0]["message"]
        storage.patch_storage_class(class_name, {"allowVolumeExpansion": True})
        pools.wait_ready(pool_name, "True", "PoolReady")
    finally:
        storage.delete_storage_class(class_name)
    pools.wait_ready(pool_name, "False", "StorageClassNotFound")


def test_lu_counts_follow_claims_locks_and_releases(  # noqa: PLR0917
    pools: Pools,
    pool_name: str,
    api_client: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    pools.create(pool_name, lockTimeout="3s")
    pools.wait_ready(pool_name, "True", "PoolReady")
    kube = Kube(api_client, workers=8)
    units = LogicalUnits(kube)
    storage = Storage("lparkube-thin")

    def request(uid: str) -> LURequest:
        return LURequest(namespace, pool_name, PAGING, 64 * MI, uid, initial_bytes=64 * MI)

    async def claim_and_free() -> None:
        await units.allocate(request("a"), "a", storage, 3)
        await units.allocate(request("b"), "b", storage, 3)

        async def reuse(_: str) -> bool:
            return True

        await units.release(namespace, "b", "b", reuse)

    def counts() -> dict:
        return pools.status(pool_name).get("logicalUnits") or {}

    asyncio.run(claim_and_free())
    found = wait_for(
        lambda: (c := counts()).get("total") == 2 and c.get("free") == 1 and c,
        f"2 LUs, 1 free; last {counts()}",
    )
    assert (found["inUse"], found["claiming"], found["requestedBytes"]) == (1, 0, 128 * MI)
    assert found["usedBytes"] == 64 * MI
    assert found["byPurpose"]["paging"]["total"] == 2
    assert found["byPurpose"]["hibernation"]["total"] == 0

    marker = tmp_path / "claimed"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(kubeconfig), namespace, pool_name, "dead", "dead",
         str(64 * MI), "3", str(marker)],
    )  # fmt: skip
    try:
        wait_until(marker.exists, 30, "the claimant to stop mid-claim")
        wait_for(lambda: counts().get("claiming") == 1, f"1 LU being claimed; last {counts()}")
        process.kill()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    # Its lock runs out without anyone writing anything: the pool notices by itself.
    wait_for(
        lambda: (c := counts()).get("claiming") == 0 and c.get("free") == 1 and c.get("total") == 2,
        f"the dead claim free again; last {counts()}",
        timeout=15,
    )
    kube._pool.shutdown(wait=False)
