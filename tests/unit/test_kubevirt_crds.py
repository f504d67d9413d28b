"""The stand-in's KubeVirt CRDs: names, versions, columns and structural schemas."""

from __future__ import annotations

from typing import Any

import pytest

from lparkube_devenv.kubevirt import crds, schema


def by_name() -> dict[str, dict]:
    return {crd["metadata"]["name"]: crd for crd in crds.all_crds()}


def walk(node: Any, path: str = ""):
    """Every schema node with its path."""
    if isinstance(node, dict):
        yield path, node
        for key, child in (node.get("properties") or {}).items():
            yield from walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_names_short_names_and_scope() -> None:
    expected = {
        "virtualmachines.kubevirt.io": ["vm", "vms"],
        "virtualmachineinstances.kubevirt.io": ["vmi", "vmis"],
        "virtualmachineinstancemigrations.kubevirt.io": ["vmim", "vmims"],
        "virtualmachinesnapshots.snapshot.kubevirt.io": ["vmsnapshot", "vmsnapshots"],
        "virtualmachinesnapshotcontents.snapshot.kubevirt.io": [
            "vmsnapshotcontent",
            "vmsnapshotcontents",
        ],
        "virtualmachinerestores.snapshot.kubevirt.io": ["vmrestore", "vmrestores"],
    }
    found = by_name()
    assert set(found) == set(expected)
    for name, shorts in expected.items():
        spec = found[name]["spec"]
        assert spec["names"]["shortNames"] == shorts
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["categories"] == ["all"]


def test_versions_match_kubevirt() -> None:
    found = by_name()
    vm_versions = found["virtualmachines.kubevirt.io"]["spec"]["versions"]
    assert [(v["name"], v["storage"]) for v in vm_versions] == [("v1", True)]
    snapshot = found["virtualmachinesnapshots.snapshot.kubevirt.io"]["spec"]
    assert [(v["name"], v["storage"]) for v in snapshot["versions"]] == [
        ("v1alpha1", False),
        ("v1beta1", True),
    ]
    assert snapshot["conversion"] == {"strategy": "None"}


def test_status_subresource_like_kubevirt() -> None:
    """KubeVirt's VMI CRD has no status subresource; VM, migration and snapshot kinds do."""
    for name, crd in by_name().items():
        has_status = all("status" in v.get("subresources", {}) for v in crd["spec"]["versions"])
        assert has_status is (name != "virtualmachineinstances.kubevirt.io"), name


def columns(name: str) -> list[str]:
    version = by_name()[name]["spec"]["versions"][0]
    return [c["name"] for c in version["additionalPrinterColumns"]]


def test_printer_columns() -> None:
    assert columns("virtualmachines.kubevirt.io") == ["Age", "Status", "Ready"]
    assert columns("virtualmachineinstances.kubevirt.io")[:5] == [
        "Age",
        "Phase",
        "IP",
        "NodeName",
        "Ready",
    ]
    assert columns("virtualmachineinstancemigrations.kubevirt.io") == ["Phase", "VMI"]
    assert "ReadyToUse" in columns("virtualmachinesnapshots.snapshot.kubevirt.io")
    assert "Complete" in columns("virtualmachinerestores.snapshot.kubevirt.io")


@pytest.mark.parametrize("crd", crds.all_crds(), ids=lambda c: c["metadata"]["name"])
def test_schemas_are_structural(crd: dict) -> None:
    """Every node has a type (or is int-or-string); objects declare what they hold."""
    for version in crd["spec"]["versions"]:
        for path, node in walk(version["schema"]["openAPIV3Schema"]):
            if node.get("x-kubernetes-int-or-string"):
                continue
            assert "type" in node, f"{path} has no type"
            if node["type"] == "array":
                assert isinstance(node.get("items"), dict), path
            required = node.get("required") or []
            assert set(required) <= set(node.get("properties") or {}), path


def test_operator_facing_fields_exist() -> None:
    vm = schema.vm()
    spec = vm["properties"]["spec"]
    assert spec["properties"]["runStrategy"]["enum"] == list(schema.RUN_STRATEGIES)
    template = spec["properties"]["template"]["properties"]
    assert template["metadata"]["x-kubernetes-preserve-unknown-fields"] is True
    vmi_spec = template["spec"]["properties"]
    assert vmi_spec["evictionStrategy"]["enum"] == [
        "None",
        "LiveMigrate",
        "LiveMigrateIfPossible",
        "External",
    ]
    volume = vmi_spec["volumes"]["items"]["properties"]
    for source in (
        "containerDisk",
        "persistentVolumeClaim",
        "dataVolume",
        "cloudInitNoCloud",
        "cloudInitConfigDrive",
        "secret",
        "serviceAccount",
    ):
        assert source in volume
    network = vmi_spec["networks"]["items"]["properties"]
    assert {"pod", "multus"} <= set(network)
    devices = vmi_spec["domain"]["properties"]["devices"]["properties"]
    assert {"disks", "interfaces"} <= set(devices)
    status = schema.vmi()["properties"]["status"]["properties"]
    for field in (
        "phase",
        "nodeName",
        "interfaces",
        "conditions",
        "evacuationNodeName",
        "guestOSInfo",
        "migrationState",
        "launcherContainerImageVersion",
        "fsFreezeStatus",
    ):
        assert field in status
    interface = status["interfaces"]["items"]["properties"]
    assert {"ipAddress", "ipAddresses", "name", "interfaceName", "mac"} <= set(interface)
    vm_status = vm["properties"]["status"]["properties"]
    for field in (
        "printableStatus",
        "ready",
        "created",
        "conditions",
        "volumeSnapshotStatuses",
        "memoryDumpRequest",
        "stateChangeRequests",
    ):
        assert field in vm_status
    rules = spec["x-kubernetes-validations"]
    assert "runStrategy" in rules[0]["rule"]
