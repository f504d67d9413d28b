#!/usr/bin/env python3
"""Benchmark the agent gateway under a flood: do legitimate reports still get through quickly?

    make bench-gateway [BENCH_ARGS="--flood 20000 --in-flight 6000 --idle 3000 --flood-sources 1"]

Runs the real operator (``lparkube run``, admin credentials, its TLS gateway on loopback) on a
local control plane started here, with the KubeVirt stand-in, so the operator makes each
Partition's key Secret (key and TLS files) itself and keeps its Partition directory from its
own watch. Then:

* **agents** (one child process): ``--agents`` Partitions, each reporting every
  ``--spacing`` seconds with the guest agent's own ``report.push`` (TLS with the files its
  Secret delivers, signs, POSTs on a fresh connection, verifies the signed answer; gives up
  after 10 s). The latency of every report is measured, first while all is quiet, then during
  the flood.
* **flood** (another child process), from ``--flood-sources`` loopback addresses (127.0.0.2
  on; the agents connect from 127.0.0.1), as from that many attacking pods: ``--idle``
  connections that never send a byte, then ``--flood`` reports for partitions that do not
  exist (a fresh name each, well-formed headers, a random signature), each on its own TLS
  connection with the certificate of a compromised guest (one more Partition's),
  ``--in-flight`` at a time.

* **a save under siege**: one more Partition has a real guest agent process (``lparkube-agent
  serve`` with the files its Secret delivers, an application registered), held under a
  slowloris of 128 connections (a byte every 5 s each, reopened as soon as they are cut) from
  before the flood to its end; ``--save-after`` seconds into the flood a SaveEvent with a
  ``--save-deadline`` deadline targets it.

Printed: the legitimate report latency (p50/p99/max) quiet and under flood, the SaveEvent's
outcome and how long it took against its deadline, how the flood was
answered and how long idle connections stayed open, and the API lookups the flood cost: the
gateway's key lookups (``lparkube_agent_key_lookups_total``) and the API server's own count of
GETs of Partitions and Secrets during the flood (which includes the agents' status writes).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import secrets
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "lparkube.io", "v1alpha1"
NAMESPACE = "bench-gateway"
LEASE_NAMESPACE = "bench-gateway-system"
REPORTS_PATH = "/v1/reports"
PUSH_TIMEOUT = 10.0  # what the guest agent allows a report


def free_port() -> int:
    from lparkube_devenv.controlplane import free_port as port  # noqa: PLC0415

    return port()


# --- the legitimate agents (child process) ---------------------------------------------------


@dataclass(frozen=True)
class Agent:
    """A Partition's agent as its key Secret equips it: the key and ca.crt, tls.crt, tls.key."""

    partition: str
    key: bytes
    files: dict[str, bytes]
    config: dict

    def tls_context(self) -> ssl.SSLContext:
        """The agent's TLS client side (the guest agent's own ``tls.client_context``)."""
        from lparkube_agent import tls  # noqa: PLC0415

        directory = Path(tempfile.mkdtemp(prefix="bench-agent-"))
        paths = tls.TLSFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
        for path in (paths.ca, paths.cert, paths.key):
            path.write_bytes(self.files[path.name])
        return tls.client_context(paths)


def agents_main(conn: Any, url: str, agents: list[Agent], spacing: float) -> None:
    """Child: report for every agent every ``spacing`` seconds until told to stop; send back
    (start time, seconds, error or "") for each report."""
    from lparkube_agent import report  # noqa: PLC0415

    body = {"agentVersion": "bench", "kernelRelease": "bench", "applications": []}
    stop = threading.Event()
    samples: list[tuple[float, float, str]] = []

    def run(index: int, agent: Agent) -> None:
        context = agent.tls_context()
        stop.wait(spacing * index / len(agents))  # spread the agents over the spacing
        while not stop.is_set():
            began, error = time.time(), ""
            try:
                report.push(url, agent.key, agent.partition, body, context, timeout=PUSH_TIMEOUT)
            except Exception as exc:  # every failure is a figure
                error = f"{type(exc).__name__}: {exc}"[:120]
            samples.append((began, time.time() - began, error))
            stop.wait(max(0.0, began + spacing - time.time()))

    threads = [
        threading.Thread(target=run, args=(i, agent), daemon=True) for i, agent in enumerate(agents)
    ]
    for thread in threads:
        thread.start()
    conn.send("started")
    conn.recv()
    stop.set()
    for thread in threads:
        thread.join(PUSH_TIMEOUT + 1)
    conn.send(samples)


# --- the flood (child process) ---------------------------------------------------------------


def flood_request(index: int, body: bytes) -> bytes:
    """A report for a partition that does not exist, headers well-formed, signature random."""
    headers = {
        "Host": "gateway",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "X-Lparkube-Partition": f"flood-{index % 1000}/ghost-{index}",
        "X-Lparkube-Timestamp": str(int(time.time())),
        "X-Lparkube-Nonce": secrets.token_hex(16),
        "X-Lparkube-Signature": secrets.token_hex(32),
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {REPORTS_PATH} HTTP/1.1\r\n{head}\r\n".encode() + body


async def flood(  # noqa: PLR0917
    port: int, count: int, in_flight: int, idle: int, sources: list[str], stolen: Agent
) -> dict:
    """Idle TCP connections, then reports over TLS with a compromised guest's certificate."""
    body = b'{"agentVersion": "flood", "kernelRelease": "flood", "applications": []}'
    connecting = asyncio.Semaphore(500)

    def local(index: int) -> tuple[str, int]:
        return sources[index % len(sources)], 0

    async def connect(index: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        async with connecting:
            try:
                return await asyncio.open_connection("127.0.0.1", port, local_addr=local(index))
            except OSError:
                return None

    async def closed_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        """An idle connection: seconds until the gateway closes it."""
        began = time.monotonic()
        try:
            while await reader.read(1024):
                pass
        except OSError:
            pass
        writer.close()
        return time.monotonic() - began

    gate = asyncio.Semaphore(in_flight)
    statuses: Counter = Counter()
    context = stolen.tls_context()

    async def one(index: int) -> None:
        async with gate:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=local(index), ssl=context
                )
            except OSError as exc:
                statuses[f"no connection ({type(exc).__name__})"] += 1
                return
            try:
                writer.write(flood_request(index, body))
                line = await reader.readline()
                statuses[line.split(b" ")[1].decode() if line else "closed"] += 1
            except OSError:
                statuses["reset"] += 1
            finally:
                writer.close()

    held = [c for c in await asyncio.gather(*(connect(i) for i in range(idle))) if c]
    watchers = [asyncio.create_task(closed_after(*connection)) for connection in held]
    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    seconds = time.monotonic() - began
    done, pending = await asyncio.wait(watchers, timeout=30) if watchers else (set(), set())
    for task in pending:
        task.cancel()
    return {
        "statuses": dict(statuses),
        "seconds": seconds,
        "idle": [task.result() for task in done],
        "idle_refused": idle - len(held),
        "idle_open": len(pending),
    }


def flood_main(
    conn: Any, port: int, sizes: tuple[int, int, int], sources: list[str], stolen: Agent
) -> None:
    """Child: the flood; sends back what it saw."""
    conn.send(asyncio.run(flood(port, *sizes, sources, stolen)))


# --- the cluster -----------------------------------------------------------------------------


def partition_manifest(name: str, index: int) -> dict:
    from lparkube_devenv.kubevirt import IP_ANNOTATION  # noqa: PLC0415

    template = {
        "metadata": {"annotations": {IP_ANNOTATION: f"127.0.1.{index + 1}"}},
        "spec": {
            "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
            "volumes": [{"name": "root", "containerDisk": {"image": "example/disk"}}],
        },
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Partition",
        "metadata": {"name": name},
        "spec": {
            "vmTemplate": {"spec": {"runStrategy": "Always", "template": template}},
            "agent": {"port": 9000 + index, "heartbeatTimeout": "90s"},
        },
    }


def partition_agents(api: Any, names: list[str]) -> list[Agent]:
    """Create the Partitions; their agents from the Secrets the operator made."""
    from kubernetes import client  # noqa: PLC0415

    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    for i, name in enumerate(names):
        custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "partitions", partition_manifest(name, i)
        )
    agents = []
    for name in names:
        deadline = time.monotonic() + 60
        while True:
            try:
                secret = core.read_namespaced_secret(f"{name}-agent-key", NAMESPACE)
                data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
                files = {k: data[k] for k in ("ca.crt", "tls.crt", "tls.key")}
                config = json.loads(data["config.json"])
                agents.append(Agent(f"{NAMESPACE}/{name}", data["key"], files, config))
                break
            except (client.ApiException, KeyError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return agents


def api_server_reads(api: Any) -> float:
    """GETs of Partitions and Secrets the API server has served (its own metrics)."""
    from lparkube_devenv.controlplane import apiserver_gets  # noqa: PLC0415

    return apiserver_gets(api, ("partitions", "secrets"))


def operator_counter(metrics_url: str, sample_name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def start_operator(kubeconfig: Path, workdir: Path) -> tuple[subprocess.Popen, str, str]:
    gateway = f"127.0.0.1:{free_port()}"
    health, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    argv = [
        str(Path(sys.executable).with_name("lparkube")), "run",
        "--kubeconfig", str(kubeconfig),
        "--health-address", health, "--metrics-address", metrics,
        "--agent-gateway-address", gateway, "--agent-gateway-url", f"https://{gateway}",
        "--lease-namespace", LEASE_NAMESPACE, "--identity", "bench-gateway",
        "--namespace", NAMESPACE, "--log-format", "text", "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("POD_NAMESPACE", "KUBECONFIG")}
    with (workdir / "operator.log").open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{health}/readyz", timeout=2):
                break
        except OSError as exc:
            if time.monotonic() > deadline or process.poll() is not None:
                log = workdir / "operator.log"
                raise RuntimeError(f"the operator did not start; see {log}") from exc
            time.sleep(0.2)
    return process, f"https://{gateway}", f"http://{metrics}/metrics"


# --- the run ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def latency_line(label: str, samples: list[tuple[float, float, str]]) -> str:
    seconds = [s for _, s, _ in samples]
    failed = sum(1 for *_, error in samples if error)
    if not seconds:
        return f"  {label:<12} no reports"
    p50, p99, top = (1000 * x for x in (pct(seconds, 0.5), pct(seconds, 0.99), max(seconds)))
    return (
        f"  {label:<12} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   max {top:7.1f} ms"
        f"   ({len(seconds)} reports, {failed} failed)"
    )


class Child:
    """A child process running ``target(conn, *args)``, spoken to over a pipe."""

    def __init__(self, target: Any, *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()

    def result(self) -> Any:
        answer = self.conn.recv()
        self.process.join(PUSH_TIMEOUT + 5)
        return answer


class Counts:
    """The API lookups so far: the gateway's key lookups and unknown names, and the API
    server's GETs of Partitions and Secrets."""

    def __init__(self, api: Any, metrics_url: str) -> None:
        self.key_lookups = operator_counter(metrics_url, "lparkube_agent_key_lookups_total")
        self.refused = sum(
            operator_counter(metrics_url, "lparkube_agent_reports_total", result=result)
            for result in ("unknown-partition", "wrong-partition")
        )
        self.reads = api_server_reads(api)

    def since(self, before: Counts) -> dict[str, float]:
        return {k: v - getattr(before, k) for k, v in vars(self).items()}


def besieged_agent(agent: Agent, index: int, workdir: Path) -> tuple[Any, Any, tuple[str, int]]:
    """The besieged Partition's real agent on its VMI's address, an application registered."""
    from lparkube_agent.testing import AgentProcess, TLSMaterial, cli, start_app  # noqa: PLC0415

    root = workdir / "besieged"
    root.mkdir()
    address = (f"127.0.1.{index + 1}", 9000 + index)  # as partition_manifest places it
    settings = {**agent.config, "listen": f"{address[0]}:{address[1]}"}
    files = agent.files
    tls = TLSMaterial(files["ca.crt"], files["tls.crt"], files["tls.key"])
    process = AgentProcess(root, agent.partition, agent.key, settings, tls_material=tls).start()
    app, _ = start_app("signal", "ledger", root / "saves")
    cli(process, "register", "--name=ledger", f"--pid={app.pid}", "--method=Signal")
    return process, app, address


def wait_condition(api: Any, name: str, kind: str, condition: str, timeout: float) -> dict:
    """The object once its condition is True (polled)."""
    from kubernetes import client  # noqa: PLC0415

    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    while True:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, kind, name)
        conditions = (obj.get("status") or {}).get("conditions") or []
        if any(c["type"] == condition and c["status"] == "True" for c in conditions):
            return obj
        if time.monotonic() > deadline:
            raise TimeoutError(f"{kind}/{name}: {condition} not True in {timeout:g}s")
        time.sleep(0.2)


def save_under_siege(api: Any, args: argparse.Namespace, results: dict) -> None:
    """Thread: ``--save-after`` seconds in, a SaveEvent for the besieged Partition; records
    how it ended and how long it took."""
    from kubernetes import client  # noqa: PLC0415

    time.sleep(args.save_after)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SaveEvent",
        "metadata": {"name": "under-siege"},
        "spec": {
            "reason": "Manual",
            "targets": {"partitions": ["besieged"]},
            "deadline": f"{args.save_deadline}s",
            "applicationTimeout": "5s",
        },
    }
    began = time.monotonic()
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "saveevents", body
    )
    try:
        done = wait_condition(api, "under-siege", "saveevents", "Complete", args.save_deadline + 30)
    except TimeoutError as exc:
        results.update(error=str(exc))
        return
    status = done["status"]
    entry = next(e for e in status["partitions"] if e["name"] == "besieged")
    results.update(
        seconds=time.monotonic() - began,
        outcome=entry["outcome"],
        message=entry.get("message", ""),
        in_time=status["completionTime"] <= status["deadlineTime"],
    )


def measure(
    args: argparse.Namespace, api: Any, gateway_url: str, metrics_url: str, workdir: Path
) -> dict:
    from lparkube_agent.testing import Slowloris  # noqa: PLC0415

    names = [*(f"agent-{i}" for i in range(args.agents)), "compromised", "besieged"]
    *legitimate, stolen, siege = partition_agents(api, names)
    agent, app, address = besieged_agent(siege, len(names) - 1, workdir)
    try:
        wait_condition(api, "besieged", "partitions", "AgentConnected", 30)
        with Slowloris(address) as attack:
            time.sleep(6)  # every slow connection has sent its second byte
            figures = flood_and_save(args, api, gateway_url, metrics_url, legitimate, stolen)
            figures["siege"] = {"open": attack.open_since(time.monotonic())}
    finally:
        app.kill()
        app.wait()
        agent.close()
    return figures


def flood_and_save(  # noqa: PLR0917
    args: argparse.Namespace,
    api: Any,
    gateway_url: str,
    metrics_url: str,
    legitimate: list[Agent],
    stolen: Agent,
) -> dict:
    agents = Child(agents_main, gateway_url, legitimate, args.spacing)
    agents.conn.recv()
    print(f"{args.agents} agents reporting; quiet for {args.quiet:g}s ...", flush=True)
    time.sleep(args.quiet)
    before = Counts(api, metrics_url)
    sources = [f"127.0.{2 + i // 250}.{2 + i % 250}" for i in range(args.flood_sources)]
    print(
        f"Flooding from {len(sources)} address(es): {args.idle} idle connections, then "
        f"{args.flood} reports for unknown partitions over TLS with a compromised guest's "
        f"certificate, {args.in_flight} in flight ...",
        flush=True,
    )
    began = time.time()
    port = int(gateway_url.rsplit(":", 1)[1])
    sizes = (args.flood, args.in_flight, args.idle)
    flood_child = Child(flood_main, port, sizes, sources, stolen)
    save: dict = {}
    saver = threading.Thread(target=save_under_siege, args=(api, args, save), daemon=True)
    saver.start()
    flooded = flood_child.result()
    ended = time.time()
    saver.join(args.save_deadline + 40)
    counts = Counts(api, metrics_url).since(before)
    time.sleep(2)
    agents.conn.send("stop")
    samples = agents.result()
    return {
        "flood": flooded,
        "counts": counts,
        "samples": samples,
        "window": (began, ended),
        "save": save,
    }


def print_figures(args: argparse.Namespace, figures: dict) -> None:
    began, ended = figures["window"]
    flooded, counts = figures["flood"], figures["counts"]
    quiet = [s for s in figures["samples"] if s[0] < began]
    during = [s for s in figures["samples"] if began <= s[0] <= ended]
    print(
        f"\nGateway under flood from {args.flood_sources} address(es): {args.idle} idle "
        f"connections + {args.flood} unsigned reports with fresh partition names over TLS "
        f"({args.in_flight} in flight); {args.agents} agents reporting every {args.spacing:g}s"
    )
    print("legitimate report latency (connect to verified answer):")
    print(latency_line("quiet", quiet))
    print(latency_line("under flood", during))
    for error, count in Counter(error for *_, error in during if error).most_common(5):
        print(f"    {count} x {error}")
    save = figures["save"]
    if "error" in save:
        print(f"SaveEvent under siege: {save['error']}")
    else:
        print(
            f"SaveEvent under siege ({args.save_after:g}s into the flood, its agent under a "
            f"128-connection slowloris, {figures['siege']['open']} slow connections open at the "
            f"end): {save['outcome']} in {save['seconds']:.2f}s of its {args.save_deadline}s "
            f"deadline ({'within' if save['in_time'] else 'PAST'} it) {save['message']}"
        )
    seconds = flooded["seconds"]
    print(f"flood: over in {seconds:.1f}s ({args.flood / seconds:.0f}/s): {flooded['statuses']}")
    held = [t for t in flooded["idle"] if t >= 0.1]
    at_once = len(flooded["idle"]) - len(held)
    print(
        f"idle connections: {len(held)} held, closed by the gateway after median "
        f"{statistics.median(held) if held else 0:.1f}s (max {max(held, default=0):.1f}s); "
        f"{at_once} closed at once; {flooded['idle_open']} still open 30s after the flood; "
        f"{flooded['idle_refused']} could not connect"
    )
    print(
        f"API lookups during the flood: {counts['key_lookups']:.0f} key lookups by the gateway "
        f"({counts['refused']:.0f} reports refused before any); the API server served "
        f"{counts['reads']:.0f} GETs of Partitions and Secrets (the agents' status writes read "
        "their Partition)"
    )


def bench(args: argparse.Namespace, kubeconfig: Path, workdir: Path) -> None:
    from kubernetes import client, config  # noqa: PLC0415

    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        for ns in (NAMESPACE, LEASE_NAMESPACE):
            client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
        operator, gateway_url, metrics_url = start_operator(kubeconfig, workdir)
        print(f"Operator started; log: {workdir / 'operator.log'}", flush=True)
        try:
            figures = measure(args, api, gateway_url, metrics_url, workdir)
        finally:
            operator.terminate()
            operator.wait(30)
    print_figures(args, figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=20_000, help="reports for unknown names")
    parser.add_argument("--in-flight", type=int, default=6_000, help="flood connections at once")
    parser.add_argument("--idle", type=int, default=3_000, help="idle connections held")
    parser.add_argument(
        "--flood-sources",
        type=int,
        default=1,
        help="source addresses of the flood (pods), from 127.0.0.2; the agents use 127.0.0.1",
    )
    parser.add_argument("--agents", type=int, default=8, help="legitimate agents")
    parser.add_argument("--spacing", type=float, default=2.0, help="seconds between reports")
    parser.add_argument("--quiet", type=float, default=6.0, help="seconds measured before")
    parser.add_argument(
        "--save-after", type=float, default=3.0, help="seconds into the flood the save starts"
    )
    parser.add_argument("--save-deadline", type=int, default=30, help="the SaveEvent's deadline")
    args = parser.parse_args()
    from kubernetes import config  # noqa: PLC0415

    from lparkube_devenv.controlplane import LocalControlPlane, install_crds  # noqa: PLC0415
    from lparkube_devenv.kubevirt import StandIn  # noqa: PLC0415

    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    print(f"Starting a local control plane and the KubeVirt stand-in in {workdir} ...", flush=True)
    with LocalControlPlane(workdir / "control-plane") as plane:
        with config.new_client_from_config(config_file=str(plane.kubeconfig)) as api:
            install_crds(api, REPO / "crds")
        with StandIn(plane.kubeconfig, workdir / "kubevirt", plane.front_proxy_ca):
            bench(args, plane.kubeconfig, workdir)
    return 0


if __name__ == "__main__":
    os.environ.pop("KUBECONFIG", None)
    sys.exit(main())
