"""`lparkube-dev`: plain-text help, and a `make run` banner that agrees with the README."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from readme_text import section, shell_blocks

from lparkube_devenv import cli
from lparkube_devenv.controlplane import REPO_ROOT

# reST roles (:func:`x`), inline literals (``x``), interpreted text (`x`) and directives (.. x::)
REST_MARKUP = re.compile(r"`|:[a-z]+:|^\s*\.\. \w+::", re.MULTILINE)


def help_text(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["", *cli.COMMANDS])
def test_help_is_plain_text(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(*filter(None, [command]), capsys=capsys)
    assert not REST_MARKUP.search(text), text
    described = cli.COMMANDS.get(command, cli.DESCRIPTION)
    assert " ".join(described.split()) in text


def banner_commands(*, full: bool, bin_dir: Path) -> list[str]:
    """The commands `lparkube-dev` prints once the environment is up, as a user copies them."""
    run_dir = cli.RUN_DIR
    plane = SimpleNamespace(
        startup_seconds=1.0, kubeconfig=run_dir / "kubeconfig", bin_dir=bin_dir, workdir=run_dir
    )
    banner = cli.usage(plane, full=full)  # type: ignore[arg-type]
    return [line.strip() for line in banner.splitlines() if line.startswith("    ")]


def test_make_runs_banner_shows_the_commands_of_the_readme(tmp_path: Path) -> None:
    (tmp_path / "helm").touch()  # the control plane build made helm: the banner sets PATH
    printed = banner_commands(full=True, bin_dir=tmp_path)
    assert printed[:2] == [f"export KUBECONFIG={cli.RUN_DIR / 'kubeconfig'}",
                           f"export PATH={tmp_path}:$PATH"]  # fmt: skip
    first_run, from_another_terminal = shell_blocks(section("The two commands"))
    assert first_run[0].startswith("make run ")
    readme = [line.replace("$PWD", str(REPO_ROOT)) for line in from_another_terminal]
    assert [printed[0], *printed[2:]] == readme


def test_without_qemu_the_banner_points_at_the_host_guests_saves(tmp_path: Path) -> None:
    plane = SimpleNamespace(
        startup_seconds=1.0, kubeconfig=tmp_path / "k", bin_dir=tmp_path, workdir=tmp_path
    )
    banner = cli.usage(plane, full=True, real_guests=False)  # type: ignore[arg-type]
    assert "cat .run/guests/default/web-1/saves" in banner
    assert "lparkube-dev console" not in banner


def test_the_control_plane_banner_needs_no_lparkube_crds(tmp_path: Path) -> None:
    printed = banner_commands(full=False, bin_dir=tmp_path)
    assert printed == [
        f"export KUBECONFIG={cli.RUN_DIR / 'kubeconfig'}",
        "kubectl get namespaces,crds",
    ]


def test_console_of_a_guest_that_does_not_run_says_so(tmp_path: Path, capsys) -> None:
    assert cli.main(["console", "--run-dir", str(tmp_path), "default/web-1"]) == 1
    assert "no real guest default/web-1 runs" in capsys.readouterr().err


def test_make_run_waits_for_the_applications_the_example_saves_target() -> None:
    web = {"metadata": {"name": "web-1", "labels": {"tier": "frontend"}}}
    db = {"metadata": {"name": "db-1", "labels": {"tier": "backend"}}}
    by_label = {"selector": {"matchLabels": {"tier": "frontend"}}}
    assert cli._targeted(web, by_label) and not cli._targeted(db, by_label)
    assert cli._targeted(db, {"partitions": ["db-1"]}) and not cli._targeted(web, {})
    connected = {"conditions": [{"type": "AgentConnected", "status": "True"}]}
    no_apps = {**web, "status": {**connected, "agent": {"applications": 0}}}
    assert cli._agent_ready(no_apps, needs_apps=False)
    assert not cli._agent_ready(no_apps, needs_apps=True)
    assert cli._agent_ready({**web, "status": {**connected, "agent": {"applications": 1}}},
                            needs_apps=True)  # fmt: skip
