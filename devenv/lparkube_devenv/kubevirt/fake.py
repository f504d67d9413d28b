"""An in-memory stand-in for :class:`.api.Kube`, for unit tests of code that takes a Kube.

Objects live in a dict keyed by REST path; merge patches follow RFC 7386 and honour a
metadata.resourceVersion precondition with a 409, as the API server does.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

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
        obj["metadata"].setdefault("uid", f"uid-{path}")
        self.objects[path] = obj

    def get(self, path: str) -> dict | None:
        found = self.objects.get(path)
        return copy.deepcopy(found) if found else None

    def items(self, path: str) -> list[dict]:
        return [copy.deepcopy(o) for p, o in self.objects.items() if p.startswith(path + "/")]

    def create(self, path: str, body: dict) -> dict:
        name = body["metadata"].get("name") or body["metadata"]["generateName"] + "x1"
        self.put(f"{path}/{name}", merge(body, {"metadata": {"name": name}}))
        return self.objects[f"{path}/{name}"]

    def merge_patch(self, path: str, patch: dict) -> dict:
        path = path.removesuffix("/status")
        current = self.objects.get(path)
        if current is None:
            raise ApiException(status=404)
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        self.put(path, merge(current, patch))
        return self.objects[path]

    def event(self, obj: dict, reason: str, message: str, kind_type: str = "Normal") -> None:
        self.events.append(reason)
