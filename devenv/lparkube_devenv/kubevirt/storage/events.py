"""core/v1 Events from the driver's components (best effort, like every event recorder)."""

from __future__ import annotations

from ..api import Kube

API_VERSIONS = {"VolumeAttachment": "storage.k8s.io/v1"}  # the rest here is core/v1


def record(
    kube: Kube,
    obj: dict,
    kind: str,
    reason: str,
    message: str,
    *,
    component: str,
    warning: bool = False,
) -> None:
    """An Event about ``obj`` (a ``kind``: list items carry none), from ``component``."""
    kube.event(
        obj,
        reason,
        message,
        "Warning" if warning else "Normal",
        component=component,
        kind=kind,
        api_version=API_VERSIONS.get(kind, "v1"),
    )
