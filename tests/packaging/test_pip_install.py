"""The README's "Without Helm" install: `pip install .` of a checkout into a clean venv gives
commands that start, and each of the project's modules comes from exactly one distribution.

The clean install fetches the runtime dependencies from the package index (pip's cache makes it
take seconds after the first time).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from lparkube_devenv.controlplane import REPO_ROOT

INSTALL_TIMEOUT = 300
OWNERS = "import json, importlib.metadata as m; print(json.dumps(m.packages_distributions()))"


def run(*argv: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
        timeout=INSTALL_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def checkout_copy(target: Path) -> Path:
    """The checkout's files (tracked and not ignored) copied to ``target``, so that the build
    writes nothing into the working tree."""
    listing = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z",
                  cwd=REPO_ROOT)  # fmt: skip
    for name in filter(None, listing.split("\0")):
        source, copy = REPO_ROOT / name, target / name
        if source.is_file():  # a file deleted but not yet committed is still listed
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(source.read_bytes())
    return target


def project_owners(owners: dict[str, list[str]]) -> dict[str, set[str]]:
    """The distributions that install each of the project's top-level modules."""
    return {name: set(dists) for name, dists in owners.items() if name.startswith("lparkube")}


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv into which `pip install .` installed a copy of this checkout."""
    root = tmp_path_factory.mktemp("pip-install")
    source = checkout_copy(root / "checkout")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=root)
    run(venv / "bin" / "pip", "install", "--quiet", ".", cwd=source)
    return venv


def test_pip_install_gives_an_lparkube_command_that_starts(clean_venv: Path) -> None:
    bin_dir = clean_venv / "bin"
    assert "run the operator" in run(bin_dir / "lparkube", "--help", cwd=clean_venv)
    assert "--kubeconfig" in run(bin_dir / "lparkube", "run", "--help", cwd=clean_venv)
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert run(bin_dir / "lparkube", "--version", cwd=clean_venv).strip() == version
    assert run(bin_dir / "lparkube", "version", cwd=clean_venv).strip() == version


def test_pip_install_ships_the_agent_package_in_the_lparkube_distribution(
    clean_venv: Path,
) -> None:
    owners = json.loads(run(clean_venv / "bin" / "python", "-c", OWNERS, cwd=clean_venv))
    assert project_owners(owners) == {"lparkube": {"lparkube"}, "lparkube_agent": {"lparkube"}}


def test_the_development_venv_installs_each_module_from_one_distribution() -> None:
    """The Makefile's editable installs (`-e . -e ./devenv`) must not overlap."""
    assert project_owners(metadata.packages_distributions()) == {
        "lparkube": {"lparkube"},
        "lparkube_agent": {"lparkube"},
        "lparkube_devenv": {"lparkube-devenv"},
    }
