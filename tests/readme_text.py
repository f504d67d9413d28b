"""The README's sections and shell blocks, for the tests that hold the README to the code."""

from __future__ import annotations

import re

from lparkube_devenv.controlplane import REPO_ROOT

README = REPO_ROOT / "README.md"


def intro() -> str:
    """The README up to its first section."""
    return README.read_text().split("\n## ", 1)[0]


def section(heading: str) -> str:
    """The text of the README's ``## heading`` section (up to the next ``##``)."""
    parts = re.split(r"^## ", README.read_text(), flags=re.MULTILINE)
    found = [part for part in parts if part.startswith(heading + "\n")]
    assert len(found) == 1, f"README.md has no single section ## {heading}"
    return found[0]


def shell_blocks(text: str) -> list[list[str]]:
    """Each ```sh block of ``text``, as its lines with backslash continuations joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [re.sub(r" *\\\n *", " ", block).splitlines() for block in blocks]
