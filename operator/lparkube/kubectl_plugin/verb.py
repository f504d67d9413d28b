"""What every verb of ``kubectl lparkube`` shares: exit codes, the options kubectl users expect
(``-n``, ``--kubeconfig``, ``--context``, ``--timeout``, ``--no-wait``), the verdict a verb gives
on the object it waits for, and the ``Verb`` record a verb module exports.

A new verb is one module in ``lparkube.kubectl_plugin.verbs`` that defines ``VERB`` and is
listed in ``verbs.VERBS``; nothing else changes. Verbs about one thing can share a ``Group``
(``kubectl lparkube failover status``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TextIO

from lparkube.domain.clock import parse_duration

if TYPE_CHECKING:
    from lparkube.kubectl_plugin.cluster import Cluster

OK = 0  # the operation succeeded
FAILED = 1  # it failed (a condition False with a reason), timed out, or the API said no
USAGE = 2  # the command line is wrong (argparse exits with it too)
INTERRUPTED = 130  # Ctrl-C while waiting; the operation goes on in the cluster

EXIT_CODES_HELP = (
    "exit codes: 0 success; 1 the operation failed (its reason and message are printed), timed "
    "out, or the API server refused or could not be reached; 2 usage error"
)


class PluginError(Exception):
    """A failure to report as ``error: <message>`` with an exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NotFoundError(PluginError):
    """The object named does not exist."""


@dataclass(frozen=True)
class Verdict:
    """What a verb makes of the object it waits for: still going (``done`` False, ``line``
    the progress to show), or finished with an exit code, a line and detail lines.

    ``log``: what happened so far, in order (an operation's steps, one line each); a waiting
    verb prints each of its lines once, the first time it appears, before the progress line."""

    done: bool
    line: str
    code: int = OK
    details: tuple[str, ...] = ()
    log: tuple[str, ...] = ()

    @classmethod
    def going(cls, line: str, *, log: Sequence[str] = ()) -> Verdict:
        return cls(False, line, log=tuple(log))

    @classmethod
    def succeeded(cls, line: str, *details: str, log: Sequence[str] = ()) -> Verdict:
        return cls(True, line, OK, details, tuple(log))

    @classmethod
    def failed(cls, line: str, *details: str, log: Sequence[str] = ()) -> Verdict:
        return cls(True, line, FAILED, details, tuple(log))


def condition_of(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """The condition of that type in an object's status, if any."""
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return condition
    return None


def reason_and_message(condition: dict[str, Any] | None) -> str:
    """``Reason: message`` (or just one of them) for a failure line."""
    if not condition:
        return "no reason given"
    reason, message = condition.get("reason") or "", condition.get("message") or ""
    return f"{reason}: {message}" if reason and message else reason or message or "no reason"


def duration(text: str) -> timedelta:
    """An argparse type for Go durations (``30s``, ``10m``, ``1h30m``), more than zero."""
    try:
        value = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError(f"must be more than 0s: {text!r}")
    return value


def go_duration(value: timedelta) -> str:
    """A timedelta as the shortest Go duration that says it: ``10m``, ``1h30m``, ``90s``."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"


@dataclass
class Session:
    """What a verb's ``run`` gets: the cluster (connected on first use), the namespace, the
    wait options and the output streams."""

    connect: Callable[[], tuple[Cluster, str]]
    namespace_flag: str | None
    wait: bool
    timeout: timedelta | None
    out: TextIO
    err: TextIO
    _connected: tuple[Cluster, str] | None = field(default=None, repr=False)

    @property
    def cluster(self) -> Cluster:
        return self._connection()[0]

    @property
    def namespace(self) -> str:
        """``-n`` when given, else the kubeconfig context's namespace (``default`` without)."""
        return self.namespace_flag or self._connection()[1]

    def _connection(self) -> tuple[Cluster, str]:
        if self._connected is None:
            self._connected = self.connect()
        return self._connected

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


@dataclass(frozen=True)
class Verb:
    """One verb: its name, help texts, its own arguments and what it runs.

    ``check`` returns a usage error the parser cannot see (exit 2). ``waits``: the verb waits
    for an outcome, so it takes ``--no-wait`` and its ``--timeout`` bounds the wait (without
    one, the verb picks the bound, e.g. from a deadline it sets); a verb that does not wait
    uses ``--timeout`` for each request to the API server."""

    name: str
    summary: str
    description: str
    examples: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Session, argparse.Namespace], int]
    check: Callable[[argparse.Namespace], str | None] = lambda args: None
    waits: bool = True
    timeout_help: str = "how long to wait (a duration: 30s, 10m, 1h)"


@dataclass(frozen=True)
class Group:
    """Verbs under one noun, as kubectl has them (``kubectl rollout status``): ``kubectl
    lparkube failover status PARTITION``. Each of its verbs takes the options every verb takes."""

    name: str
    summary: str
    description: str
    verbs: tuple[Verb, ...]
