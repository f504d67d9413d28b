"""A Partition's data disk whose backing storage changes, on the real control plane (the
stand-in's thin volumes: the real binder, the expander and resizer) with the real operator and
a real agent over a fake guest: the claim resized, made again under the same name, its volume
deleted. Each gives status.disks, StorageReady and an Event, and the agent is told (its journal
and the disk's rescan file show it)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from partition_helpers import Partitions, partition_manifest, wait_for

from lparkube_agent.fakeguest import MIB, FakeGuest
from lparkube_devenv.controlplane import free_port
from lparkube_devenv.kubevirt import StandIn

GI = 2**30
TIMEOUT = 45.0


def claim_body(name: str, size: str = "1Gi") -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Block",
            "resources": {"requests": {"storage": size}},
        },
    }


def with_data_disk(manifest: dict, claim: str) -> dict:
    template = manifest["spec"]["vmTemplate"]["spec"]["template"]["spec"]
    template["domain"]["devices"]["disks"].append(
        {"name": "data", "disk": {"bus": "virtio"}, "serial": "data"}
    )
    template["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
    return manifest


class Storage:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    def create(self, name: str) -> dict:
        self.core.create_namespaced_persistent_volume_claim(self.namespace, claim_body(name))
        return wait_for(lambda: self.bound(name), f"claim {name} Bound", TIMEOUT)

    def bound(self, name: str) -> dict | None:
        found = self.get(name)
        return found if found and (found.get("status") or {}).get("phase") == "Bound" else None

    def get(self, name: str) -> dict | None:
        try:
            claim = self.core.read_namespaced_persistent_volume_claim(name, self.namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return self.core.api_client.sanitize_for_serialization(claim)

    def resize(self, name: str, size: str) -> None:
        patch = {"spec": {"resources": {"requests": {"storage": size}}}}
        self.core.patch_namespaced_persistent_volume_claim(name, self.namespace, patch)

    def delete(self, name: str) -> None:
        self.core.delete_namespaced_persistent_volume_claim(name, self.namespace)
        wait_for(lambda: self.get(name) is None, f"claim {name} deleted", TIMEOUT)


class Scene:
    """The Partition st-1 with a data disk on ``claim``, its agent over a fake guest whose disk
    ``data`` (sdb) has a rescan file."""

    def __init__(self, api: client.ApiClient, kubevirt: StandIn, namespace: str) -> None:
        self.api = api
        self.parts, self.volumes = Partitions(api, kubevirt, namespace), Storage(api, namespace)
        self.claim = f"data-{uuid.uuid4().hex[:6]}"
        self.fake: FakeGuest | None = None
        self.journal = Path("/nonexistent")

    def disk(self) -> dict[str, Any]:
        disks = self.parts.status("st-1").get("disks") or []
        return disks[0] if disks else {}

    def delivered(self) -> dict | None:
        change = self.parts.status("st-1").get("storageChange") or {}
        return change if change.get("delivered") else None

    def told(self) -> list[dict]:
        return json.loads(self.journal.read_text())["runs"] if self.journal.exists() else []

    def events(self, reason: str) -> list[str]:
        return [m for r, m in self.parts.events("st-1") if r == reason]

    def rescans(self) -> str:
        assert self.fake is not None
        return self.fake.rescans("sdb")


@pytest.mark.usefixtures("operator")
def test_a_resized_replaced_and_lost_claim_is_seen_and_the_agent_told(
    api_client: client.ApiClient,
    kubevirt: StandIn,
    namespace: str,
    guest_agent,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    scene = Scene(api_client, kubevirt, namespace)
    parts, claim = scene.parts, scene.claim
    first = scene.volumes.create(claim)
    ip, port = "127.0.0.24", free_port()
    parts.create(with_data_disk(partition_manifest("st-1", ip, port), claim))

    ready = parts.wait_condition("st-1", "StorageReady", "True", TIMEOUT)
    assert ready["disks"] == [
        {
            "name": "data",
            "serial": "data",
            "claimName": claim,
            "claimUid": first["metadata"]["uid"],
            "volumeName": first["spec"]["volumeName"],
            "capacityBytes": GI,
            "phase": "Bound",
        }
    ]
    assert "storageChange" not in ready  # first sight: nothing changed
    condition = parts.condition("st-1", "StorageReady")
    assert (condition["reason"], condition["message"]) == (
        "Bound",
        f"disk data: claim {claim}, 1Gi",
    )

    scene.fake = FakeGuest(tmp_path / "guest", disk_bytes=None)
    scene.fake.attach_data_disk("data", 64 * MIB, node="sdb", rescan=True)
    agent = guest_agent(namespace, "st-1", ip=ip, config=scene.fake.config())
    parts.wait_condition("st-1", "AgentConnected", "True", TIMEOUT)
    scene.journal = agent.process.state_dir / "storage.json"

    resized(scene)
    second = replaced(scene, first)
    lost(scene, second)


def resized(scene: Scene) -> None:
    """The expander and resizer grow the claim; the guest is told, the disk rescanned."""
    scene.volumes.resize(scene.claim, "2Gi")
    wait_for(lambda: scene.disk().get("capacityBytes") == 2 * GI, "2Gi recorded", TIMEOUT)
    change = wait_for(scene.delivered, "the resize delivered", TIMEOUT)
    assert change["disks"] == [{"serial": "data", "name": "data", "change": "Resized"}]
    assert change["message"] == "rescanned data"
    assert [run["id"] for run in scene.told()] == [change["id"]]
    assert scene.rescans() == "1"
    assert scene.parts.condition("st-1", "StorageReady")["status"] == "True"
    assert scene.events("BackingStorageResized") == [
        f"disk data: claim {scene.claim} holds 2Gi (was 1Gi)"
    ]
    reported = wait_for(
        lambda: (scene.parts.status("st-1").get("agent") or {}).get("storage"), "reported"
    )
    assert reported["id"] == change["id"] and reported["disks"][0]["rescanned"] is True


def replaced(scene: Scene, first: dict) -> dict:
    """The claim deleted and made again under its name: a new uid, a new volume."""
    assert scene.fake is not None
    (scene.fake.files.block("sdb") / "device/rescan").write_text("")
    scene.volumes.delete(scene.claim)
    second = scene.volumes.create(scene.claim)
    wait_for(
        lambda: scene.disk().get("claimUid") == second["metadata"]["uid"],
        "the new claim recorded",
        TIMEOUT,
    )
    scene.parts.wait_condition("st-1", "StorageReady", "True", TIMEOUT)
    events = wait_for(lambda: scene.events("BackingStorageReplaced"), "a Replaced event", TIMEOUT)
    backed = (
        f"disk data: claim {scene.claim} is now backed by volume {second['spec']['volumeName']}"
    )
    # the operator saw the claim gone (Lost) before it came back, or not: then it names the old
    assert events in ([backed], [f"{backed} (was {first['spec']['volumeName']})"])
    assert scene.disk()["volumeName"] == second["spec"]["volumeName"]
    change = wait_for(scene.delivered, "the replacement delivered", TIMEOUT)
    assert {"serial": "data", "name": "data", "change": "Replaced"} in change["disks"]
    assert scene.told()[-1]["id"] == change["id"] and scene.rescans() == "1"
    return second


def lost(scene: Scene, second: dict) -> None:
    """The claim's volume deleted: it stays Terminating while bound, no longer a backing."""
    volume = second["spec"]["volumeName"]
    client.CoreV1Api(scene.api).delete_persistent_volume(volume)
    status = scene.parts.wait_condition("st-1", "StorageReady", "False", TIMEOUT)
    condition = scene.parts.condition("st-1", "StorageReady")
    assert condition["reason"] == "BackingLost"
    assert condition["message"] == f"disk data: claim {scene.claim} lost its volume {volume}"
    assert status["disks"][0]["phase"] == "Lost"
    warnings = wait_for(lambda: scene.events("BackingStorageLost"), "a Lost event", TIMEOUT)
    assert condition["message"] in warnings
    change = wait_for(scene.delivered, "the loss delivered", TIMEOUT)
    assert change["disks"] == [{"serial": "data", "name": "data", "change": "Lost"}]
    run = scene.told()[-1]
    assert run["id"] == change["id"]
    assert (run["disks"][0]["rescanned"], run["disks"][0]["message"]) == (
        False,
        "its backing storage is lost: not rescanned",
    )
