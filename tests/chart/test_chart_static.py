"""The chart as files: helm lint, the CRD copies, the values schema itself."""

from __future__ import annotations

import json

import yaml
from chart_helpers import CHART_DIR, Helm

from lparkube_devenv.controlplane import REPO_ROOT


def test_helm_lint_passes(helm: Helm) -> None:
    result = helm("lint", str(CHART_DIR))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_helm_lint_strict_passes(helm: Helm) -> None:
    """--strict turns lint warnings (e.g. a template reading an undefined value) into errors."""
    result = helm("lint", "--strict", str(CHART_DIR))
    assert "[WARNING]" not in result.stdout
    assert "0 chart(s) failed" in result.stdout


def test_chart_crds_are_byte_identical_to_crds_dir() -> None:
    """helm installs charts/lparkube/crds; `kubectl apply -f crds/` installs the other copy."""
    plain = {p.name: p.read_bytes() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART_DIR / "crds").glob("*.yaml")}
    assert plain
    assert chart == plain


def test_values_schema_is_draft_07_and_closed() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False


def test_every_value_is_described_by_the_schema() -> None:
    """A key in values.yaml missing from the schema would be refused by the schema itself."""
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"])


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "lparkube"
    assert chart["kubeVersion"]
