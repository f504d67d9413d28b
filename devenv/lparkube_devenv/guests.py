"""Demo guests for ``make run``: what cloud-init would start inside each example VM.

The KubeVirt stand-in runs no VMs, so nothing in the example Partitions would answer a save.
For every Partition whose VM runs and whose agent key Secret the operator has written, this
starts a real ``lparkube-agent serve`` with that Secret's key and config.json, listening on the
VMI's address (the stand-in hands out loopback addresses under ``make run``), and a demo
application registered with it: ``editor`` (priority 10, saves on SIGUSR1) appends
"editor <time>" to ``<root>/<namespace>/<name>/saves`` whenever it is told to save.

Like the VMs they stand for, the guests' processes run in sessions of their own: a Ctrl-C in
the terminal reaches only ``lparkube-dev``, which then stops them and removes their temporary
folders (``stop``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from kubernetes import client

from lparkube_agent.testing import AgentProcess, TLSMaterial, cli, start_app

log = logging.getLogger(__name__)
GROUP, VERSION = "lparkube.io", "v1alpha1"
APP = "editor"
# What the key Secret holds for the guest (the secret disk's files).
GUEST_FILES = ("key", "config.json", "ca.crt", "tls.crt", "tls.key")


class DemoGuests:
    """One agent and one demo application per running Partition, until ``stop``."""

    def __init__(
        self,
        api_client: client.ApiClient,
        root: Path,
        *,
        namespace: str | None = None,
        interval: float = 1.0,
    ) -> None:
        self.namespace = namespace  # None: every namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.root = root
        self.interval = interval
        self.running: dict[str, tuple[AgentProcess, subprocess.Popen]] = {}  # by Partition uid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-guests", daemon=True)

    def start(self) -> DemoGuests:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(10)
        for agent, app in self.running.values():
            _kill(app)
            agent.close()
        self.running.clear()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.boot_pending()
            except Exception:  # a demo guest that fails to boot must not stop the others
                log.exception("demo guests: a pass failed")

    def boot_pending(self) -> list[str]:
        """Boot a guest for each running Partition that has none yet; their names."""
        if self.namespace is None:
            partitions = self.custom.list_cluster_custom_object(GROUP, VERSION, "partitions")
        else:
            partitions = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "partitions"
            )
        booted = []
        for partition in partitions.get("items") or []:
            meta, status = partition["metadata"], partition.get("status") or {}
            endpoint = (status.get("agent") or {}).get("endpoint")
            if meta["uid"] in self.running or not endpoint:
                continue
            secret = self._secret(meta["namespace"], status["agent"].get("keySecretName"))
            if secret is None:
                continue
            self.running[meta["uid"]] = self._boot(
                meta["namespace"], meta["name"], endpoint, secret
            )
            booted.append(f"{meta['namespace']}/{meta['name']}")
        return booted

    def _secret(self, namespace: str, name: str | None) -> tuple[bytes, dict, TLSMaterial] | None:
        if not name:
            return None
        try:
            data = self.core.read_namespaced_secret(name, namespace).data or {}
        except client.ApiException:
            return None
        files = {k: base64.b64decode(v) for k, v in data.items()}
        if any(name not in files for name in GUEST_FILES):
            return None
        tls = TLSMaterial(files["ca.crt"], files["tls.crt"], files["tls.key"])
        return files["key"], json.loads(files["config.json"]), tls

    def _boot(
        self, namespace: str, name: str, endpoint: str, secret: tuple[bytes, dict, TLSMaterial]
    ) -> tuple[AgentProcess, subprocess.Popen]:
        key, config, tls = secret
        home = self.root / namespace / name
        home.mkdir(parents=True, exist_ok=True)
        settings = {**config, "listen": endpoint, "operatorURL": on_host(config["operatorURL"])}
        with contextlib.ExitStack() as undo:  # a guest that fails to boot leaves nothing behind
            agent = AgentProcess(
                home, config["partition"], key, settings, tls_material=tls, own_session=True
            )
            undo.callback(agent.close)
            agent.start()
            app, pid = start_app("signal", APP, home / "saves", own_session=True)
            undo.callback(_kill, app)
            register = (f"--name={APP}", f"--pid={pid}", "--priority=10", "--method=Signal")
            cli(agent, "register", *register)
            undo.pop_all()
        log.info("demo guest %s/%s: agent on %s, %s saves to %s", namespace, name, endpoint, APP,
                 home / "saves")  # fmt: skip
        return agent, app


def on_host(url: str) -> str:
    """A guest's gateway URL as a process on this machine reaches it: every Service name
    (`*.svc`) is the loopback here, where the operator's gateway listens."""
    parts = urlsplit(url)
    if not (parts.hostname or "").endswith(".svc"):
        return url
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{parts.port or 443}"))


def _kill(app: subprocess.Popen) -> None:
    app.kill()
    app.wait()
