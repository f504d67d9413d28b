"""`lparkube-agent`'s command line: `--socket` before or after the command."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lparkube_agent import cli, protocol
from lparkube_agent.registry import Table
from lparkube_agent.regserver import RegistrationServer
from lparkube_agent.terminals import Terminals

POSITIONS = ("before", "after")


def with_socket(position: str, socket: Path, command: str, *args: str) -> list[str]:
    option = f"--socket={socket}"
    return [option, command, *args] if position == "before" else [command, *args, option]


@pytest.fixture
def registration_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real registration server on a socket that only `--socket` names (not the env)."""
    monkeypatch.setenv(cli.SOCKET_ENV, str(tmp_path / "not-this.sock"))
    path = tmp_path / "agent.sock"
    server = RegistrationServer(path, Table(None), Terminals())
    server.start()
    yield path
    server.stop()


@pytest.mark.parametrize("position", POSITIONS)
def test_client_commands_take_the_socket_before_or_after_the_command(
    position: str, registration_socket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register = ("--name=db", f"--pid={os.getpid()}", "--method=Signal")
    assert cli.main(with_socket(position, registration_socket, "register", *register)) == 0
    assert "registered db" in capsys.readouterr().out
    assert cli.main(with_socket(position, registration_socket, "list", "--json")) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(app["name"], app["pid"]) for app in listed] == [("db", os.getpid())]
    unregister = ("--name=db", f"--pid={os.getpid()}")
    assert cli.main(with_socket(position, registration_socket, "unregister", *unregister)) == 0
    assert "unregistered db" in capsys.readouterr().out


def test_without_the_option_clients_use_the_environment(
    registration_socket: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(cli.SOCKET_ENV, str(registration_socket))
    assert cli.main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("position", POSITIONS)
def test_serve_takes_the_socket_before_or_after_the_command(
    position: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"partition": "tenant-a/web-1"}))
    (tmp_path / "key").write_bytes(protocol.new_key())
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_text("PEM")
    sockets: list[Path | None] = []

    def no_daemon(loaded: object) -> None:
        sockets.append(loaded.socket)  # type: ignore[attr-defined]
        raise RuntimeError("no daemon in a unit test")

    monkeypatch.setattr(cli, "Agent", no_daemon)
    socket = tmp_path / "chosen.sock"
    assert cli.main(with_socket(position, socket, "serve", f"--config={config}")) == 2
    assert sockets == [socket]
