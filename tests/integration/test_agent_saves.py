"""Save runs on a real agent with real apps: priority order proven by what the apps wrote,
hangs bounded by timeouts, idempotent instructions, and every outcome reported."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from lparkube_agent.testing import AgentProcess, cli, lines, start_app


def launch(apps: list, mode: str, name: str, out: Path, delay: float = 0.0) -> tuple[int, str]:
    proc, where = start_app(mode, name, out, delay)
    apps.append(proc)
    return proc.pid, where


def register(agent: AgentProcess, name: str, pid: int, priority: int, *extra: str) -> None:
    cli(agent, "register", f"--name={name}", f"--pid={pid}", f"--priority={priority}", *extra)


def save_command(out: Path, name: str, delay: float = 0.0) -> str:
    app = f"{sys.executable} -m lparkube_agent.testing app --mode=command"
    return f"--command={app} --name={name} --out={out} --delay={delay}"


def outcomes(result: dict) -> dict[str, tuple[str, int]]:
    return {a["name"]: (a["outcome"], a["order"]) for a in result["applications"]}


def test_priority_order_across_all_callback_methods(
    agent: AgentProcess, apps: list, tmp_path: Path
) -> None:
    out = tmp_path / "saves.log"
    sig, _ = launch(apps, "signal", "signal-app", out, delay=0.1)
    web, url = launch(apps, "http", "http-app", out, delay=0.3)
    sock, path = launch(apps, "socket", "socket-app", out, delay=0.3)
    idle, _ = launch(apps, "idle", "idle", out)
    register(agent, "command-app", idle, 30, "--method=Command", save_command(out, "command-app"))
    register(agent, "socket-app", sock, 20, "--method=UnixSocket", f"--unix-socket={path}")
    register(agent, "http-app", web, 20, "--method=HTTP", f"--url={url}")
    register(agent, "signal-app", sig, 10, "--method=Signal", "--settle-ms=400")

    result = agent.save("prio-1", timeout=5)

    assert outcomes(result) == {
        "signal-app": ("Saved", 1),
        "http-app": ("Saved", 2),
        "socket-app": ("Saved", 2),
        "command-app": ("Saved", 3),
    }
    written = dict(lines(out))
    assert len(lines(out)) == 4
    assert written["signal-app"] < min(written["http-app"], written["socket-app"])
    assert max(written["http-app"], written["socket-app"]) < written["command-app"]
    # The two priority-20 apps each took 0.3 s, at the same time: they ran concurrently.
    assert abs(written["http-app"] - written["socket-app"]) < 0.25
    methods = {a["name"]: a["method"] for a in result["applications"]}
    assert methods["socket-app"] == "UnixSocket" and methods["http-app"] == "HTTP"


def test_a_hanging_app_times_out_while_the_others_save(
    agent: AgentProcess, apps: list, tmp_path: Path
) -> None:
    out = tmp_path / "saves.log"
    idle, _ = launch(apps, "idle", "idle", out)
    hung_web, url = launch(apps, "http", "hung-http", out, delay=3600)
    sock, path = launch(apps, "socket", "socket-app", out)
    sig, _ = launch(apps, "signal", "last", out)
    register(agent, "first", idle, 1, "--method=Command", save_command(out, "first"))
    register(agent, "hung-http", hung_web, 2, "--method=HTTP", f"--url={url}")
    register(agent, "hung-command", idle, 2, "--method=Command", "--command=sleep 3600")
    register(agent, "socket-app", sock, 2, "--method=UnixSocket", f"--unix-socket={path}")
    register(agent, "last", sig, 3, "--method=Signal", "--settle-ms=200")

    start = time.monotonic()
    result = agent.save("hang-1", timeout=1)
    elapsed = time.monotonic() - start

    assert outcomes(result) == {
        "first": ("Saved", 1),
        "hung-http": ("TimedOut", 2),
        "hung-command": ("TimedOut", 2),
        "socket-app": ("Saved", 2),
        "last": ("Saved", 3),
    }
    assert elapsed < 4.0, f"three groups with 1 s timeouts took {elapsed:.1f}s"
    assert sorted(name for name, _ in lines(out)) == ["first", "last", "socket-app"]
    leftover = subprocess.run(["pgrep", "-f", "sleep 3600"], capture_output=True, check=False)
    assert leftover.stdout == b"", "the timed-out save command was not killed"
    durations = {a["name"]: a["durationMillis"] for a in result["applications"]}
    assert 900 <= durations["hung-http"] <= 2500


def test_repeats_of_an_id_attach_and_never_save_twice(
    agent: AgentProcess, apps: list, tmp_path: Path
) -> None:
    out = tmp_path / "saves.log"
    web, url = launch(apps, "http", "slow", out, delay=1.0)
    register(agent, "slow", web, 5, "--method=HTTP", f"--url={url}")

    status, partial = agent.request(
        "POST", "/v1/save", b'{"id": "once", "waitSeconds": 0, "reason": "Thermal"}'
    )
    assert (status, partial["state"], partial["applications"]) == (202, "Running", [])
    final = agent.save("once", wait=10)
    again = agent.save("once", wait=10)

    assert final["state"] == again["state"] == "Completed"
    assert final == again
    assert [name for name, _ in lines(out)] == ["slow"]
    agent.save("twice", wait=10)  # a new id is a new save
    assert [name for name, _ in lines(out)] == ["slow", "slow"]


def test_exited_apps_are_skipped_and_unhandled_signals_are_not_sent(
    agent: AgentProcess, apps: list, tmp_path: Path
) -> None:
    out = tmp_path / "saves.log"
    victim, _ = launch(apps, "signal", "victim", out)
    bare, _ = launch(apps, "idle", "bare", out)
    kill = f"kill -9 {victim}; until grep -q ') Z' /proc/{victim}/stat; do sleep 0.02; done"
    register(agent, "killer", bare, 1, "--method=Command", f"--command=sh -c {kill!r}")
    register(agent, "victim", victim, 2, "--method=Signal")
    register(agent, "bare", bare, 3, "--method=Signal", "--signal=USR2")

    result = agent.save("skip-1", timeout=3)

    assert outcomes(result) == {
        "killer": ("Saved", 1),
        "victim": ("Skipped", 2),
        "bare": ("Failed", 3),
    }
    messages = {a["name"]: a["message"] for a in result["applications"]}
    assert "does not handle SIGUSR2" in messages["bare"]
    assert apps[1].poll() is None, "SIGUSR2 would have killed the app"


def test_a_restarted_agent_keeps_results_and_repeats_no_saved_app(
    agent: AgentProcess, apps: list, tmp_path: Path
) -> None:
    out = tmp_path / "saves.log"
    idle, _ = launch(apps, "idle", "idle", out)
    web, url = launch(apps, "http", "slow", out, delay=2.0)
    register(agent, "first", idle, 1, "--method=Command", save_command(out, "first"))
    register(agent, "slow", web, 2, "--method=HTTP", f"--url={url}")

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # repeats attach and show the partial result
        status, partial = agent.request("POST", "/v1/save", b'{"id": "kept", "waitSeconds": 0}')
        if outcomes(partial).get("first") == ("Saved", 1):
            break
        time.sleep(0.05)
    assert (status, partial["state"]) == (202, "Running")
    agent.restart(signal.SIGKILL)  # killed while "slow" is saving

    resumed = agent.save("kept", wait=10)
    assert outcomes(resumed) == {"first": ("Saved", 1), "slow": ("Saved", 2)}
    assert [name for name, _ in lines(out)].count("first") == 1, "a saved app saved again"

    agent.restart()
    assert agent.save("kept", wait=10) == resumed
    assert [name for name, _ in lines(out)].count("first") == 1
