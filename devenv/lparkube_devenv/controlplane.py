"""A real local Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager.

The binaries come from ``hack/build-control-plane.sh`` (built from Go modules, cached). Every
child process runs in its own session (so a terminal's Ctrl-C reaches only the parent, which
shuts the children down in order) and is killed by the kernel if the parent dies
(``PR_SET_PDEATHSIG``), so no component outlives the process that started it.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from lparkube_devenv import certs

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-control-plane.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
ADMISSION_PLUGINS = (
    "NamespaceLifecycle",
    "LimitRanger",
    "ServiceAccount",
    "PodSecurity",
    "DefaultStorageClass",
    "StorageObjectInUseProtection",
    "PersistentVolumeClaimResize",
    "DefaultTolerationSeconds",
    "Priority",
    "NodeRestriction",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionWebhook",
    "ResourceQuota",
)
# Cheap controllers only: no node-lifecycle (our Nodes have no kubelet), no workload controllers
# (but for an idle daemonset-controller, below).
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "persistentvolume-binder-controller",
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
    "service-cidr-controller",
    # Volumes as on a cluster (the stand-in plays the CSI sidecars and the kubelets' part):
    # VolumeAttachments per pod and node, resizer hand-off, pods force-deleted on out-of-service
    # nodes after the taint evicted them. See lparkube_devenv/kubevirt/storage/README.md.
    "persistentvolume-attach-detach-controller",
    "persistentvolume-expander-controller",
    "pod-garbage-collector-controller",
    "taint-eviction-controller",
    # Idle here (no DaemonSets): it registers the pods-by-node index taint eviction looks pods
    # up with, which node-lifecycle-controller would register on a cluster.
    "daemonset-controller",
)
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
STOP_GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def run_build_script(script: Path, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run a hack/build-*.sh script (its log goes to our stderr): its exit code and the lines
    it printed on stdout. An interrupt takes the whole build (go, apt, ...) down with us."""
    build = subprocess.Popen(
        [str(script)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = build.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(build.pid, signal.SIGKILL)
        build.wait()
        raise
    return build.returncode, stdout.strip().splitlines()


def ensure_binaries() -> Path:
    """Build (or reuse from the cache) the pinned binaries; returns their directory."""
    code, lines = run_build_script(BUILD_SCRIPT)
    if code != 0 or not lines:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed (exit code {code})")
    bin_dir = Path(lines[-1])
    missing = [b for b in BINARIES if not (bin_dir / b).is_file()]
    if missing:
        raise ControlPlaneError(f"{BUILD_SCRIPT} did not produce {missing} in {bin_dir}")
    return bin_dir


def find_tool(name: str, bin_dir: Path | None) -> str:
    """The project-built tool from ``bin_dir`` if present, else the bare name (found on PATH)."""
    if bin_dir is not None and (bin_dir / name).is_file():
        return str(bin_dir / name)
    return name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _load_prctl()  # resolved in the parent: the child must not dlopen after fork


def spawn(name: str, argv: list[str], log_path: Path | None, **kwargs: Any) -> Process:
    """Start a child in its own session, dying with this process.

    Output goes to ``log_path``, or is passed through to ours when it is None.
    """
    log = log_path.open("ab") if log_path else None
    parent = os.getpid()

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - only a pre-resolved prctl call
            **kwargs,
        )
    except BaseException:
        if log:
            log.close()
        raise
    return Process(name, popen, log_path, log)


class Process:
    """One child process with its log file (if any)."""

    def __init__(
        self, name: str, popen: subprocess.Popen, log_path: Path | None, log: IO[bytes] | None
    ):
        self.name, self.popen, self.log_path, self._log = name, popen, log_path, log

    def exit_code(self) -> int | None:
        """The exit code, or None while running."""
        return self.popen.poll()

    def tail(self, lines: int = 30) -> str:
        """The last lines of the log."""
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds; always reaps."""
        try:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait()
        finally:
            if self._log:
                self._log.close()

    def _signal(self, sig: int) -> None:
        if self.popen.poll() is None:  # not reaped yet, so the pid/pgid is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)


def write_kubeconfig(
    path: Path, server: str, ca: certs.KeyPair, user: certs.KeyPair, name: str
) -> None:
    """Write a kubeconfig with embedded CA and client certificate."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "lparkube-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": b64(ca.cert_path.read_bytes()),
                },
            }
        ],
        "users": [
            {
                "name": name,
                "user": {
                    "client-certificate-data": b64(user.cert_path.read_bytes()),
                    "client-key-data": b64(user.key_path.read_bytes()),
                },
            }
        ],
        "contexts": [
            {"name": "lparkube-local", "context": {"cluster": "lparkube-local", "user": name}}
        ],
        "current-context": "lparkube-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


class LocalControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on free loopback ports under ``workdir``."""

    def __init__(self, workdir: Path, bin_dir: Path | None = None, *, start_timeout: float = 120.0):
        self.workdir = Path(workdir).resolve()
        self._bin_dir = bin_dir
        self.start_timeout = start_timeout
        self.kubeconfig = self.workdir / "kubeconfig"
        self.server = ""
        self.startup_seconds: float | None = None
        self.pki: certs.Pki | None = None
        self.processes: list[Process] = []
        self._etcd_url = ""
        self._ssl: ssl.SSLContext | None = None

    @property
    def bin_dir(self) -> Path:
        """Directory of the control-plane binaries (built on first use)."""
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries()
        return self._bin_dir

    @property
    def ca_cert(self) -> Path:
        """CA that signs the apiserver's serving cert and the client certs."""
        return self._pki().ca.cert_path

    @property
    def front_proxy_ca(self) -> Path:
        """Requestheader CA: aggregated API servers verify the apiserver's proxy cert with it."""
        return self._pki().front_proxy_ca.cert_path

    @property
    def front_proxy_client_cert(self) -> Path:
        """The client cert the apiserver presents to aggregated API servers."""
        return self._pki().front_proxy_client.cert_path

    @property
    def front_proxy_client_key(self) -> Path:
        """Key of :attr:`front_proxy_client_cert`."""
        return self._pki().front_proxy_client.key_path

    def _pki(self) -> certs.Pki:
        if self.pki is None:
            raise ControlPlaneError("the control plane has not been started")
        return self.pki

    def __enter__(self) -> LocalControlPlane:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start all components; returns when the API is ready and the controllers work."""
        began = time.monotonic()
        deadline = began + self.start_timeout
        try:
            self._prepare()
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            self._start_controller_manager(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop every component in reverse start order; safe to call repeatedly."""
        while self.processes:
            self.processes.pop().stop()

    def failed_component(self) -> Process | None:
        """The first component that has exited, if any."""
        return next((p for p in self.processes if p.exit_code() is not None), None)

    def _prepare(self) -> None:
        for binary in BINARIES:
            if not (self.bin_dir / binary).is_file():
                raise ControlPlaneError(f"{binary} not found in {self.bin_dir}")
        for sub in ("pki", "logs", "etcd"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.pki = certs.generate_pki(self.workdir / "pki")
        self._ssl = None

    def _spawn(self, name: str, args: Iterable[str]) -> Process:
        argv = [str(self.bin_dir / name), *args]
        proc = spawn(name, argv, self.workdir / "logs" / f"{name}.log", cwd=self.workdir)
        self.processes.append(proc)
        return proc

    def _start_etcd(self, deadline: float) -> None:
        client, peer = free_port(), free_port()
        self._etcd_url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(lambda: _http_ok(f"{self._etcd_url}/health"), "etcd /health", deadline)

    def _apiserver_args(self, port: int) -> list[str]:
        pki = self._pki()
        return [
            f"--etcd-servers={self._etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'pki'}",
            f"--tls-cert-file={pki.apiserver.cert_path}",
            f"--tls-private-key-file={pki.apiserver.key_path}",
            f"--client-ca-file={pki.ca.cert_path}",
            "--authorization-mode=Node,RBAC",
            f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
            "--allow-privileged=true",
            f"--service-cluster-ip-range={certs.SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert_path}",
            f"--requestheader-allowed-names={certs.FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert_path}",
            f"--proxy-client-key-file={pki.front_proxy_client.key_path}",
            # 127.0.0.1 is not a valid Endpoints address: keep the `kubernetes` Service only.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]

    def _start_apiserver(self, deadline: float) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self._spawn("kube-apiserver", self._apiserver_args(port))
        pki = self._pki()
        write_kubeconfig(self.kubeconfig, self.server, pki.ca, pki.admin, "lparkube-admin")
        self._wait(lambda: self._api_status("/readyz") == 200, "kube-apiserver /readyz", deadline)

    def _start_controller_manager(self, deadline: float) -> None:
        pki = self._pki()
        kubeconfig = self.workdir / "controller-manager.kubeconfig"
        write_kubeconfig(
            kubeconfig,
            self.server,
            pki.ca,
            pki.controller_manager,
            "system:kube-controller-manager",
        )
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--controllers={','.join(CONTROLLERS)}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_private_key}",
                f"--root-ca-file={pki.ca.cert_path}",
                "--secure-port=0",
                "--cluster-name=lparkube-local",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
            ],
        )
        sa_path = "/api/v1/namespaces/default/serviceaccounts/default"
        self._wait(
            lambda: self._api_status(sa_path) == 200,
            "the default ServiceAccount (controller-manager)",
            deadline,
        )

    def _wait(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        """Poll ``ready`` until true; fail fast with the log tail if a component exits."""
        while True:
            failed = self.failed_component()
            if failed is not None:
                raise ControlPlaneError(
                    f"{failed.name} exited with code {failed.exit_code()} while waiting for "
                    f"{what}; last lines of {failed.log_path}:\n{failed.tail()}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                last = self.processes[-1]
                raise ControlPlaneError(
                    f"timed out after {self.start_timeout:.0f}s waiting for {what}; "
                    f"last lines of {last.log_path}:\n{last.tail()}"
                )
            time.sleep(0.1)

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context trusting the cluster CA and presenting the admin client cert."""
        if self._ssl is None:
            pki = self._pki()
            self._ssl = ssl.create_default_context(cafile=str(pki.ca.cert_path))
            self._ssl.load_cert_chain(str(pki.admin.cert_path), str(pki.admin.key_path))
        return self._ssl

    def _api_status(self, path: str) -> int:
        """HTTP status of an admin GET on the apiserver (0 when unreachable)."""
        try:
            with urllib.request.urlopen(
                self.server + path, context=self.ssl_context(), timeout=5
            ) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except (OSError, ssl.SSLError):
            return 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def apiserver_gets(api_client: Any, resources: Iterable[str]) -> float:
    """How many GETs of these resources the API server has served (its own /metrics)."""
    wanted = set(resources)
    response = api_client.call_api("GET", f"{api_client.configuration.host}/metrics")
    response.read()
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.data.decode())
        for sample in family.samples
        if sample.name == "apiserver_request_total"
        and sample.labels.get("verb") == "GET"
        and sample.labels.get("resource") in wanted
    )


def load_crds(crd_dir: Path) -> list[dict]:
    """Every CustomResourceDefinition document in ``crd_dir/*.yaml`` (sorted by file name)."""
    docs: list[dict] = []
    for path in sorted([*crd_dir.glob("*.yaml"), *crd_dir.glob("*.yml")]):
        docs += [
            d
            for d in yaml.safe_load_all(path.read_text())
            if d and d.get("kind") == "CustomResourceDefinition"
        ]
    return docs


def install_crds(api_client: Any, crd_dir: Path, timeout: float = 60.0) -> list[str]:
    """Create or replace the CRDs found in ``crd_dir`` and wait until each is Established."""
    api = client.ApiextensionsV1Api(api_client)
    names = []
    for crd in load_crds(crd_dir):
        name = crd["metadata"]["name"]
        try:
            api.create_custom_resource_definition(crd, _preload_content=False)
        except client.ApiException as error:
            if error.status != 409:
                raise
            current = json.loads(
                api.read_custom_resource_definition(name, _preload_content=False).data
            )
            body = {**crd, "metadata": {**crd["metadata"], **_rv(current)}}
            api.replace_custom_resource_definition(name, body, _preload_content=False)
        names.append(name)
    for name in names:
        _wait_established(api, name, time.monotonic() + timeout)
    return names


def _rv(obj: dict) -> dict:
    return {"resourceVersion": obj["metadata"]["resourceVersion"]}


def _wait_established(api: Any, name: str, deadline: float) -> None:
    while True:
        crd = json.loads(api.read_custom_resource_definition(name, _preload_content=False).data)
        conditions = crd.get("status", {}).get("conditions") or []
        status = {c["type"]: c for c in conditions}
        if status.get("Established", {}).get("status") == "True":
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"CRD {name} not Established: {conditions}")
        time.sleep(0.1)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
