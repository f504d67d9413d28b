#!/usr/bin/env python3
"""Benchmark RemoteRestarts of a real guest: the operator's share of a restart, and the whole
restart from a hibernation image and from disk on a fenced node.

    make bench-remote-restart [BENCH_ARGS="--repeat 3"]

On a local cluster of real guests with the real operator (lparkube_devenv.realguest_cluster):
the Partition of `make bench-hibernation-image` (512 MiB, a paging LU from a VIOSCluster) boots
the guest image. Each run
restarts it on another node with a RemoteRestart and times, from the client, polling the
RemoteRestart every 0.05 s:

* the operator's share: RemoteRestart created -> target start requested (the step
  RestoringMemory or Booting started), goal <= 1 s; for a fenced node the wait for the
  source's RWO volumes to be released (CheckingAdapters: taint eviction, pod GC every 20 s and
  the attach/detach controller, none of it the operator's) is shown apart and left out;
* the restore (hibernated) or the boot (fenced): target start requested -> Verifying done
  (the VMI Running on the target and the agent connected, for a resume with the same boot id);
* the whole restart: created -> RestartSucceeded.

Hibernated: a HibernationImage is captured on the node the guest runs on, then a RemoteRestart
from that image to another node. Fenced: the guest's node is powered off, turns NotReady (after
2 s here) and is tainted node.kubernetes.io/out-of-service, then a RemoteRestart from disk to
another node; the node is powered on and untainted afterwards. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_hibernation_image import (  # the same guest and pool (this script's directory)
    GROUP,
    NAMESPACE,
    PARTITION,
    TIMEOUT,
    VERSION,
    condition,
    partition,
    pool,
    swap_on,
)
from kubernetes import client

from lparkube.api.v1alpha1 import remoterestart as rr
from lparkube_devenv.controlplane import wait_until
from lparkube_devenv.kubevirt import VMI, StandIn
from lparkube_devenv.kubevirt.nodes import NODES_PATH
from lparkube_devenv.realguest_cluster import real_guest_cluster

POLL = 0.05
GOAL = 1.0
NODE_MONITOR_GRACE = 2.0  # a powered-off node turns NotReady after this (Kubernetes: 40 s)
FENCE = {"key": rr.OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}


@dataclass
class Run:
    share: float  # created -> target start requested, less the volume release wait
    release: float  # waiting for the source's RWO volumes (CheckingAdapters)
    start: float  # target start requested -> Verifying done (boot or restore)
    total: float  # created -> RestartSucceeded


def step(obj: dict, name: str) -> dict:
    return next((s for s in (obj.get("status") or {}).get("steps") or [] if s["name"] == name), {})


def requested(custom: client.CustomObjectsApi, start_step: str, image: str | None) -> bool:
    """The target start asked for, as the operator does it: the image's spec.resume set (a
    resume), or the held VM's runStrategy no longer Halted (a boot)."""
    if image:
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "hibernationimages", image
        )
        return bool((obj.get("spec") or {}).get("resume"))
    vm = custom.get_namespaced_custom_object(
        "kubevirt.io", "v1", NAMESPACE, "virtualmachines", PARTITION
    )
    return (vm.get("spec") or {}).get("runStrategy") != "Halted"


def restart(custom: client.CustomObjectsApi, name: str, start_step: str, **spec: str) -> Run:
    """Create a RemoteRestart and time its phases from the client's side: a step's time is when
    the poll first saw it (its start for CheckingAdapters, Done for Verifying); the target start
    is when the start step runs and its effect (`requested`) is visible."""
    image = spec.get("hibernationImageName")
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": rr.KIND,
        "metadata": {"name": name},
        "spec": {"partitionName": PARTITION, **spec},
    }
    seen: dict[str, float] = {}
    created = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, rr.PLURAL, body)
    deadline = created + TIMEOUT
    obj: dict = {}
    while time.monotonic() < deadline:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, rr.PLURAL, name)
        now = time.monotonic()
        for key, reached in (
            ("checking", step(obj, rr.CHECKING_ADAPTERS).get("status") not in (None, rr.PENDING)),
            ("checked", step(obj, rr.CHECKING_ADAPTERS).get("status") == rr.DONE),
            (
                "start",
                "start" not in seen
                and step(obj, start_step).get("status") not in (None, rr.PENDING)
                and requested(custom, start_step, image),
            ),
            ("verified", step(obj, rr.VERIFYING).get("status") == rr.DONE),
            ("end", bool((obj.get("status") or {}).get("terminationState"))),
        ):
            if reached and key not in seen:
                seen[key] = now
        if "end" in seen:
            break
        time.sleep(POLL)
    status = obj.get("status") or {}
    if status.get("terminationState") != rr.RESTART_SUCCEEDED:
        raise SystemExit(f"{name}: {status.get('terminationState')} {condition(obj, rr.COMPLETE)}")
    release = seen.get("checked", seen["start"]) - seen.get("checking", seen["start"])
    return Run(
        share=seen["start"] - created - release,
        release=release,
        start=seen["verified"] - seen["start"],
        total=seen["end"] - created,
    )


def node_of(standin: StandIn) -> str:
    vmi = standin.kube.get(VMI.path(NAMESPACE, PARTITION)) or {}
    return (vmi.get("status") or {}).get("nodeName") or ""


def other_node(standin: StandIn, node: str) -> str:
    return next(n for n in standin.node_names if n != node)


def hibernated(standin: StandIn, custom: client.CustomObjectsApi, index: int) -> Run:
    source = node_of(standin)
    image = f"{PARTITION}-image-{index}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HibernationImage",
        "metadata": {"name": image},
        "spec": {"partitionName": PARTITION, "saveFirst": False},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "hibernationimages", body)

    def captured() -> bool:
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "hibernationimages", image
        )
        found = condition(obj, "Captured")
        if found.get("status") == "False" and found.get("reason") != "InProgress":
            raise SystemExit(f"{image}: not captured: {found}")
        return found.get("status") == "True"

    wait_until(captured, TIMEOUT, f"{image} Captured")
    wait_until(lambda: not node_of(standin), TIMEOUT, "the VMI gone")
    target = other_node(standin, source)
    run = restart(
        custom,
        f"{PARTITION}-resume-{index}",
        rr.RESTORING_MEMORY,
        hibernationImageName=image,
        targetNodeName=target,
    )
    report("hibernated", index, (source, target), run, "restore")
    wait_until(lambda: swap_on(custom), TIMEOUT, "the agent reporting again")
    return run


def node_ready(standin: StandIn, name: str) -> bool:
    node = standin.kube.get(f"{NODES_PATH}/{name}") or {}
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def node_healthy(standin: StandIn, name: str) -> bool:
    """Ready and without taints (the lifecycle ones are lifted a pass after Ready)."""
    node = standin.kube.get(f"{NODES_PATH}/{name}") or {}
    return node_ready(standin, name) and not (node.get("spec") or {}).get("taints")


def fenced(standin: StandIn, custom: client.CustomObjectsApi, index: int) -> Run:
    source = node_of(standin)
    target = other_node(standin, source)
    standin.power_off_node(source)
    # a fence is for a node known lost: NotReady first (node_monitor_grace, shortened)
    wait_until(lambda: not node_ready(standin, source), TIMEOUT, f"node {source} NotReady")
    node = standin.kube.get(f"{NODES_PATH}/{source}") or {}
    taints = [*((node.get("spec") or {}).get("taints") or []), FENCE]
    standin.kube.merge_patch(f"{NODES_PATH}/{source}", {"spec": {"taints": taints}})
    try:
        run = restart(custom, f"{PARTITION}-fenced-{index}", rr.BOOTING, targetNodeName=target)
    finally:
        standin.power_on_node(source)
        node = standin.kube.get(f"{NODES_PATH}/{source}") or {}
        kept = [t for t in (node.get("spec") or {}).get("taints") or [] if t["key"] != FENCE["key"]]
        standin.kube.merge_patch(f"{NODES_PATH}/{source}", {"spec": {"taints": kept or None}})
        wait_until(lambda: node_healthy(standin, source), TIMEOUT, f"node {source} healthy")
    report("fenced", index, (source, target), run, "boot")
    wait_until(lambda: swap_on(custom), TIMEOUT, "the agent reporting again")
    return run


def report(kind: str, index: int, nodes: tuple[str, str], run: Run, started: str) -> None:
    print(
        f"{kind} run {index + 1} ({nodes[0]} -> {nodes[1]}): operator's share {run.share:.2f} s"
        f" (+ volume release {run.release:.2f} s), {started} {run.start:.2f} s,"
        f" whole restart {run.total:.2f} s",
        flush=True,
    )


def medians(kind: str, runs: list[Run], started: str) -> None:
    share = statistics.median(r.share for r in runs)
    verdict = "met" if share <= GOAL else "NOT met"
    print(
        f"{kind}, median of {len(runs)}: operator's share {share:.2f} s (goal <= {GOAL:.0f} s:"
        f" {verdict}), volume release {statistics.median(r.release for r in runs):.2f} s,"
        f" {started} {statistics.median(r.start for r in runs):.2f} s,"
        f" whole restart {statistics.median(r.total for r in runs):.2f} s"
    )


def bench(args: argparse.Namespace, workdir: Path) -> tuple[list[Run], list[Run]]:
    with real_guest_cluster(workdir) as (standin, api):
        standin.settings.node_monitor_grace = NODE_MONITOR_GRACE
        custom = client.CustomObjectsApi(api)
        custom.create_cluster_custom_object(GROUP, VERSION, "viosclusters", pool())
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "partitions", partition())
        wait_until(lambda: swap_on(custom), TIMEOUT, "the Partition Ready with its swap on")
        resumed = [hibernated(standin, custom, index) for index in range(args.repeat)]
        booted = [fenced(standin, custom, index) for index in range(args.repeat)]
        return resumed, booted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="restarts of each kind to measure")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-remote-restart-"))
    print(f"RemoteRestart of a 512 MiB real guest, local cluster in {workdir}", flush=True)
    resumed, booted = bench(args, workdir)
    medians("hibernated", resumed, "restore")
    medians("fenced", booted, "boot")
    return 0


if __name__ == "__main__":
    os.environ.pop("KUBECONFIG", None)
    sys.exit(main())
