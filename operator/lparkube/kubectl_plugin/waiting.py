"""Waiting for an object's outcome, as ``kubectl wait`` and ``kubectl rollout status`` do: read
it, judge it, and while the verdict is not final, watch it and judge every change, printing the
progress line whenever it changes.

On a terminal the progress line is rewritten in place; into a pipe or a file each new line is
printed once, so a log shows every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TextIO

from lparkube.api.resource import CustomResource
from lparkube.kubectl_plugin.cluster import Cluster, object_ref
from lparkube.kubectl_plugin.verb import PluginError, Verdict, go_duration

Judge = Callable[[dict[str, Any]], Verdict]


class ProgressLine:
    """Shows progress lines: in place on a terminal, else one line per change; and log lines
    (a verdict's ``log``), each once, always on a line of its own above the progress line."""

    def __init__(self, stream: TextIO, in_place: bool | None = None) -> None:
        self.stream = stream
        self.in_place = stream.isatty() if in_place is None else in_place
        self.last: str | None = None
        self.logged: set[str] = set()

    def verdict(self, verdict: Verdict) -> None:
        """The verdict's new log lines, then its progress line."""
        self.log(verdict.log)
        self.show(verdict.line)

    def log(self, lines: Sequence[str]) -> None:
        """Print the lines not printed before, in order; a progress line shown in place is
        erased first and shown again by the next ``show``."""
        new = [line for line in dict.fromkeys(lines) if line not in self.logged]
        if not new:
            return
        if self.in_place and self.last is not None:
            self.stream.write("\r\x1b[K")
        self.stream.write("".join(f"{line}\n" for line in new))
        self.stream.flush()
        self.logged.update(new)
        self.last = None

    def show(self, line: str) -> None:
        if line == self.last or line in self.logged:  # a logged line says it already
            return
        self.last = line
        if self.in_place:
            self.stream.write(f"\r\x1b[K{line}")
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()

    def close(self, keep: bool = True) -> None:
        """End an in-place line, so what follows starts on a new one; or erase it (``keep``
        False: an error message follows that says it again)."""
        if self.in_place and self.last is not None:
            self.stream.write("\n" if keep else "\r\x1b[K")
            self.stream.flush()
        self.last = None


def wait_for(
    cluster: Cluster,
    kind: CustomResource,
    namespace: str,
    name: str,
    judge: Judge,
    *,
    timeout: timedelta,
    progress: ProgressLine,
    clock: Callable[[], float] = time.monotonic,
) -> Verdict:
    """Judge the object until the verdict is final, or raise PluginError when ``timeout``
    passes first or the object is deleted meanwhile. The caller closes ``progress``."""
    end = clock() + timeout.total_seconds()
    obj = cluster.get(kind, namespace, name)
    while True:
        verdict = judge(obj)
        progress.verdict(verdict)
        if verdict.done:
            return verdict
        remaining = end - clock()
        if remaining <= 0:
            raise PluginError(
                f"timed out after {go_duration(timeout)} waiting for {object_ref(kind, name)}"
                f" ({verdict.line}); it goes on: kubectl get {kind.plural} {name} "
                f"-n {namespace}"
            )
        version = (obj.get("metadata") or {}).get("resourceVersion") or ""
        for event, changed in cluster.watch(kind, namespace, name, version, remaining):
            if event == "DELETED":
                raise PluginError(f"{object_ref(kind, name)} was deleted while waiting")
            if event in ("ADDED", "MODIFIED"):
                obj = changed
                verdict = judge(obj)
                progress.verdict(verdict)
                if verdict.done:
                    return verdict
            if clock() >= end:
                break
        obj = cluster.get(kind, namespace, name)  # the watch ended: read it afresh
