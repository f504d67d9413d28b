"""Helpers for the Helm chart tests (fixtures are in conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from lparkube_devenv.controlplane import REPO_ROOT

CHART_DIR = REPO_ROOT / "charts" / "lparkube"
KUBE_VERSION = "1.35.4"  # helm template assumes 1.20 otherwise; the chart needs >= 1.30

Helm = Callable[..., subprocess.CompletedProcess]
Kubectl = Callable[..., subprocess.CompletedProcess]
Render = Callable[..., list[dict]]


def by_kind(objects: list[dict]) -> dict[str, list[dict]]:
    """Rendered objects grouped by kind."""
    grouped: dict[str, list[dict]] = {}
    for obj in objects:
        grouped.setdefault(obj["kind"], []).append(obj)
    return grouped


def one(objects: list[dict], kind: str) -> dict:
    """The single object of ``kind``; fails when there are none or several."""
    found = by_kind(objects).get(kind, [])
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objects: list[dict]) -> dict:
    """The operator's container in the rendered Deployment."""
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
