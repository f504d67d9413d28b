"""Whose VM it is: the claim checks, adoption and release, as pure rules."""

from __future__ import annotations

import pytest
from test_partition_vm import partition, template

from lparkube.domain import key_delivery as kd
from lparkube.domain import partition as part
from lparkube.domain import vm_ownership as own


def existing_vm(refs: list | None = None, annotations: dict | None = None) -> dict:
    return {
        "metadata": {
            "name": "db-1",
            "namespace": "tenant-a",
            "resourceVersion": "7",
            "ownerReferences": refs or [],
            "annotations": annotations or {},
        },
        "spec": template()["spec"],
    }


def ref(name: str, uid: str, *, controller: bool = False) -> dict:
    found = {"apiVersion": part.API_VERSION, "kind": "Partition", "name": name, "uid": uid}
    return {**found, "controller": True, "blockOwnerDeletion": True} if controller else found


def adopting(name: str = "db", uid: str = "uid-1", **agent: str) -> dict:
    p = partition({"vmName": "db-1", **({"agent": agent} if agent else {})}, name=name)
    p["metadata"]["uid"] = uid
    return p


def refusal(p: dict, vm: dict, claimant: dict | None = None) -> own.Refusal | None:
    return own.claim_refusal(own.ClaimInput.of(p, vm, claimant))


def adopted(vm: dict, patch: dict) -> dict:
    """The VM after a merge patch of its annotations and volume lists."""
    meta = {**vm["metadata"], "annotations": {**vm["metadata"]["annotations"]}}
    for key, value in (patch.get("metadata") or {}).get("annotations", {}).items():
        if value is None:
            meta["annotations"].pop(key, None)
        else:
            meta["annotations"][key] = value
    if "ownerReferences" in patch.get("metadata", {}):
        meta["ownerReferences"] = patch["metadata"]["ownerReferences"] or []
    spec = vm["spec"]
    if "spec" in patch:
        lists = patch["spec"]["template"]["spec"]
        pod = {**spec["template"]["spec"], "volumes": lists["volumes"]}
        pod["domain"] = {"devices": {"disks": lists["domain"]["devices"]["disks"]}}
        spec = {**spec, "template": {**spec["template"], "spec": pod}}
    return {"metadata": meta, "spec": spec}


# --- claims ---------------------------------------------------------------------------------


def test_claims_read_from_the_vm() -> None:
    assert own.claim_of(existing_vm()) is None
    created = existing_vm([ref("web-1", "u9", controller=True)])
    assert own.claim_of(created) == own.Claim("web-1", "u9", created=True)
    annotated = existing_vm(annotations={own.ADOPTED_BY: "db"})
    assert own.claim_of(annotated) == own.Claim("db", None, created=False)
    legacy = existing_vm([ref("db", "uid-1")])
    assert own.claim_of(legacy) == own.Claim("db", "uid-1", created=False)
    foreign = {"apiVersion": "pool.kubevirt.io/v1alpha1", "kind": "VirtualMachinePool"}
    assert own.claim_of(existing_vm([{**foreign, "name": "p", "uid": "u0"}])) is None


def test_a_free_vm_and_ones_own_vm_are_not_refused() -> None:
    assert refusal(adopting(), existing_vm()) is None
    assert refusal(adopting(), existing_vm(annotations={own.ADOPTED_BY: "db"})) is None
    assert refusal(adopting(), existing_vm([ref("db", "uid-1")])) is None


def test_a_vm_another_partition_created_is_refused_naming_it() -> None:
    found = refusal(adopting(), existing_vm([ref("web-1", "u9", controller=True)]))
    assert found is not None and found.reason == "VMNameConflict"
    assert "belongs to Partition web-1, which created it" in found.message


def test_a_vm_another_live_partition_adopted_is_refused_naming_it() -> None:
    vm = existing_vm(annotations={own.ADOPTED_BY: "db-first"})
    assert own.other_claimant(vm, "db") == "db-first"
    first = adopting("db-first", "uid-0")
    found = refusal(adopting(), vm, first)
    assert found is not None and found.reason == "VMNameConflict"
    assert "belongs to Partition db-first, which adopted it" in found.message


@pytest.mark.parametrize(
    "claimant",
    [None, partition({"vmName": "other-vm"}, name="db-first")],
    ids=["claimant gone", "claimant names another VM"],
)
def test_a_stale_adoption_claim_does_not_block(claimant: dict | None) -> None:
    vm = existing_vm(annotations={own.ADOPTED_BY: "db-first"})
    assert refusal(adopting(), vm, claimant) is None


def test_a_template_partition_refuses_any_vm_it_did_not_create() -> None:
    p = partition({"vmTemplate": template()}, name="db-1")
    assert refusal(p, existing_vm([ref("db-1", "uid-1", controller=True)])) is None
    found = refusal(p, existing_vm(annotations={own.ADOPTED_BY: "db"}))
    assert found is not None and "(it belongs to Partition db)" in found.message
    assert refusal(p, existing_vm()).reason == "VMNameConflict"


# --- adoption and release -------------------------------------------------------------------


def test_adoption_marks_the_vm_and_adds_the_key_disk_without_an_owner_reference() -> None:
    p = adopting()
    pool = {"apiVersion": "x/v1", "kind": "Pool", "name": "p", "uid": "u0", "controller": True}
    patch = own.adoption_patch(existing_vm([pool]), p, part.agent_spec("db", p["spec"]))
    assert patch["metadata"] == {"annotations": {own.ADOPTED_BY: "db"}, "resourceVersion": "7"}
    pod = patch["spec"]["template"]["spec"]
    assert pod["volumes"][-1] == {"name": kd.KEY_VOLUME, "secret": {"secretName": "db-agent-key"}}
    assert pod["domain"]["devices"]["disks"][-1]["serial"] == "lparkube"


def test_adoption_is_done_once_and_released_whole() -> None:
    p = adopting()
    agent = part.agent_spec("db", p["spec"])
    vm = existing_vm()
    taken = adopted(vm, own.adoption_patch(vm, p, agent))
    assert own.adoption_patch(taken, p, agent) is None
    released = own.release_patch(taken, p)
    assert released["metadata"] == {"annotations": {own.ADOPTED_BY: None}, "resourceVersion": "7"}
    assert adopted(taken, released)["spec"] == vm["spec"]
    assert own.release_patch(vm, p) is None


def test_adoption_replaces_an_earlier_versions_owner_reference() -> None:
    p = adopting()
    agent = part.agent_spec("db", p["spec"])
    other = {"apiVersion": "x/v1", "kind": "Pool", "name": "p", "uid": "u0"}
    legacy = existing_vm([other, ref("db", "uid-1")])
    legacy["spec"] = kd.with_key_delivery(legacy["spec"], kd.SECRET_VOLUME, "db-agent-key")
    patch = own.adoption_patch(legacy, p, agent)
    assert patch["metadata"]["ownerReferences"] == [other]
    assert "spec" not in patch
    assert own.release_patch(legacy, p)["metadata"]["ownerReferences"] == [other]


def test_a_manifest_that_carries_the_key_disk_is_left_as_it_is() -> None:
    p = adopting()
    agent = part.agent_spec("db", p["spec"])
    vm = existing_vm()
    pod = vm["spec"]["template"]["spec"]
    pod["volumes"].insert(0, {"name": kd.KEY_VOLUME, "secret": {"secretName": "db-agent-key"}})
    pod["domain"]["devices"]["disks"].insert(0, {"name": kd.KEY_VOLUME, "serial": "lparkube"})
    patch = own.adoption_patch(vm, p, agent)
    assert "spec" not in patch, "the user's own key disk entries are not rewritten"
    pod["volumes"][0]["secret"]["secretName"] = "someone-elses-key"
    fixed = own.adoption_patch(vm, p, agent)["spec"]["template"]["spec"]["volumes"]
    assert fixed[0] == {"name": kd.KEY_VOLUME, "secret": {"secretName": "db-agent-key"}}


def test_another_partitions_vm_is_never_released() -> None:
    vm = existing_vm([ref("web-1", "u9", controller=True)])
    vm["spec"] = kd.with_key_delivery(vm["spec"], kd.SECRET_VOLUME, "web-1-agent-key")
    assert own.release_patch(vm, adopting()) is None
    assert own.release_patch(existing_vm(annotations={own.ADOPTED_BY: "x"}), adopting()) is None


def test_adopting_with_cloud_init_never_rewrites_the_users_cloud_init() -> None:
    p = adopting(keyDelivery="CloudInit")
    agent = part.agent_spec("db", p["spec"])
    vm = existing_vm()
    vm["spec"]["template"]["spec"]["volumes"].append(
        {"name": "ci", "cloudInitNoCloud": {"userData": "x"}}
    )
    with pytest.raises(kd.DeliveryError, match="does not rewrite"):
        own.adoption_patch(vm, p, agent)
    patch = own.adoption_patch(existing_vm(), p, agent)
    names = [v["name"] for v in patch["spec"]["template"]["spec"]["volumes"]]
    assert names == ["root", kd.CLOUD_INIT_VOLUME]
    assert own.adoption_patch(adopted(existing_vm(), patch), p, agent) is None
