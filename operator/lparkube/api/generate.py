"""Writes the CRD YAML (crds/ and the Helm chart) from the API source, or checks for drift.

python -m lparkube.api.generate          # write
python -m lparkube.api.generate --check  # exit 1 if committed YAML differs from the source
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from lparkube.api.resource import GROUP, CustomResource
from lparkube.api.v1alpha1 import KINDS

HEADER = "# Generated from operator/lparkube/api by `make crds`. Do not edit by hand.\n"
CRD_DIRS = ("crds", "charts/lparkube/crds")


def render(kind: CustomResource) -> str:
    """The YAML text of one kind's CRD, stable from run to run."""
    body = yaml.safe_dump(kind.crd(), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def rendered_files() -> dict[str, str]:
    """Relative path -> content for every generated file."""
    files = {}
    for directory in CRD_DIRS:
        for kind in KINDS:
            files[f"{directory}/{GROUP}_{kind.plural}.yaml"] = render(kind)
    return files


def drift(root: Path) -> list[str]:
    """Generated files under root that are missing, differ, or are stale leftovers."""
    expected = rendered_files()
    problems = [
        path
        for path, text in expected.items()
        if not (root / path).is_file() or (root / path).read_text() != text
    ]
    for directory in CRD_DIRS:
        for found in sorted((root / directory).glob(f"{GROUP}_*.yaml")):
            relative = found.relative_to(root).as_posix()
            if relative not in expected:
                problems.append(relative)
    return problems


def write(root: Path) -> None:
    """Writes every generated file and removes stale ones."""
    for stale in drift(root):
        (root / stale).unlink(missing_ok=True)
    for path, text in rendered_files().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of writing")
    parser.add_argument("--root", type=Path, default=repo_root(), help="repository root")
    args = parser.parse_args(argv)
    if not args.check:
        write(args.root)
        return 0
    problems = drift(args.root)
    for path in problems:
        print(f"{path}: differs from operator/lparkube/api; run `make crds`", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
