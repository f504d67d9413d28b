"""The API source: every field documented, structural, and the columns point at real fields."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lparkube.api import schema
from lparkube.api.resource import GROUP, VERSION, CustomResource
from lparkube.api.v1alpha1 import KINDS

KIND_IDS = [k.kind for k in KINDS]


def walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its dotted path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def spec_and_status(kind: CustomResource) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from walk(kind.spec, "spec")
    yield from walk(kind.status, "status")


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_every_field_has_a_description_and_a_type(kind: CustomResource) -> None:
    undocumented = [p for p, n in spec_and_status(kind) if not n.get("description")]
    untyped = [p for p, n in spec_and_status(kind) if "type" not in n]
    assert undocumented == []
    assert untyped == []


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_status_has_conditions_shaped_like_metav1_condition(kind: CustomResource) -> None:
    conditions = kind.status["properties"]["conditions"]
    item = conditions["items"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert "observedGeneration" in item["properties"]
    assert "observedGeneration" in kind.status["properties"]


def resolve(kind: CustomResource, json_path: str) -> dict[str, Any] | None:
    """The schema node a printer column points at (filters and indexes skipped)."""
    node: dict[str, Any] | None = {"properties": {"spec": kind.spec, "status": kind.status}}
    for raw in json_path.lstrip(".").split("."):
        name = raw.split("[", 1)[0]
        if node is None:
            return None
        node = node.get("properties", {}).get(name)
        if node is not None and "[" in raw and node.get("type") == "array":
            node = node["items"]
    return node


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_printer_columns_point_at_fields_that_exist(kind: CustomResource) -> None:
    for column in kind.columns:
        if column.json_path.startswith(".metadata"):
            continue
        if "conditions[?" in column.json_path:
            assert "conditions" in kind.status["properties"]
            continue
        assert resolve(kind, column.json_path) is not None, column.json_path


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_crd_has_status_subresource_names_and_one_served_version(kind: CustomResource) -> None:
    crd = kind.crd()
    (version,) = crd["spec"]["versions"]
    assert crd["metadata"]["name"] == f"{kind.plural}.{GROUP}"
    assert version["name"] == VERSION
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["lparkube"]
    assert crd["spec"]["names"]["shortNames"]


def test_scopes_match_the_design() -> None:
    scopes = {k.kind: k.scope for k in KINDS}
    assert scopes == {
        "Partition": "Namespaced",
        "SaveEvent": "Namespaced",
        "ConditionProfile": "Cluster",
        "VIOSCluster": "Cluster",
        "HibernationImage": "Namespaced",
        "RemoteRestart": "Namespaced",
    }


def rules_of(node: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


def test_partition_requires_exactly_one_vm_source_and_keeps_vm_name() -> None:
    spec = KINDS[0].spec
    assert "has(self.vmTemplate) != has(self.vmName)" in rules_of(spec)
    assert "self == oldSelf" in rules_of(spec["properties"]["vmName"])


def test_immutable_keeps_existing_rules_and_adds_one() -> None:
    node = schema.string("x", rules=(schema.Rule("self.size() > 1", "too short"),))
    frozen = schema.immutable(node, "spec.x")
    assert rules_of(frozen) == ["self.size() > 1", "self == oldSelf"]
    assert frozen["x-kubernetes-validations"][1]["message"] == "spec.x is immutable after creation"
    assert rules_of(node) == ["self.size() > 1"]


def test_rule_renders_field_path_only_when_given() -> None:
    assert schema.Rule("true", "m").render() == {"rule": "true", "message": "m"}
    assert schema.Rule("true", "m", ".a").render()["fieldPath"] == ".a"


def test_array_list_types() -> None:
    item = schema.string("i")
    assert schema.array("a", item, max_items=1, map_keys=["k"])["x-kubernetes-list-type"] == "map"
    assert schema.array("a", item, max_items=1, set_list=True)["x-kubernetes-list-type"] == "set"
    assert "x-kubernetes-list-type" not in schema.array("a", item, max_items=1)


def test_every_list_and_map_is_bounded() -> None:
    """Unbounded lists make CEL cost estimates fail and objects grow without limit."""
    for kind in KINDS:
        for path, node in spec_and_status(kind):
            if node.get("type") == "array":
                assert "maxItems" in node, path
            if "additionalProperties" in node:
                assert "maxProperties" in node, path
