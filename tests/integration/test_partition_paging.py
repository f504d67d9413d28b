"""A Partition's paging LU on the real control plane with the real operator: claimed from its
VIOSCluster before the VM is made, the VM's disk lparkube-paging, status.paging, PagingReady
refusals, and the LU released (kept, free) when the Partition goes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from partition_helpers import Partitions, partition_manifest, wait_for

from lparkube.adapters.logical_units import pool_selector
from lparkube_devenv.controlplane import free_port
from lparkube_devenv.kubevirt import StandIn

pytestmark = pytest.mark.usefixtures("operator")

GROUP, VERSION = "lparkube.io", "v1alpha1"
MI = 1 << 20


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


@pytest.fixture
def pool(api_client: client.ApiClient) -> Iterator[str]:
    name = f"paging-{uuid.uuid4().hex[:6]}"
    yield name
    custom = client.CustomObjectsApi(api_client)
    try:
        custom.delete_cluster_custom_object(GROUP, VERSION, "viosclusters", name)
    except client.ApiException as error:
        if error.status != 404:
            raise


def create_pool(api_client: client.ApiClient, name: str, **thin: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VIOSCluster",
        "metadata": {"name": name},
        "spec": {
            "storage": {"storageClassName": "lparkube-thin"},
            "thin": {"initialSize": "256Mi", "maxSize": "2Gi", **thin},
        },
    }
    client.CustomObjectsApi(api_client).create_cluster_custom_object(
        GROUP, VERSION, "viosclusters", body
    )


def paging_partition(name: str, pool: str, **paging: str) -> dict:
    manifest = partition_manifest(name, "127.0.0.31", free_port())
    manifest["spec"]["viosClusterName"] = pool
    manifest["spec"]["paging"] = dict(paging)
    return manifest


def lus(api_client: client.ApiClient, namespace: str, pool: str) -> list:
    return (
        client.CoreV1Api(api_client)
        .list_namespaced_persistent_volume_claim(namespace, label_selector=pool_selector(pool))
        .items
    )


def paging_volume(vm: dict | None) -> tuple[dict | None, dict | None]:
    pod = ((vm or {}).get("spec") or {}).get("template", {}).get("spec") or {}
    volume = next((v for v in pod.get("volumes") or [] if v["name"] == "lparkube-paging"), None)
    disks = (pod.get("domain") or {}).get("devices", {}).get("disks") or []
    disk = next((d for d in disks if d["name"] == "lparkube-paging"), None)
    return volume, disk


def test_the_paging_lu_becomes_the_vms_disk_and_is_released_with_the_partition(
    parts: Partitions, api_client: client.ApiClient, namespace: str, pool: str
) -> None:
    # The pool does not exist yet: the Partition says so and makes no VM.
    parts.create(paging_partition("web-1", pool))
    refused = parts.wait_condition("web-1", "PagingReady", "False")
    assert parts.condition("web-1", "PagingReady")["reason"] == "VIOSClusterNotFound"
    assert "paging" not in refused
    assert parts.vm("web-1") is None
    wait_for(lambda: "PagingNotReady" in parts.reasons("web-1"), "a PagingNotReady Warning")

    # The pool appears and becomes Ready: the waiting Partition gets its LU and its VM.
    create_pool(api_client, pool)
    status = parts.wait_condition("web-1", "PagingReady", "True", timeout=30)
    (lu,) = lus(api_client, namespace, pool)
    assert status["paging"] == {"claimName": lu.metadata.name, "size": "320Mi"}  # 256Mi x 1.25
    assert lu.metadata.labels["lparkube.io/lu-purpose"] == "paging"
    assert lu.metadata.labels["lparkube.io/partition"] == "web-1"
    assert (
        lu.metadata.annotations["lparkube.io/claimed-by"] == parts.get("web-1")["metadata"]["uid"]
    )
    assert lu.spec.resources.requests["storage"] == str(320 * MI)
    vm = wait_for(lambda: parts.vm("web-1"), "the VM")
    volume, disk = paging_volume(vm)
    assert volume == {
        "name": "lparkube-paging",
        "persistentVolumeClaim": {"claimName": lu.metadata.name},
    }
    assert disk == {
        "name": "lparkube-paging",
        "serial": "lparkube-paging",
        "disk": {"bus": "virtio"},
    }
    parts.wait_condition("web-1", "VMReady", "True")
    assert "PagingReady" in parts.reasons("web-1")

    # Deleting the Partition frees the LU (the pool reuses): the PVC stays, unclaimed.
    parts.delete("web-1")
    wait_for(lambda: parts.get("web-1") is None, "the Partition gone")
    (kept,) = lus(api_client, namespace, pool)
    assert kept.metadata.name == lu.metadata.name
    assert "lparkube.io/partition" not in (kept.metadata.labels or {})
    assert "lparkube.io/claimed-by" not in (kept.metadata.annotations or {})

    # The next partition of the namespace reuses it, expanded to its size (only a Bound claim
    # can grow: an LU not bound yet would be left for a new one).
    wait_for(lambda: lus(api_client, namespace, pool)[0].status.phase == "Bound", "the LU Bound")
    parts.create(paging_partition("web-2", pool, size="512Mi"))
    again = parts.wait_condition("web-2", "PagingReady", "True")
    assert again["paging"] == {"claimName": lu.metadata.name, "size": "512Mi"}
    assert len(lus(api_client, namespace, pool)) == 1
    assert paging_volume(wait_for(lambda: parts.vm("web-2"), "the VM"))[0] is not None


def test_an_lu_too_large_is_refused_and_removing_paging_releases_it(
    parts: Partitions, api_client: client.ApiClient, namespace: str, pool: str
) -> None:
    create_pool(api_client, pool)
    parts.create(paging_partition("big", pool, size="4Gi"))
    refused = wait_for(
        lambda: (c := parts.condition("big", "PagingReady")).get("reason") == "LUTooLarge" and c,
        "PagingReady=False, LUTooLarge (once the pool is Ready)",
    )
    assert refused["status"] == "False" and "thin.maxSize" in refused["message"]
    assert parts.vm("big") is None
    assert lus(api_client, namespace, pool) == []

    # Fixed: the LU is claimed and the VM made.
    patch = {"spec": {"paging": {"size": "1Gi"}}}
    parts.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "partitions", "big", patch
    )
    status = parts.wait_condition("big", "PagingReady", "True")
    assert status["paging"]["size"] == "1Gi"
    wait_for(lambda: paging_volume(parts.vm("big"))[0], "the paging disk on the VM")

    # spec.paging removed: the disk leaves the VM, the condition and status.paging go, the LU
    # is released.
    remove = {"spec": {"paging": None}}
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "partitions", "big", remove
    )
    wait_for(lambda: paging_volume(parts.vm("big")) == (None, None), "the paging disk removed")
    wait_for(lambda: "paging" not in parts.status("big"), "status.paging removed")
    assert not parts.condition("big", "PagingReady")
    (lu,) = lus(api_client, namespace, pool)
    wait_for(
        lambda: (
            "lparkube.io/partition"
            not in (lus(api_client, namespace, pool)[0].metadata.labels or {})
        ),
        "the LU released",
    )
    assert lu.metadata.name
