"""examples/ holds a sample of every shipped kind."""

from __future__ import annotations

import yaml

from lparkube.api.generate import repo_root
from lparkube.api.v1alpha1 import KINDS


def test_there_is_an_example_of_every_shipped_kind() -> None:
    documents = [
        doc
        for path in sorted((repo_root() / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    assert {k.kind for k in KINDS} <= {doc["kind"] for doc in documents}
    assert all("namespace" not in doc["metadata"] for doc in documents), (
        "examples must apply into any namespace"
    )
