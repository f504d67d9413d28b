"""Process-wide logging: one JSON object per line (default) or human-readable text.

kopf attaches the object it is handling to each record as ``k8s_ref``; both formats surface
its namespace and name so a log line can be traced to the Kubernetes object it concerns.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from lparkube.config import LogFormat

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
# kopf's own extras: the reference is rendered explicitly, the rest is internal plumbing.
_KOPF_ATTRS = frozenset({"k8s_ref", "k8s_skip", "settings"})
_REF_FIELDS = ("kind", "namespace", "name")
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def object_context(record: logging.LogRecord) -> dict[str, str]:
    """The kind/namespace/name of the object kopf was handling, if any."""
    ref = getattr(record, "k8s_ref", None)
    if not isinstance(ref, dict):
        return {}
    return {key: str(ref[key]) for key in _REF_FIELDS if ref.get(key)}


class JsonFormatter(logging.Formatter):
    """Render a record as a single-line JSON object for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(object_context(record))
        entry.update(_extras(record))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines, prefixed with ``[namespace/name]`` for object messages."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        context = object_context(record)
        if "name" in context:
            ref = "/".join(context[key] for key in ("namespace", "name") if key in context)
            record = copy.copy(record)
            record.msg, record.args = f"[{ref}] {record.getMessage()}", ()
        return super().format(record)


def setup_logging(level: str, fmt: LogFormat, stream: TextIO | None = None) -> None:
    """Send every logger (kopf's too) to one stream in one format."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncio and aiohttp access logs are noise unless debugging the runtime itself.
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in ("asyncio", "aiohttp.access", "urllib3"):
        logging.getLogger(name).setLevel(quiet)


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRS and key not in _KOPF_ATTRS and not key.startswith("_")
    }
