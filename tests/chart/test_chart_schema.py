"""Bad values fail at install time with a message that names the field."""

from __future__ import annotations

import pytest
from chart_helpers import CHART_DIR, KUBE_VERSION, Helm

REJECTED = {
    "negative replicas": (["--set", "replicaCount=-1"], "/replicaCount"),
    "replicas as text": (["--set", "replicaCount=three"], "/replicaCount"),
    "pull policy": (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    "unknown key": (["--set", "replicas=3"], "additional properties 'replicas' not allowed"),
    "nested typo": (
        ["--set", "serviceMonitor.enable=true"],
        "additional properties 'enable' not allowed",
    ),
    "digest": (["--set", "image.digest=latest"], "/image/digest"),
    "log level": (["--set", "operator.logLevel=verbose"], "/operator/logLevel"),
    "memory quantity": (["--set", "resources.limits.memory=lots"], "/resources/limits/memory"),
    "anti-affinity preset": (["--set", "podAntiAffinityPreset=always"], "/podAntiAffinityPreset"),
    "scrape interval": (["--set", "serviceMonitor.interval=often"], "/serviceMonitor/interval"),
    "port": (["--set", "ports.metrics=70000"], "/ports/metrics"),
    "lease timing": (
        ["--set", "leaderElection.renewDeadline=20"],
        "need renewInterval < renewDeadline < leaseDuration",
    ),
    "admission policy switch as text": (
        ["--set", "admissionPolicy.enabled=maybe"],
        "/admissionPolicy/enabled",
    ),
    "admission policy typo": (
        ["--set", "admissionPolicy.enable=false"],
        "additional properties 'enable' not allowed",
    ),
    "ServiceMonitor without the metrics Service": (
        ["--set", "serviceMonitor.enabled=true,metrics.service.enabled=false"],
        "serviceMonitor.enabled needs metrics.service.enabled",
    ),
}


@pytest.mark.parametrize(("flags", "message"), REJECTED.values(), ids=REJECTED.keys())
def test_bad_values_are_rejected(helm: Helm, flags: list[str], message: str) -> None:
    result = helm(
        "template", "lparkube", str(CHART_DIR), "--kube-version", KUBE_VERSION, *flags,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0, f"{flags} rendered:\n{result.stdout[:500]}"
    assert message in result.stderr
