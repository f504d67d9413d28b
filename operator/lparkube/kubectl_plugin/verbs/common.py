"""Steps several verbs take: make sure the named Partitions exist before creating anything,
and wait for an object's verdict, then print it and give its exit code."""

from __future__ import annotations

from datetime import timedelta

from lparkube.api.resource import CustomResource
from lparkube.kubectl_plugin.verb import OK, NotFoundError, PluginError, Session, Verdict
from lparkube.kubectl_plugin.waiting import Judge, ProgressLine, wait_for


def check_partitions_exist(session: Session, kind: CustomResource, names: list[str]) -> None:
    """PluginError naming every one of ``names`` that is not there (nothing is created then)."""
    missing = []
    for name in names:
        try:
            session.cluster.get(kind, session.namespace, name)
        except NotFoundError as error:
            missing.append(error.message)
    if missing:
        raise PluginError("; ".join(missing))


def wait_and_report(
    session: Session, kind: CustomResource, name: str, judge: Judge, timeout: timedelta
) -> int:
    """Wait for the verdict on ``kind/name`` (its last progress line is the verdict's line),
    then report it and return its exit code."""
    progress = ProgressLine(session.out)
    try:
        verdict = wait_for(
            session.cluster, kind, session.namespace, name, judge, timeout=timeout,
            progress=progress,
        )  # fmt: skip
    except BaseException:  # a timeout, an API error, Ctrl-C: the error message says it
        progress.close(keep=False)
        raise
    progress.close(keep=verdict.code == OK)  # a failure is printed again, as an error
    return report(session, verdict)


def report(session: Session, verdict: Verdict) -> int:
    """A failure again as ``error: ...`` on stderr; the details (on stderr for a failure)."""
    stream = session.out if verdict.code == OK else session.err
    if verdict.code != OK:
        print(f"error: {verdict.line}", file=stream)
    for line in verdict.details:
        print(f"  {line}", file=stream)
    stream.flush()
    return verdict.code
