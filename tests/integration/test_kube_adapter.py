"""The operator's async Kubernetes adapter against the real API server and the stand-in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from lparkube.adapters.kube import (
    PARTITION,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    KindNotServedError,
    Kube,
    ResourceRef,
)
from lparkube.adapters.status_writer import JSON_PATCH
from lparkube_devenv.controlplane import wait_until


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[Kube]:
    adapter = Kube.connect(kubeconfig, workers=4)
    yield adapter
    adapter.close()


def partition(name: str) -> dict:
    return {"kind": "Partition", "metadata": {"name": name}, "spec": {"vmName": name}}


def test_create_get_list_patch_and_missing(kube: Kube, namespace: str) -> None:
    async def scenario() -> None:
        created = await kube.create(PARTITION, namespace, partition("p1"))
        assert created["metadata"]["uid"]
        await kube.create(PARTITION, namespace, partition("p2"))
        names = sorted(p["metadata"]["name"] for p in await kube.list(PARTITION, namespace))
        assert names == ["p1", "p2"]
        await kube.patch(PARTITION, namespace, "p1", {"metadata": {"labels": {"tier": "a"}}})
        await kube.patch(PARTITION, namespace, "p1", {"status": {"nodeName": "n1"}}, status=True)
        got = await kube.get(PARTITION, namespace, "p1")
        assert got["metadata"]["labels"] == {"tier": "a"}
        assert got["status"]["nodeName"] == "n1"
        assert [p["metadata"]["name"] for p in await kube.list(PARTITION, namespace, "tier=a")] == [
            "p1"
        ]
        assert await kube.get(PARTITION, namespace, "absent") is None

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "ref",
    [ResourceRef("kubevirt.io", "v9", "virtualmachines"), ResourceRef("absent.io", "v1", "things")],
    ids=["unserved version", "unserved group"],
)
def test_a_kind_the_server_does_not_serve_is_told_apart_from_a_missing_object(
    kube: Kube, namespace: str, ref: ResourceRef
) -> None:
    async def scenario() -> None:
        assert await kube.get(PARTITION, namespace, "absent") is None
        with pytest.raises(KindNotServedError) as raised:
            await kube.get(ref, namespace, "absent")
        assert raised.value.status == 404 and raised.value.ref == ref
        assert f"does not serve {ref.plural}.{ref.group}/{ref.version}" in str(raised.value)

    asyncio.run(scenario())


def test_kubevirt_start_through_virt_api_paths(kube: Kube, kubevirt, namespace: str) -> None:
    vm = {
        "kind": "VirtualMachine",
        "metadata": {"name": "vm1"},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}},
    }
    asyncio.run(kube.create(VIRTUAL_MACHINE, namespace, vm))
    asyncio.run(kube.kubevirt_subresource(VIRTUAL_MACHINE, namespace, "vm1", "start"))

    def running() -> bool:
        vmi = asyncio.run(kube.get(VIRTUAL_MACHINE_INSTANCE, namespace, "vm1"))
        return bool(vmi) and vmi.get("status", {}).get("phase") == "Running"

    wait_until(running, 30, "the VMI to run after start")


def test_encoded_status_patches_and_their_errors(kube: Kube, namespace: str) -> None:
    async def scenario() -> None:
        await kube.create(PARTITION, namespace, partition("p3"))
        first = {"interface": "default", "ip": "10.0.0.1"}
        merge = json.dumps({"status": {"nodeName": "n1", "addresses": [first]}}).encode()
        await kube.patch_status_encoded(PARTITION, namespace, "p3", merge)
        moved = {"interface": "default", "ip": "10.0.0.2"}
        ops = [{"op": "replace", "path": "/status/addresses/0", "value": moved}]
        await kube.patch_status_encoded(
            PARTITION, namespace, "p3", json.dumps(ops).encode(), content_type=JSON_PATCH
        )
        got = await kube.get(PARTITION, namespace, "p3")
        assert (got["status"]["nodeName"], got["status"]["addresses"]) == ("n1", [moved])
        stale = [{"op": "replace", "path": "/status/addresses/5", "value": moved}]
        with pytest.raises(ApiException) as error:
            await kube.patch_status_encoded(
                PARTITION, namespace, "p3", json.dumps(stale).encode(), content_type=JSON_PATCH
            )
        assert error.value.status == 422  # what the status writer rewrites the status on
        with pytest.raises(ApiException) as missing:
            await kube.patch_status_encoded(PARTITION, namespace, "nobody", merge)
        assert missing.value.status == 404

    asyncio.run(scenario())
