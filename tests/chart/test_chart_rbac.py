"""The chart's RBAC, read as rendered: no wildcards or privilege verbs, and documented.

tests/integration/test_rbac.py proves the same rules on the real API server; these checks
need only helm and fail fast when someone widens a rule.
"""

from __future__ import annotations

import re

import pytest
from chart_helpers import Render, by_kind

from lparkube_devenv.controlplane import REPO_ROOT

PRIVILEGE_VERBS = {"escalate", "bind", "impersonate", "*"}
RBAC_GROUP = "rbac.authorization.k8s.io"
Grant = tuple[str, str, str]  # (api group, resource, verb)


@pytest.fixture(scope="module")
def roles(render: Render) -> dict[str, list[dict]]:
    """Rules by role kind (ClusterRole, Role) from the default rendering."""
    kinds = by_kind(render())
    return {kind: [r for o in kinds[kind] for r in o["rules"]] for kind in ("ClusterRole", "Role")}


def grants(rules: list[dict]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_no_wildcards_or_privilege_verbs(roles: dict[str, list[dict]]) -> None:
    for rules in roles.values():
        for group, resource, verb in grants(rules):
            assert "*" not in (group, resource, verb)
            assert verb not in PRIVILEGE_VERBS
            assert group != RBAC_GROUP, "the operator never touches RBAC objects"


def test_no_workload_or_namespace_writes(roles: dict[str, list[dict]]) -> None:
    granted = grants(roles["ClusterRole"])
    core = {(resource, verb) for group, resource, verb in granted if group == ""}
    # Pods: listed (save hooks, launcher pods), and deleted only by failover: the launcher pod
    # a lost node left once its guest fenced itself (docs/rbac.md). Never created or exec'd.
    assert {verb for resource, verb in core if resource == "pods"} == {"list", "delete"}
    assert not [g for g in granted if g[1] in ("namespaces", "pods/exec", "configmaps")]
    assert not [g for g in granted if g[0] in ("apps", "batch")]
    assert {verb for resource, verb in core if resource == "nodes"} == {"list", "watch"}


def test_leases_are_taken_over_only_in_the_namespaced_role(roles: dict[str, list[dict]]) -> None:
    """Cluster-wide, LU claim Leases are listed, created and deleted, never read one by one,
    updated or patched: only the leader-election Role may renew (and so take over) a Lease."""
    cluster = {g[2] for g in grants(roles["ClusterRole"]) if g[1] == "leases"}
    assert cluster == {"list", "create", "delete"}
    assert {g[2] for g in grants(roles["Role"])} == {"get", "update", "create"}


def documented(section: str) -> set[Grant]:
    """(group, resource, verb) from the table under ``## <section>`` in docs/rbac.md."""
    text = (REPO_ROOT / "docs" / "rbac.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    found: set[Grant] = set()
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith(("`", "core")):
            continue
        group = "" if cells[0] == "core" else cells[0].strip("`")
        resources = re.findall(r"`([^`]+)`", cells[1])
        verbs = [v.strip() for v in cells[-2].split(",")]
        found |= {(group, r, v) for r in resources for v in verbs}
    return found


@pytest.mark.parametrize(("kind", "section"), [("ClusterRole", "ClusterRole"), ("Role", "Role")])
def test_docs_table_matches_the_rules(
    roles: dict[str, list[dict]], kind: str, section: str
) -> None:
    """docs/rbac.md lists exactly what the chart grants: no rule without its reason."""
    assert documented(section) == grants(roles[kind])
