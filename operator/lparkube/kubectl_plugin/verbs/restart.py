"""``kubectl lparkube restart``: create a RemoteRestart of a partition (on a named node or one
the operator picks, from a HibernationImage or from disk) and follow it, printing each step as
its status changes, until its termination state: RestartSucceeded (exit 0) or RestartFailed
(exit 1)."""

from __future__ import annotations

import argparse
import secrets
import string
from datetime import timedelta
from typing import Any

from lparkube.api.v1alpha1.hibernationimage import HIBERNATION_IMAGE
from lparkube.api.v1alpha1.partition import PARTITION
from lparkube.api.v1alpha1.remoterestart import DEFAULT_DEADLINE, REMOTE_RESTART
from lparkube.domain.clock import parse_duration
from lparkube.kubectl_plugin.cluster import object_ref
from lparkube.kubectl_plugin.restarts import verdict
from lparkube.kubectl_plugin.verb import OK, Session, Verb, duration, go_duration
from lparkube.kubectl_plugin.verbs.common import check_partitions_exist, wait_and_report

WAIT_MARGIN = timedelta(minutes=1)  # default --timeout: the operation's deadline plus this
NAME_INFIX = "-restart-"
SUFFIX_LENGTH = 5
MAX_NAME = 253  # a RemoteRestart's name is a DNS subdomain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("partition", metavar="PARTITION", help="the Partition to restart")
    parser.add_argument(
        "--to",
        metavar="NODE",
        help="the node to restart on (spec.targetNodeName; default: the operator picks the VIOS "
        "node that fits best)",
    )
    parser.add_argument(
        "--from",
        dest="image",
        metavar="IMAGE",
        help="resume from this Captured HibernationImage (spec.hibernationImageName; default: "
        "boot from disk)",
    )
    parser.add_argument(
        "--vios-cluster",
        metavar="NAME",
        help="the VIOSCluster whose nodes may be targets (spec.viosClusterName; default: the "
        "Partition's)",
    )
    parser.add_argument(
        "--deadline",
        type=duration,
        metavar="DURATION",
        help=f"time allowed for the whole restart (spec.deadline; default {DEFAULT_DEADLINE})",
    )


def restart_name(partition: str, suffix: str | None = None) -> str:
    """``<partition>-restart-<5 random lowercase letters>``."""
    if suffix is None:
        suffix = "".join(secrets.choice(string.ascii_lowercase) for _ in range(SUFFIX_LENGTH))
    room = MAX_NAME - len(NAME_INFIX) - len(suffix)
    return f"{partition[:room].rstrip('.-')}{NAME_INFIX}{suffix}"


def restart_body(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The RemoteRestart to create (metadata and spec) for the command line."""
    spec: dict[str, Any] = {"partitionName": args.partition}
    if args.image:
        spec["hibernationImageName"] = args.image
    if args.to:
        spec["targetNodeName"] = args.to
    if args.vios_cluster:
        spec["viosClusterName"] = args.vios_cluster
    if args.deadline is not None:
        spec["deadline"] = go_duration(args.deadline)
    return {"metadata": {"name": name}, "spec": spec}


def default_timeout(args: argparse.Namespace) -> timedelta:
    """Long enough for the operator to end the operation by its deadline and say so."""
    return (args.deadline or parse_duration(DEFAULT_DEADLINE)) + WAIT_MARGIN


def run(session: Session, args: argparse.Namespace) -> int:
    check_partitions_exist(session, PARTITION, [args.partition])
    if args.image:  # nothing is created for an image that is not there
        session.cluster.get(HIBERNATION_IMAGE, session.namespace, args.image)
    body = restart_body(args, restart_name(args.partition))
    created = session.cluster.create(REMOTE_RESTART, session.namespace, body)
    name = created["metadata"]["name"]
    session.say(f"{object_ref(REMOTE_RESTART, name)} created")
    if not session.wait:
        return OK
    timeout = session.timeout or default_timeout(args)
    return wait_and_report(session, REMOTE_RESTART, name, verdict, timeout)


VERB = Verb(
    name="restart",
    summary="restart a partition on another node (a RemoteRestart) and follow its steps",
    description="Create a RemoteRestart of the Partition: the operator checks the target "
    "before touching anything (Ready, a VIOS node, the VM's nodeSelector, affinity and "
    "tolerations, memory, CPU, disks, networks, the image), locks the adapters, waits until "
    "the partition is proven stopped where it ran (hibernated, its VMI gone, or its node fenced "
    "with the node.kubernetes.io/out-of-service taint), configures the target and resumes the "
    "image there (--from) or boots from disk. Prints each step as its status changes, then the "
    "result; exit 0 on RestartSucceeded, 1 on RestartFailed (its reason and message are "
    "printed).",
    examples="  kubectl lparkube restart web-1 --to node-b\n"
    "  kubectl lparkube restart web-1 --from web-1-friday -n shop\n"
    "  kubectl lparkube restart db-1 --deadline 5m --no-wait && kubectl get rr",
    add_arguments=add_arguments,
    run=run,
    timeout_help="how long to follow the restart (default: its deadline + 1m)",
)
