"""The GitHub Actions workflows are valid YAML with the structure a hosted runner needs.

No runner is available here, so the checks are the ones that make a workflow fail before any
step runs: unparsable YAML, a job without ``runs-on`` or steps, a step that is neither ``uses``
nor ``run``, an unpinned action, a Python version YAML reads as a float (3.10 -> 3.1), and
commands or make targets that do not exist in this repository.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lparkube_devenv.controlplane import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.y*ml"))
MAKEFILE = REPO_ROOT / "Makefile"
STEP_KEYS = {"name", "id", "if", "uses", "run", "with", "env", "shell", "working-directory"}
STEP_KEYS |= {"continue-on-error", "timeout-minutes"}


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path.name}: not a YAML mapping"
    # YAML 1.1 reads the bare key `on` as the boolean True; GitHub reads it as "on".
    if True in document:
        document["on"] = document.pop(True)
    return document


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def run_lines(workflow: dict[str, Any]) -> list[str]:
    return [line.strip() for s in steps(workflow) for line in str(s.get("run", "")).splitlines()]


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", MAKEFILE.read_text(), flags=re.MULTILINE))


def test_both_workflows_exist() -> None:
    assert {p.name for p in WORKFLOW_FILES} >= {"ci.yaml", "e2e.yaml"}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_structure(path: Path) -> None:
    workflow = load(path)
    assert isinstance(workflow.get("name"), str)
    assert workflow.get("on"), f"{path.name}: no triggers"
    assert workflow.get("permissions") == {"contents": "read"}, "least privilege for the token"
    jobs = workflow.get("jobs")
    assert isinstance(jobs, dict) and jobs, f"{path.name}: no jobs"
    for job_id, job in jobs.items():
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", job_id), f"bad job id {job_id!r}"
        assert job.get("runs-on") == "ubuntu-latest", f"{job_id}: runs-on"
        assert 0 < job.get("timeout-minutes", 0) <= 90, f"{job_id}: bound the job's time"
        assert isinstance(job.get("steps"), list) and job["steps"], f"{job_id}: no steps"
        for step in job["steps"]:
            assert isinstance(step, dict), f"{job_id}: step {step!r} is not a mapping"
            assert set(step) <= STEP_KEYS, f"{job_id}: unknown step keys {set(step) - STEP_KEYS}"
            assert ("uses" in step) != ("run" in step), f"{job_id}: {step} needs uses xor run"
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[\w.-]+", step["uses"]), step["uses"]
    text = path.read_text()
    expressions = re.findall(r"\$\{\{(.*?)\}\}", text)
    assert len(expressions) == text.count("${{"), f"{path.name}: an unclosed ${{{{ expression"
    assert all(e.strip() for e in expressions), f"{path.name}: an empty ${{{{ }}}} expression"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_toolchains_are_the_projects(path: Path) -> None:
    setup = {s["uses"].split("@")[0]: s.get("with", {}) for s in steps(load(path)) if "uses" in s}
    python = setup["actions/setup-python"]["python-version"]
    assert python == "3.11", f"python-version must be the string '3.11', got {python!r}"
    assert isinstance(setup["actions/setup-go"]["go-version"], str)


def test_ci_runs_the_project_ci_entry_point() -> None:
    workflow = load(WORKFLOWS / "ci.yaml")
    assert ".ci/run" in run_lines(workflow)
    assert os.access(REPO_ROOT / ".ci" / "run", os.X_OK)


def test_e2e_runs_the_e2e_tests_and_requires_docker() -> None:
    workflow = load(WORKFLOWS / "e2e.yaml")
    job = next(iter(workflow["jobs"].values()))
    assert job["env"].get("LPARKUBE_E2E_REQUIRED") == "1", "a runner without Docker must fail"
    invoked = [line for line in run_lines(workflow) if line.startswith("make ")]
    assert invoked, "e2e.yaml must run the tests through make"
    for line in invoked:
        target = line.split()[1]
        assert target in make_targets(), f"e2e.yaml runs `make {target}`, not in the Makefile"
    assert "e2e" in {line.split()[1] for line in invoked}
