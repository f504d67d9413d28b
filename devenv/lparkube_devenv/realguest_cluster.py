"""A local cluster whose VMs are real guests, with the real operator: what the real-guest
benchmarks (hack/bench_boot.py, hack/bench_hibernation_image.py) measure against.

The control plane built here, the KubeVirt stand-in with the QEMU runtime by default, and
``lparkube run`` with admin credentials, whose agent gateway the guests reach by its Service
name (the stand-in forwards it to the operator's loopback port).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from kubernetes import client, config

from lparkube_devenv.controlplane import LocalControlPlane, free_port, install_crds
from lparkube_devenv.kubevirt import Settings, StandIn
from lparkube_devenv.kubevirt.api import QEMU
from lparkube_devenv.kubevirt.qemu_guest import HostService

REPO = Path(__file__).resolve().parents[2]
GATEWAY_SERVICE = "lparkube-agent-gateway.lparkube-bench.svc"


def start_operator(kubeconfig: Path, port: int, log: Path) -> subprocess.Popen:
    exe = str(Path(sys.executable).with_name("lparkube"))
    argv = [
        exe, "run", "--kubeconfig", str(kubeconfig), "--health-address", f"127.0.0.1:{free_port()}",
        "--metrics-address", "0", "--agent-gateway-address", f"127.0.0.1:{port}",
        "--agent-gateway-url", f"https://{GATEWAY_SERVICE}:{port}", "--lease-namespace", "default",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


@contextlib.contextmanager
def real_guest_cluster(workdir: Path) -> Iterator[tuple[StandIn, client.ApiClient]]:
    """The stand-in and an admin API client, the operator running; all stopped afterwards."""
    port = free_port()
    plane = LocalControlPlane(workdir / "control-plane")
    with plane, config.new_client_from_config(config_file=str(plane.kubeconfig)) as api:
        install_crds(api, REPO / "crds")
        standin = StandIn(
            plane.kubeconfig,
            workdir / "kubevirt",
            plane.front_proxy_ca,
            settings=Settings(guest_runtime=QEMU),
            host_services=[HostService(GATEWAY_SERVICE, port)],
        )
        with standin:
            standin.guest_image.get()  # built, or taken from the cache, before any timing
            operator = start_operator(plane.kubeconfig, port, workdir / "operator.log")
            try:
                yield standin, api
            finally:
                operator.terminate()
                operator.wait(30)
