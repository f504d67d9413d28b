"""One pass's view of the storage objects, and the small write helpers every sidecar uses."""

from __future__ import annotations

from dataclasses import dataclass, field

from kubernetes.client import ApiException

from ..api import Kube, key
from ..logic import dig


@dataclass
class StorageWorld:
    nodes: dict[str, dict] = field(default_factory=dict)
    claims: dict[tuple[str, str], dict] = field(default_factory=dict)
    volumes: dict[str, dict] = field(default_factory=dict)
    attachments: list[dict] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)  # FailedAttachVolume events

    def attachments_of(self, volume: str) -> list[dict]:
        return [
            a
            for a in self.attachments
            if dig(a, "spec", "source", "persistentVolumeName") == volume
        ]


def by_key(items: list[dict]) -> dict[tuple[str, str], dict]:
    return {key(o): o for o in items}


def finalizers(obj: dict | None) -> list[str]:
    return list(dig(obj, "metadata", "finalizers", default=[]) or [])


def guarded_patch(kube: Kube, path: str, obj: dict, patch: dict) -> dict | None:
    """Merge-patch ``obj`` only if unchanged since read; None on a conflict or when gone."""
    body = {**patch, "metadata": {**patch.get("metadata", {})}}
    body["metadata"]["resourceVersion"] = dig(obj, "metadata", "resourceVersion")
    try:
        return kube.merge_patch(path, body)
    except ApiException as error:
        if error.status in (404, 409):
            return None
        raise


def add_finalizer(kube: Kube, path: str, obj: dict, finalizer: str) -> dict | None:
    if finalizer in finalizers(obj):
        return obj
    return guarded_patch(
        kube, path, obj, {"metadata": {"finalizers": [*finalizers(obj), finalizer]}}
    )


def remove_finalizer(kube: Kube, path: str, finalizer: str) -> bool:
    """Drop ``finalizer`` from the object at ``path`` (read fresh); True once it is not there."""
    current = kube.get(path)
    if current is None or finalizer not in finalizers(current):
        return True
    kept = [f for f in finalizers(current) if f != finalizer]
    return (
        guarded_patch(kube, path, current, {"metadata": {"finalizers": kept or None}}) is not None
    )
