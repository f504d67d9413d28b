"""The five ways to tell an application to save, each bounded by a deadline.

Every method returns an Outcome instead of raising: one app's failure is data for the report,
never a reason to stop saving the others. Before acting on a pid the process's start time is
checked again, so a recycled pid is never signalled or typed into; a signal goes through the
same pinned /proc directory as that check (procinfo.Process), so not even a pid reused between
the check and the signal receives it.

A Signal save sends the registered signal (one of registry.SAVE_SIGNALS) only to a process that
catches it: one without a handler would die of SIGUSR1, SIGUSR2 or SIGHUP, and would save
nothing on the harmless ones; both are `Failed`, and the signal is not sent.

A UnixSocket save checks whom it reached, not the path: the process listening on the connected
socket (SO_PEERCRED) must run as the registering user, else nothing is sent. A path swapped
after any check of it therefore gains nothing.

How a SimulatedInput save is known to be complete: keystrokes have no reply, so the agent
watches a file. If the registration names one (`run --watch FILE`, or by default the last file
argument of an editor the input table knows), the save is Saved when that file's mtime, size or
inode changes after the keys were typed, and TimedOut if it does not change within the
timeout. Without a file it waits the entry's settle time (500 ms by default) and calls the app
Saved if it is still running.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import procinfo
from .inputtable import InputEntry, InputTable
from .registry import (
    COMMAND,
    HTTP,
    SIGNAL,
    SIMULATED_INPUT,
    UNIX_SOCKET,
    Registration,
    normalize_signal,
)
from .terminals import Terminals

SAVED, FAILED, TIMED_OUT, SKIPPED = "Saved", "Failed", "TimedOut", "Skipped"
MAX_MESSAGE = 300
POLL_SECONDS = 0.05
REATTACH_SECONDS = 3.0


@dataclass(frozen=True)
class Outcome:
    outcome: str
    message: str = ""


@dataclass(frozen=True)
class SaveContext:
    """What one save run tells each app, and when the app's budget ends (monotonic)."""

    save_id: str
    reason: str
    deadline: float

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class Methods:
    """Dispatches a registration to its save method."""

    def __init__(self, table: InputTable, terminals: Terminals) -> None:
        self.table = table
        self.terminals = terminals

    def save(self, reg: Registration, ctx: SaveContext) -> Outcome:
        if not procinfo.is_alive(reg.pid, reg.started):
            return Outcome(SKIPPED, "the process has exited")
        handler = {
            SIGNAL: self._signal,
            COMMAND: self._command,
            HTTP: self._http,
            UNIX_SOCKET: self._unix_socket,
            SIMULATED_INPUT: self._simulated_input,
        }[reg.method]
        try:
            return handler(reg, ctx)
        except (TimeoutError, socket.timeout):
            return Outcome(TIMED_OUT, "no answer within the timeout")
        except Exception as error:  # one app's failure never stops the others
            return Outcome(FAILED, _short(f"{type(error).__name__}: {error}"))

    def _signal(self, reg: Registration, ctx: SaveContext) -> Outcome:
        try:  # an entry kept from an older agent may name a signal no longer allowed
            signum = signal.Signals[normalize_signal(reg.signal or "SIGUSR1")]
        except ValueError as error:
            return Outcome(FAILED, _short(f"{error}; not sent"))
        try:
            with procinfo.Process(reg.pid) as process:
                if not process.alive(reg.started):
                    return Outcome(SKIPPED, "the process has exited")
                if not process.catches(signum):
                    return Outcome(FAILED, f"the process does not handle {signum.name}; not sent")
                process.send_signal(signum)
        except ProcessLookupError:
            return Outcome(SKIPPED, "the process has exited")
        if reg.settle_millis:
            time.sleep(max(0.0, min(reg.settle_millis / 1000, ctx.remaining())))
        return Outcome(SAVED, f"{signum.name} delivered")

    def _command(self, reg: Registration, ctx: SaveContext) -> Outcome:
        options = _run_as(reg.uid)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": options.pop("home"),
            "LPARKUBE_SAVE_ID": ctx.save_id,
            "LPARKUBE_SAVE_REASON": ctx.reason,
            "LPARKUBE_APP_NAME": reg.name,
            "LPARKUBE_APP_PID": str(reg.pid),
        }
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(
                reg.command or [],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=env,
                start_new_session=True,
                **options,
            )
            try:
                code = proc.wait(timeout=max(0.0, ctx.remaining()))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return Outcome(TIMED_OUT, "the save command did not finish in time; killed")
            out.seek(max(0, out.seek(0, os.SEEK_END) - 2000))
            tail = out.read().decode(errors="replace")
        if code == 0:
            return Outcome(SAVED, _short(tail))
        return Outcome(FAILED, _short(f"exit status {code}: {tail}"))

    def _http(self, reg: Registration, ctx: SaveContext) -> Outcome:
        parts = urlsplit(reg.url or "")
        body = json.dumps(
            {"id": ctx.save_id, "reason": ctx.reason, "name": reg.name, "pid": reg.pid}
        ).encode()
        timeout = max(0.001, ctx.remaining())
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            text = response.read(2000).decode(errors="replace")
        finally:
            conn.close()
        if 200 <= response.status < 300:
            return Outcome(SAVED, _short(text))
        return Outcome(FAILED, _short(f"HTTP {response.status}: {text}"))

    def _unix_socket(self, reg: Registration, ctx: SaveContext) -> Outcome:
        path = reg.socket or ""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(0.001, ctx.remaining()))
            sock.connect(path)
            listener = procinfo.peer_of(sock).uid
            if reg.uid not in (0, listener):
                return Outcome(
                    FAILED,
                    f"{path} is served by uid {listener}, not by the registering user "
                    f"(uid {reg.uid}); nothing sent",
                )
            sock.sendall(f"SAVE {ctx.save_id} {ctx.reason}\n".encode())
            reply = _read_line(sock, ctx)
        if reply.split(" ", 1)[0].upper() == "OK":
            return Outcome(SAVED, _short(reply[2:]))
        return Outcome(FAILED, _short(reply or "the socket closed without a reply"))

    def _simulated_input(self, reg: Registration, ctx: SaveContext) -> Outcome:
        # Right after an agent restart the run wrapper needs a moment to hand its pty over again.
        attach_by = min(ctx.deadline, time.monotonic() + REATTACH_SECONDS)
        while not self.terminals.has(reg.key) and time.monotonic() < attach_by:
            time.sleep(POLL_SECONDS)
        if not self.terminals.has(reg.key):
            return Outcome(FAILED, "terminal not attached (the run wrapper has not reconnected)")
        entry = self.entry_for(reg)
        if entry is None:
            names = ", ".join(procinfo.program_names(reg.pid))
            return Outcome(FAILED, f"no input table entry for {names or reg.program}")
        watch = Path(reg.watch) if reg.watch else None
        before = _file_state(watch)
        for i, chunk in enumerate(entry.sequence()):
            if i:
                time.sleep(entry.delay_millis / 1000)
            self.terminals.type(reg.key, chunk, ctx.deadline)
        typed = " ".join(entry.keys)
        if watch is not None:
            return _await_write(watch, before, ctx, typed)
        time.sleep(max(0.0, min(entry.settle_millis / 1000, ctx.remaining())))
        if not procinfo.is_alive(reg.pid, reg.started):
            return Outcome(FAILED, f"typed {typed}; the process exited")
        return Outcome(SAVED, f"typed {typed}; settled {entry.settle_millis} ms")

    def entry_for(self, reg: Registration) -> InputEntry | None:
        if reg.keys:
            return InputEntry(reg.program or reg.name, tuple(reg.keys))
        names = [reg.program] if reg.program else []
        return self.table.lookup(*names, *procinfo.program_names(reg.pid))


def _run_as(uid: int) -> dict:
    """Popen options that run a command as `uid` (only root can switch users)."""
    try:
        entry = pwd.getpwuid(uid)
        gid, home = entry.pw_gid, entry.pw_dir
    except KeyError:
        gid, home = uid, "/"
    if os.geteuid() == uid:
        return {"home": home}
    if os.geteuid() != 0:
        raise PermissionError(f"the agent cannot run commands as uid {uid}")
    return {"home": home, "user": uid, "group": gid, "extra_groups": []}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.wait()


def _read_line(sock: socket.socket, ctx: SaveContext) -> str:
    data = b""
    while b"\n" not in data and len(data) < 4096:
        sock.settimeout(max(0.001, ctx.remaining()))
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def _file_state(path: Path | None) -> tuple | None:
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _await_write(path: Path, before: tuple | None, ctx: SaveContext, typed: str) -> Outcome:
    """Saved once the file changed and then held still for one poll (the write finished)."""
    last = None
    while ctx.remaining() > 0:
        now = _file_state(path)
        if now is not None and now != before and now == last:
            return Outcome(SAVED, _short(f"typed {typed}; {path} written"))
        last = now
        time.sleep(min(POLL_SECONDS, max(0.0, ctx.remaining())))
    return Outcome(TIMED_OUT, _short(f"typed {typed}; {path} was not written in time"))
