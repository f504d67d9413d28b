"""The agent across its life: signed reports to the operator, restarts (graceful and SIGKILL)
that keep the registration table, pruning of dead apps, and the zipapp as shipped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_gateway import FakeOperator

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube_agent import config as configs
from lparkube_agent import protocol
from lparkube_agent.agent import Agent
from lparkube_agent.testing import (
    AgentProcess,
    Terminal,
    TLSMaterial,
    cli,
    lines,
    signed_request,
    start_app,
)
from lparkube_agent.version import VERSION

PARTITION = "tenant-a/web-1"


def wait_until(check: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {check}")


def signal_app(apps: list, agent: AgentProcess, name: str, out: Path) -> subprocess.Popen:
    proc, _ = start_app("signal", name, out)
    apps.append(proc)
    cli(agent, "register", f"--name={name}", f"--pid={proc.pid}", "--method=Signal")
    return proc


def registered(agent: AgentProcess) -> list[str]:
    return sorted(a["name"] for a in json.loads(cli(agent, "list", "--json").stdout))


# --- reports ----------------------------------------------------------------------------------


def test_signed_reports_at_boot_on_change_and_never_trusting_forged_answers(
    tmp_path: Path, apps: list, standalone_identity: OperatorCredentials, agent_tls: TLSMaterial
) -> None:
    key = protocol.new_key()
    operator = FakeOperator(key, standalone_identity)
    operator.forge = 1
    (tmp_path / "vmcoreinfo").write_text("1f5c8b000 1000\n")
    agent = AgentProcess(
        tmp_path,
        key=key,
        config={"operatorURL": operator.url, "reportIntervalSeconds": 30},
        tls_material=agent_tls,
    ).start()
    try:
        wait_until(lambda: len(operator.reports) >= 2, timeout=5)
        first, second = operator.reports[:2]
        assert second[0] - first[0] < 5, "a forged answer must be retried, not trusted"
        report = second[1]
        assert report["agentVersion"] == VERSION
        assert report["kernelRelease"] == os.uname().release
        assert report["vmcoreinfo"] == {"address": "0x1f5c8b000", "size": 4096}
        assert report["bootTime"].endswith("Z") and report["applications"] == []

        signal_app(apps, agent, "db", tmp_path / "out")
        latest = wait_until(lambda: operator.reports[-1][1]["applications"], timeout=5)
        assert latest == [{"name": "db", "pid": apps[0].pid, "priority": 100, "method": "Signal"}]
        status, on_demand = agent.request("GET", "/v1/report")
        assert status == 200 and on_demand["applications"] == latest
    finally:
        agent.stop()
        operator.close()
    assert "Traceback" not in agent.log_path.read_text()


def test_reports_retry_until_the_operator_is_reachable(
    tmp_path: Path, standalone_identity: OperatorCredentials, agent_tls: TLSMaterial
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = protocol.new_key()
    url = f"https://127.0.0.1:{port}"
    agent = AgentProcess(
        tmp_path, key=key, config={"operatorURL": url}, tls_material=agent_tls
    ).start()
    try:
        time.sleep(1.5)  # a few failed attempts
        assert agent.alive()
        operator = FakeOperator(key, standalone_identity, port)
        try:
            wait_until(lambda: operator.reports, timeout=8)
        finally:
            operator.close()
    finally:
        agent.stop()


# --- the registration table -------------------------------------------------------------------


def test_table_survives_restarts_and_dead_processes_are_pruned(
    agent: AgentProcess, apps: list, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    keeper = signal_app(apps, agent, "keeper", out)
    doomed = signal_app(apps, agent, "doomed", out)
    gone = signal_app(apps, agent, "gone-live", out)

    agent.stop()
    doomed.kill()  # dies while the agent is down: pruned when it comes back
    doomed.wait()
    agent.start()
    assert registered(agent) == ["gone-live", "keeper"]

    gone.kill()  # dies while the agent runs: pruned within seconds
    gone.wait()
    wait_until(lambda: registered(agent) == ["keeper"], timeout=5)

    agent.restart(signal.SIGKILL)
    assert registered(agent) == ["keeper"]
    result = agent.save("after-restart")
    assert [(a["name"], a["outcome"]) for a in result["applications"]] == [("keeper", "Saved")]
    # A signal save is done when delivered; the app writes a moment later.
    assert wait_until(lambda: lines(out))[0][0] == "keeper" and keeper.poll() is None


def test_sigkill_in_the_middle_of_saves_and_registrations_keeps_the_table_whole(
    agent: AgentProcess, apps: list, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for name in ("a", "b", "c"):
        signal_app(apps, agent, name, out)
    web, url = start_app("http", "slow", out, delay=5)
    apps.append(web)
    cli(agent, "register", "--name=slow", f"--pid={web.pid}", "--method=HTTP", f"--url={url}")
    status, _ = agent.request("POST", "/v1/save", b'{"id": "cut", "waitSeconds": 0}')
    assert status == 202

    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            cli(agent, "register", "--name=churn", f"--pid={apps[0].pid}", "--method=Signal",
                check=False)  # fmt: skip
            cli(agent, "unregister", f"--pid={apps[0].pid}", "--name=churn", check=False)

    thread = threading.Thread(target=churn)
    thread.start()
    time.sleep(1.0)
    agent.stop(signal.SIGKILL)
    stop.set()
    thread.join()

    table = json.loads((agent.state_dir / "registrations.json").read_text())
    names = {a["name"] for a in table["applications"]}
    assert {"a", "b", "c", "slow"} <= names <= {"a", "b", "c", "slow", "churn"}
    agent.start()
    assert {"a", "b", "c", "slow"} <= set(registered(agent))


def test_run_wrapper_registers_again_after_the_agent_restarts(
    agent: AgentProcess, tmp_path: Path
) -> None:
    if shutil.which("nano") is None:
        pytest.fail("nano is not installed (apt-get install nano; .ci/run does)")
    document = tmp_path / "doc.txt"
    document.write_text("hello\n")
    env = {**agent.env(), "TERM": "xterm", "HOME": str(tmp_path)}
    terminal = Terminal([*agent.command, "run", "--", "nano", "doc.txt"], env, tmp_path)
    try:
        terminal.wait_for(b"hello")
        agent.restart(signal.SIGKILL)
        terminal.type(b"after the restart ")
        terminal.wait_for(b"after the restart")
        result = agent.save("post-restart")  # the wrapper re-attaches within about a second
        assert result["applications"][0]["outcome"] == "Saved"
        assert "after the restart" in document.read_text()
        [entry] = json.loads(cli(agent, "list", "--json").stdout)
        assert entry["attached"] is True
    finally:
        terminal.close()


# --- the zipapp -------------------------------------------------------------------------------


def test_zipapp_is_self_contained_and_serves(
    tmp_path: Path, apps: list, agent_tls: TLSMaterial
) -> None:
    pyz = tmp_path / "lparkube-agent.pyz"
    subprocess.run([sys.executable, "-m", "lparkube_agent.build", str(pyz)], check=True)
    names = zipfile.ZipFile(pyz).namelist()
    assert "__main__.py" in names and "lparkube_agent/testing.py" not in names
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(pyz, os.X_OK)
    clean_env = {"PATH": os.environ["PATH"]}  # no venv, no PYTHONPATH: standard library only
    python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    version = subprocess.run(
        [python, "-I", str(pyz), "version"], capture_output=True, text=True, env=clean_env,
        check=True,
    )  # fmt: skip
    assert version.stdout.strip() == VERSION
    direct = subprocess.run([str(pyz), "version"], capture_output=True, text=True, check=True)
    assert direct.stdout.strip() == VERSION

    root = tmp_path / "zipapp-agent"
    root.mkdir()
    agent = AgentProcess(root, command=[python, "-I", str(pyz)], tls_material=agent_tls).start()
    try:
        assert agent.request("GET", "/v1/report")[0] == 200
        signal_app(apps, agent, "zipped", tmp_path / "out")
        result = agent.save("zipapp")
        assert result["applications"][0]["outcome"] == "Saved"
    finally:
        agent.stop()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_unit_is_valid(tmp_path: Path) -> None:
    unit = Path(__file__).resolve().parents[2] / "guest-agent" / "lparkube-agent.service"
    pyz = tmp_path / "lparkube-agent"
    subprocess.run([sys.executable, "-m", "lparkube_agent.build", str(pyz)], check=True)
    text = unit.read_text().replace("/usr/local/bin/lparkube-agent", str(pyz))
    for setting in ("NoNewPrivileges=yes", "StateDirectory=lparkube", "Restart=on-failure"):
        assert setting in text
    copy = tmp_path / "lparkube-agent.service"
    copy.write_text(text)
    check = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert "lparkube-agent.service" not in check.stderr, check.stderr


def test_in_process_agent_answers_signed_requests(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, agent_tls: TLSMaterial
) -> None:
    """The operator's benchmarks run many agents in one process: no state files, no socket
    (the TLS files, shared, live elsewhere)."""
    tls_dir = tmp_path_factory.mktemp("tls")
    config = configs.Config(
        partition="tenant-a/web-1",
        key=b"k" * 32,
        tls=agent_tls.write_agent_files(tls_dir),
        listen=("127.0.0.1", 0),
        state_dir=None,
        socket=None,
        input_table=None,
        vmcoreinfo=tmp_path / "none",
    )
    agent = Agent(config)
    agent.start()
    try:
        status, answer = signed_request(
            "127.0.0.1",
            agent.port,
            config.key,
            partition=config.partition,
            method="POST",
            path="/v1/save",
            body=b'{"id": "e1", "waitSeconds": 5}',
            context=agent_tls.operator_context(tls_dir),
        )
        assert (status, answer["state"], answer["applications"]) == (200, "Completed", [])
    finally:
        agent.stop()
    assert list(tmp_path.iterdir()) == []
