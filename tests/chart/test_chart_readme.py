"""The README's Helm install: the chart runs the image that its commands build and load."""

from __future__ import annotations

import shlex
from itertools import pairwise

from chart_helpers import Render, container
from readme_text import section, shell_blocks


def readme_commands() -> list[list[str]]:
    """The commands of the README's Helm section, as their words (comments dropped)."""
    blocks = shell_blocks(section("Install with Helm"))
    return [shlex.split(line, comments=True) for block in blocks for line in block]


def the_one(commands: list[list[str]], *start: str) -> list[str]:
    found = [words for words in commands if words[: len(start)] == list(start)]
    assert len(found) == 1, f"the README's Helm section has no single `{' '.join(start)}`"
    return found[0]


def test_the_readme_builds_and_loads_the_image_that_its_helm_install_runs(render: Render) -> None:
    commands = readme_commands()
    build = the_one(commands, "make", "image")
    image = dict(word.split("=", 1) for word in build[2:])["IMAGE"]
    assert the_one(commands, "kind", "load", "docker-image")[3:] == [image]
    install = the_one(commands, "helm", "install", "lparkube", "charts/lparkube")
    values = [word for flag, word in pairwise(install) if flag == "--set"]
    assert values, "the helm install points the chart at the built image"
    main = container(render(*(f"--set={value}" for value in values)))
    assert main["image"] == image
    assert main["imagePullPolicy"] == "IfNotPresent", "an image loaded into the nodes is not pulled"
