"""Helpers for the HibernationImage integration tests: images and their waits."""

from __future__ import annotations

from kubernetes import client
from partition_helpers import GROUP, VERSION, wait_for


class Images:
    """HibernationImages of one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom, self.namespace = client.CustomObjectsApi(api), namespace

    def create(self, name: str, partition: str, **spec: object) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "HibernationImage",
            "metadata": {"name": name},
            "spec": {"partitionName": partition, **spec},
        }
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "hibernationimages", body
        )

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "hibernationimages", name
        )

    def resume(self, name: str) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "hibernationimages", name, {"spec": {"resume": True}}
        )

    def wait(self, name: str, type_: str, timeout: float) -> dict:
        """The image once condition `type_` is final: True, or False for a reason other than
        InProgress."""

        def final() -> dict | None:
            image = self.get(name)
            found = next(
                (
                    c
                    for c in (image.get("status") or {}).get("conditions") or []
                    if c["type"] == type_
                ),
                None,
            )
            if found and (found["status"] == "True" or found["reason"] != "InProgress"):
                return image
            return None

        return wait_for(final, f"{name} {type_} final", timeout)


def condition(obj: dict, type_: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)
