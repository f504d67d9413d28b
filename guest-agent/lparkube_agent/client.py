"""Client side of the registration socket (used by the CLI and the run wrapper)."""

from __future__ import annotations

import json
import socket
from pathlib import Path


class AgentError(Exception):
    """The agent refused a request or could not be reached."""


class AgentRefusedError(AgentError):
    """The agent answered, and said no (retrying will not help)."""


class Client:
    """One connection to the agent's registration socket."""

    def __init__(self, path: Path, timeout: float | None = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as error:
            self.sock.close()
            raise AgentError(f"cannot reach the agent at {path}: {error}") from error
        self._buffer = b""

    def request(self, payload: dict, fds: list[int] | None = None) -> dict:
        data = json.dumps(payload).encode() + b"\n"
        try:
            try:
                if fds:
                    socket.send_fds(self.sock, [data], fds)
                else:
                    self.sock.sendall(data)
            except BrokenPipeError:
                pass  # turned away before the agent read a byte: its answer says why
            answer = json.loads(self._line())
        except (OSError, ValueError) as error:
            raise AgentError(f"the agent connection failed: {error}") from error
        if answer.get("busy"):  # no connection free for us now: worth trying again
            raise AgentError(answer.get("error") or "the agent is busy")
        if not answer.get("ok"):
            raise AgentRefusedError(answer.get("error") or "refused")
        return answer

    def _line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("the agent closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call(path: Path, payload: dict) -> dict:
    """One request on a fresh connection."""
    with Client(path) as client:
        return client.request(payload)
