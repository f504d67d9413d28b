"""An in-memory stand-in for :class:`.api.Kube`, for unit tests of code that takes a Kube.

Objects live in a dict keyed by REST path; merge patches follow RFC 7386 and honour a
metadata.resourceVersion precondition with a 409, as the API server does.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import re
from typing import Any
from urllib.parse import unquote

from kubernetes.client import ApiException


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


class FakeKube:
    """Objects by path; resourceVersion preconditions like the API server."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.events: list[str] = []
        self._versions = itertools.count(1)

    def put(self, path: str, obj: dict) -> None:
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        obj["metadata"].setdefault("uid", f"uid-{next(self._versions)}")
        self.objects[path] = obj

    def get(self, path: str) -> dict | None:
        found = self.objects.get(path)
        return copy.deepcopy(found) if found else None

    def items(self, path: str) -> list[dict]:
        """Objects directly under a collection path; without /namespaces/ across namespaces;
        ``?labelSelector=key=value[,...]`` (equality only) filters them as the API server does."""
        path, _, query = path.partition("?")
        wanted = dict(
            term.split("=", 1)
            for term in unquote(query.removeprefix("labelSelector=")).split(",")
            if "=" in term
        )
        return [
            obj
            for obj in self._items(path)
            if all(((obj.get("metadata") or {}).get("labels") or {}).get(k) == v
                   for k, v in wanted.items())
        ]  # fmt: skip

    def _items(self, path: str) -> list[dict]:
        depth = path.count("/") + 1
        found = []
        for stored, obj in self.objects.items():
            cluster_wide = re.sub(r"/namespaces/[^/]+(?=/)", "", stored, count=1)
            candidates = (stored, cluster_wide)
            if any(c.startswith(path + "/") and c.count("/") == depth for c in candidates):
                found.append(copy.deepcopy(obj))
        return found

    def create(self, path: str, body: dict) -> dict:
        meta = body.get("metadata") or {}
        name = meta.get("name") or f"{meta['generateName']}{next(self._versions)}"
        if f"{path}/{name}" in self.objects:
            raise ApiException(status=409)
        namespace = re.search(r"/namespaces/([^/]+)/", path + "/")
        meta = {"name": name, **({"namespace": namespace[1]} if namespace else {})}
        self.put(f"{path}/{name}", merge(body, {"metadata": meta}))
        return copy.deepcopy(self.objects[f"{path}/{name}"])

    def delete(self, path: str, *, uid: str | None = None, grace: int | None = None) -> bool:
        """Gone at once, or marked with a deletionTimestamp, as the API server does: while the
        object has finalizers (until a patch removes the last one), and for a pod deleted with
        a grace period (until a delete with grace 0, the kubelet's confirmation)."""
        current = self.objects.get(path)
        if current is None or (uid and current["metadata"].get("uid") != uid):
            return False
        graceful = "/pods/" in path and grace != 0
        if current["metadata"].get("finalizers") or graceful:
            if not current["metadata"].get("deletionTimestamp"):
                stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                self.put(path, merge(current, {"metadata": {"deletionTimestamp": stamp}}))
            return True
        del self.objects[path]
        return True

    def merge_patch(self, path: str, patch: dict) -> dict:
        path = path.removesuffix("/status")
        current = self.objects.get(path)
        if current is None:
            raise ApiException(status=404)
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        patched = merge(current, patch)
        self.put(path, patched)
        meta = patched["metadata"]
        last_finalizer = current["metadata"].get("finalizers") and not meta.get("finalizers")
        if meta.get("deletionTimestamp") and last_finalizer:  # a deleted object's: it is gone
            return copy.deepcopy(self.objects.pop(path))
        return copy.deepcopy(self.objects[path])

    def event(
        self, obj: dict, reason: str, message: str, kind_type: str = "Normal", **_source: Any
    ) -> None:
        self.events.append(reason)
