#!/usr/bin/env python3
"""Benchmark hibernation through the operator: a HibernationImage's creation to Captured, and
its resume (spec.resume) to Resumed, for a 512 MiB real guest.

    make bench-hibernation-image [BENCH_ARGS="--repeat 3"]

On a local cluster of real guests with the real operator (lparkube_devenv.realguest_cluster):
one Partition with a paging LU from a VIOSCluster boots the guest image; each run creates an
image (without saving first: the guest runs no application), waits for Captured (the guest's
kernel wrote its memory to the LU and powered off), asks to resume and waits for Resumed (a new
QEMU process restored the image, the agent reported the same boot id). Prints each run and the
medians. `make bench-hibernate` measures the same guest without the operator.
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
from lparkube_devenv.kubevirt.api import RUNTIME_ANNOTATION
from lparkube_devenv.realguest_cluster import real_guest_cluster

GROUP, VERSION = "lparkube.io", "v1alpha1"
NAMESPACE, PARTITION, POOL = "default", "sleeper", "bench"
TIMEOUT = 300.0


def pool() -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VIOSCluster",
        "metadata": {"name": POOL},
        "spec": {"storage": {"storageClassName": "lparkube-thin"}},
    }


def partition() -> dict:
    template = {
        "metadata": {"annotations": {RUNTIME_ANNOTATION: "qemu"}},
        "spec": {
            "domain": {"memory": {"guest": "512Mi"}, "devices": {}},
            "networks": [{"name": "default", "pod": {}}],
        },
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Partition",
        "metadata": {"name": PARTITION},
        "spec": {
            "vmTemplate": {"spec": {"runStrategy": "Always", "template": template}},
            "viosClusterName": POOL,
            "paging": {},
        },
    }


def condition(obj: dict, type_: str) -> dict:
    found = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in found if c["type"] == type_), {})


def final(custom: client.CustomObjectsApi, plural: str, name: str, type_: str) -> dict | None:
    """The object once `type_` is True, or False for a reason other than InProgress."""
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, name)
    found = condition(obj, type_)
    done = found.get("status") == "True" or found.get("reason") not in (None, "InProgress")
    return obj if done else None


def require(obj: dict, type_: str) -> None:
    found = condition(obj, type_)
    if found.get("status") != "True":
        raise SystemExit(f"{obj['metadata']['name']}: {type_} {found}")


def swap_on(custom: client.CustomObjectsApi) -> bool:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "partitions", PARTITION)
    ready = condition(obj, "Ready").get("status") == "True"
    return ready and bool(
        ((obj.get("status") or {}).get("agent") or {}).get("paging", {}).get("active")
    )


def one_cycle(custom: client.CustomObjectsApi, index: int) -> tuple[float, float]:
    """Seconds from the image's creation to Captured, and from the resume to Resumed."""
    name = f"{PARTITION}-{index}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HibernationImage",
        "metadata": {"name": name},
        "spec": {"partitionName": PARTITION, "saveFirst": False},
    }
    start = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "hibernationimages", body)
    captured = wait_until(
        lambda: final(custom, "hibernationimages", name, "Captured"), TIMEOUT, f"{name} Captured"
    )
    capture = time.monotonic() - start
    require(captured, "Captured")
    start = time.monotonic()
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "hibernationimages", name, {"spec": {"resume": True}}
    )
    resumed = wait_until(
        lambda: final(custom, "hibernationimages", name, "Resumed"), TIMEOUT, f"{name} Resumed"
    )
    require(resumed, "Resumed")
    resume = time.monotonic() - start
    wait_until(lambda: swap_on(custom), TIMEOUT, "the agent reporting again")
    print(
        f"run {index + 1}: hibernate -> Captured {capture:.2f} s, resume -> Resumed {resume:.2f} s"
    )
    return capture, resume


def bench(args: argparse.Namespace, workdir: Path) -> list[tuple[float, float]]:
    with real_guest_cluster(workdir) as (_, api):
        custom = client.CustomObjectsApi(api)
        custom.create_cluster_custom_object(GROUP, VERSION, "viosclusters", pool())
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "partitions", partition())
        wait_until(lambda: swap_on(custom), TIMEOUT, "the Partition Ready with its swap on")
        return [one_cycle(custom, index) for index in range(args.repeat)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="hibernate/resume cycles to measure")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-hibernation-image-"))
    print(f"HibernationImage of a 512 MiB real guest, local cluster in {workdir}", flush=True)
    runs = bench(args, workdir)
    capture = statistics.median(c for c, _ in runs)
    resume = statistics.median(r for _, r in runs)
    print(f"median of {len(runs)}: hibernate -> Captured {capture:.2f} s,")
    print(f"  resume -> Resumed {resume:.2f} s")
    return 0


if __name__ == "__main__":
    os.environ.pop("KUBECONFIG", None)
    sys.exit(main())
