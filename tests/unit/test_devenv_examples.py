"""make run's examples: SaveEvents go in last, once the demo guests' agents are connected;
HibernationImages and RemoteRestarts are left for the user."""

from __future__ import annotations

from pathlib import Path

from lparkube_devenv.cli import EXAMPLES_DIR, split_examples


def test_the_shipped_examples_apply_save_events_last() -> None:
    first, saves = split_examples(EXAMPLES_DIR)
    assert {f.name for f in saves} == {"saveevent-manual.yaml", "saveevent-backup.yaml"}
    assert "partition-from-template.yaml" in {f.name for f in first}
    assert not set(first) & set(saves)
    on_demand = {"hibernationimage-web-1.yaml", "remoterestart-web-1.yaml"}
    assert not on_demand & {f.name for f in first + saves}


def test_a_file_mixing_kinds_goes_first(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: SaveEvent\n---\nkind: Partition\n")
    (tmp_path / "b.yaml").write_text("# only saves\nkind: SaveEvent\n---\nkind: SaveEvent\n")
    (tmp_path / "notes.txt").write_text("kind: SaveEvent\n")
    first, saves = split_examples(tmp_path)
    assert [f.name for f in first] == ["a.yaml"]
    assert [f.name for f in saves] == ["b.yaml"]
