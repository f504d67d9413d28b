"""RemoteRestart validation: the policy chain, every target check, and the pick by score."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lparkube.api.v1alpha1 import remoterestart as api
from lparkube.domain import hibernation as h
from lparkube.domain import remote_restart as rr

GiB = 2**30


def node(name: str, memory: str = "8Gi", cpu: str = "4", **extra: Any) -> dict:
    labels = {"kubernetes.io/hostname": name, "lparkube.io/vios": "true", **extra.get("labels", {})}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": extra.get("taints", []), "unschedulable": extra.get("cordoned", False)},
        "status": {
            "conditions": [{"type": "Ready", "status": "False" if extra.get("down") else "True"}],
            "allocatable": {"memory": memory, "cpu": cpu},
        },
    }


def vm(**template: Any) -> dict:
    spec = {
        "domain": {
            "memory": {"guest": "1Gi"},
            "cpu": {"cores": 2},
            "devices": {
                "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                "interfaces": [
                    {"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}
                ],
            },
        },
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "root"}}],
        **template,
    }
    return {"metadata": {"name": "web", "namespace": "t"}, "spec": {"template": {"spec": spec}}}


def restart(name: str = "web-restart", created: str = "2026-12-01T12:00:00Z", **spec: Any) -> dict:
    meta = {"name": name, "namespace": "t", "uid": f"uid-{name}", "creationTimestamp": created}
    return {"metadata": meta, "spec": {"partitionName": "web", **spec}}


CLAIM = {
    "metadata": {"name": "root"},
    "spec": {"volumeName": "pv-root"},
    "status": {"phase": "Bound"},
}
POOL = {
    "metadata": {"name": "pool"},
    "spec": {"nodeSelector": {"matchLabels": {"lparkube.io/vios": "true"}}},
}


def base(**fields: Any) -> rr.Input:
    values: dict[str, Any] = {
        "restart": restart(),
        "partition": {"metadata": {"name": "web"}, "status": {"vmName": "web", "nodeName": "a"}},
        "vm": vm(),
        "vmi": {"status": {"phase": "Failed", "nodeName": "a"}},
        "nodes": [node("a", down=True), node("b"), node("c", memory="16Gi")],
        "pool": POOL,
        "claims": {"root": CLAIM},
        "volumes": {"pv-root": {"spec": {}}},
    }
    values.update(fields)
    return rr.Input(**values)


def captured_image(partition: str = "web", vm_: dict | None = None) -> dict:
    the_vm = vm_ or vm()
    return {
        "metadata": {"name": "img"},
        "spec": {"partitionName": partition},
        "status": {
            "conditions": [{"type": "Captured", "status": "True"}],
            "adapters": h.capture_adapters(the_vm, None),
            "machine": h.capture_machine(the_vm),
            "sourceNodeName": "a",
            "bootId": "b1",
        },
    }


def named(target: str, **fields: Any) -> rr.Input:
    return base(restart=restart(targetNodeName=target), **fields)


def with_vm(target: str = "b", **template: Any) -> rr.Input:
    return named(target, vm=vm(**template))


PLAIN_IMAGE_VM = vm()
CHANGED_VM = vm()
CHANGED_VM["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = "2Gi"
TOLERATED = [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]
AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [
        {"key": "zone", "operator": "In", "values": ["z2"]}]}]}}}  # fmt: skip
PV_ELSEWHERE = {"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]}]}}}}  # fmt: skip
OLDER = restart("older", "2026-12-01T11:00:00Z")
NEWER = restart("newer", "2026-12-01T13:00:00Z")
DONE_OLDER = {**OLDER, "status": {"terminationState": api.RESTART_FAILED}}

# case -> (input, expected reason, words of the message)
CASES: dict[str, tuple[rr.Input, str, str]] = {
    "partition missing": (base(partition=None), api.PARTITION_NOT_FOUND, 'Partition "web"'),
    "vm missing": (base(vm=None), api.VM_NOT_FOUND, "web"),
    "older restart running": (base(others=[OLDER]), api.ANOTHER_RESTART_IN_PROGRESS, "older"),
    "image missing": (
        base(restart=restart(hibernationImageName="img")), api.IMAGE_NOT_FOUND, "img",
    ),
    "image of another partition": (
        base(restart=restart(hibernationImageName="img"), image=captured_image("db")),
        api.IMAGE_OF_ANOTHER_PARTITION, '"db"',
    ),
    "image not captured": (
        base(restart=restart(hibernationImageName="img"),
             image={**captured_image(), "status": {"conditions": []}}),
        api.IMAGE_NOT_CAPTURED, "img",
    ),
    "image adapters do not fit": (
        base(restart=restart(hibernationImageName="img"), image=captured_image(), vm=CHANGED_VM),
        api.IMAGE_ADAPTERS_DO_NOT_FIT, "memory changed",
    ),
    "network missing": (
        base(vm=vm(networks=[{"name": "default", "multus": {"networkName": "vlan-7"}}])),
        api.NETWORK_NOT_FOUND, "t/vlan-7",
    ),
    "target not found": (named("z"), api.TARGET_NOT_FOUND, "node z"),
    "target is source": (named("a"), api.TARGET_IS_SOURCE, "node a"),
    "target not ready": (
        named("b", nodes=[node("a"), node("b", down=True)]), api.TARGET_NOT_READY, "not Ready",
    ),
    "target cordoned": (
        named("b", nodes=[node("a"), node("b", cordoned=True)]), api.TARGET_NOT_READY, "cordoned",
    ),
    "target not a vios node": (
        named("b", nodes=[node("a"), {**node("b"), "metadata": {"name": "b", "labels": {}}}]),
        api.TARGET_NOT_VIOS_NODE, "VIOSCluster pool",
    ),
    "vm node selector": (
        with_vm(nodeSelector={"disk": "ssd"}), api.NODE_SELECTOR_MISMATCH, "disk=ssd",
    ),
    "vm affinity": (with_vm(affinity=AFFINITY), api.AFFINITY_MISMATCH, "node b"),
    "taint not tolerated": (
        named("b", nodes=[node("a"), node("b", taints=[{"key": "gpu", "effect": "NoSchedule"}])]),
        api.TAINT_NOT_TOLERATED, "gpu:NoSchedule",
    ),
    "target selector": (
        base(restart=restart(targetNodeSelector={"rack": "r9"})),
        api.NO_TARGET_NODE, "TargetSelectorMismatch",
    ),
    "too little memory": (
        named("b", nodes=[node("a"), node("b", memory="512Mi")]),
        api.INSUFFICIENT_MEMORY, "the VM needs 1073741824",
    ),
    "too little cpu": (
        named("b", nodes=[node("a"), node("b", cpu="100m")]), api.INSUFFICIENT_CPU, "needs 200m",
    ),
    "claim missing": (named("b", claims={}), api.CLAIM_NOT_REACHABLE, "root is not found"),
    "claim pending": (
        named("b", claims={"root": {**CLAIM, "status": {"phase": "Pending"}}}),
        api.CLAIM_NOT_REACHABLE, "not Bound",
    ),
    "volume pinned elsewhere": (
        named("b", volumes={"pv-root": PV_ELSEWHERE}), api.CLAIM_NOT_REACHABLE, "nodeAffinity",
    ),
    "no node fits": (
        base(nodes=[node("a", down=True), node("b", down=True)]),
        api.NO_TARGET_NODE, "node b is not Ready (TargetNotReady)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_validation_failure_names_its_cause(case: str) -> None:
    inp, reason, words = CASES[case]
    target = rr.validate(inp)
    assert target.name == ""
    assert target.refusal is not None
    assert (target.refusal.reason, words in target.refusal.message) == (reason, True), (
        target.refusal
    )


PASSING: dict[str, tuple[rr.Input, str]] = {
    "picks most memory": (base(), "c"),
    "memory ties: most cpu": (base(nodes=[node("a"), node("b", cpu="8"), node("c", cpu="2")]), "b"),
    "full ties: name": (base(nodes=[node("a"), node("c"), node("b")]), "b"),
    "used memory counts": (
        base(pods=[{"spec": {"nodeName": "c", "containers": [
            {"resources": {"requests": {"memory": "12Gi"}}}]}, "status": {"phase": "Running"}}]),
        "b",
    ),
    "finished pods do not count": (
        base(pods=[{"spec": {"nodeName": "c", "containers": [
            {"resources": {"requests": {"memory": "12Gi"}}}]}, "status": {"phase": "Succeeded"}}]),
        "c",
    ),
    "named target": (named("b"), "b"),
    "tolerated taint": (
        named("b", vm=vm(tolerations=TOLERATED),
              nodes=[node("a"), node("b", taints=[{**TOLERATED[0], "operator": None}])]),
        "b",
    ),
    "affinity satisfied": (
        named("b", vm=vm(affinity=AFFINITY), nodes=[node("a"), node("b", labels={"zone": "z2"})]),
        "b",
    ),
    "target selector": (
        base(restart=restart(targetNodeSelector={"rack": "r1"}),
             nodes=[node("a"), node("b", labels={"rack": "r1"}), node("c")]),
        "b",
    ),
    "a newer restart does not block": (base(others=[NEWER]), "c"),
    "a finished older restart does not block": (base(others=[DONE_OLDER]), "c"),
    "hibernated: source from the image": (
        base(restart=restart(hibernationImageName="img"), image=captured_image(), vmi=None,
             partition={"metadata": {"name": "web"}, "status": {}}),
        "c",
    ),
    "no pool: any node": (
        base(pool=None, nodes=[node("a"), {**node("b"), "metadata": {"name": "b"}}]), "b",
    ),
    "volume pinned to the target": (base(volumes={"pv-root": PV_ELSEWHERE}), "c"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(PASSING))
def test_the_target_is_the_best_node_that_passes_every_check(case: str) -> None:
    inp, expected = PASSING[case]
    assert rr.validate(inp) == rr.Target(expected)


def test_the_source_is_never_picked_even_when_it_scores_best() -> None:
    inp = base(
        nodes=[node("a", memory="64Gi"), node("b")],
        vmi={"status": {"phase": "Running", "nodeName": "a"}},
    )
    assert rr.validate(inp).name == "b"


def test_cpu_request_wins_over_vcpus_and_memory_request_over_guest() -> None:
    template = copy.deepcopy(vm()["spec"]["template"]["spec"])
    template["domain"]["resources"] = {"requests": {"cpu": "1500m", "memory": "3Gi"}}
    assert rr.vm_needs(template) == (3 * GiB, 1500)
    assert rr.vm_needs(vm()["spec"]["template"]["spec"]) == (GiB, 200)


@pytest.mark.parametrize(
    ("text", "millis"), [("500m", 500), ("2", 2000), ("1.5", 1500), (3, 3000), ("x", None)]
)
def test_parse_millicpu(text: Any, millis: int | None) -> None:
    assert rr.parse_millicpu(text) == millis
