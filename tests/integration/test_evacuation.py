"""The drain trigger: KubeVirt evacuating a VMI with evictionStrategy External makes one
Migration SaveEvent for its Partition (unless the Partition opted out)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from partition_helpers import wait_for
from saving_helpers import Fleet, results, save_events, wait_complete

from lparkube_devenv.kubevirt.nodes import cordon

pytestmark = pytest.mark.usefixtures("operator", "healthy_nodes")

SELECTOR = "lparkube.io/evacuation-of"


def test_a_drain_saves_an_external_eviction_partition_once(
    fleet: Fleet, api_client: client.ApiClient, namespace: str, kubevirt: Any
) -> None:
    external = {"evictionStrategy": "External"}
    fleet.partition("evac", "node-c", [("doc", 10, 0.0)], template=external)
    fleet.partition("optout", "node-c", [("keep", 10, 0.0)], template=external)
    fleet.custom.patch_namespaced_custom_object(
        "lparkube.io", "v1alpha1", namespace, "partitions", "optout",
        {"spec": {"saveOnEvacuation": False}},
    )  # fmt: skip

    cordon(kubevirt.kube, "node-c")
    wait_for(
        lambda: (fleet.parts.vmi("evac") or {}).get("status", {}).get("evacuationNodeName"),
        "KubeVirt marks the VMI for evacuation",
    )
    (event,) = wait_for(lambda: save_events(api_client, namespace, f"{SELECTOR}=evac"), "event")
    assert event["spec"]["reason"] == "Migration"
    assert event["spec"]["targets"] == {"partitions": ["evac"]}
    assert event["spec"]["trigger"] == {"type": "Evacuation", "nodeName": "node-c"}
    saved = wait_complete(api_client, namespace, event["metadata"]["name"])
    assert results(saved, namespace)["evac"]["outcome"] == "Succeeded"
    assert [app for app, _ in fleet.written("evac")] == ["doc"]

    time.sleep(2.0)  # many more VMI events of the same evacuation: still one SaveEvent
    assert len(save_events(api_client, namespace)) == 1
    assert fleet.written("optout") == []
