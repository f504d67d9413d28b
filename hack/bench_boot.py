#!/usr/bin/env python3
"""Benchmark a real guest's boot: a Partition's creation to its VMI Running and to Ready.

    make bench-boot [BENCH_ARGS="--repeat 3 --delivery SecretVolume"]

On a local cluster of real guests with the real operator (lparkube_devenv.realguest_cluster).
Each run creates one Partition, waits until its VMI is
Running (QEMU runs the guest) and the Partition is Ready (the agent inside reported over TLS),
then deletes it and waits until its guest is gone, so runs never share the two cores. Prints
each run and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client

from lparkube_devenv.controlplane import wait_until
from lparkube_devenv.kubevirt import VMI, StandIn
from lparkube_devenv.realguest_cluster import real_guest_cluster

GROUP, VERSION = "lparkube.io", "v1alpha1"
TIMEOUT = 300.0


def partition(name: str, delivery: str) -> dict:
    template = {
        "spec": {
            "domain": {"memory": {"guest": "512Mi"}, "devices": {}},
            "networks": [{"name": "default", "pod": {}}],
        }
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Partition",
        "metadata": {"name": name},
        "spec": {
            "vmTemplate": {"spec": {"runStrategy": "Always", "template": template}},
            "agent": {"keyDelivery": delivery},
        },
    }


def ready(custom: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "partitions", name)
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def one_boot(
    standin: StandIn, api: client.ApiClient, name: str, delivery: str
) -> tuple[float, float]:
    """Seconds from the Partition's creation to its VMI Running, and to the Partition Ready."""
    custom = client.CustomObjectsApi(api)
    start = time.monotonic()
    custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", "partitions", partition(name, delivery)
    )

    def vmi_running() -> bool:
        vmi = standin.kube.get(VMI.path("default", name)) or {}
        return (vmi.get("status") or {}).get("phase") == "Running"

    wait_until(vmi_running, TIMEOUT, f"{name}'s VMI Running", interval=0.05)
    running = time.monotonic() - start
    wait_until(lambda: ready(custom, "default", name), TIMEOUT, f"{name} Ready", interval=0.05)
    total = time.monotonic() - start
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", "partitions", name)
    wait_until(lambda: standin.guest("default", name) is None, TIMEOUT, f"{name}'s guest gone")
    return running, total


def bench(args: argparse.Namespace, workdir: Path) -> list[tuple[float, float]]:
    with real_guest_cluster(workdir) as (standin, api):
        return [boot_and_report(standin, api, args, index) for index in range(args.repeat)]


def boot_and_report(
    standin: StandIn, api: client.ApiClient, args: argparse.Namespace, index: int
) -> tuple[float, float]:
    running, total = one_boot(standin, api, f"boot-{index}", args.delivery)
    print(f"run {index + 1}: VMI Running {running:.2f} s, Partition Ready {total:.2f} s")
    return running, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="boots to measure")
    parser.add_argument("--delivery", default="SecretVolume", choices=("SecretVolume", "CloudInit"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-boot-"))
    print(f"Real-guest boots ({args.delivery}), local control plane in {workdir}", flush=True)
    runs = bench(args, workdir)
    running = statistics.median(r for r, _ in runs)
    total = statistics.median(t for _, t in runs)
    print(f"median of {len(runs)}, from the Partition's creation: VMI Running {running:.2f} s,")
    print(f"  Partition Ready (the agent inside reported) {total:.2f} s")
    return 0


if __name__ == "__main__":
    os.environ.pop("KUBECONFIG", None)
    sys.exit(main())
