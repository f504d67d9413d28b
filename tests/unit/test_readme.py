"""What the README says about the API matches what ships: the CRDs and docs/api.md."""

from __future__ import annotations

import re

from readme_text import intro

from lparkube.api.v1alpha1 import KINDS
from lparkube_devenv.controlplane import REPO_ROOT

API_DOC = REPO_ROOT / "docs" / "api.md"


def kinds_named(text: str) -> set[str]:
    return set(re.findall(r"`([A-Z][A-Za-z]+)`", text))


def designed_kinds() -> set[str]:
    """The kinds of docs/api.md's first table (``| kind | scope | ...``)."""
    table = API_DOC.read_text().split("\n| kind |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE))


def test_the_readme_says_which_kinds_ship_and_which_are_only_designed() -> None:
    shipped = {resource.kind for resource in KINDS}
    designed = designed_kinds()
    text = " ".join(intro().split())
    assert "ship today:" in text, "the README's introduction says which kinds ship today"
    shipping, _, designed_only = text.split("ship today:", 1)[1].partition(";")
    assert kinds_named(shipping) == shipped
    assert kinds_named(designed_only.split(" no CRD yet", 1)[0]) == designed - shipped
    assert ("no CRD yet" in designed_only) == bool(designed - shipped)
