"""`lparkube run` as real processes against the real API server: probes, metrics, JSON logs,
and Lease-based leader election between two replicas."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import chart_identity
import pytest
from kubernetes import client

from lparkube import runtime
from lparkube.config import DEFAULT_IDENTITY_SECRET, Address, LeaseConfig, Settings
from lparkube.version import version
from lparkube_devenv.controlplane import LocalControlPlane, find_tool, free_port, wait_until

LEASE_NAME = "lparkube-operator"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
LEASE_DURATION = 15.0


def lparkube_executable() -> str:
    beside_python = Path(sys.executable).with_name("lparkube")
    return str(beside_python) if beside_python.exists() else shutil.which("lparkube") or "lparkube"


class Replica:
    """One ``lparkube run`` process in its own session, with its ports and log files."""

    def __init__(
        self,
        kubeconfig: Path,
        lease_namespace: str,
        identity: str,
        workdir: Path,
        identity_secret: str = DEFAULT_IDENTITY_SECRET,
    ):
        self.identity = identity
        self.health = f"http://127.0.0.1:{free_port()}"
        self.metrics = f"http://127.0.0.1:{free_port()}"
        self.stdout_path = workdir / f"{identity}.stdout"
        self.stderr_path = workdir / f"{identity}.stderr"
        self.argv = [
            lparkube_executable(), "run",
            "--kubeconfig", str(kubeconfig),
            "--health-address", self.health.removeprefix("http://"),
            "--metrics-address", self.metrics.removeprefix("http://"),
            # its own port: a `make run` on this machine already holds the default :8081
            "--agent-gateway-address", f"127.0.0.1:{free_port()}",
            "--lease-namespace", lease_namespace,
            "--identity", identity,
            "--identity-secret", identity_secret,
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self, *extra: str) -> Replica:
        env = {k: v for k, v in os.environ.items() if k not in ("POD_NAMESPACE", "KUBECONFIG")}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*self.argv, *extra], stdout=out, stderr=err, env=env, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def get(self, base: str, path: str) -> tuple[int, str]:
        """HTTP status and body; 0 while nothing listens yet."""
        try:
            with urllib.request.urlopen(f"{base}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def ready_status(self) -> int:
        return self.get(self.health, "/readyz")[0]

    def scrape(self) -> str:
        status, body = self.get(self.metrics, "/metrics")
        assert status == 200, f"/metrics answered {status}"
        return body

    def wait_ready(self) -> None:
        wait_until(
            lambda: self.ready_status() == 200 or self.exited(),
            START_TIMEOUT,
            f"{self.identity} to become ready",
        )
        assert not self.exited(), f"{self.identity} exited early:\n{self.output()}"

    def exited(self) -> bool:
        assert self.process is not None
        return self.process.poll() is not None

    def terminate(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT)

    def leftover_processes(self) -> list[int]:
        """Processes still in this replica's session (its children, had it any)."""
        leftovers = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == self.pid:
                        leftovers.append(int(entry.name))
                except (ProcessLookupError, PermissionError):
                    continue
        return leftovers

    def log_entries(self) -> list[dict]:
        """Every stdout line, each of which must be one JSON object."""
        lines = self.stdout_path.read_text().splitlines()
        return [json.loads(line) for line in lines]

    def output(self) -> str:
        return self.stdout_path.read_text()[-4000:] + self.stderr_path.read_text()[-4000:]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def replicas(
    control_plane: LocalControlPlane,
    kubeconfig: Path,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> Iterator[Callable[[str], Replica]]:
    """Factory of replicas sharing one Lease in the test namespace, each authenticated as the
    Helm chart's ServiceAccount released there (so election works with the chart's Lease
    Role, not as admin); killed if left running."""
    identity = chart_identity.install_identity(
        api_client,
        find_tool("helm", control_plane.bin_dir),
        release=f"lparkube-{namespace}"[:53],
        namespace=namespace,
        admin_kubeconfig=kubeconfig,
        workdir=tmp_path,
    )
    started: list[Replica] = []

    def make(name: str) -> Replica:
        # the chart's name for the root secret: its Role grants get on that one only
        secret = f"{identity.release}-identity"
        replica = Replica(identity.kubeconfig, namespace, name, tmp_path, secret)
        started.append(replica)
        return replica

    yield make
    for replica in started:
        replica.kill()
    chart_identity.remove_cluster_objects(api_client, identity)


def lease_holder(api_client: client.ApiClient, namespace: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(api_client).read_namespaced_lease(LEASE_NAME, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return lease.spec.holder_identity or ""


def metric(text: str, name: str, labels: str) -> float | None:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def stays(predicate: Callable[[], bool], seconds: float, interval: float = 0.25) -> bool:
    """True if ``predicate`` holds at every poll for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(interval)
    return predicate()


def assert_stopped_cleanly(replica: Replica) -> None:
    code = replica.terminate()
    assert code == 0, f"{replica.identity} exited {code}:\n{replica.output()}"
    assert replica.leftover_processes() == []
    assert "Traceback" not in replica.stderr_path.read_text()


def test_leader_and_standby_hand_over_the_lease(
    replicas: Callable[[str], Replica], api_client: client.ApiClient, namespace: str
) -> None:
    first = replicas("replica-a").start()
    first.wait_ready()

    assert first.get(first.health, "/healthz")[0] == 200
    text = first.scrape()
    assert metric(text, "lparkube_build_info", f'version="{version()}"') == 1.0
    assert metric(text, "lparkube_leader", 'identity="replica-a"') == 1.0
    assert lease_holder(api_client, namespace) == "replica-a"

    second = replicas("replica-b").start()
    wait_until(
        lambda: second.get(second.health, "/healthz")[0] == 200, START_TIMEOUT, "standby alive"
    )
    assert stays(lambda: second.ready_status() == 503 and not second.exited(), seconds=5.0)
    assert metric(second.scrape(), "lparkube_leader", 'identity="replica-b"') == 0.0
    assert lease_holder(api_client, namespace) == "replica-a"
    assert first.ready_status() == 200

    handover_started = time.monotonic()
    assert_stopped_cleanly(first)
    second.wait_ready()
    assert time.monotonic() - handover_started < LEASE_DURATION
    assert lease_holder(api_client, namespace) == "replica-b"
    assert metric(second.scrape(), "lparkube_leader", 'identity="replica-b"') == 1.0

    assert_stopped_cleanly(second)
    assert lease_holder(api_client, namespace) == ""

    for replica in (first, second):
        entries = replica.log_entries()
        assert entries, f"{replica.identity} logged nothing"
        for entry in entries:
            assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    messages = [entry["message"] for entry in first.log_entries()]
    assert any(m.startswith("Acquired Lease") for m in messages)
    assert any(m.startswith("Released Lease") for m in messages)
    assert any(e["logger"].startswith("kopf") for e in first.log_entries())


def test_a_standby_stops_cleanly_without_touching_the_lease(
    replicas: Callable[[str], Replica], api_client: client.ApiClient, namespace: str
) -> None:
    leader = replicas("replica-e").start()
    leader.wait_ready()
    standby = replicas("replica-f").start()
    wait_until(
        lambda: any("Standing by" in e["message"] for e in standby.log_entries()),
        START_TIMEOUT,
        "the second replica to stand by",
    )

    assert_stopped_cleanly(standby)
    assert lease_holder(api_client, namespace) == "replica-e"
    assert leader.ready_status() == 200
    assert_stopped_cleanly(leader)


def test_leader_exits_nonzero_when_its_lease_is_taken(
    replicas: Callable[[str], Replica], api_client: client.ApiClient, namespace: str
) -> None:
    leader = replicas("replica-c").start(
        "--lease-duration", "6", "--lease-renew-interval", "1", "--lease-renew-deadline", "4"
    )  # fmt: skip
    leader.wait_ready()
    client.CoordinationV1Api(api_client).patch_namespaced_lease(
        LEASE_NAME, namespace, {"spec": {"holderIdentity": "intruder"}}
    )

    code = leader.process.wait(timeout=STOP_TIMEOUT) if leader.process else None
    assert code == 1, leader.output()
    assert lease_holder(api_client, namespace) == "intruder"  # not ours: left alone
    assert any("Leadership lost" in e["message"] for e in leader.log_entries())


def test_missing_lease_namespace_is_a_clear_error(kubeconfig: Path, tmp_path: Path) -> None:
    replica = Replica(kubeconfig, "no-such-namespace", "replica-d", tmp_path).start()
    try:
        code = replica.process.wait(timeout=START_TIMEOUT) if replica.process else None
    finally:
        replica.kill()

    assert code == 1
    errors = [e["message"] for e in replica.log_entries() if e["level"] == "error"]
    assert any("'no-such-namespace'" in m and "does not exist" in m for m in errors), errors


def test_in_process_run_leaves_no_threads_behind(kubeconfig: Path, namespace: str) -> None:
    health = Address("127.0.0.1", free_port())
    settings = Settings(
        lease=LeaseConfig(namespace=namespace, identity="in-process"),
        kubeconfig=kubeconfig,
        health_address=health,
        metrics_address=None,
    )
    threads_before = set(threading.enumerate())

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://{health}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    async def scenario() -> int:
        stop = asyncio.Event()
        running = asyncio.create_task(runtime.run(settings, stop))
        await asyncio.to_thread(wait_until, ready, START_TIMEOUT, "in-process readiness")
        stop.set()
        return await asyncio.wait_for(running, STOP_TIMEOUT)

    assert asyncio.run(scenario()) == 0
    assert set(threading.enumerate()) <= threads_before
