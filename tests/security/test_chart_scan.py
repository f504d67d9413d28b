"""The rendered chart passes kube-score with no CRITICAL finding (issue 4's security scan).

The scanner is proven able to fail first: the same code path must report the CRITICAL checks
of a deliberately insecure Deployment, so a scanner that ran nothing, or a parser that read
nothing, cannot make the chart pass.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import yaml
from chart_scan import (
    Result,
    counts,
    findings,
    kube_score,
    render,
    scan,
    summary,
    version,
)

INSECURE_DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "insecure", "namespace": "scan-self-test"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "insecure"}},
        "template": {
            "metadata": {"labels": {"app": "insecure"}},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "example.invalid/app:latest",
                        "securityContext": {"privileged": True, "runAsUser": 0},
                    }
                ]
            },
        },
    },
}


@pytest.fixture(scope="module")
def scanner() -> Iterator[str]:
    """The pinned kube-score; Go builds it (and helm), so no Go is an error here, not a skip."""
    assert shutil.which("go"), "Go is needed to build kube-score and helm (see .ci/run)"
    yield kube_score()


@pytest.fixture(scope="module")
def chart_results(scanner: str) -> list[Result]:
    return scan(render(), scanner)


def test_scanner_is_the_pinned_kube_score(scanner: str) -> None:
    assert "kube-score version: 1.20.0," in version(scanner)


def test_scanner_reports_critical_findings_of_an_insecure_deployment(scanner: str) -> None:
    results = scan(yaml.safe_dump(INSECURE_DEPLOYMENT), scanner)
    critical = {r.check for r in results if r.severity == "CRITICAL"}
    assert {
        "container-security-context-privileged",
        "container-image-tag",
        "container-resources",
        "container-security-context-readonlyrootfilesystem",
    } <= critical, findings(results, "CRITICAL")
    assert summary(results).startswith(f"CRITICAL {counts(results)['CRITICAL']}, WARNING ")


def test_scan_covers_the_operator_deployment_and_services(chart_results: list[Result]) -> None:
    scanned = {(r.object.split("/")[0], r.check) for r in chart_results}
    for check in (
        "container-security-context-privileged",
        "container-security-context-user-group-id",
        "container-security-context-readonlyrootfilesystem",
        "container-seccomp-profile",
        "container-resources",
        "pod-probes",
    ):
        assert ("Deployment", check) in scanned, f"kube-score did not run {check}"
    assert any(kind == "Service" for kind, _ in scanned)


def test_rendered_chart_has_no_critical_findings(
    chart_results: list[Result], capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print(f"\nkube-score 1.20.0, chart with default values: {summary(chart_results)}")
    critical = findings(chart_results, "CRITICAL")
    assert not critical, "kube-score CRITICAL findings in the rendered chart:\n" + "\n".join(
        critical
    )
