"""KubeVirt's CustomResourceDefinitions, as virt-operator installs them (names, versions,
short names, printer columns, subresources), with the schemas from :mod:`.schema`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiException

from . import schema
from .api import CORE_GROUP, SNAPSHOT_GROUP, Kube

AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
PHASE = {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}
ERROR = {"name": "Error", "type": "string", "jsonPath": ".status.error.message"}
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def _ready_column(name: str = "Ready", priority: int = 0, cond: str = "Ready") -> dict:
    column = {
        "name": name,
        "type": "string",
        "jsonPath": f".status.conditions[?(@.type=='{cond}')].status",
    }
    return {**column, "priority": priority} if priority else column


def _version(name: str, schema_: dict, columns: list[dict], *, storage: bool, status: bool) -> dict:
    version: dict[str, Any] = {
        "name": name,
        "served": True,
        "storage": storage,
        "schema": {"openAPIV3Schema": schema_},
        "additionalPrinterColumns": columns,
    }
    if status:
        version["subresources"] = {"status": {}}
    return version


def _crd(
    group: str,
    kind: str,
    plural: str,
    short_names: list[str],
    versions: list[dict],
) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{group}",
            "labels": {"kubevirt.io": "", "app.kubernetes.io/managed-by": "lparkube-devenv"},
        },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["all"],
            },
            "versions": versions,
        },
    }


def _core(
    kind: str, plural: str, short: list[str], body: dict, cols: list, *, status: bool
) -> dict:
    """kubevirt.io/v1 only (KubeVirt also serves the deprecated v1alpha3 alias)."""
    version = _version("v1", body, cols, storage=True, status=status)
    return _crd(CORE_GROUP, kind, plural, short, [version])


def _snapshot_group(kind: str, plural: str, short: list[str], body: dict, cols: list) -> dict:
    """Served as v1beta1 (storage) and v1alpha1 with the same schema, as KubeVirt 1.4-1.6 do."""
    versions = [
        _version("v1alpha1", body, cols, storage=False, status=True),
        _version("v1beta1", body, cols, storage=True, status=True),
    ]
    crd = _crd(SNAPSHOT_GROUP, kind, plural, short, versions)
    crd["spec"]["conversion"] = {"strategy": "None"}
    return crd


def virtual_machine() -> dict:
    columns = [
        AGE,
        {
            "name": "Status",
            "type": "string",
            "description": "Human Readable Status",
            "jsonPath": ".status.printableStatus",
        },
        _ready_column(),
    ]
    return _core(
        "VirtualMachine", "virtualmachines", ["vm", "vms"], schema.vm(), columns, status=True
    )


def virtual_machine_instance() -> dict:
    """No status subresource: virt-handler and virt-controller update VMIs as a whole."""
    columns = [
        AGE,
        PHASE,
        {"name": "IP", "type": "string", "jsonPath": ".status.interfaces[0].ipAddress"},
        {"name": "NodeName", "type": "string", "jsonPath": ".status.nodeName"},
        _ready_column(),
        _ready_column("Live-Migratable", 1, "LiveMigratable"),
        _ready_column("Paused", 1, "Paused"),
    ]
    return _core(
        "VirtualMachineInstance",
        "virtualmachineinstances",
        ["vmi", "vmis"],
        schema.vmi(),
        columns,
        status=False,
    )


def virtual_machine_instance_migration() -> dict:
    columns = [
        {**PHASE, "description": "The current phase of VM instance migration"},
        {"name": "VMI", "type": "string", "jsonPath": ".spec.vmiName"},
    ]
    return _core(
        "VirtualMachineInstanceMigration",
        "virtualmachineinstancemigrations",
        ["vmim", "vmims"],
        schema.vmim(),
        columns,
        status=True,
    )


def virtual_machine_snapshot() -> dict:
    columns = [
        {"name": "SourceKind", "type": "string", "jsonPath": ".spec.source.kind"},
        {"name": "SourceName", "type": "string", "jsonPath": ".spec.source.name"},
        PHASE,
        {"name": "ReadyToUse", "type": "boolean", "jsonPath": ".status.readyToUse"},
        {"name": "CreationTime", "type": "date", "jsonPath": ".status.creationTime"},
        ERROR,
    ]
    return _snapshot_group(
        "VirtualMachineSnapshot",
        "virtualmachinesnapshots",
        ["vmsnapshot", "vmsnapshots"],
        schema.snapshot(),
        columns,
    )


def virtual_machine_snapshot_content() -> dict:
    columns = [
        {"name": "ReadyToUse", "type": "boolean", "jsonPath": ".status.readyToUse"},
        {"name": "CreationTime", "type": "date", "jsonPath": ".status.creationTime"},
        ERROR,
    ]
    return _snapshot_group(
        "VirtualMachineSnapshotContent",
        "virtualmachinesnapshotcontents",
        ["vmsnapshotcontent", "vmsnapshotcontents"],
        schema.snapshot_content(),
        columns,
    )


def virtual_machine_restore() -> dict:
    columns = [
        {"name": "TargetKind", "type": "string", "jsonPath": ".spec.target.kind"},
        {"name": "TargetName", "type": "string", "jsonPath": ".spec.target.name"},
        {"name": "Complete", "type": "boolean", "jsonPath": ".status.complete"},
        {"name": "RestoreTime", "type": "date", "jsonPath": ".status.restoreTime"},
        ERROR,
    ]
    return _snapshot_group(
        "VirtualMachineRestore",
        "virtualmachinerestores",
        ["vmrestore", "vmrestores"],
        schema.restore(),
        columns,
    )


BUILDERS: tuple[Callable[[], dict], ...] = (
    virtual_machine,
    virtual_machine_instance,
    virtual_machine_instance_migration,
    virtual_machine_snapshot,
    virtual_machine_snapshot_content,
    virtual_machine_restore,
)


def all_crds() -> list[dict]:
    """Every CRD the stand-in installs."""
    return [build() for build in BUILDERS]


def apply_crd(kube: Kube, crd: dict) -> None:
    """Create the CRD, or replace an existing one with this definition."""
    name = crd["metadata"]["name"]
    try:
        kube.create(CRD_PATH, crd)
    except ApiException as error:
        if error.status != 409:
            raise
        current = kube.request("GET", f"{CRD_PATH}/{name}")
        version = current["metadata"]["resourceVersion"]
        body = {**crd, "metadata": {**crd["metadata"], "resourceVersion": version}}
        kube.request("PUT", f"{CRD_PATH}/{name}", body)


def established(kube: Kube, name: str) -> bool:
    crd = kube.get(f"{CRD_PATH}/{name}") or {}
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def install(kube: Kube, timeout: float = 60.0) -> list[str]:
    """Install all KubeVirt CRDs and wait until the API server serves them."""
    crds = all_crds()
    for crd in crds:
        apply_crd(kube, crd)
    names = [crd["metadata"]["name"] for crd in crds]
    deadline = time.monotonic() + timeout
    for name in names:
        while not established(kube, name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout}s")
            time.sleep(0.1)
    return names
