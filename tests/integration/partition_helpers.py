"""Helpers for the Partition integration tests: manifests, reads and waits."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from kubernetes import client

from lparkube_devenv.controlplane import wait_until
from lparkube_devenv.kubevirt import IP_ANNOTATION, VM, VMI, StandIn

GROUP, VERSION, PLURAL = "lparkube.io", "v1alpha1", "partitions"
TIMEOUT = 30.0


SUB = "/apis/subresources.kubevirt.io/v1/namespaces"  # virt-api's, through the aggregator


def subresource(api: client.ApiClient, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Call the API server (which proxies to virt-api) like any client: (status, JSON body)."""
    method, url, headers, body, _ = api.param_serialize(
        method,
        path,
        header_params={"Accept": "application/json", "Content-Type": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, headers, body)
    data = response.read()
    return response.status, json.loads(data) if data else None


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    return wait_until(predicate, timeout, what, interval=0.1)


def vm_spec(ip: str) -> dict:
    """A small VM on the pod network whose VMI reports ``ip`` (the stand-in's annotation)."""
    return {
        "runStrategy": "Always",
        "template": {
            "metadata": {"annotations": {IP_ANNOTATION: ip}},
            "spec": {
                "domain": {
                    "memory": {"guest": "256Mi"},
                    "devices": {
                        "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                        "interfaces": [{"name": "default", "masquerade": {}}],
                    },
                },
                "networks": [{"name": "default", "pod": {}}],
                "volumes": [
                    {"name": "root", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}
                ],
            },
        },
    }


def partition_manifest(name: str, ip: str, port: int, **agent: Any) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Partition",
        "metadata": {"name": name, "labels": {"app": "demo"}},
        "spec": {
            "vmTemplate": {"metadata": {"labels": {"tier": "web"}}, "spec": vm_spec(ip)},
            "agent": {"port": port, "heartbeatTimeout": "3s", **agent},
        },
    }


class Partitions:
    """Partition, VM, VMI and Secret reads for one namespace."""

    def __init__(self, api: client.ApiClient, kubevirt: StandIn, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.kubevirt = kubevirt
        self.namespace = namespace

    def create(self, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )

    def get(self, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict:
        return (self.get(name) or {}).get("status") or {}

    def condition(self, name: str, type_: str) -> dict:
        found = [c for c in self.status(name).get("conditions") or [] if c["type"] == type_]
        return found[0] if found else {}

    def wait_condition(self, name: str, type_: str, status: str, timeout: float = TIMEOUT) -> dict:
        return wait_for(
            lambda: self.condition(name, type_).get("status") == status and self.status(name),
            f"{name} {type_}={status}",
            timeout,
        )

    def vm(self, name: str) -> dict | None:
        return self.kubevirt.kube.get(VM.path(self.namespace, name))

    def vmi(self, name: str) -> dict | None:
        return self.kubevirt.kube.get(VMI.path(self.namespace, name))

    def secret(self, name: str) -> client.V1Secret | None:
        try:
            return self.core.read_namespaced_secret(name, self.namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def secret_file(self, name: str, key: str) -> bytes:
        secret = self.secret(name)
        assert secret is not None and secret.data is not None, f"Secret {name} missing"
        return base64.b64decode(secret.data[key])

    def agent_config(self, secret_name: str) -> dict:
        return json.loads(self.secret_file(secret_name, "config.json"))

    def events(self, name: str) -> list[tuple[str, str]]:
        events = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [(e.reason, e.message) for e in events if e.involved_object.kind == "Partition"]

    def reasons(self, name: str) -> set[str]:
        return {reason for reason, _ in self.events(name)}
