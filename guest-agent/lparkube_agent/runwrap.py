"""`lparkube-agent run -- CMD`: run a terminal program inside a pty that the agent can type into.

The wrapper owns the pseudo-terminal and relays the user's terminal to it, exactly like
`script`. It hands a copy of the pty master to the daemon over the registration socket
(SCM_RIGHTS), so the daemon itself types the app's save keys (no round trip through the
wrapper). The registration connection stays open while the app runs: when it closes the daemon
forgets the app; when the daemon restarts the wrapper reconnects and registers again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import sys
import termios
import time
import tty
from pathlib import Path

from .client import AgentError, AgentRefusedError, Client
from .registry import SIMULATED_INPUT

RECONNECT_SECONDS = 1.0


def default_watch(command: list[str], cwd: str) -> str | None:
    """The file an editor was started on: its last operand (not an option), made absolute."""
    for arg in reversed(command[1:]):
        if arg and not arg.startswith(("-", "+")):
            return os.path.normpath(os.path.join(cwd, arg))
    return None


class AgentLink:
    """The registration connection, re-established whenever the daemon comes back."""

    def __init__(self, path: Path, app: dict, master: int) -> None:
        self.path, self.app, self.master = path, app, master
        self.client: Client | None = None
        self.next_try = 0.0
        self.refused: str | None = None

    def connect(self) -> None:
        self.next_try = time.monotonic() + RECONNECT_SECONDS
        try:
            client = Client(self.path, timeout=5.0)
        except AgentError:
            return
        try:
            client.request({"op": "register", "app": self.app, "hold": True}, [self.master])
        except AgentRefusedError as error:
            self.refused = str(error)
            client.close()
            return
        except AgentError:
            client.close()
            return
        self.client = client

    def wanted(self) -> bool:
        return self.client is None and self.refused is None

    def fileno(self) -> int:
        return self.client.sock.fileno() if self.client else -1

    def on_readable(self) -> None:
        """The daemon only ever closes this connection (it never sends unasked)."""
        assert self.client is not None
        try:
            data = self.client.sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            self.client.close()
            self.client = None

    def close(self) -> None:
        if self.client:
            self.client.close()
            self.client = None


def _spawn(command: list[str], slave: int) -> int:
    """Fork the app with the pty slave as its controlling terminal; returns once it exec'd."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(ready_r)
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.execvp(command[0], command)
        except BaseException as error:
            os.write(ready_w, f"{command[0]}: {error}".encode())
        os._exit(127)
    os.close(ready_w)
    failure = b""
    while True:
        chunk = os.read(ready_r, 4096)  # EOF when exec succeeded (the pipe is close-on-exec)
        if not chunk:
            break
        failure += chunk
    os.close(ready_r)
    if failure:
        os.waitpid(pid, 0)
        raise OSError(failure.decode(errors="replace"))
    return pid


def _forward(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


def _copy_winsize(src: int, dst: int) -> None:
    try:
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def run(command: list[str], socket_path: Path, app: dict) -> int:
    """Run `command` under a pty registered for SimulatedInput; returns its exit code."""
    master, slave = os.openpty()
    stdin_tty = os.isatty(0)
    if stdin_tty:
        _copy_winsize(0, slave)
    try:
        pid = _spawn(command, slave)
    except OSError as error:
        print(f"lparkube-agent run: {error}", file=sys.stderr)
        return 127
    finally:
        os.close(slave)
    app = {**app, "pid": pid, "method": SIMULATED_INPUT}
    link = AgentLink(socket_path, app, master)
    link.connect()
    if link.refused or link.client is None:
        why = link.refused or f"cannot reach the agent at {socket_path} (retrying)"
        print(f"lparkube-agent run: not registered: {why}", file=sys.stderr)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: _forward(pid, signum))
    if stdin_tty:
        signal.signal(signal.SIGWINCH, lambda *_: _copy_winsize(0, master))
    saved = termios.tcgetattr(0) if stdin_tty else None
    try:
        if stdin_tty:
            tty.setraw(0)
        return _relay(pid, master, link)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSAFLUSH, saved)
        link.close()
        os.close(master)


def _relay(pid: int, master: int, link: AgentLink) -> int:
    """Copy stdin -> app and app -> stdout until the app exits; keep the agent link alive."""
    relay = _Relay(master)
    status = None
    while True:
        watched = [master] + ([0] if relay.stdin_open else []) + ([link] if link.client else [])
        try:
            readable, _, _ = select.select(watched, [], [], 0.5)
        except InterruptedError:
            continue
        if master in readable and not relay.from_app():
            break
        if 0 in readable:
            relay.from_user()
        if link in readable:
            link.on_readable()
        if link.wanted() and time.monotonic() >= link.next_try:
            link.connect()
        if status is None:
            done, status_now = os.waitpid(pid, os.WNOHANG)
            if done:
                status = status_now
                if not select.select([master], [], [], 0.2)[0]:
                    break
    if status is None:
        _, status = os.waitpid(pid, 0)
    return _exit_code(status)


class _Relay:
    """The two byte streams between the user's terminal and the app's pty."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.stdin_open = True

    def from_app(self) -> bool:
        """Copy app output to stdout; False once every holder of the pty slave is gone."""
        try:
            data = os.read(self.master, 65536)
        except OSError as error:
            if error.errno != errno.EIO:
                raise
            return False
        _write_all(1, data)
        return bool(data)

    def from_user(self) -> None:
        data = os.read(0, 65536)
        if data:
            _write_all(self.master, data)
        else:
            self.stdin_open = False
