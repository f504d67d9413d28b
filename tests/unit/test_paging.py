"""A Partition's paging LU as pure decisions: its size, its refusals in order, the disk on the
VM, status.paging and the VM made from the template with the disk."""

from __future__ import annotations

import pytest

from lparkube.api.v1alpha1 import partition as api
from lparkube.domain import paging
from lparkube.domain import partition as domain
from lparkube.domain.logical_units import PAGING, TOO_LARGE

GI = 1 << 30
MI = 1 << 20
READY_POOL = {
    "metadata": {"name": "thin"},
    "spec": {"thin": {"initialSize": "512Mi", "maxSize": "4Gi"}, "lockTimeout": "3s"},
    "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "PoolReady",
                               "message": "ok"}]},
}  # fmt: skip


def vm_spec(memory: str | None = "1Gi", **domain_fields) -> dict:
    dom: dict = dict(domain_fields)
    if memory:
        dom["memory"] = {"guest": memory}
    return {"template": {"spec": {"domain": dom}}}


def given(spec: dict, pool=READY_POOL, vm=None) -> paging.PagingInput:
    full = {"viosClusterName": "thin", **spec}
    return paging.PagingInput("t", "uid-1", full, vm if vm is not None else vm_spec(), pool)


def test_the_default_size_is_memory_times_one_and_a_quarter() -> None:
    assert paging.paging_size({"paging": {}}, vm_spec("1Gi")) == 1280 * MI
    assert paging.paging_size({"paging": {}}, vm_spec("1000M")) == 1193 * MI  # rounded up
    requests = vm_spec(None, resources={"requests": {"memory": "2Gi"}})
    assert paging.paging_size({"paging": {}}, requests) == 2560 * MI
    assert paging.paging_size({"paging": {"size": "3Gi"}}, vm_spec("1Gi")) == 3 * GI
    assert paging.paging_size({"paging": {}}, vm_spec(None)) is None


def test_a_ready_pool_and_a_size_within_max_is_not_refused() -> None:
    assert paging.paging_refusal(given({"paging": {}})) is None
    request = paging.lu_request(given({"paging": {}}))
    assert (request.purpose, request.size_bytes, request.initial_bytes, request.max_bytes) == (
        PAGING,
        1280 * MI,
        512 * MI,
        4 * GI,
    )
    assert paging.pool_settings(READY_POOL)[3] == 3.0


@pytest.mark.parametrize(
    ("case", "reason", "words"),
    [
        (given({"paging": {}}, pool=None), api.POOL_NOT_FOUND, "VIOSCluster thin does not exist"),
        (
            given({"paging": {}}, pool={"metadata": {"name": "thin"}}),
            api.POOL_NOT_READY,
            "not evaluated yet",
        ),
        (given({"paging": {}}, vm=vm_spec(None)), paging.SIZE_UNKNOWN, "spec.paging.size"),
        (given({"paging": {"size": "5Gi"}}), TOO_LARGE, "thin.maxSize"),
    ],
)
def test_refusals_name_what_to_fix(case, reason, words) -> None:
    refused = paging.paging_refusal(case)
    assert refused is not None
    assert (refused.type, refused.status, refused.reason) == (api.PAGING_READY, "False", reason)
    assert words in refused.message


def test_a_pool_that_is_not_ready_says_why() -> None:
    broken = {
        "metadata": {"name": "thin"},
        "status": {"conditions": [{"type": "Ready", "status": "False",
                                   "reason": "ExpansionNotAllowed", "message": "no growth"}]},
    }  # fmt: skip
    refused = paging.paging_refusal(given({"paging": {}}, pool=broken))
    assert refused.reason == api.POOL_NOT_READY
    assert "ExpansionNotAllowed: no growth" in refused.message


def test_the_paging_disk_is_added_once_and_removed() -> None:
    spec = vm_spec()
    spec["template"]["spec"]["volumes"] = [{"name": "root", "containerDisk": {}}]
    spec["template"]["spec"]["domain"]["devices"] = {"disks": [{"name": "root"}]}
    with_disk = paging.with_paging_disk(paging.with_paging_disk(spec, "old"), "lu-1")
    pod = with_disk["template"]["spec"]
    assert pod["volumes"][-1] == {"name": "lparkube-paging",
                                  "persistentVolumeClaim": {"claimName": "lu-1"}}  # fmt: skip
    assert pod["domain"]["devices"]["disks"] == [
        {"name": "root"},
        {"name": "lparkube-paging", "serial": "lparkube-paging", "disk": {"bus": "virtio"}},
    ]
    assert paging.disk_claim(with_disk) == "lu-1"
    without = paging.with_paging_disk(with_disk, None)
    assert [v["name"] for v in without["template"]["spec"]["volumes"]] == ["root"]
    assert paging.disk_claim(without) is None
    assert paging.disk_claim(spec) is None  # the input was not changed


def test_status_and_the_attached_condition() -> None:
    assert paging.status_paging("lu-1", 1280 * MI) == {"claimName": "lu-1", "size": "1280Mi"}
    assert paging.status_paging(None, None) is None
    attached = paging.attached("lu-1", GI)
    assert (attached.status, attached.reason) == ("True", api.PAGING_ATTACHED)


def test_the_vm_from_the_template_carries_the_paging_disk() -> None:
    partition = {
        "metadata": {"name": "p", "namespace": "t", "uid": "u"},
        "spec": {"vmTemplate": {"spec": vm_spec()}, "viosClusterName": "thin", "paging": {}},
    }
    agent = domain.agent_spec("p", partition["spec"])
    vm = domain.vm_from_template(partition, agent, "lu-1")
    assert paging.disk_claim(vm["spec"]) == "lu-1"
    names = [d["name"] for d in vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"]]
    assert names == ["lparkube-agent", "lparkube-paging"]
    assert domain.template_patch(vm, partition, agent, "lu-1") is None
    dropped = domain.template_patch(vm, partition, agent, None)
    assert dropped is not None
    assert "lparkube-paging" not in str(dropped["spec"]["template"]["spec"]["volumes"])
    assert paging.disk_claim(domain.vm_from_template(partition, agent)["spec"]) is None
