"""CRD YAML is generated from the API source; committed files must not drift from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from lparkube.api import generate
from lparkube.api.v1alpha1 import KINDS

ROOT = generate.repo_root()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the committed generated directories."""
    for directory in generate.CRD_DIRS:
        shutil.copytree(ROOT / directory, tmp_path / directory)
    return tmp_path


def test_committed_crds_match_the_source() -> None:
    assert generate.drift(ROOT) == [], "run `make crds` and commit the result"


def test_a_hand_edit_is_detected(tree: Path) -> None:
    target = tree / "crds/lparkube.io_partitions.yaml"
    target.write_text(target.read_text().replace("maxItems: 16", "maxItems: 17", 1))
    assert generate.drift(tree) == ["crds/lparkube.io_partitions.yaml"]
    assert generate.main(["--check", "--root", str(tree)]) == 1


def test_a_chart_copy_edit_is_detected(tree: Path) -> None:
    target = tree / "charts/lparkube/crds/lparkube.io_saveevents.yaml"
    target.write_text(target.read_text() + "# tweak\n")
    assert generate.drift(tree) == ["charts/lparkube/crds/lparkube.io_saveevents.yaml"]


def test_missing_and_stale_files_are_detected(tree: Path) -> None:
    (tree / "crds/lparkube.io_partitions.yaml").unlink()
    (tree / "crds/lparkube.io_oldkinds.yaml").write_text("stale")
    assert sorted(generate.drift(tree)) == [
        "crds/lparkube.io_oldkinds.yaml",
        "crds/lparkube.io_partitions.yaml",
    ]


def test_write_repairs_drift(tree: Path) -> None:
    (tree / "crds/lparkube.io_partitions.yaml").write_text("edited")
    (tree / "crds/lparkube.io_oldkinds.yaml").write_text("stale")
    generate.main(["--root", str(tree)])
    assert generate.drift(tree) == []
    assert generate.main(["--check", "--root", str(tree)]) == 0


def test_rendering_is_deterministic_and_round_trips() -> None:
    for kind in KINDS:
        text = generate.render(kind)
        assert text == generate.render(kind)
        assert yaml.safe_load(text) == kind.crd()


def test_chart_and_crds_dir_hold_the_same_files() -> None:
    files = generate.rendered_files()
    plain = {p.split("/")[-1]: t for p, t in files.items() if p.startswith("crds/")}
    chart = {p.split("/")[-1]: t for p, t in files.items() if p.startswith("charts/")}
    assert plain == chart
    assert len(plain) == len(KINDS)
