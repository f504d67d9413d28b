"""The KubeVirt stand-in on the session's control plane (fixture ``kubevirt``)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import chart_identity
import pytest
from agent_tls import cluster_credentials, standalone_credentials, tls_material
from kubernetes import client
from partition_helpers import Partitions
from remote_restart_helpers import NodePool, node_pool
from saving_helpers import Fleet
from sleeper_helpers import Sleepers

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube_agent.testing import AgentProcess, TLSMaterial
from lparkube_devenv.controlplane import LocalControlPlane, find_tool, free_port, wait_until
from lparkube_devenv.guests import on_host
from lparkube_devenv.kubevirt import StandIn
from lparkube_devenv.kubevirt.logic import DRAIN_TAINT
from lparkube_devenv.kubevirt.nodes import NODES_PATH, ensure_nodes
from lparkube_devenv.kubevirt.qemu_guest import HostService

GATEWAY_SERVICE = "lparkube-agent-gateway.lparkube-it.svc"  # what real guests resolve


@pytest.fixture(scope="session")
def gateway_port() -> int:
    """The session operator's agent gateway port (loopback)."""
    return free_port()


@pytest.fixture(scope="session")
def kubevirt(
    control_plane: LocalControlPlane,
    gateway_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StandIn]:
    """A running KubeVirt stand-in (CRDs, controller, virt-api) with nodes node-a/b/c; VMIs
    annotated for the QEMU runtime reach the session operator's gateway by GATEWAY_SERVICE."""
    standin = StandIn(
        control_plane.kubeconfig,
        tmp_path_factory.mktemp("kubevirt"),
        control_plane.front_proxy_ca,
        host_services=[HostService(GATEWAY_SERVICE, gateway_port)],
    )
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def healthy_nodes(kubevirt: StandIn) -> Iterator[tuple[str, ...]]:
    """The stand-in's node names; every node is Ready, uncordoned and untainted afterwards."""
    yield kubevirt.node_names
    for name in kubevirt.node_names:
        node = kubevirt.kube.request("GET", f"{NODES_PATH}/{name}")
        taints = [t for t in node["spec"].get("taints") or [] if t.get("key") != DRAIN_TAINT]
        spec = {"unschedulable": None, "taints": taints or None}
        kubevirt.kube.merge_patch(f"{NODES_PATH}/{name}", {"spec": spec})
    ensure_nodes(kubevirt.kube, kubevirt.node_names)


# --- the operator and real guest agents (shared by the Partition and SaveEvent tests) -------

OPERATOR_IDENTITY = "lparkube-integration"  # fixed: a restarted process renews its own Lease
OPERATOR_START_TIMEOUT = 60.0
# Agent NetworkPolicies are on, as the chart's default is; they admit pods with these labels.
OPERATOR_POD_LABELS = "app.kubernetes.io/name=lparkube,app.kubernetes.io/component=operator"


class OperatorProcess:
    """``lparkube run`` as a subprocess against the session's control plane.

    ``kill()`` is SIGKILL (a crash), ``stop()`` SIGTERM; ``start()`` starts it again with the
    same identity and ports, so it takes its own Lease back at once and agents keep reporting
    to the same gateway URL.
    """

    def __init__(
        self,
        kubeconfig: Path,
        lease_namespace: str,
        identity_secret: str,
        workdir: Path,
        *,
        gateway_port: int | None = None,
        agent_network_policy: bool = True,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.lease_namespace = lease_namespace
        self.identity_secret = identity_secret
        self.health_url = f"http://127.0.0.1:{free_port()}"
        self.metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        # Host processes reach the gateway on loopback (gateway_url); the operator advertises
        # it to guests by a Service-style name (advertised_url), which the stand-in's real
        # guests resolve to their host-service address, as cluster DNS would.
        gateway_port = gateway_port or free_port()
        self.gateway_url = f"https://127.0.0.1:{gateway_port}"
        self.advertised_url = f"https://{GATEWAY_SERVICE}:{gateway_port}"
        self.log_path = workdir / "operator.log"
        self.argv = [
            str(Path(sys.executable).with_name("lparkube")), "run",
            "--kubeconfig", str(kubeconfig),
            "--health-address", self.health_url.removeprefix("http://"),
            "--metrics-address", self.metrics_url.removeprefix("http://").removesuffix("/metrics"),
            "--agent-gateway-address", self.gateway_url.removeprefix("https://"),
            "--agent-gateway-url", self.advertised_url,
            "--lease-namespace", lease_namespace,
            "--identity-secret", identity_secret,
            "--identity", OPERATOR_IDENTITY,
            "--log-format", "text",
        ]  # fmt: skip
        if agent_network_policy:
            self.argv += ["--agent-network-policy", f"--operator-pod-labels={OPERATOR_POD_LABELS}"]
        self.process: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        """Start (if not running) and wait until it leads and runs its handlers."""
        if not self.running():
            env = {k: v for k, v in os.environ.items() if k not in ("POD_NAMESPACE", "KUBECONFIG")}
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
        wait_until(
            lambda: self._ready() or not self.running(), OPERATOR_START_TIMEOUT, "operator ready"
        )
        assert self.running(), f"the operator exited:\n{self.log_tail()}"
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.health_url}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, like a crashed pod: no Lease release, no cleanup."""
        if self.running():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code."""
        if not self.running():
            return None if self.process is None else self.process.returncode
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def log_size(self) -> int:
        """Where the log ends now: ``log_since`` it reads what one test made the operator say."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")


@pytest.fixture(scope="session")
def operator(
    kubevirt: StandIn,
    control_plane: LocalControlPlane,
    kubeconfig: Path,
    api_client: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The real operator (``lparkube run``), leading, with its agent gateway on loopback.

    It runs as the Helm chart's ServiceAccount with exactly the chart's RBAC (rendered by the
    real helm, token from the TokenRequest API), never as the admin: every flow the suite
    drives proves the chart grants enough.
    """
    suffix = uuid.uuid4().hex[:6]
    lease_namespace = f"lparkube-system-{suffix}"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": lease_namespace}})
    workdir = tmp_path_factory.mktemp("operator")
    identity = chart_identity.install_identity(
        api_client,
        find_tool("helm", control_plane.bin_dir),
        release=f"lparkube-it-{suffix}",
        namespace=lease_namespace,
        admin_kubeconfig=kubeconfig,
        workdir=workdir,
    )
    # The chart's name for the root secret (its Role grants get on exactly this one).
    identity_secret = f"{identity.release}-identity"
    process = OperatorProcess(
        identity.kubeconfig,
        lease_namespace,
        identity_secret,
        workdir,
        gateway_port=kubevirt.host_service(GATEWAY_SERVICE).port,
    )
    process.start()
    yield process
    process.stop()
    chart_identity.remove_cluster_objects(api_client, identity)


@pytest.fixture(scope="module")
def crashing_operator(
    operator: OperatorProcess, kubevirt: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """An operator of the module's own, to kill or stop: the same identity, Lease and gateway
    port as the session operator, which is stopped (SIGTERM) meanwhile and started again after
    the module (only one operator may run the operations)."""
    operator.stop()
    mine = OperatorProcess(
        operator.kubeconfig,
        operator.lease_namespace,
        operator.identity_secret,
        tmp_path_factory.mktemp("crashing-operator"),
        gateway_port=kubevirt.host_service(GATEWAY_SERVICE).port,
    )
    try:
        yield mine.start()
    finally:
        mine.stop()
        operator.start()


class GuestAgent:
    """A real ``lparkube-agent serve`` with the config and key the operator generated."""

    def __init__(self, process: AgentProcess, ip: str) -> None:
        self.process = process
        self.ip = ip
        self.root = process.root
        self.config_path = process.config_path
        self.key_path = process.root / "key"
        self.vmcoreinfo_path = process.root / "vmcoreinfo"
        self.socket = process.socket
        self.log_path = process.log_path
        self.key = process.key

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def config(self) -> dict:
        return json.loads(self.config_path.read_text())

    def env(self) -> dict[str, str]:
        """Environment for ``lparkube-agent register/run/list`` against this agent."""
        return self.process.env()

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.stop(signal.SIGKILL)


GuestAgentFactory = Callable[..., GuestAgent]


@pytest.fixture(scope="session")
def operator_credentials(
    operator: OperatorProcess, api_client: client.ApiClient
) -> OperatorCredentials:
    """The running operator's identity (from its root secret) with a certificate of the
    test's own: to call agents, or check what they were given, as the operator would."""
    return cluster_credentials(api_client, operator.lease_namespace, operator.identity_secret)


AGENT_FILES = ("ca.crt", "tls.crt", "tls.key")


def read_agent_secret(
    api_client: client.ApiClient, namespace: str, name: str
) -> tuple[bytes, dict, dict[str, bytes]]:
    """The key, config.json and TLS files the operator wrote for Partition namespace/name."""
    custom = client.CustomObjectsApi(api_client)
    partition = custom.get_namespaced_custom_object(
        "lparkube.io", "v1alpha1", namespace, "partitions", name
    )
    spec_name = ((partition.get("spec") or {}).get("agent") or {}).get("keySecretName")
    secret_name = spec_name or f"{name}-agent-key"
    secret = client.CoreV1Api(api_client).read_namespaced_secret(secret_name, namespace)
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    files = {name: data[name] for name in AGENT_FILES}
    return data["key"], json.loads(data["config.json"]), files


@pytest.fixture
def guest_agent(
    api_client: client.ApiClient, operator_credentials: OperatorCredentials, tmp_path: Path
) -> Iterator[GuestAgentFactory]:
    """``guest_agent(namespace, name, ip="127.0.0.1", port=None, vmcoreinfo="1f5c8b000 1000")``

    Starts a real agent for a Partition the operator has set up: the key and config.json come
    from the operator-generated Secret (waited for), ``listen`` becomes ``ip:port`` (port:
    the one in config.json, i.e. spec.agent.port), the VMCOREINFO file holds ``vmcoreinfo``.
    Every agent started is stopped after the test.
    """
    started: list[GuestAgent] = []

    def start(
        namespace: str,
        name: str,
        *,
        ip: str = "127.0.0.1",
        port: int | None = None,
        vmcoreinfo: str | None = "1f5c8b000 1000\n",
        config: dict | None = None,
    ) -> GuestAgent:
        def secret() -> tuple[bytes, dict, dict[str, bytes]] | None:
            try:
                return read_agent_secret(api_client, namespace, name)
            except (client.ApiException, KeyError):
                return None

        key, settings, files = wait_until(secret, 30, f"the agent key Secret of {namespace}/{name}")
        listen_port = port if port is not None else int(settings["listen"].rpartition(":")[2])
        settings = {
            **settings,
            "listen": f"{ip}:{listen_port}",
            "operatorURL": on_host(settings["operatorURL"]),
            **(config or {}),
        }
        root = tmp_path / f"agent-{namespace}-{name}-{len(started)}"
        root.mkdir()
        if vmcoreinfo is not None:
            (root / "vmcoreinfo").write_text(vmcoreinfo)
        material = tls_material(operator_credentials, files)
        process = AgentProcess(root, settings["partition"], key, settings, tls_material=material)
        agent = GuestAgent(process, ip)
        started.append(agent)
        process.start()
        return agent

    yield start
    for agent in started:
        agent.process.close()


@pytest.fixture
def fleet(
    api_client: client.ApiClient,
    kubevirt: StandIn,
    namespace: str,
    guest_agent: GuestAgentFactory,
    tmp_path: Path,
) -> Iterator[Fleet]:
    """Partitions on chosen nodes, each with a real agent and recording apps (save tests)."""
    fleet = Fleet(api_client, kubevirt, namespace, guest_agent, tmp_path)
    yield fleet
    fleet.close()


@pytest.fixture
def agent(tmp_path: Path, agent_tls: TLSMaterial) -> Iterator[AgentProcess]:
    """A real agent process in a temporary directory (no Kubernetes involved)."""
    process = AgentProcess(tmp_path, tls_material=agent_tls).start()
    yield process
    process.close()


@pytest.fixture(scope="session")
def standalone_identity() -> OperatorCredentials:
    """An identity for agents that run without an operator (the test plays the operator)."""
    return standalone_credentials()


@pytest.fixture(scope="session")
def agent_tls(standalone_identity: OperatorCredentials) -> TLSMaterial:
    """TLS for agents that run without an operator: the identity's CA, an agent certificate
    and an operator certificate."""
    return tls_material(standalone_identity)


@pytest.fixture
def apps() -> Iterator[list[subprocess.Popen]]:
    """App processes a test starts; killed afterwards."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def vios_pool(api_client: client.ApiClient) -> Iterator[str]:
    """A VIOSCluster on the stand-in's thin StorageClass (defaults otherwise), deleted after."""
    name = f"hib-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": "lparkube.io/v1alpha1",
        "kind": "VIOSCluster",
        "metadata": {"name": name},
        "spec": {"storage": {"storageClassName": "lparkube-thin"}},
    }
    custom = client.CustomObjectsApi(api_client)
    custom.create_cluster_custom_object("lparkube.io", "v1alpha1", "viosclusters", body)
    yield name
    custom.delete_cluster_custom_object("lparkube.io", "v1alpha1", "viosclusters", name)


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    """Partition, VM and VMI reads of the test's namespace."""
    return Partitions(api_client, kubevirt, namespace)


@pytest.fixture
def sleepers(
    parts: Partitions, guest_agent: GuestAgentFactory, tmp_path: Path, vios_pool: str
) -> Iterator[Sleepers]:
    """Partitions with real agents over fake guest trees (sleeper_helpers), in the namespace."""
    made = Sleepers(parts, guest_agent, tmp_path, vios_pool)
    yield made
    made.close()


@pytest.fixture
def nodes(kubevirt: StandIn) -> Iterator[NodePool]:
    """Stand-in nodes of the test's own (remote_restart_helpers.NodePool), removed after."""
    with node_pool(kubevirt) as pool:
        yield pool
