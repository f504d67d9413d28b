"""``lparkube-dev``: the project's local environment (control plane, KubeVirt stand-in, operator).

The commands and their help are in ``COMMANDS``: plain text, not reST, since ``--help`` prints
them as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import yaml
from kubernetes import client, config

from lparkube_devenv.controlplane import (
    REPO_ROOT,
    ControlPlaneError,
    LocalControlPlane,
    Process,
    ensure_binaries,
    find_tool,
    install_crds,
    spawn,
)
from lparkube_devenv.guestimage import ensure_image
from lparkube_devenv.guests import DemoGuests
from lparkube_devenv.kubevirt import Settings, StandIn
from lparkube_devenv.kubevirt.api import QEMU, SIMULATED
from lparkube_devenv.kubevirt.qemu_guest import HostService, guest_run_dir
from lparkube_devenv.qemu.console import attach
from lparkube_devenv.qemu.machine import RunFiles

RUN_DIR = REPO_ROOT / ".run"
CRD_DIR = REPO_ROOT / "crds"
EXAMPLES_DIR = REPO_ROOT / "examples"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
OPERATOR_NAMESPACE = "lparkube-system"  # where the Helm chart runs the operator (its Lease)
# Loopback only: a developer machine should not expose probes and metrics to its network.
GATEWAY_PORT = 8081
OPERATOR_ADDRESSES = (
    "--health-address", "127.0.0.1:8080", "--metrics-address", "127.0.0.1:9090",
    "--agent-gateway-address", f"127.0.0.1:{GATEWAY_PORT}",
)  # fmt: skip
# The operator's default agent gateway URL names this Service, as in a cluster; real guests
# resolve it to their host-service address (QEMU relays it to the loopback gateway).
GATEWAY_SERVICE = f"lparkube-agent-gateway.{OPERATOR_NAMESPACE}.svc"
REAL_GUEST_TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "genisoimage": "genisoimage",
                    "cpio": "cpio"}  # fmt: skip
DEMO_POD_NETWORK = "127.77.0.0/16"  # VMI addresses a local demo agent can listen on
AGENTS_TIMEOUT = 60.0  # how long the example SaveEvents wait for the demo guests' agents

DESCRIPTION = "The local environment: control plane, KubeVirt stand-in, operator and examples."
COMMANDS = {
    "up": "control plane, CRDs, KubeVirt stand-in, operator, examples/ and demo guests (a real "
    "agent and app per running example Partition), in the foreground (make run)",
    "control-plane": "just etcd, kube-apiserver and kube-controller-manager, in the foreground",
    "kubeconfig": "print the path of the running environment's admin kubeconfig",
    "console": "attach to the serial console of a running real guest: console NAMESPACE/NAME "
    "(as virtctl console; Ctrl-] leaves)",
}
# What `up` suggests trying first from another shell in the repository root: the same commands as
# the README's "The two commands" (tests/unit/test_devenv_cli.py compares them).
FIRST_COMMANDS = (
    "kubectl get partitions,saveevents,conditionprofiles -A",
    "kubectl explain partition.spec.agent",
    "kubectl describe saveevent save-frontend-now     # Complete: Succeeded, 1 of 1 applications",
    ".venv/bin/lparkube-dev console default/web-1     # then: cat /root/notes.txt",
)
HOST_GUEST_COMMANDS = ("cat .run/guests/default/web-1/saves",)  # without QEMU
CONTROL_PLANE_COMMANDS = ("kubectl get namespaces,crds",)  # `control-plane` has no lparkube CRDs


class Shutdown(BaseException):  # like KeyboardInterrupt: not caught by `except Exception`
    """A stop signal arrived."""


def say(message: str) -> None:
    """Progress for the user, on stderr (stdout stays for machine-readable output)."""
    print(f"lparkube-dev: {message}", file=sys.stderr, flush=True)


def _raise_shutdown(signum: int, _frame: object) -> None:
    raise Shutdown(signal.Signals(signum).name)


def _set_signals(handler: Any) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


@contextlib.contextmanager
def fresh_run_dir(path: Path) -> Iterator[Path]:
    """Wipe and recreate ``path``, holding a lock so two environments never share it."""
    lock_path = path / ".lock"
    if lock_path.exists():
        with lock_path.open("a") as probe:
            _lock(probe, path)
    elif path.exists() and any(path.iterdir()):
        raise ControlPlaneError(f"{path} is not empty and was not made by lparkube-dev")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    with lock_path.open("a") as lock:
        _lock(lock, path)
        yield path


def is_running(path: Path) -> bool:
    """Whether an lparkube-dev process holds the lock of ``path``."""
    lock_path = path / ".lock"
    if not lock_path.exists():
        return False
    try:
        with lock_path.open("a") as probe:
            _lock(probe, path)
    except ControlPlaneError:
        return True
    return False


def _lock(handle: IO[str], path: Path) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ControlPlaneError(f"another lparkube-dev is running in {path}") from None


def start_control_plane(stack: ExitStack, workdir: Path) -> LocalControlPlane:
    """Build or reuse the binaries and start the control plane; it stops when ``stack`` closes."""
    say("ensuring control-plane binaries (hack/build-control-plane.sh)")
    plane = LocalControlPlane(workdir, ensure_binaries())
    stack.callback(plane.stop)
    say("starting etcd, kube-apiserver, kube-controller-manager")
    plane.start()
    say(f"control plane ready at {plane.server} in {plane.startup_seconds:.1f}s")
    return plane


def real_guests_missing() -> list[str]:
    """The Debian packages real guests need that this machine lacks (none: QEMU guests)."""
    return [package for tool, package in REAL_GUEST_TOOLS.items() if shutil.which(tool) is None]


def start_stand_in(
    stack: ExitStack, plane: LocalControlPlane, workdir: Path, *, real_guests: bool
) -> StandIn:
    """Start the KubeVirt stand-in; it is stopped when the stack unwinds. With `real_guests`
    every VMI is a QEMU virtual machine that reaches the operator's gateway by its Service
    name; otherwise VMIs get loopback addresses the demo guests' agents listen on."""
    say("starting the KubeVirt stand-in")
    runtime = QEMU if real_guests else SIMULATED
    stand_in = StandIn(
        kubeconfig=plane.kubeconfig,
        workdir=workdir,
        front_proxy_ca=plane.front_proxy_ca,
        settings=Settings(pod_network=DEMO_POD_NETWORK, guest_runtime=runtime),
        host_services=[HostService(GATEWAY_SERVICE, GATEWAY_PORT)],
    )
    stack.callback(stand_in.stop)
    stand_in.start()
    return stand_in


def start_operator(stack: ExitStack, kubeconfig: Path) -> Process:
    """Run ``lparkube run --kubeconfig ...`` as a child; its output passes through."""
    venv_bin = str(Path(sys.executable).parent)
    exe = shutil.which("lparkube", path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))
    if exe is None:
        raise ControlPlaneError(
            "the `lparkube` command is not installed (run `make .venv/.installed`)"
        )
    say("starting the operator: lparkube run")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    argv = [exe, "run", "--kubeconfig", str(kubeconfig), *OPERATOR_ADDRESSES]
    operator = spawn("operator", argv, None, env=env, cwd=REPO_ROOT)
    stack.callback(operator.stop)
    return operator


def apply_examples(kubectl: str, kubeconfig: Path, files: list[Path]) -> None:
    """``kubectl apply`` the example files; a failure is reported, not fatal."""
    if not files:
        return
    argv = [kubectl, "--kubeconfig", str(kubeconfig), "apply"]
    argv += [arg for path in files for arg in ("-f", str(path))]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    sys.stderr.write(result.stdout)
    if result.returncode != 0:
        say(f"WARNING: applying examples/ failed (exit {result.returncode}):\n{result.stderr}")


# Examples that act on a running VM when applied: left for the user (`kubectl apply -f`, or
# `kubectl lparkube hibernate`, `kubectl lparkube restart`), never applied by make run itself.
ON_DEMAND_KINDS = frozenset({"HibernationImage", "RemoteRestart"})


def split_examples(directory: Path) -> tuple[list[Path], list[Path]]:
    """The example files make run applies, SaveEvents last: they save what the guests run, so
    they go in once the demo guests' agents are connected. Files of ON_DEMAND_KINDS only are
    left out."""
    files = [
        f
        for f in sorted(directory.glob("*.y*ml"))
        if not {d.get("kind") for d in _documents(f)} <= ON_DEMAND_KINDS
    ]
    saves = [f for f in files if {d.get("kind") for d in _documents(f)} == {"SaveEvent"}]
    return [f for f in files if f not in saves], saves


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def wait_for_agents(api_client: client.ApiClient, timeout: float, saves: list[Path]) -> list[str]:
    """Wait until every Partition's agent is connected, and those the example SaveEvents target
    that lparkube made from a template (their cloud-init starts the application, nano) report
    an application to save; the names still waiting after `timeout`."""
    custom = client.CustomObjectsApi(api_client)
    targets = [(d.get("spec") or {}).get("targets") or {} for f in saves for d in _documents(f)]
    deadline = time.monotonic() + timeout
    while True:
        items = custom.list_cluster_custom_object("lparkube.io", "v1alpha1", "partitions")["items"]
        waiting = [
            f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in items
            if not _agent_ready(
                p, needs_apps=_from_template(p) and any(_targeted(p, t) for t in targets)
            )
        ]
        if not waiting or time.monotonic() > deadline:
            return waiting
        time.sleep(1)


def _agent_ready(partition: dict, *, needs_apps: bool) -> bool:
    status = partition.get("status") or {}
    connected = any(
        c.get("type") == "AgentConnected" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return connected and (not needs_apps or (status.get("agent") or {}).get("applications", 0) > 0)


def _from_template(partition: dict) -> bool:
    return "vmTemplate" in (partition.get("spec") or {})


def _targeted(partition: dict, targets: dict) -> bool:
    """The Partition is one of a SaveEvent's targets (by name or by matchLabels)."""
    meta = partition["metadata"]
    if meta["name"] in (targets.get("partitions") or []):
        return True
    wanted = (targets.get("selector") or {}).get("matchLabels") or {}
    labels = meta.get("labels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def usage(plane: LocalControlPlane, *, full: bool, real_guests: bool = True) -> str:
    """How to reach the environment from another shell (``full``: the one ``up`` started;
    ``real_guests``: its guests are QEMU virtual machines, else host processes)."""
    lines = [
        "",
        f"  control plane start-up time: {plane.startup_seconds:.1f}s",
        "  use it from another shell:",
        f"    export KUBECONFIG={plane.kubeconfig}",
    ]
    if (plane.bin_dir / "kubectl").is_file() or (plane.bin_dir / "helm").is_file():
        lines.append(f"    export PATH={plane.bin_dir}:$PATH")
    commands = CONTROL_PLANE_COMMANDS
    if full:
        commands = FIRST_COMMANDS if real_guests else (*FIRST_COMMANDS[:3], *HOST_GUEST_COMMANDS)
    lines += [f"    {command}" for command in commands]
    lines += [
        f"  component logs: {plane.workdir / 'logs'}",
        "  press Ctrl-C to stop everything",
        "",
    ]
    return "\n".join(lines)


def wait_foreground(plane: LocalControlPlane, operator: Process | None) -> int:
    """Block until a signal arrives (raises Shutdown) or a child dies (returns 1)."""
    while True:
        failed = plane.failed_component()
        if failed is not None:
            say(f"{failed.name} exited with code {failed.exit_code()}:\n{failed.tail()}")
            return 1
        if operator is not None and operator.exit_code() is not None:
            say(f"the operator exited with code {operator.exit_code()}")
            return 1
        time.sleep(1)


def up(run_dir: Path, *, full: bool) -> int:
    """Bring the environment up, wait in the foreground, tear it down in reverse order."""
    _set_signals(_raise_shutdown)
    stack = ExitStack()
    try:
        workdir = stack.enter_context(fresh_run_dir(run_dir))  # released last
        plane = start_control_plane(stack, workdir)
        operator = _start_project(stack, plane, workdir) if full else None
        say(usage(plane, full=full, real_guests=not real_guests_missing()))
        return wait_foreground(plane, operator)
    except Shutdown as stop:
        say(f"{stop}: stopping")
        return 0
    except ControlPlaneError as error:
        say(f"ERROR: {error}")
        return 1
    finally:
        _set_signals(signal.SIG_IGN)  # let the teardown finish; children die with us anyway
        stack.close()
        _set_signals(signal.SIG_DFL)
        say("stopped")


def _start_project(stack: ExitStack, plane: LocalControlPlane, workdir: Path) -> Process:
    with config.new_client_from_config(config_file=str(plane.kubeconfig)) as api_client:
        names = install_crds(api_client, CRD_DIR)
        body = {"metadata": {"name": OPERATOR_NAMESPACE}}
        client.CoreV1Api(api_client).create_namespace(body)
    say(f"installed {len(names)} CRDs from crds/: {', '.join(names) or '(none)'}")
    missing = real_guests_missing()
    if missing:
        say(f"guests: host processes (QEMU missing: apt-get install {' '.join(missing)})")
    else:
        say("guests: QEMU virtual machines, the Debian guest image (hack/build-guest-image.sh)")
        ensure_image()
    start_stand_in(stack, plane, workdir / "kubevirt", real_guests=not missing)
    operator = start_operator(stack, plane.kubeconfig)
    kubectl = find_tool("kubectl", plane.bin_dir)
    first, saves = split_examples(EXAMPLES_DIR)
    apply_examples(kubectl, plane.kubeconfig, first)
    api_client = stack.enter_context(config.new_client_from_config(str(plane.kubeconfig)))
    if missing:
        say(f"demo guests: an agent and an app per running Partition, under {workdir / 'guests'}")
        stack.callback(DemoGuests(api_client, workdir / "guests").start().stop)
    if waiting := wait_for_agents(api_client, AGENTS_TIMEOUT, saves):
        say(f"WARNING: no agent (or app) ready in {', '.join(waiting)}; applying SaveEvents anyway")
    apply_examples(kubectl, plane.kubeconfig, saves)
    return operator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lparkube-dev", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in COMMANDS.items():
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument(
            "--run-dir", type=Path, default=RUN_DIR, help="state directory (wiped by up)"
        )
        if name == "console":
            command.add_argument("target", metavar="NAMESPACE/NAME", help="the VMI")
    return parser


def console(run_dir: Path, target: str) -> int:
    """Attach this terminal to a real guest's serial console (`make run` must be running)."""
    namespace, _, name = target.rpartition("/")
    namespace = namespace or "default"
    guest_dir = guest_run_dir(run_dir / "kubevirt", namespace, name)
    socket_path = RunFiles.in_dir(guest_dir).serial_socket
    if not socket_path.exists():
        say(f"no real guest {namespace}/{name} runs under {run_dir} (make run, with QEMU)")
        return 1
    say(f"console of {namespace}/{name}; Ctrl-] leaves")
    attach(socket_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lparkube-dev``."""
    args = build_parser().parse_args(argv)
    run_dir = args.run_dir.resolve()
    if args.command == "console":
        return console(run_dir, args.target)
    if args.command == "kubeconfig":
        print(run_dir / "kubeconfig")
        if not is_running(run_dir):
            say("no environment is running there (start one with `make run`)")
            return 1
        return 0
    return up(run_dir, full=args.command == "up")


if __name__ == "__main__":
    sys.exit(main())
