"""The real API server accepts every example and rejects invalid specs, naming the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from kubernetes import client

from lparkube.domain import saving
from lparkube_devenv.controlplane import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"

PARTITION = {
    "apiVersion": "lparkube.io/v1alpha1",
    "kind": "Partition",
    "metadata": {"name": "p"},
    "spec": {"vmName": "vm-1"},
}
TEMPLATE = {"spec": {"runStrategy": "Always", "template": {"spec": {"domain": {}}}}}
SAVE_EVENT = {
    "apiVersion": "lparkube.io/v1alpha1",
    "kind": "SaveEvent",
    "metadata": {"name": "s"},
    "spec": {"reason": "Manual", "targets": {"all": True}},
}
RESTART = {
    "apiVersion": "lparkube.io/v1alpha1",
    "kind": "RemoteRestart",
    "metadata": {"name": "r"},
    "spec": {"partitionName": "p"},
}
PROFILE = {
    "apiVersion": "lparkube.io/v1alpha1",
    "kind": "ConditionProfile",
    "metadata": {"name": "invalid-profile"},
    "spec": {
        "rules": [{"name": "hot", "reason": "Thermal", "nodeCondition": {"type": "Hot"}}],
    },
}


def variant(base: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A copy of base with spec keys replaced (None removes a key)."""
    out = copy.deepcopy(base)
    for key, value in spec.items():
        if value is None:
            out["spec"].pop(key, None)
        else:
            out["spec"][key] = value
    return out


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "reason": "Thermal", **fields}


INVALID_CREATES = {
    "partition-no-vm-source": (
        variant(PARTITION, vmName=None),
        "exactly one of spec.vmTemplate or spec.vmName",
    ),
    "partition-two-vm-sources": (
        variant(PARTITION, vmTemplate=TEMPLATE),
        "exactly one of spec.vmTemplate or spec.vmName",
    ),
    "partition-vm-name-not-dns": (variant(PARTITION, vmName="My_VM"), "spec.vmName"),
    "partition-template-without-spec": (
        variant(PARTITION, vmName=None, vmTemplate={"metadata": {}}),
        "spec.vmTemplate.spec",
    ),
    "partition-agent-port-privileged": (
        variant(PARTITION, agent={"port": 80}),
        "spec.agent.port",
    ),
    "partition-key-delivery-unknown": (
        variant(PARTITION, agent={"keyDelivery": "Email"}),
        "spec.agent.keyDelivery",
    ),
    "partition-heartbeat-not-duration": (
        variant(PARTITION, agent={"heartbeatTimeout": "soon"}),
        "spec.agent.heartbeatTimeout",
    ),
    "partition-unknown-field": (variant(PARTITION, vmname="typo"), "spec.vmname"),
    "saveevent-unknown-reason": (variant(SAVE_EVENT, reason="Flood"), "spec.reason"),
    "saveevent-no-targets": (variant(SAVE_EVENT, targets=None), "spec.targets"),
    "saveevent-two-targets": (
        variant(SAVE_EVENT, targets={"partitions": ["a"], "nodeName": "node-a"}),
        "exactly one of targets.partitions",
    ),
    "saveevent-all-false": (
        variant(SAVE_EVENT, targets={"all": False}),
        "exactly one of targets.partitions",
    ),
    "saveevent-empty-selector": (
        variant(SAVE_EVENT, targets={"selector": {}}),
        "spec.targets.selector",
    ),
    "saveevent-in-without-values": (
        variant(
            SAVE_EVENT,
            targets={"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
        ),
        "spec.targets.selector.matchExpressions[0].values",
    ),
    "saveevent-deadline-too-long": (variant(SAVE_EVENT, deadline="48h"), "spec.deadline"),
    "saveevent-app-timeout-over-deadline": (
        variant(SAVE_EVENT, deadline="1m", applicationTimeout="2m"),
        "spec.applicationTimeout",
    ),
    "saveevent-snapshot-without-backup": (
        variant(SAVE_EVENT, snapshotAfterSave=True),
        "spec.snapshotAfterSave",
    ),
    "restart-no-partition": (variant(RESTART, partitionName=None), "spec.partitionName"),
    "restart-target-and-selector": (
        variant(RESTART, targetNodeName="b", targetNodeSelector={"rack": "r1"}),
        "set at most one of spec.targetNodeName and spec.targetNodeSelector",
    ),
    "restart-deadline-not-duration": (
        variant(RESTART, deadline="ten minutes"),
        "spec.deadline must be a Go duration",
    ),
    "restart-lock-timeout-not-duration": (
        variant(RESTART, lockTimeout="5 min"),
        "spec.lockTimeout must be a Go duration",
    ),
    "restart-stop-unknown": (variant(RESTART, stop="Now"), "spec.stop"),
    "profile-no-rules": (variant(PROFILE, rules=[]), "spec.rules"),
    "profile-two-triggers": (
        variant(PROFILE, rules=[rule(cordon=True, taint={"key": "k"})]),
        "spec.rules[0]",
    ),
    "profile-no-trigger": (variant(PROFILE, rules=[rule(cordon=False)]), "spec.rules[0]"),
    "profile-sensor-label-and-annotation": (
        variant(
            PROFILE,
            rules=[rule(sensor={"label": "t", "annotation": "t", "operator": "Equal", "value": 1})],
        ),
        "spec.rules[0].sensor",
    ),
    "profile-sensor-symbolic-operator": (
        variant(PROFILE, rules=[rule(sensor={"label": "t", "operator": ">=", "value": 95})]),
        "spec.rules[0].sensor.operator",
    ),
    "profile-prometheus-without-url": (
        variant(PROFILE, rules=[rule(prometheus={"query": "up == 0"})]),
        "spec.prometheus",
    ),
    "profile-duplicate-rule-names": (
        variant(PROFILE, rules=[rule(cordon=True), rule(taint={"key": "k"})]),
        "spec.rules[1]",
    ),
    "profile-rule-name-uppercase": (
        variant(PROFILE, rules=[{**rule(cordon=True), "name": "Hot"}]),
        "spec.rules[0].name",
    ),
    "profile-manual-reason": (
        variant(PROFILE, rules=[rule(cordon=True, reason="Manual")]),
        "spec.rules[0].reason",
    ),
    "profile-cooldown-not-duration": (
        variant(PROFILE, rules=[rule(cordon=True, cooldown="ten minutes")]),
        "spec.rules[0].cooldown",
    ),
}


def as_yaml(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj)


@pytest.mark.parametrize("case", sorted(INVALID_CREATES))
def test_invalid_spec_is_rejected_naming_the_field(case: str, kubectl, namespace: str) -> None:
    manifest, field = INVALID_CREATES[case]
    result = kubectl("create", "-n", namespace, "-f", "-", input=as_yaml(manifest), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert "is invalid" in result.stderr or "unknown field" in result.stderr, result.stderr
    assert field in result.stderr, result.stderr
    listed = kubectl("get", "partitions,saveevents,remoterestarts", "-n", namespace, "-o", "name")
    assert listed.stdout.strip() == ""
    profiles = kubectl("get", "conditionprofiles", "-o", "name")
    assert "invalid-profile" not in profiles.stdout


INVALID_UPDATES = {
    "partition-vm-name-changed": (PARTITION, {"spec": {"vmName": "vm-2"}}, "spec.vmName"),
    "partition-switch-to-template": (
        PARTITION,
        {"spec": {"vmName": None, "vmTemplate": TEMPLATE}},
        "cannot switch between vmTemplate and vmName",
    ),
    "partition-vm-name-removed": (PARTITION, {"spec": {"vmName": None}}, "spec.vmName"),
    "partition-switch-to-adoption": (
        variant(PARTITION, vmName=None, vmTemplate=TEMPLATE),
        {"spec": {"vmName": "vm-1", "vmTemplate": None}},
        "cannot switch between vmTemplate and vmName",
    ),
    "partition-key-secret-changed": (
        variant(PARTITION, agent={"keySecretName": "k1"}),
        {"spec": {"agent": {"keySecretName": "k2"}}},
        "spec.agent.keySecretName is immutable",
    ),
    "partition-key-secret-set-later": (
        variant(PARTITION, agent={"port": 9000}),
        {"spec": {"agent": {"keySecretName": "k2"}}},
        "spec.agent.keySecretName is immutable",
    ),
    "partition-key-secret-set-with-agent": (
        PARTITION,
        {"spec": {"agent": {"keySecretName": "p-agent-key"}}},
        "spec.agent.keySecretName is immutable",
    ),
    "partition-key-secret-removed": (
        variant(PARTITION, agent={"keySecretName": "k1"}),
        {"spec": {"agent": {"keySecretName": None}}},
        "spec.agent.keySecretName is immutable",
    ),
    "restart-partition-changed": (
        RESTART,
        {"spec": {"partitionName": "q"}},
        "spec.partitionName is immutable",
    ),
    "restart-image-set-later": (
        RESTART,
        {"spec": {"hibernationImageName": "img"}},
        "spec.hibernationImageName is immutable",
    ),
    "restart-image-changed": (
        variant(RESTART, hibernationImageName="img"),
        {"spec": {"hibernationImageName": "img-2"}},
        "spec.hibernationImageName is immutable",
    ),
    "saveevent-spec-changed": (
        SAVE_EVENT,
        {"spec": {"deadline": "1m"}},
        "spec is immutable",
    ),
    "saveevent-field-set-later": (
        SAVE_EVENT,
        {"spec": {"message": "now with a message"}},
        "spec is immutable",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_UPDATES))
def test_immutable_fields_reject_updates(case: str, kubectl, namespace: str) -> None:
    manifest, patch, field = INVALID_UPDATES[case]
    kubectl("create", "-n", namespace, "-f", "-", input=as_yaml(manifest))
    kind = manifest["kind"].lower()
    name = manifest["metadata"]["name"]
    before = kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    result = kubectl(
        "patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps(patch), check=False
    )
    assert result.returncode != 0, f"{case} was accepted"
    assert field in result.stderr, result.stderr
    after = kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    assert json.loads(after)["spec"] == json.loads(before)["spec"]


@pytest.mark.parametrize("agent", [{}, {"keySecretName": "k1"}], ids=["default key", "own key"])
def test_mutable_agent_fields_still_change(agent: dict, kubectl, namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=as_yaml(variant(PARTITION, agent=agent)))
    patch = {"spec": {"agent": {"port": 9000, "heartbeatTimeout": "2m"}}}
    kubectl("patch", "partition", "p", "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    spec = json.loads(kubectl("get", "partition", "p", "-n", namespace, "-o", "json").stdout)
    assert spec["spec"]["agent"] == {
        **agent,
        **patch["spec"]["agent"],
        "keyDelivery": "SecretVolume",
    }


def test_examples_are_accepted_and_listed_with_columns(kubectl, kubevirt, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    try:
        table = kubectl("get", "partitions,saveevents", "-n", namespace).stdout
        assert "partition.lparkube.io/web-1" in table
        assert "partition.lparkube.io/db-1" in table
        assert "saveevent.lparkube.io/nightly-backup-db-1" in table
        for header in ("VM", "READY", "AGENT", "NODE", "APPS", "REASON", "PARTITIONS", "SAVED"):
            assert header in table
        profiles = kubectl("get", "conditionprofiles").stdout
        assert "datacenter" in profiles
        assert "LAST FIRED" in profiles
        wide = kubectl("get", "partitions", "-n", namespace, "-o", "wide").stdout
        assert "KERNEL" in wide
    finally:
        kubectl("delete", "conditionprofile", "datacenter", "--ignore-not-found")
        kubectl("delete", "vioscluster", "thin", "--ignore-not-found", "--wait=false")


def test_defaults_are_applied_by_the_api_server(kubectl, namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=as_yaml(SAVE_EVENT))
    stored = json.loads(kubectl("get", "saveevent", "s", "-n", namespace, "-o", "json").stdout)
    spec = stored["spec"]
    assert (spec["deadline"], spec["applicationTimeout"]) == ("5m", "30s")
    assert (spec["podSaveHooks"], spec["snapshotAfterSave"]) == (True, False)


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("partition.spec.vmName", "existing VirtualMachine in this namespace to adopt"),
        ("partition.spec.agent.keyDelivery", "How the key reaches the guest"),
        ("partition.status.agent.vmcoreinfo", "VMCOREINFO"),
        ("saveevent.spec.targets", "Set exactly one of partitions"),
        ("saveevent.status.partitions.applications.order", "priority group"),
        ("conditionprofile.spec.rules.sensor.value", "threshold"),
        ("conditionprofile.spec.rules.cooldown", "does not fire for it again"),
    ],
)
def test_kubectl_explain_documents_fields(kubectl, field: str, text: str) -> None:
    out = kubectl("explain", field).stdout
    assert text in " ".join(out.split())


def test_the_largest_save_event_status_fits_the_object_limit(api_client, namespace: str) -> None:
    """MAX_TARGETS partitions, each with 128 failed applications and the longest messages,
    fitted by the operator's budget, are stored by the real API server and etcd (1.5 MiB)."""
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(
        "lparkube.io", "v1alpha1", namespace, "saveevents", copy.deepcopy(SAVE_EVENT)
    )
    apps = [
        {"name": f"application-{i:03}", "pid": 100000 + i, "priority": i, "order": i + 1,
         "method": "UnixSocket", "outcome": "Failed", "durationMillis": 30000,
         "message": "e" * saving.MAX_MESSAGE}
        for i in range(saving.MAX_APPLICATIONS)
    ]  # fmt: skip
    budget = saving.entry_budget(saving.MAX_TARGETS)
    entries = [
        saving.fit_entry(
            {"namespace": namespace, "name": f"partition-name-of-a-typical-length-{i:05}",
             "nodeName": f"worker-node-in-rack-{i % 40:03}.example.internal",
             "outcome": "Failed", "instructedTime": "2026-11-21T10:00:00Z",
             "completionTime": "2026-11-21T10:00:30Z", "message": "m" * saving.MAX_MESSAGE,
             "applications": apps},
            budget,
        )
        for i in range(saving.MAX_TARGETS)
    ]  # fmt: skip
    status = {"partitions": entries, "summary": saving.summary(entries)}
    stored = custom.patch_namespaced_custom_object_status(
        "lparkube.io", "v1alpha1", namespace, "saveevents", "s", {"status": status}
    )
    assert len(stored["status"]["partitions"]) == saving.MAX_TARGETS
    assert stored["status"]["summary"]["applicationsFailed"] == saving.MAX_TARGETS * 128
    size = len(json.dumps(stored, separators=(",", ":")))
    fields = len(json.dumps(stored["metadata"]["managedFields"], separators=(",", ":")))
    print(f"stored SaveEvent: {size} bytes, managedFields {fields}")
    assert size < 1_350_000, "too close to etcd's 1.5 MiB request limit"
