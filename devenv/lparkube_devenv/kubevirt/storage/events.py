"""core/v1 Events from the driver's components (best effort, like every event recorder)."""

from __future__ import annotations

from ..api import Kube, log, now_iso
from ..logic import dig

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
    """An Event about ``obj`` (a ``kind``: list items carry none); cluster-scoped objects'
    events go to the ``default`` namespace, as upstream recorders put them."""
    namespace = dig(obj, "metadata", "namespace") or "default"
    stamp = now_iso()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{dig(obj, 'metadata', 'name')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": API_VERSIONS.get(kind, "v1"),
            "kind": kind,
            "name": dig(obj, "metadata", "name"),
            "namespace": dig(obj, "metadata", "namespace"),
            "uid": dig(obj, "metadata", "uid"),
            "resourceVersion": dig(obj, "metadata", "resourceVersion"),
        },
        "reason": reason,
        "message": message,
        "type": "Warning" if warning else "Normal",
        "source": {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        kube.create(f"/api/v1/namespaces/{namespace}/events", event)
    except Exception as error:
        log.debug("event %s not recorded: %s", reason, error)
