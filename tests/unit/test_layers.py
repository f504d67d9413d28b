"""The package's layers: api -> domain -> controllers -> adapters, with pure api and domain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "lparkube"
FRAMEWORKS = {"kopf", "kubernetes", "aiohttp", "prometheus_client"}

# layer -> what its modules must not import (other lparkube layers or frameworks)
FORBIDDEN = {
    "api": {"lparkube.domain", "lparkube.controllers", "lparkube.adapters", *FRAMEWORKS},
    "domain": {"lparkube.controllers", "lparkube.adapters", *FRAMEWORKS},
    "adapters": {"lparkube.controllers"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(layer: str) -> list[str]:
    found = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for module in imported_modules(path):
            for banned in FORBIDDEN[layer]:
                if module == banned or module.startswith(f"{banned}."):
                    found.append(f"{path.relative_to(PACKAGE)} imports {module}")
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    assert violations(layer) == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import kopf\nfrom lparkube.adapters import lease\n")
    assert imported_modules(bad) == {"kopf", "lparkube.adapters"}
