"""``kubectl lparkube failover status``: a Partition's failover on one screen — its settings, the
FailedOver condition, the failover under way, the escalation state (what the next failure
restarts from), the consistency images, the guest's lease and the past failovers
(docs/api.md, "Failover")."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from lparkube.api.v1alpha1 import failover as api
from lparkube.api.v1alpha1.partition import PARTITION
from lparkube.domain import failover as fo
from lparkube.domain.clock import parse_time, rfc3339, utcnow
from lparkube.kubectl_plugin.text import NONE, age, table
from lparkube.kubectl_plugin.verb import OK, Group, Session, Verb, condition_of, go_duration
from lparkube.kubectl_plugin.verbs.status import LABEL_WIDTH, clip, field

WIDTH = 79
MORE = " " * (LABEL_WIDTH + 1)  # where a field's next lines begin


def fields(label: str, *texts: str) -> list[str]:
    """A field whose texts each begin a line, wrapped to WIDTH (a wrapped text's next lines
    indented two more)."""
    lines = [
        line
        for text in texts
        for line in textwrap.wrap(text, WIDTH - len(MORE), subsequent_indent="  ") or [""]
    ]
    return [field(label, lines[0]), *(MORE + line for line in lines[1:])]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("partition", metavar="PARTITION", help="the Partition to show")


def when(moment: str | None, now: datetime) -> str:
    """``in 8s`` or ``2m ago``, as the age column says it; ``-`` when unknown."""
    at = parse_time(moment)
    if at is None:
        return NONE
    return f"in {age(rfc3339(now), at)}" if at > now else f"{age(moment, now)} ago"


def boot_image_text(source: Mapping[str, Any]) -> str:
    if source.get("pvcName"):
        return f"PVC {source['pvcName']}"
    if source.get("containerDisk"):
        return f"containerDisk {(source['containerDisk'] or {}).get('image') or NONE}"
    return "a DataVolume from its template" if source.get("dataVolumeTemplate") else "none"


def settings_lines(partition: Mapping[str, Any]) -> list[str]:
    """Enabled or not, the escalation window, the boot image, where it may restart, the
    self-fence."""
    settings = fo.settings_of(partition)
    if not settings.enabled:
        return [field("Failover", "disabled (spec.failover.enabled is not true)")]
    nodes = ",".join(f"{k}={v}" for k, v in sorted(settings.node_selector.items()))
    lines = [
        *fields(
            "Failover",
            f"enabled, escalation window {go_duration(settings.window)}, boot image "
            f"{boot_image_text(settings.boot_image)}",
        ),
        field("Nodes", f"{nodes or 'any'} (and the VM's own constraints)"),
    ]
    if not settings.self_fence:
        return [*lines, field("Self-fence", "off: a restart waits for the node's fence")]
    lease, watchdog = settings.lease, settings.watchdog_timeout
    off = lease + watchdog + timedelta(seconds=api.FENCE_MARGIN_SECONDS)
    return [
        *lines,
        *fields(
            "Self-fence",
            f"lease {go_duration(lease)}, watchdog timeout {go_duration(watchdog)}: the "
            f"guest counts as off {go_duration(off)} after its last lease",
        ),
        *fields("Watchdog", watchdog_text(partition)),
    ]


def watchdog_text(partition: Mapping[str, Any]) -> str:
    """The guest's watchdog as its agent last reported it."""
    watchdog = ((partition.get("status") or {}).get("agent") or {}).get("watchdog") or {}
    if not watchdog:
        return "not reported by the guest agent"
    if watchdog.get("armed") is not True:
        return f"not armed: {watchdog.get('message') or 'no reason given'}"
    timeout = watchdog.get("timeoutSeconds")
    return f"armed, {watchdog.get('device') or NONE}, timeout " + (
        f"{timeout}s" if timeout is not None else NONE
    )


def lease_text(status: Mapping[str, Any], now: datetime) -> str:
    expiry = status.get("leaseExpiry")
    at = parse_time(expiry)
    if at is None:
        return "none granted"
    verb = "runs out" if at > now else "ran out"
    return f"{verb} {when(expiry, now)} ({expiry})"


def condition_text(partition: Mapping[str, Any], now: datetime) -> str:
    """``False WaitingForFence, 2m ago: <message>``."""
    condition = condition_of(dict(partition), api.FAILED_OVER)
    if condition is None:
        return "none (no failure yet)"
    text = (
        f"{condition.get('status') or NONE} {condition.get('reason') or NONE}, "
        f"{when(condition.get('lastTransitionTime'), now)}"
    )
    message = condition.get("message")
    return f"{text}: {message}" if message else text


def under_way_lines(current: Mapping[str, Any], now: datetime) -> list[str]:
    """The failover under way: what failed, its phase, the image and why, the fence and the
    objects it made; ``none`` once it ended (the history has it)."""
    if current.get("phase") not in fo.UNFINISHED_PHASES:
        return [field("Under way", "none")]
    failed = (
        f"{current.get('reason') or NONE} on node {current.get('nodeName') or NONE} "
        f"{when(current.get('detectedAt'), now)}, now {current.get('phase')}"
    )
    texts = [with_message(failed, current.get("message")), image_text(current)]
    fence = current.get("fence") or {}
    if fence.get("by"):
        proof = f"fenced: {fence['by']} {when(fence.get('at'), now)}"
        texts.append(with_message(proof, fence.get("message")))
    elif current.get("phase") in fo.FENCING_PHASES:
        texts.append("fence: not proven yet (the condition says what it waits for)")
    made = [
        f"{what} {current[key]}"
        for what, key in (
            ("snapshot", "snapshotName"),
            ("restore", "restoreName"),
            ("restart", "restartName"),
        )
        if current.get(key)
    ]
    return fields("Under way", *texts, *([", ".join(made)] if made else []))


def with_message(text: str, message: str | None) -> str:
    return f"{text}: {message}" if message else text


def image_text(failure: Mapping[str, Any]) -> str:
    """``restarts from Boot: <why>``, or ``not restarted: <why>`` (repeated failures)."""
    image = failure.get("image")
    why = failure.get("imageReason") or "no reason given"
    return f"restarts from {image}: {why}" if image else f"not restarted: {why}"


def recorded(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every failure on record: the history and the current one (once each, by id)."""
    entries = [*(status.get("history") or []), status.get("current") or {}]
    seen: dict[str, Mapping[str, Any]] = {}
    for entry in entries:
        if entry.get("detectedAt"):
            seen.setdefault(entry.get("id") or entry["detectedAt"], entry)
    return list(seen.values())


def failures_text(partition: Mapping[str, Any], now: datetime) -> str:
    status = fo.failover_status(partition)
    window = fo.settings_of(partition).window
    times = [parse_time(f.get("detectedAt")) for f in recorded(status)]
    recent = [t for t in times if t is not None and t >= now - window]
    text = (
        f"{status.get('failures') or 0} recorded, {len(recent)} in the last {go_duration(window)}"
    )
    last = status.get("lastFailureTime")
    return f"{text}, the last {when(last, now)}" if last else text


def choice_text(choice: fo.ImageChoice) -> str:
    if choice.image is None:
        return f"stops it (FailedOver=False, {api.REPEATED_FAILURES}): {choice.reason}"
    return f"restarts from {choice.image}: {choice.reason}"


def escalation_lines(partition: Mapping[str, Any], now: datetime) -> list[str]:
    """What the next failure does (``fo.choose_image`` now) and, while the escalation window
    of the last failure is open, what it does once the window has passed. During a failover,
    the next failure is one after it, so its image counts as the last one used."""
    if not fo.settings_of(partition).enabled:
        return [field("Escalation", "none: failover is disabled, a failure is not failed over")]
    busy = fo.failing_over(partition)
    if busy:
        partition = once_done(partition)
    now_choice = fo.choose_image(partition, now)
    texts = [f"the next failure{' after this failover' if busy else ''} {choice_text(now_choice)}"]
    last = parse_time(fo.failover_status(partition).get("lastFailureTime"))
    closes = last + fo.settings_of(partition).window if last is not None else None
    if closes is not None and closes >= now:
        later = fo.choose_image(partition, closes + timedelta(seconds=1))
        if later != now_choice:
            texts.append(
                f"from {rfc3339(closes)} ({when(rfc3339(closes), now)}) it {choice_text(later)}"
            )
    return fields("Escalation", *texts)


def once_done(partition: Mapping[str, Any]) -> dict[str, Any]:
    """The partition as the failover under way leaves it: its image the last one used."""
    failover = {
        **fo.failover_status(partition),
        "lastImage": fo.current_failure(partition).get("image"),
    }
    return {**partition, "status": {**(partition.get("status") or {}), "failover": failover}}


def image_rows(status: Mapping[str, Any], now: datetime) -> list[str]:
    images = status.get("consistencyImages") or []
    if not images:
        return ["  none"]
    rows = [("NAME", "CONSISTENCY", "AGE", "SAVEEVENT")]
    rows += [
        (
            i.get("name") or NONE,
            i.get("consistency") or NONE,
            age(i.get("time"), now),
            i.get("saveEvent") or NONE,
        )
        for i in images
    ]
    return table(rows)


def images_header(partition: Mapping[str, Any], now: datetime) -> str:
    settings = fo.settings_of(partition)
    text = f"every {go_duration(settings.interval)}, {settings.keep} kept"
    due = fo.failover_status(partition).get("nextConsistencyImageTime")
    if settings.enabled and due:
        text += f"; the next due {when(due, now)}"
    return f"Consistency images ({text}):"


def took(entry: Mapping[str, Any]) -> str:
    start, end = parse_time(entry.get("detectedAt")), parse_time(entry.get("completedAt"))
    return go_duration(end - start) if start and end and end >= start else NONE


def history_rows(status: Mapping[str, Any], now: datetime) -> list[str]:
    history = status.get("history") or []
    if not history:
        return ["  none"]
    rows = [("DETECTED", "REASON", "IMAGE", "RESULT", "TOOK", "MESSAGE")]
    rows += [
        (
            age(h.get("detectedAt"), now),
            h.get("reason") or NONE,
            h.get("image") or NONE,
            h.get("result") or NONE,
            took(h),
            clip(h.get("message") or "", 40),
        )
        for h in history
    ]
    return table(rows)


def render(partition: Mapping[str, Any], now: datetime) -> list[str]:
    """The failover screen of a Partition at ``now``."""
    meta = partition.get("metadata") or {}
    status = fo.failover_status(partition)
    return [
        field("Partition", f"{meta.get('namespace')}/{meta.get('name')}"),
        *settings_lines(partition),
        field("Lease", lease_text(status, now)),
        *fields("Condition", condition_text(partition, now)),
        *under_way_lines(fo.current_failure(partition), now),
        *fields("Failures", failures_text(partition, now)),
        *escalation_lines(partition, now),
        images_header(partition, now),
        *image_rows(status, now),
        "History (newest last):",
        *history_rows(status, now),
    ]


def run(session: Session, args: argparse.Namespace) -> int:
    partition = session.cluster.get(PARTITION, session.namespace, args.partition)
    for line in render(partition, utcnow()):
        session.say(line)
    return OK


STATUS = Verb(
    name="status",
    summary="show a partition's failover: settings, escalation, images, history",
    description="Show one Partition's failover: whether it is enabled and its settings "
    "(escalation window, boot image, node selector, self-fence lease and watchdog timeout), "
    "the FailedOver condition, the failover under way (its phase, fence and image, and why), "
    "the escalation state (failures in the window and what the next failure restarts from, or "
    "that it would stop the partition), the consistency images and when the next is due, the "
    "lease the guest agent holds and the past failovers, newest last. Exit 1 when the "
    "Partition does not exist.",
    examples="  kubectl lparkube failover status web-1\n"
    "  kubectl lparkube failover status db-1 -n shop",
    add_arguments=add_arguments,
    run=run,
    waits=False,
)

GROUP = Group(
    name="failover",
    summary="a partition's failover (status: settings, escalation, images, history)",
    description="A Partition's failover (spec.failover, status.failover): run 'kubectl "
    "lparkube failover status PARTITION' to see it.",
    verbs=(STATUS,),
)
