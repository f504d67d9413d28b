"""Guest users against the agent (finding 9 of issue 10): each attack a local user could make on
the registration socket and the save methods, run against the real agent with real processes,
and shown to fail, with the legitimate use beside it.

Acting as other users needs root (the tests fork and drop to uid 65534 and below). Run
unprivileged, the tests that need a second user are skipped with their reason, and those about
one user run as the test's own uid. The races are closed by construction (one pinned process,
the connected socket's peer); their tests make the swap happen exactly inside the old window,
through a hook at the step before, and reuse a pid for real (ns_last_pid, root only).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lparkube_agent import methods, procinfo, regserver, testing
from lparkube_agent.cli import main as cli_main
from lparkube_agent.inputtable import InputTable
from lparkube_agent.methods import Methods, SaveContext
from lparkube_agent.registry import Registration, Table
from lparkube_agent.regserver import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_USER,
    ROOT_RESERVE,
    RegistrationServer,
)
from lparkube_agent.terminals import Terminals
from lparkube_agent.testing import AgentProcess, TLSMaterial, cli, lines, start_app

ROOT = os.geteuid() == 0
NOBODY = 65534
# A guest user who is not root: nobody when the tests run as root, else the test's own uid.
USER = NOBODY if ROOT else os.geteuid()
SECRET = "postgres://admin:s3cret@db.internal/prod"


def needs_root(why: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not ROOT, reason=f"needs root {why}")


def drop_to(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def connect_as(uid: int, path: Path, count: int = 1) -> list[socket.socket]:
    """`count` connections to the socket made by a process running as `uid` and handed to the
    test (SCM_RIGHTS): the agent sees `uid` as their peer, as if that user held them."""
    if uid == os.geteuid():
        socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(count)]
        for sock in socks:
            sock.connect(str(path))
        return socks
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # child: become the user, connect, pass each connection to the parent
        code = 1
        try:
            drop_to(uid)
            for _ in range(count):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(str(path))
                    socket.send_fds(theirs, [b"c"], [sock.fileno()])
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    theirs.close()
    fds: list[int] = []
    with ours:
        while len(fds) < count:
            data, received, _, _ = socket.recv_fds(ours, 1024, count)
            assert data or received, f"uid {uid} made {len(fds)} of {count} connections"
            fds.extend(received)
    os.waitpid(pid, 0)
    return [socket.socket(fileno=fd) for fd in fds]


def ask(sock: socket.socket, request: dict) -> dict:
    """One request on an open connection and its answer (also from a connection turned away)."""
    sock.settimeout(10)
    with contextlib.suppress(BrokenPipeError):
        sock.sendall(json.dumps(request).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed without an answer to {request}"
        data += chunk
    return json.loads(data)


def request_as(uid: int, path: Path, request: dict) -> dict:
    (sock,) = connect_as(uid, path)
    with sock:
        return ask(sock, request)


class UserProcess:
    """`main()` in a child forked from the test and running as `uid`, its stdout and stderr
    piped back. No exec: the agent's code is already loaded, and the test's Python may not be
    executable by another user."""

    def __init__(self, uid: int, main: Callable[[], int | None]) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = 1
            try:
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                sys.stdout, sys.stderr = open(1, "w"), open(2, "w")  # noqa: SIM115
                if uid != os.geteuid():
                    drop_to(uid)
                code = main() or 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(out_w)
        os.close(err_w)
        self.stdout, self.stderr = os.fdopen(out_r), os.fdopen(err_r)
        self.returncode: int | None = None

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            self.stdout.close()
            self.stderr.close()
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


Processes = list[subprocess.Popen | UserProcess]


def cli_as(agent: AgentProcess, uid: int, *args: str) -> subprocess.CompletedProcess:
    """The real `lparkube-agent ARGS`, run as `uid`."""
    run = UserProcess(uid, lambda: cli_main([f"--socket={agent.socket}", *args]))
    out, err = run.stdout.read(), run.stderr.read()
    return subprocess.CompletedProcess(args, run.wait(), out, err)


def sleeper(uid: int) -> subprocess.Popen:
    user = {} if uid == os.geteuid() else {"user": uid, "group": uid, "extra_groups": []}
    return subprocess.Popen(["sleep", "120"], **user)


def take_pid(pid: int, argv: list[str]) -> subprocess.Popen:
    """Start `argv` on exactly `pid` (free again): the pid reuse an attacker waits for, made
    deterministic by setting the kernel's last pid just below it (root)."""
    for _ in range(200):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(argv)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    raise AssertionError(f"pid {pid} could not be taken again")


def kept(app: dict, uid: int) -> dict:
    """A registration as the table keeps it on disk."""
    return {**app, "uid": uid, "started": procinfo.start_time(app["pid"])}


def agent_with_table(root: Path, entries: list[dict], tls: TLSMaterial) -> AgentProcess:
    """An agent (not started) whose registration table already holds `entries`, as root or an
    earlier agent version left them."""
    agent = AgentProcess(root, tls_material=tls)
    agent.state_dir.mkdir(parents=True)
    table = {"version": 1, "applications": entries}
    (agent.state_dir / "registrations.json").write_text(json.dumps(table))
    return agent


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Processes a test starts; killed afterwards."""
    started: Processes = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A short folder every user may write to (the users' sockets and save logs)."""
    folder = Path(tempfile.mkdtemp(prefix="lpk-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# --- list: a user sees only their own entries --------------------------------------------------


def test_a_user_lists_only_their_own_registrations(
    tmp_path: Path, processes: Processes, agent_tls: TLSMaterial
) -> None:
    roots, mine = sleeper(0 if ROOT else USER), sleeper(USER)
    processes += [roots, mine]
    root_app = {"name": "root-db", "pid": roots.pid, "priority": 1, "method": "Command",
                "command": ["pg_dump", SECRET]}  # fmt: skip
    # Unprivileged, root's entry is put in the table the agent starts with.
    agent = agent_with_table(tmp_path, [] if ROOT else [kept(root_app, uid=0)], agent_tls).start()
    try:
        if ROOT:
            assert request_as(0, agent.socket, {"op": "register", "app": root_app})["ok"]
        own = {"name": "notes", "pid": mine.pid, "method": "Signal"}
        assert request_as(USER, agent.socket, {"op": "register", "app": own})["ok"]

        # The attack: a user lists the table, over the socket and with the CLI.
        answer = request_as(USER, agent.socket, {"op": "list"})
        assert [(a["name"], a["uid"]) for a in answer["applications"]] == [("notes", USER)]
        assert "s3cret" not in json.dumps(answer)
        for args in (["list"], ["list", "--json"]):
            listed = cli_as(agent, USER, *args)
            assert listed.returncode == 0, listed.stderr
            assert "notes" in listed.stdout
            assert "root-db" not in listed.stdout and "s3cret" not in listed.stdout

        if ROOT:  # another user sees nothing; root sees everyone's
            assert request_as(NOBODY - 1, agent.socket, {"op": "list"})["applications"] == []
            everyone = json.loads(cli(agent, "list", "--json").stdout)
            assert sorted(a["name"] for a in everyone) == ["notes", "root-db"]
            assert SECRET in json.dumps(everyone)
    finally:
        agent.close()


# --- connections: one user cannot take them all ------------------------------------------------


def served_and_turned_away(socks: list[socket.socket]) -> tuple[list[socket.socket], list[str]]:
    """Ping every connection: those the agent serves answer; the others say why not."""
    served, refusals = [], []
    for sock in socks:
        answer = ask(sock, {"op": "ping"})
        if answer["ok"]:
            served.append(sock)
        else:
            assert answer["busy"], answer
            refusals.append(answer["error"])
    return served, refusals


def test_one_user_cannot_take_every_connection(agent: AgentProcess) -> None:
    # The attack: one user opens every connection the agent serves (and would ping them).
    hog = connect_as(USER, agent.socket, MAX_CONNECTIONS)
    try:
        served, refusals = served_and_turned_away(hog)
        assert len(served) == MAX_CONNECTIONS_PER_USER
        assert len(refusals) == MAX_CONNECTIONS - MAX_CONNECTIONS_PER_USER
        assert set(refusals) == {
            f"uid {USER} already holds {MAX_CONNECTIONS_PER_USER} connections to the agent, "
            "the most one user may; close some (each `lparkube-agent run` holds one)"
        }
        assert all(ask(sock, {"op": "ping"})["ok"] for sock in served)  # still served
        # The user's own CLI says why, instead of hanging or failing obscurely.
        turned_away = cli_as(agent, USER, "list")
        assert turned_away.returncode == 1
        assert f"uid {USER} already holds" in turned_away.stderr
    finally:
        for sock in hog:
            sock.close()
    deadline = time.monotonic() + 5  # the agent notices the closed connections at once
    while cli_as(agent, USER, "list").returncode != 0:
        assert time.monotonic() < deadline, "the user's connections were never given back"
        time.sleep(0.05)


@needs_root("to connect as other users (tests/unit/test_agent_guest_policy.py: several uids)")
def test_other_users_and_root_still_get_in(agent: AgentProcess) -> None:
    hogs: list[socket.socket] = []
    try:
        # Users hog what they can: nobody every connection, then 7 more uids theirs.
        hogs += connect_as(NOBODY, agent.socket, MAX_CONNECTIONS)
        assert len(served_and_turned_away(hogs)[0]) == MAX_CONNECTIONS_PER_USER
        other = NOBODY - 1
        app = sleeper(other)
        try:
            own = {"name": "other-app", "pid": app.pid, "method": "Signal"}
            assert request_as(other, agent.socket, {"op": "register", "app": own})["ok"]
        finally:
            app.kill()
            app.wait()
        users = MAX_CONNECTIONS // MAX_CONNECTIONS_PER_USER  # 8 uids could fill the socket
        for uid in range(NOBODY - 1, NOBODY - users, -1):
            hogs += connect_as(uid, agent.socket, MAX_CONNECTIONS_PER_USER)
        served, refusals = served_and_turned_away(hogs[MAX_CONNECTIONS:])
        assert len(served) + MAX_CONNECTIONS_PER_USER == MAX_CONNECTIONS - ROOT_RESERVE
        late = request_as(NOBODY - users, agent.socket, {"op": "ping"})
        assert late == {"ok": False, "busy": True, "error": refusals[0]}
        assert "serving 224 connections" in late["error"]
        # Root always gets in: the CLI, and the reserve's every connection.
        assert "PRIORITY" in cli(agent, "list").stdout
        roots = connect_as(0, agent.socket, ROOT_RESERVE)
        hogs += roots
        assert len(served_and_turned_away(roots)[0]) == ROOT_RESERVE
    finally:
        for sock in hogs:
            sock.close()


def test_idle_connections_still_time_out(shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(regserver, "IDLE_TIMEOUT", 0.5)
    server = RegistrationServer(shared_dir / "agent.sock", Table(None), Terminals())
    server.start()
    try:
        idle = connect_as(USER, server.path, MAX_CONNECTIONS_PER_USER)
        start = time.monotonic()
        for sock in idle:  # the server hangs up on each (recv returns b"") after its timeout
            sock.settimeout(5)
            assert sock.recv(1) == b""
        assert 0.4 < time.monotonic() - start < 3
        assert request_as(USER, server.path, {"op": "ping"})["ok"]  # the share is free again
    finally:
        server.stop()


# --- Signal: never a signal that kills or stops an app that does not handle it ----------------


def state(pid: int) -> str:
    """The process state letter: S sleeping, T stopped, Z zombie ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


@pytest.mark.parametrize(
    ("sig", "why"),
    [
        ("SIGSEGV", "dumps core and dies"),
        ("SIGTSTP", "stops"),
        ("SIGRTMIN", "dies"),
        ("SIGTERM", "dies"),
    ],
)
def test_signals_that_kill_or_stop_are_refused_at_registration(
    agent: AgentProcess,
    processes: Processes,
    tmp_path: Path,
    sig: str,
    why: str,
) -> None:
    app, _ = start_app("idle", "app", tmp_path / "out")  # handles none of these
    processes.append(app)
    refused = cli(agent, "register", "--name=app", f"--pid={app.pid}", "--method=Signal",
                  f"--signal={sig}", check=False)  # fmt: skip
    assert refused.returncode == 1
    assert f"{sig} is refused as a save signal: an application that does not handle " \
           f"it {why}" in refused.stderr  # fmt: skip
    assert agent.save("after-refusal")["applications"] == []
    assert app.poll() is None and state(app.pid) != "T", f"{sig} killed or stopped the app"


def test_a_kept_entry_with_a_refused_signal_is_not_sent(
    tmp_path: Path, processes: Processes, agent_tls: TLSMaterial
) -> None:
    """An entry an older agent accepted (and kept across the upgrade) is refused at save time."""
    app, _ = start_app("idle", "app", tmp_path / "out")
    processes.append(app)
    entry = {"name": "app", "pid": app.pid, "priority": 1, "method": "Signal", "signal": "SIGTSTP"}
    agent = agent_with_table(tmp_path, [kept(entry, uid=os.geteuid())], agent_tls).start()
    try:
        (result,) = agent.save("kept")["applications"]
    finally:
        agent.close()
    assert result["outcome"] == "Failed"
    assert result["message"].startswith("SIGTSTP is refused as a save signal")
    assert result["message"].endswith("; not sent")
    assert state(app.pid) != "T"


def test_a_save_signal_goes_only_to_a_process_that_catches_it(
    agent: AgentProcess, processes: Processes, tmp_path: Path
) -> None:
    out = tmp_path / "saves.log"
    saver, _ = start_app("signal", "saver", out)  # catches SIGUSR1 and saves
    bare, _ = start_app("idle", "bare", out)  # catches nothing
    ignorer = subprocess.Popen([sys.executable, "-c", (
        "import signal, time; signal.signal(signal.SIGUSR1, signal.SIG_IGN); print(flush=True);"
        "time.sleep(120)")], stdout=subprocess.PIPE)  # fmt: skip
    processes += [saver, bare, ignorer]
    assert ignorer.stdout is not None and ignorer.stdout.readline() == b"\n"
    for name, pid, sig in [("saver", saver.pid, "USR1"), ("bare-usr1", bare.pid, "USR1"),
                           ("bare-hup", bare.pid, "HUP"), ("bare-winch", bare.pid, "WINCH"),
                           ("ignorer", ignorer.pid, "USR1")]:  # fmt: skip
        cli(agent, "register", f"--name={name}", f"--pid={pid}", "--method=Signal",
            f"--signal={sig}")  # fmt: skip

    result = agent.save("signals", timeout=3)

    outcomes = {a["name"]: (a["outcome"], a["message"]) for a in result["applications"]}
    assert outcomes == {
        "saver": ("Saved", "SIGUSR1 delivered"),
        # SIGUSR1 and SIGHUP would have killed it, SIGWINCH would have saved nothing:
        "bare-usr1": ("Failed", "the process does not handle SIGUSR1; not sent"),
        "bare-hup": ("Failed", "the process does not handle SIGHUP; not sent"),
        "bare-winch": ("Failed", "the process does not handle SIGWINCH; not sent"),
        # an ignored signal saves nothing either
        "ignorer": ("Failed", "the process does not handle SIGUSR1; not sent"),
    }
    deadline = time.monotonic() + 5
    while not lines(out) and time.monotonic() < deadline:  # the app writes after the signal
        time.sleep(0.02)
    assert [name for name, _ in lines(out)] == ["saver"]
    assert [p.poll() for p in (saver, bare, ignorer)] == [None, None, None]


# --- races: a pid reused, a socket path swapped ----------------------------------------------


@needs_root("to register as another user and reuse a pid on purpose (ns_last_pid)")
def test_registration_is_not_fooled_by_a_pid_reused_between_its_checks(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch, processes: Processes
) -> None:
    """The attack: nobody registers its own process, which exits right after the uid check, and
    a root process gets its pid before the agent reads the start time the entry is bound to.
    The hook makes the reuse happen exactly there, after the real uid check."""
    mine = sleeper(NOBODY)
    victim: list[subprocess.Popen] = []
    check_uid = regserver.authorize

    def then_reuse_the_pid(peer: procinfo.Peer, target: object) -> None:
        check_uid(peer, target)  # type: ignore[arg-type]
        mine.kill()
        mine.wait()
        victim.append(take_pid(mine.pid, ["sleep", "120"]))  # root's
        processes.append(victim[0])

    monkeypatch.setattr(regserver, "authorize", then_reuse_the_pid)
    table = Table(None)
    server = RegistrationServer(shared_dir / "agent.sock", table, Terminals())
    server.start()
    try:
        app = {"name": "x", "pid": mine.pid, "method": "Signal"}
        answer = request_as(NOBODY, server.path, {"op": "register", "app": app})
    finally:
        server.stop()
    assert victim and victim[0].pid == mine.pid
    assert answer == {"ok": False, "error": f"no process {mine.pid}"}
    assert table.entries() == []  # no entry bound to root's process


@needs_root("to reuse a pid on purpose (/proc/sys/kernel/ns_last_pid)")
def test_a_signal_never_reaches_a_pid_reused_after_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: Processes
) -> None:
    """The app exits after the agent checked it (alive, same start time, catches SIGUSR1) and
    a process that would die of SIGUSR1 gets its pid before the signal is sent."""
    app, _ = start_app("signal", "app", tmp_path / "out")
    processes.append(app)
    victim: list[subprocess.Popen] = []
    catches = procinfo.Process.catches

    def then_reuse_the_pid(process: procinfo.Process, signum: int) -> bool:
        caught = catches(process, signum)
        app.kill()
        app.wait()
        victim.append(take_pid(app.pid, ["sleep", "120"]))
        processes.append(victim[0])
        return caught

    monkeypatch.setattr(procinfo.Process, "catches", then_reuse_the_pid)
    reg = Registration("app", app.pid, 0, "Signal", signal="SIGUSR1")
    reg.started = procinfo.start_time(app.pid)
    outcome = Methods(InputTable({}), Terminals()).save(
        reg, SaveContext("s", "Manual", time.monotonic() + 5)
    )
    assert victim and victim[0].pid == app.pid
    assert (outcome.outcome, outcome.message) == ("Skipped", "the process has exited")
    time.sleep(0.2)
    assert victim[0].poll() is None, "the signal reached the process that reused the pid"


class Listener:
    """A Unix socket server in the test process (root's, when the tests run as root) that keeps
    every byte it is sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    data = conn.recv(4096)
                    self.received += data
                    if data:
                        conn.sendall(b"OK obeyed\n")

    def close(self) -> None:
        self._sock.close()


@needs_root("to own a socket path as another user")
def test_a_socket_path_swapped_after_its_check_reaches_nothing(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: nobody registers a socket that is theirs; right before the agent connects,
    they swap the path for a link to root's socket. The hook swaps it exactly there."""
    roots = Listener(shared_dir / "root.sock")
    theirs = Listener(shared_dir / "theirs.sock")
    os.chown(theirs.path, NOBODY, NOBODY)  # what any check of the path before connecting sees

    class SwappedBeforeConnect(socket.socket):
        def connect(self, address: object) -> None:
            swap = shared_dir / "swap"
            swap.symlink_to(roots.path)
            swap.replace(theirs.path)
            super().connect(address)  # type: ignore[arg-type]

    monkeypatch.setattr(methods.socket, "socket", SwappedBeforeConnect)
    reg = Registration("app", os.getpid(), 0, "UnixSocket", uid=NOBODY, socket=str(theirs.path))
    reg.started = procinfo.start_time(os.getpid())
    try:
        outcome = Methods(InputTable({}), Terminals()).save(
            reg, SaveContext("s", "Manual", time.monotonic() + 5)
        )
        time.sleep(0.2)
    finally:
        roots.close()
        theirs.close()
    assert outcome.outcome == "Failed"
    assert outcome.message.endswith(f"is served by uid 0, not by the registering user "
                                    f"(uid {NOBODY}); nothing sent")  # fmt: skip
    assert roots.received == b""


def start_app_as(uid: int, mode: str, name: str, out: Path) -> tuple[UserProcess, str]:
    """The demo app (`start_app`) running as `uid`; returns it and its address."""
    argv = ["app", f"--mode={mode}", f"--name={name}", f"--out={out}"]
    app = UserProcess(uid, lambda: testing.main(argv))
    return app, app.stdout.readline().strip()


@needs_root("to run a socket server as another user")
def test_a_users_socket_save_reaches_only_a_server_running_as_that_user(
    agent: AgentProcess, shared_dir: Path, processes: Processes
) -> None:
    """The real agent: the user's own socket app is saved; a socket a root service listens on
    is refused even though its file is the user's (what the agent used to check)."""
    out = shared_dir / "saves.log"
    app, path = start_app_as(NOBODY, "socket", "theirs", out)
    processes.append(app)
    roots = Listener(shared_dir / "root-service.sock")
    os.chown(roots.path, NOBODY, NOBODY)  # root's service lets the user connect
    try:
        for name, sock in (("theirs", path), ("roots", str(roots.path))):
            entry = {"name": name, "pid": app.pid, "method": "UnixSocket", "socket": sock}
            assert request_as(NOBODY, agent.socket, {"op": "register", "app": entry})["ok"]
        result = agent.save("sockets", timeout=3)
        time.sleep(0.2)
    finally:
        roots.close()
    outcomes = {a["name"]: (a["outcome"], a["message"]) for a in result["applications"]}
    assert outcomes["theirs"] == ("Saved", "saved")
    assert outcomes["roots"] == (
        "Failed",
        f"{roots.path} is served by uid 0, not by the registering user (uid {NOBODY}); "
        "nothing sent",
    )
    assert roots.received == b""
    assert [name for name, _ in lines(out)] == ["theirs"]
