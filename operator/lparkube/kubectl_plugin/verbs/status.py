"""``kubectl lparkube status``: one Partition on one screen — conditions, node, guest agent,
paging LU, a remote restart under way and hibernation images — like ``kubectl describe``, but
short."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from lparkube.api.resource import CustomResource
from lparkube.api.v1alpha1.hibernationimage import HIBERNATION_IMAGE
from lparkube.api.v1alpha1.partition import PARTITION
from lparkube.api.v1alpha1.remoterestart import REMOTE_RESTART
from lparkube.domain.clock import utcnow
from lparkube.kubectl_plugin.images import image_state
from lparkube.kubectl_plugin.restarts import progress_text, unfinished_of
from lparkube.kubectl_plugin.text import NONE, age, size, table
from lparkube.kubectl_plugin.verb import OK, PluginError, Session, Verb

MESSAGE_WIDTH = 72  # condition messages are cut here, so a line fits a terminal
LABEL_WIDTH = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("partition", metavar="PARTITION", help="the Partition to show")


def clip(text: str, width: int = MESSAGE_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def field(label: str, value: str) -> str:
    return f"{label + ':':<{LABEL_WIDTH}} {value}"


def vm_line(status: dict[str, Any]) -> str:
    vm = status.get("vmName") or NONE
    node = status.get("nodeName")
    ips = [a.get("ip") for a in status.get("addresses") or [] if a.get("ip")]
    text = f"{vm} on node {node}" if node else f"{vm} (not running on a node)"
    return f"{text}, {', '.join(ips)}" if ips else text


def condition_rows(conditions: list[dict[str, Any]], now: datetime) -> list[str]:
    if not conditions:
        return ["  none yet (the operator has not reconciled this Partition)"]
    rows = [("TYPE", "STATUS", "REASON", "AGE", "MESSAGE")]
    rows += [
        (
            c.get("type") or NONE,
            c.get("status") or NONE,
            c.get("reason") or NONE,
            age(c.get("lastTransitionTime"), now),
            clip(c.get("message") or ""),
        )
        for c in sorted(conditions, key=lambda c: c.get("type") or "")
    ]
    return table(rows)


def agent_line(agent: dict[str, Any], now: datetime) -> str:
    """Version, kernel, boot id, last heartbeat and registered applications."""
    if not agent.get("lastHeartbeatTime") and not agent.get("version"):
        return "no report yet"
    parts = [
        f"version {agent.get('version') or NONE}",
        f"kernel {agent.get('kernelRelease') or NONE}",
        f"boot {agent.get('bootId') or NONE}",
        f"heartbeat {age(agent.get('lastHeartbeatTime'), now)} ago",
        f"{agent.get('applications', 0)} applications",
    ]
    memory = agent.get("memory") or {}
    if memory:
        parts.append(
            f"memory {size(memory.get('totalBytes'))} ({size(memory.get('availableBytes'))} free)"
        )
    if agent.get("endpoint"):
        parts.insert(0, f"at {agent['endpoint']}")
    return ", ".join(parts)


def paging_line(spec: dict[str, Any], status: dict[str, Any]) -> str:
    """The paging LU the Partition has and what the agent says of its swap."""
    paging = status.get("paging") or {}
    reported = (status.get("agent") or {}).get("paging") or {}
    if not paging and not reported:
        if "paging" in spec:
            return f"requested from {spec.get('viosClusterName') or NONE}, no LU yet"
        return "none (spec.paging is not set: this partition cannot hibernate)"
    parts = [f"LU {paging.get('claimName') or NONE} ({paging.get('size') or NONE})"]
    if reported:
        state = "active" if reported.get("active") else "inactive"
        parts.append(
            f"swap {state} on {reported.get('device') or NONE} "
            f"({size(reported.get('swapBytes'))} of {size(reported.get('sizeBytes'))})"
        )
        if reported.get("message"):
            parts.append(clip(reported["message"]))
    return ", ".join(parts)


def image_rows(images: list[dict[str, Any]] | str, now: datetime) -> list[str]:
    """The partition's HibernationImages, oldest first; a string says why there is no list."""
    if isinstance(images, str):
        return [f"  {images}"]
    if not images:
        return ["  none"]
    rows = [("NAME", "STATE", "SIZE", "NODE", "AGE")]
    for image in sorted(images, key=lambda i: (i.get("metadata") or {}).get("creationTimestamp")):
        status = image.get("status") or {}
        rows.append(
            (
                (image.get("metadata") or {}).get("name") or NONE,
                image_state(image),
                size((status.get("lu") or {}).get("usedBytes")),
                status.get("sourceNodeName") or NONE,
                age((image.get("metadata") or {}).get("creationTimestamp"), now),
            )
        )
    return table(rows)


def hibernation_line(agent: dict[str, Any], now: datetime) -> str:
    """The agent's last hibernate run, as it reported it."""
    run = agent.get("hibernation") or {}
    if not run:
        return "no run reported"
    parts = [
        f"last run {run.get('state') or NONE}",
        f"requested {age(run.get('requestedAt'), now)} ago",
        f"image {size(run.get('imageBytes'))}",
    ]
    if run.get("resumedAt"):
        parts.append(f"resumed {age(run['resumedAt'], now)} ago")
    if run.get("message"):
        parts.append(clip(run["message"]))
    return ", ".join(parts)


def restart_lines(
    restarts: Sequence[dict[str, Any]] | str, partition: str, now: datetime
) -> list[str]:
    """The partition's RemoteRestarts under way (oldest first: the one that proceeds), their
    step and nodes; a string says why they are not listed."""
    if isinstance(restarts, str):
        return [field("Restart", restarts)]
    under_way = unfinished_of(restarts, partition)
    if not under_way:
        return [field("Restart", "none under way")]
    lines = []
    for restart in under_way:
        meta = restart.get("metadata") or {}
        text = f"{meta.get('name') or NONE} at {progress_text(restart)}"
        text += f", {age(meta.get('creationTimestamp'), now)} ago"
        lines.append(field("Restart", text) if not lines else f"{'':<{LABEL_WIDTH}} {text}")
    return lines


def render(
    partition: dict[str, Any],
    images: list[dict[str, Any]] | str,
    now: datetime,
    restarts: Sequence[dict[str, Any]] | str = (),
) -> list[str]:
    """The screen for a Partition, its RemoteRestarts under way and its HibernationImages (or
    why they are not listed)."""
    meta = partition.get("metadata") or {}
    spec = partition.get("spec") or {}
    status = partition.get("status") or {}
    lines = [
        field("Partition", f"{meta.get('namespace')}/{meta.get('name')}"),
        field("VM", vm_line(status)),
        "Conditions:",
        *condition_rows(status.get("conditions") or [], now),
        field("Agent", agent_line(status.get("agent") or {}, now)),
        field("Paging", paging_line(spec, status)),
        field("Hibernation", hibernation_line(status.get("agent") or {}, now)),
        *restart_lines(restarts, meta.get("name") or "", now),
        "Hibernation images:",
        *image_rows(images, now),
    ]
    return lines


def of_partition(session: Session, kind: CustomResource, name: str) -> list[dict[str, Any]] | str:
    """The namespace's objects of ``kind`` for the partition, or why they cannot be listed."""
    try:
        found = session.cluster.list(kind, session.namespace)
    except PluginError as error:  # an older lparkube without the kind, or no list permission
        return error.message
    return [o for o in found if (o.get("spec") or {}).get("partitionName") == name]


def run(session: Session, args: argparse.Namespace) -> int:
    partition = session.cluster.get(PARTITION, session.namespace, args.partition)
    images = of_partition(session, HIBERNATION_IMAGE, args.partition)
    restarts = of_partition(session, REMOTE_RESTART, args.partition)
    for line in render(partition, images, utcnow(), restarts):
        session.say(line)
    return OK


VERB = Verb(
    name="status",
    summary="show a partition: conditions, node, guest agent, paging, restarts and images",
    description="Show one Partition on one screen: its conditions, the node its VM runs on, "
    "what its guest agent last reported (kernel, boot id, heartbeat), its paging LU, a "
    "RemoteRestart under way (its step and nodes) and its HibernationImages. Exit 1 when the "
    "Partition does not exist.",
    examples="  kubectl lparkube status web-1\n  kubectl lparkube status db-1 -n shop",
    add_arguments=add_arguments,
    run=run,
    waits=False,
)
