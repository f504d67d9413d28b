"""Helpers for the SaveEvent, ConditionProfile and evacuation integration tests: Partitions
on chosen nodes with real guest agents and real registered apps, and SaveEvent reads."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubernetes import client
from partition_helpers import Partitions, partition_manifest, wait_for

from lparkube_agent.testing import cli, lines, start_app
from lparkube_devenv.controlplane import free_port

GROUP, VERSION = "lparkube.io", "v1alpha1"
_ips = (f"127.0.{a}.{b}" for a, b in itertools.product(range(40, 60), range(2, 250)))


def save_command(out: Path, name: str, delay: float) -> str:
    """A Command save method: the demo app appends "<name> <time>" to ``out`` after ``delay``."""
    app = f"{sys.executable} -m lparkube_agent.testing app --mode=command"
    return f"--command={app} --name={name} --out={out} --delay={delay}"


class Fleet:
    """Partitions with running VMs, real agents and registered apps, in one namespace."""

    def __init__(
        self, api: client.ApiClient, kubevirt: Any, namespace: str, guest_agent: Any, tmp: Path
    ) -> None:
        self.parts = Partitions(api, kubevirt, namespace)
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.guest_agent = guest_agent
        self.tmp = tmp
        self.agents: dict[str, Any] = {}
        self.procs: list[subprocess.Popen] = []

    def partition(
        self,
        name: str,
        node: str,
        apps: list[tuple[str, int, float]],
        *,
        template: dict | None = None,
        agent_port: int | None = None,
    ) -> Any:
        """A Partition whose VM runs on ``node`` and whose agent has ``apps`` registered as
        (name, priority, save delay) Command apps writing to ``out(name)``. ``agent_port``
        makes the agent listen on another port than its Partition's: it reports, connected,
        but nothing answers at the Partition's endpoint."""
        ip, port = next(_ips), free_port()
        manifest = partition_manifest(name, ip, port)
        vmi_spec = manifest["spec"]["vmTemplate"]["spec"]["template"]["spec"]
        vmi_spec["nodeSelector"] = {"kubernetes.io/hostname": node}
        vmi_spec.update(template or {})
        self.parts.create(manifest)
        status = self.parts.wait_condition(name, "VMReady", "True")
        assert status["nodeName"] == node
        agent = self.guest_agent(self.namespace, name, ip=ip, port=agent_port)
        self.agents[name] = agent
        idle, _ = start_app("idle", f"{name}-idle", self.out(name))
        self.procs.append(idle)
        for app, priority, delay in apps:
            cli(
                agent.process,
                "register",
                f"--name={app}",
                f"--pid={idle.pid}",
                f"--priority={priority}",
                "--method=Command",
                save_command(self.out(name), app, delay),
            )
        wait_for(
            lambda: (
                self.parts.condition(name, "AgentConnected").get("status") == "True"
                and self.parts.status(name)["agent"].get("applications") == len(apps)
            ),
            f"{name}: agent connected with {len(apps)} apps",
        )
        return agent

    def out(self, name: str) -> Path:
        return self.tmp / f"{name}.saves"

    def written(self, name: str) -> list[tuple[str, float]]:
        """What the partition's apps wrote when told to save: (app, time) in file order."""
        return lines(self.out(name))

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()

    # --- SaveEvents -----------------------------------------------------------------------

    def create_save_event(self, name: str, spec: dict, namespace: str | None = None) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SaveEvent", "metadata": {"name": name}}
        body["spec"] = spec
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace or self.namespace, "saveevents", body
        )


def save_event(api: client.ApiClient, namespace: str, name: str) -> dict:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "saveevents", name
    )


def save_events(api: client.ApiClient, namespace: str, selector: str = "") -> list[dict]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "saveevents", label_selector=selector
    )
    return listed["items"]


def condition(obj: dict, type_: str) -> dict:
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_]
    return found[0] if found else {}


def wait_complete(api: client.ApiClient, namespace: str, name: str, timeout: float = 60) -> dict:
    """The SaveEvent once Complete=True."""
    return wait_for(
        lambda: (
            (se := save_event(api, namespace, name))
            and condition(se, "Complete").get("status") == "True"
            and se
        ),
        f"SaveEvent {namespace}/{name} complete",
        timeout,
    )


def results(save: dict, namespace: str) -> dict[str, dict]:
    """The SaveEvent's per-partition results in one namespace, by partition name."""
    return {
        p["name"]: p
        for p in (save.get("status") or {}).get("partitions") or []
        if p["namespace"] == namespace
    }


def events(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    return [reason for _, reason, _ in event_records(api, namespace, name)]


def event_records(
    api: client.ApiClient, namespace: str | None, name: str, kind: str = "SaveEvent"
) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about one object; ``namespace`` None for a
    cluster-scoped object (its Events may be in any namespace)."""
    core, selector = client.CoreV1Api(api), f"involvedObject.name={name}"
    if namespace is None:
        listed = core.list_event_for_all_namespaces(field_selector=selector)
    else:
        listed = core.list_namespaced_event(namespace, field_selector=selector)
    return [(e.type, e.reason, e.message) for e in listed.items if e.involved_object.kind == kind]
