"""Real nano and vim under `lparkube-agent run`: a signed save instruction gets their unsaved
edits onto disk, by typing the input table's keys into the terminal the agent holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lparkube_agent.testing import AgentProcess, Terminal, cli


def editor_session(agent: AgentProcess, tmp_path: Path, editor: str) -> tuple[Terminal, Path]:
    if shutil.which(editor) is None:
        pytest.fail(f"{editor} is not installed (apt-get install {editor}; .ci/run does)")
    document = tmp_path / f"{editor}-notes.txt"
    document.write_text("first line\n")
    env = {**agent.env(), "TERM": "xterm", "HOME": str(tmp_path)}
    terminal = Terminal([*agent.command, "run", "--", editor, document.name], env, tmp_path)
    terminal.wait_for(b"first line")
    return terminal, document


@pytest.mark.parametrize(
    ("editor", "keys"),
    [("nano", b"typed in nano "), ("vim", b"Gotyped in vim")],
)
def test_editor_edits_reach_disk_on_a_signed_save(
    agent: AgentProcess, tmp_path: Path, editor: str, keys: bytes
) -> None:
    terminal, document = editor_session(agent, tmp_path, editor)
    try:
        text = keys.decode().removeprefix("Go")
        terminal.type(keys)
        terminal.wait_for(text.strip().encode())
        assert text.strip() not in document.read_text()  # unsaved so far
        assert editor in cli(agent, "list").stdout

        result = agent.save(f"save-{editor}", timeout=5)

        [app] = result["applications"]
        assert (app["method"], app["outcome"], app["order"]) == ("SimulatedInput", "Saved", 1)
        assert text.strip() in document.read_text()
        assert "first line" in document.read_text()
    finally:
        terminal.close()


def test_quitting_the_editor_unregisters_it(agent: AgentProcess, tmp_path: Path) -> None:
    terminal, _ = editor_session(agent, tmp_path, "vim")
    try:
        terminal.type(b"\x1b:q!\r")
        assert terminal.proc.wait(10) == 0
        assert "vim" not in cli(agent, "list").stdout
    finally:
        terminal.close()
