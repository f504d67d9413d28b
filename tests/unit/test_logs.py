"""One JSON object per log line, with kopf's object context surfaced."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from lparkube.logs import JsonFormatter, TextFormatter, setup_logging

REF = {"apiVersion": "lparkube.io/v1alpha1", "kind": "Partition", "namespace": "t1", "name": "vm"}


def record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("kopf.objects", logging.WARNING, __file__, 1, message, args, None)
    rec.created = 1893499200.123456  # 2030-01-01T12:00:00.123Z
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_line_has_time_level_logger_message() -> None:
    line = JsonFormatter().format(record("hello %s", "world"))

    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2030-01-01T12:00:00.123Z",
        "level": "warning",
        "logger": "kopf.objects",
        "message": "hello world",
    }


def test_json_line_carries_kopf_object_context_not_its_plumbing() -> None:
    entry = json.loads(
        JsonFormatter().format(record(k8s_ref=REF, k8s_skip=False, settings=object()))
    )

    assert (entry["kind"], entry["namespace"], entry["name"]) == ("Partition", "t1", "vm")
    assert not {"k8s_ref", "k8s_skip", "settings"} & entry.keys()


def test_json_line_keeps_extras_and_stringifies_the_rest() -> None:
    entry = json.loads(JsonFormatter().format(record(attempt=2, path=object())))

    assert entry["attempt"] == 2
    assert entry["path"].startswith("<object")


def test_json_line_includes_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(rec))

    assert "RuntimeError: boom" in entry["error"]


def test_text_line_is_prefixed_with_the_object() -> None:
    line = TextFormatter().format(record("hello %s", "world", k8s_ref=REF))

    assert line.endswith("WARNING kopf.objects: [t1/vm] hello world")


def test_setup_logging_routes_every_logger_to_one_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    setup_logging("info", "json", stream)

    logging.getLogger("kopf.activities").info("started")
    logging.getLogger("lparkube.x").debug("hidden")

    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["started"]
