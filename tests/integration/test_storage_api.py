"""The real API server validates VIOSCluster, HibernationImage and Partition.spec.paging."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

POOL = {
    "apiVersion": "lparkube.io/v1alpha1",
    "kind": "VIOSCluster",
    "metadata": {"name": "api-pool"},
    "spec": {"storage": {"storageClassName": "lparkube-thin"}},
}
IMAGE = {
    "apiVersion": "lparkube.io/v1alpha1",
    "kind": "HibernationImage",
    "metadata": {"name": "h"},
    "spec": {"partitionName": "p"},
}
PARTITION = {
    "apiVersion": "lparkube.io/v1alpha1",
    "kind": "Partition",
    "metadata": {"name": "p"},
    "spec": {"vmName": "vm-1"},
}


def variant(base: dict[str, Any], **spec: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in spec.items():
        if value is None:
            out["spec"].pop(key, None)
        else:
            out["spec"][key] = value
    return out


INVALID_CREATES = {
    "pool-no-storage": (variant(POOL, storage=None), "spec.storage"),
    "pool-no-storage-class": (variant(POOL, storage={"volumeMode": "Block"}), "storageClassName"),
    "pool-volume-mode": (
        variant(POOL, storage={"storageClassName": "x", "volumeMode": "Tape"}),
        "spec.storage.volumeMode",
    ),
    "pool-access-mode": (
        variant(POOL, storage={"storageClassName": "x", "accessModes": ["Shared"]}),
        "spec.storage.accessModes[0]",
    ),
    "pool-max-below-initial": (
        variant(POOL, thin={"initialSize": "2Gi", "maxSize": "1Gi"}),
        "spec.thin.maxSize",
    ),
    "pool-size-not-quantity": (variant(POOL, thin={"initialSize": "big"}), "spec.thin.initialSize"),
    "pool-negative-size": (variant(POOL, thin={"maxSize": "-1Gi"}), "spec.thin.maxSize"),
    "pool-lock-timeout": (variant(POOL, lockTimeout="soon"), "spec.lockTimeout"),
    "image-no-partition": (variant(IMAGE, partitionName=None), "spec.partitionName"),
    "image-deadline": (variant(IMAGE, deadline="ten minutes"), "spec.deadline"),
    "partition-paging-without-pool": (
        variant(PARTITION, paging={"size": "1Gi"}),
        "spec.viosClusterName",
    ),
    "partition-paging-size": (
        variant(PARTITION, viosClusterName="pool", paging={"size": "lots"}),
        "spec.paging.size",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_CREATES))
def test_invalid_spec_is_rejected_naming_the_field(case: str, kubectl, namespace: str) -> None:
    manifest, field = INVALID_CREATES[case]
    where = [] if manifest["kind"] == "VIOSCluster" else ["-n", namespace]
    result = kubectl("create", *where, "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert "is invalid" in result.stderr, result.stderr
    assert field in result.stderr, result.stderr


INVALID_UPDATES = {
    "image-partition-changed": (IMAGE, {"spec": {"partitionName": "q"}}, "spec.partitionName"),
    "image-pool-set-later": (IMAGE, {"spec": {"viosClusterName": "pool"}}, "spec.viosClusterName"),
    "image-pool-changed": (
        variant(IMAGE, viosClusterName="pool"),
        {"spec": {"viosClusterName": "other"}},
        "spec.viosClusterName",
    ),
    "partition-paging-pool-removed": (
        variant(PARTITION, viosClusterName="pool", paging={}),
        {"spec": {"viosClusterName": None}},
        "spec.viosClusterName",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_UPDATES))
def test_immutable_fields_reject_updates(case: str, kubectl, namespace: str) -> None:
    manifest, patch, field = INVALID_UPDATES[case]
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))
    kind, name = manifest["kind"].lower(), manifest["metadata"]["name"]
    result = kubectl(
        "patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps(patch), check=False
    )
    assert result.returncode != 0, f"{case} was accepted"
    assert field in result.stderr, result.stderr


def test_defaults_are_applied(kubectl, namespace: str) -> None:
    kubectl("create", "-f", "-", input=yaml.safe_dump(POOL))
    try:
        pool = json.loads(kubectl("get", "vioscluster", "api-pool", "-o", "json").stdout)["spec"]
        assert pool["storage"] == {
            "storageClassName": "lparkube-thin",
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Block",
        }
        assert (pool["thin"], pool["reuse"], pool["lockTimeout"]) == (
            {"initialSize": "1Gi"},
            True,
            "5m",
        )
        listed = kubectl("get", "vios").stdout
        for header in ("READY", "NODES", "LUS", "FREE"):
            assert header in listed
    finally:
        kubectl("delete", "vioscluster", "api-pool")
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(IMAGE))
    image = json.loads(kubectl("get", "hib", "h", "-n", namespace, "-o", "json").stdout)["spec"]
    assert image == {
        "partitionName": "p",
        "saveFirst": True,
        "deadline": "10m",
        "retainAfterResume": False,
        "resume": False,
    }
    assert "PARTITION" in kubectl("get", "lparkube", "-n", namespace).stdout


def test_a_valid_pool_and_paging_partition_are_accepted(kubectl, namespace: str) -> None:
    pool = variant(POOL, thin={"initialSize": "512Mi", "maxSize": "512Mi"}, reuse=False)
    kubectl("create", "-f", "-", input=yaml.safe_dump(pool))
    kubectl("delete", "vioscluster", "api-pool")
    paging = variant(PARTITION, viosClusterName="pool", paging={"size": "1280Mi"})
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(paging))
    # resume is the one field that changes after creation
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(IMAGE))
    kubectl("patch", "hib", "h", "-n", namespace, "--type=merge", "-p", '{"spec":{"resume":true}}')
