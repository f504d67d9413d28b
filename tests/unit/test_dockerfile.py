"""The operator image's Dockerfile, checked as text because no Docker engine runs here.

What matters about the image is decided by a handful of instructions: a pinned base, a non-root
numeric user (so ``runAsNonRoot`` can verify it), no remote ``ADD``, hashed installs of exactly
the runtime closure, a read-only-root-friendly environment, and the OCI labels. The pinned
requirements file must also stay in step with pyproject.toml and requirements-dev.txt.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lparkube_devenv.controlplane import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
IMAGE_REQUIREMENTS = REPO_ROOT / "requirements-image.txt"
BUILD_REQUIREMENTS = REPO_ROOT / "requirements-image-build.txt"
DEV_REQUIREMENTS = REPO_ROOT / "requirements-dev.txt"
PYPROJECT = REPO_ROOT / "pyproject.toml"

PINNED_IMAGE = re.compile(r"^[\w./-]+:(?P<tag>[\w][\w.-]*)@sha256:[0-9a-f]{64}$")
OCI_LABELS = ("title", "description", "source", "licenses", "version", "revision")
NON_ROOT_UID = 65532


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def _logical_lines(text: str) -> list[str]:
    """Dockerfile lines with comments dropped and backslash continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    return lines


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), value)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, each FROM's image with those ARGs substituted."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_substitute(words[0], global_args), name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            arg, _, default = args.partition("=")
            global_args[arg] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def _requirement_pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (exact version, number of hashes) from a pip-compile'd requirements file."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, tuple[str, int]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"{path.name}: unexpected option line {line!r}"
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"{path.name}: {line.split()[0]!r} is not pinned with =="
        pins[canonicalize_name(match[1])] = (match[2], len(re.findall(r"--hash=sha256:", line)))
    return pins


def _dev_pins() -> dict[str, str]:
    pins = {}
    for line in DEV_REQUIREMENTS.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line.strip())
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def _runtime_dependencies() -> list[Requirement]:
    return [Requirement(d) for d in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]]


def _closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in, from the installed metadata (no network)."""
    environment = {**default_environment(), "extra": ""}
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate(environment)):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in metadata.requires(requirement.name) or []]
    return seen


def test_the_parser_sees_what_the_file_says() -> None:
    """Guards the checks below: a parser that saw nothing would make them pass vacuously."""
    args, stages = parse(
        "ARG BASE=python:3.11@sha256:" + "0" * 64 + "\n# comment\nFROM ${BASE} AS b\n"
        "RUN a \\\n && b\nFROM b\nUSER 1:1\n"
    )
    assert args == {"BASE": "python:3.11@sha256:" + "0" * 64}
    assert [(s.image, s.name) for s in stages] == [(args["BASE"], "b"), ("b", None)]
    assert stages[0].all("RUN") == ["a  && b"]
    assert stages[1].all("USER") == ["1:1"]


def test_multi_stage_and_every_base_pinned_by_tag_and_digest(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "build in one stage and copy only the result into the final stage"
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in names:
            continue
        match = PINNED_IMAGE.match(stage.image)
        assert match, f"FROM {stage.image}: pin the base by tag and @sha256 digest"
        assert match["tag"] != "latest", f"FROM {stage.image}: never the latest tag"
    assert {s.image for s in stages if s.image not in names} == {stages[-1].image}, (
        "the build and final stages use the same base, so the venv's interpreter matches"
    )


def test_final_stage_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and gid.isdigit(), (
        f"USER {users[-1]}: use numeric uid:gid so Kubernetes runAsNonRoot can verify it"
    )
    assert int(uid) == NON_ROOT_UID and int(gid) == NON_ROOT_UID
    last_user = max(i for i, ins in enumerate(final.instructions) if ins.keyword == "USER")
    after = [ins.keyword for ins in final.instructions[last_user + 1 :]]
    assert "RUN" not in after and "USER" not in after


def test_no_remote_add_and_no_latest_anywhere(stages: list[Stage]) -> None:
    for stage in stages:
        for args in stage.all("ADD"):
            assert not re.search(r"(https?|git)://|git@", args), f"ADD {args}: no remote sources"
    assert not re.search(r":latest\b", DOCKERFILE.read_text())


def test_oci_labels_with_version_and_revision_from_build_args(final: Stage) -> None:
    labels = dict(
        (key, value.strip('"'))
        for args in final.all("LABEL")
        for key, value in re.findall(r'([\w.-]+)=("[^"]*"|\S+)', args)
    )
    for name in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{name}"), f"missing OCI label {name}"
    declared = {a.partition("=")[0] for a in final.all("ARG")}
    assert {"VERSION", "REVISION"} <= declared
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.revision"] == "${REVISION}"
    assert (
        labels["org.opencontainers.image.licenses"]
        == tomllib.loads(PYPROJECT.read_text())["project"]["license"]
    )


def test_environment_suits_a_read_only_root_filesystem(final: Stage) -> None:
    env = dict(
        pair.split("=", 1) for args in final.all("ENV") for pair in args.split() if "=" in pair
    )
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "no .pyc writes next to the code"
    assert env.get("HOME") == "/tmp" and env.get("TMPDIR") == "/tmp"
    assert not final.all("VOLUME"), "volumes belong in the pod spec (emptyDir at /tmp)"


def test_one_image_for_the_operator_and_the_diagnosis_pod(final: Stage) -> None:
    assert [json.loads(a) for a in final.all("ENTRYPOINT")] == [["lparkube"]]
    assert [json.loads(a) for a in final.all("CMD")] == [["run"]]


def test_every_install_is_pinned(stages: list[Stage]) -> None:
    """pip installs only hashed requirements files or local wheels; no apt, no bare names."""
    installs = [
        command.strip()
        for stage in stages
        for run in stage.all("RUN")
        for command in run.split("&&")
        if re.search(r"\bpip (install|wheel)\b", command)
    ]
    assert installs
    hashed: set[str] = set()
    for command in installs:
        if "--require-hashes" in command:
            hashed.update(re.findall(r"-r (\S+)", command))
        else:
            assert "--no-index" in command and "--no-deps" in command, (
                f"{command!r}: unpinned install (use --require-hashes -r FILE, or --no-index "
                "--no-deps for the project's own wheels)"
            )
    assert hashed == {IMAGE_REQUIREMENTS.name, BUILD_REQUIREMENTS.name}
    for stage in stages:
        for run in stage.all("RUN"):
            assert not re.search(r"\b(apt-get|apt|apk|curl|wget)\b", run), run


def test_build_context_is_an_allowlist_that_holds_every_copy_source(stages: list[Stage]) -> None:
    ignore = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore starts by excluding everything"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for stage in stages:
        for args in stage.all("COPY"):
            if args.startswith("--from"):
                continue
            *sources, _dest = args.split()
            for source in (s.rstrip("/") for s in sources):
                assert source in allowed, f"COPY {source}: not in the .dockerignore allowlist"
                assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"


def test_image_requirements_pin_the_runtime_dependencies_by_hash() -> None:
    pins = _requirement_pins(IMAGE_REQUIREMENTS)
    dev = _dev_pins()
    for requirement in _runtime_dependencies():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{IMAGE_REQUIREMENTS.name} lacks runtime dependency {name}"
        version, _ = pins[name]
        assert requirement.specifier.contains(version), (
            f"{name}=={version} does not satisfy pyproject's {requirement}"
        )
        assert dev.get(name) == version, (
            f"{name}: the image pins {version} but the tests run {dev.get(name)} "
            "(requirements-dev.txt); run `make image-requirements`"
        )
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert not unhashed, f"pins without --hash: {unhashed}"


def test_image_requirements_are_exactly_the_runtime_closure() -> None:
    """Nothing missing (the image would fail to import) and nothing extra (unneeded code)."""
    pinned = set(_requirement_pins(IMAGE_REQUIREMENTS))
    closure = _closure(_runtime_dependencies())
    assert pinned == closure, (
        f"missing from {IMAGE_REQUIREMENTS.name}: {sorted(closure - pinned)}; "
        f"not needed: {sorted(pinned - closure)}; run `make image-requirements`"
    )


def test_build_requirements_satisfy_the_build_system() -> None:
    pins = _requirement_pins(BUILD_REQUIREMENTS)
    for spec in tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{BUILD_REQUIREMENTS.name} lacks {name}"
        version, hashes = pins[name]
        assert requirement.specifier.contains(version) and hashes > 0
