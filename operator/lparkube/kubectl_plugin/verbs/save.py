"""``kubectl lparkube save``: create a SaveEvent for some partitions and wait until it is
complete, showing ``saved 3/5 (1 failed)`` as results come in."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from lparkube.api.v1alpha1.partition import PARTITION
from lparkube.api.v1alpha1.saveevent import REASONS, SAVE_EVENT
from lparkube.domain.clock import parse_duration
from lparkube.domain.conditions import TRUE
from lparkube.domain.saving import (
    COMPLETE,
    DEFAULT_APPLICATION_TIMEOUT,
    DEFAULT_DEADLINE,
    SUCCEEDED,
    SUCCEEDED_CONDITION,
    SUCCESSES,
    finished,
)
from lparkube.kubectl_plugin.cluster import object_ref
from lparkube.kubectl_plugin.verb import (
    OK,
    Session,
    Verb,
    Verdict,
    condition_of,
    duration,
    go_duration,
    reason_and_message,
)
from lparkube.kubectl_plugin.verbs.common import check_partitions_exist, wait_and_report

MANUAL = "Manual"
MAX_DETAILS = 20  # failed partitions listed at the end; the rest are counted
WAIT_MARGIN = timedelta(minutes=1)  # default --timeout: the SaveEvent's deadline plus this
NAME_PREFIX = "save-"
MAX_PREFIX = 48  # generateName adds 5 characters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "partitions", nargs="*", metavar="PARTITION", help="the Partitions to save (by name)"
    )
    parser.add_argument(
        "--all-in-namespace",
        action="store_true",
        help="save every Partition in the namespace (instead of naming them)",
    )
    parser.add_argument(
        "--reason",
        default=MANUAL,
        choices=REASONS,
        metavar="REASON",
        help=f"why: {', '.join(REASONS)} (spec.reason; default %(default)s)",
    )
    parser.add_argument(
        "--message", metavar="TEXT", help="a human explanation, shown in events (spec.message)"
    )
    parser.add_argument(
        "--deadline",
        type=duration,
        metavar="DURATION",
        help=f"how long the save may take (spec.deadline; default {DEFAULT_DEADLINE})",
    )
    parser.add_argument(
        "--name", help=f"the SaveEvent's name (default: generated, {NAME_PREFIX}<partition>-xxxxx)"
    )


def check(args: argparse.Namespace) -> str | None:
    """A usage error, if any."""
    if args.all_in_namespace and args.partitions:
        return "name PARTITIONs or give --all-in-namespace, not both"
    if not args.all_in_namespace and not args.partitions:
        return "name at least one PARTITION, or give --all-in-namespace"
    return None


def save_event_body(args: argparse.Namespace) -> dict[str, Any]:
    """The SaveEvent to create (metadata and spec) for the command line."""
    if args.all_in_namespace:
        targets: dict[str, Any] = {"all": True}
        prefix = f"{NAME_PREFIX}all-"
    else:
        names = list(dict.fromkeys(args.partitions))  # a set list: no duplicates
        targets = {"partitions": names}
        prefix = f"{NAME_PREFIX}{names[0][: MAX_PREFIX - len(NAME_PREFIX) - 1].rstrip('.-')}-"
    spec: dict[str, Any] = {"reason": args.reason, "targets": targets}
    if args.message:
        spec["message"] = args.message
    if args.deadline is not None:
        spec["deadline"] = go_duration(args.deadline)
        application_timeout = parse_duration(DEFAULT_APPLICATION_TIMEOUT)
        if args.deadline < application_timeout:  # applicationTimeout must not exceed it
            spec["applicationTimeout"] = spec["deadline"]
    metadata = {"name": args.name} if args.name else {"generateName": prefix}
    return {"metadata": metadata, "spec": spec}


def default_timeout(args: argparse.Namespace) -> timedelta:
    """Long enough for the operator to finish by the deadline and write the result."""
    return (args.deadline or parse_duration(DEFAULT_DEADLINE)) + WAIT_MARGIN


def progress_text(summary: dict[str, Any] | None) -> str:
    """``saved 3/5 (1 failed)``: partitions saved of the targets, and how many failed."""
    summary = summary or {}
    text = f"saved {summary.get('succeeded', 0)}/{summary.get('partitions', 0)}"
    failed = summary.get("failed", 0)
    return f"{text} ({failed} failed)" if failed else text


def verdict(save_event: dict[str, Any]) -> Verdict:
    """Where a SaveEvent stands: saving (progress), or complete, failed or not."""
    status = save_event.get("status") or {}
    if "summary" not in status and not finished(status):
        return Verdict.going("waiting for the operator to start the save")
    progress = progress_text(status.get("summary"))
    if not finished(status):
        return Verdict.going(progress)
    complete = condition_of(save_event, COMPLETE)
    succeeded = condition_of(save_event, SUCCEEDED_CONDITION)
    if succeeded is not None:
        ok = succeeded.get("status") == TRUE
    else:
        ok = (complete or {}).get("reason") in SUCCESSES
    if ok:
        return Verdict.succeeded(f"{progress}: {reason_and_message(complete)}")
    return Verdict.failed(
        f"{progress}: {reason_and_message(succeeded or complete)}", *failures(status)
    )


def failures(status: dict[str, Any]) -> list[str]:
    """One line per partition and pod save hook that did not save (at most MAX_DETAILS)."""
    lines = [
        f"partition {p.get('namespace')}/{p.get('name')}: {p.get('outcome')}"
        + (f": {p['message']}" if p.get("message") else "")
        for p in status.get("partitions") or []
        if p.get("outcome") != SUCCEEDED
    ]
    lines += [
        f"pod {p.get('namespace')}/{p.get('name')}: {p.get('outcome')}"
        + (f": {p['message']}" if p.get("message") else "")
        for p in status.get("pods") or []
        if p.get("outcome") != "Saved"
    ]
    if len(lines) > MAX_DETAILS:
        lines = [*lines[:MAX_DETAILS], f"... and {len(lines) - MAX_DETAILS} more"]
    return lines


def run(session: Session, args: argparse.Namespace) -> int:
    namespace = session.namespace
    if not args.all_in_namespace:
        check_partitions_exist(session, PARTITION, list(dict.fromkeys(args.partitions)))
    created = session.cluster.create(SAVE_EVENT, namespace, save_event_body(args))
    name = created["metadata"]["name"]
    session.say(f"{object_ref(SAVE_EVENT, name)} created")
    if not session.wait:
        return OK
    timeout = session.timeout or default_timeout(args)
    return wait_and_report(session, SAVE_EVENT, name, verdict, timeout)


VERB = Verb(
    name="save",
    summary="save the applications of partitions now (a SaveEvent) and wait for the result",
    description="Create a SaveEvent that tells every registered application in the named "
    "Partitions (or in all of the namespace's) to save its unsaved data, then wait until it is "
    "complete, showing how many partitions saved. Exit 1 when any partition did not save; the "
    "SaveEvent's reason and message and each failed partition are printed.",
    examples="  kubectl lparkube save web-1 web-2\n"
    "  kubectl lparkube save --all-in-namespace -n shop --reason Power --deadline 2m\n"
    "  kubectl lparkube save db-1 --no-wait && kubectl get saveevents",
    add_arguments=add_arguments,
    run=run,
    check=check,
    timeout_help="how long to wait for the SaveEvent to complete (default: its deadline + 1m)",
)
