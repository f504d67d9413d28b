"""``kubectl lparkube hibernate``: create a HibernationImage for a partition and wait until it
is Captured, showing the capture's step and the bytes written."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from lparkube.api.v1alpha1.hibernationimage import HIBERNATION_IMAGE, SPEC
from lparkube.api.v1alpha1.partition import PARTITION
from lparkube.domain.clock import parse_duration
from lparkube.kubectl_plugin.cluster import object_ref
from lparkube.kubectl_plugin.images import captured_verdict
from lparkube.kubectl_plugin.verb import OK, Session, Verb, duration, go_duration
from lparkube.kubectl_plugin.verbs.common import check_partitions_exist, wait_and_report

DEFAULT_DEADLINE = SPEC["properties"]["deadline"]["default"]  # the API's default, said once
WAIT_MARGIN = timedelta(minutes=1)  # default --timeout: the capture's deadline plus this


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("partition", metavar="PARTITION", help="the Partition to hibernate")
    parser.add_argument(
        "--name", help="the HibernationImage's name (default: generated, <partition>-xxxxx)"
    )
    parser.add_argument(
        "--no-save-first",
        dest="save_first",
        action="store_false",
        help="suspend without saving the applications first (spec.saveFirst=false)",
    )
    parser.add_argument(
        "--deadline",
        type=duration,
        metavar="DURATION",
        help=f"time allowed for the whole capture (spec.deadline; default {DEFAULT_DEADLINE})",
    )
    parser.add_argument(
        "--vios-cluster",
        metavar="NAME",
        help="the VIOSCluster for the LU (spec.viosClusterName; default: the Partition's)",
    )
    parser.add_argument(
        "--retain-after-resume",
        action="store_true",
        help="keep the image and its LU after a successful resume (spec.retainAfterResume)",
    )


def image_body(args: argparse.Namespace) -> dict[str, Any]:
    """The HibernationImage to create (metadata and spec) for the command line."""
    spec: dict[str, Any] = {"partitionName": args.partition, "saveFirst": args.save_first}
    if args.deadline is not None:
        spec["deadline"] = go_duration(args.deadline)
    if args.vios_cluster:
        spec["viosClusterName"] = args.vios_cluster
    if args.retain_after_resume:
        spec["retainAfterResume"] = True
    metadata = {"name": args.name} if args.name else {"generateName": f"{args.partition[:57]}-"}
    return {"metadata": metadata, "spec": spec}


def default_timeout(args: argparse.Namespace) -> timedelta:
    return (args.deadline or parse_duration(DEFAULT_DEADLINE)) + WAIT_MARGIN


def run(session: Session, args: argparse.Namespace) -> int:
    check_partitions_exist(session, PARTITION, [args.partition])
    created = session.cluster.create(HIBERNATION_IMAGE, session.namespace, image_body(args))
    name = created["metadata"]["name"]
    session.say(f"{object_ref(HIBERNATION_IMAGE, name)} created")
    if not session.wait:
        return OK
    timeout = session.timeout or default_timeout(args)
    return wait_and_report(session, HIBERNATION_IMAGE, name, captured_verdict, timeout)


VERB = Verb(
    name="hibernate",
    summary="hibernate a partition (a HibernationImage) and wait until it is Captured",
    description="Create a HibernationImage for the Partition: the operator saves its "
    "applications (unless --no-save-first), the guest's kernel writes its memory to the "
    "partition's paging LU and powers off, and the VM stays stopped until 'kubectl lparkube "
    "resume'. Waits until the image is Captured, showing each step and the bytes written; exit "
    "1 when the capture is refused or fails (its reason and message are printed).",
    examples="  kubectl lparkube hibernate web-1\n"
    "  kubectl lparkube hibernate web-1 --name web-1-friday --deadline 20m\n"
    "  kubectl lparkube hibernate db-1 --no-save-first --no-wait",
    add_arguments=add_arguments,
    run=run,
    timeout_help="how long to wait for Captured (default: the deadline + 1m)",
)
