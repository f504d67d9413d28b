"""``kubectl lparkube resume``: ask for a resume from a HibernationImage (``spec.resume:
true``) and wait until the partition has Resumed."""

from __future__ import annotations

import argparse
from datetime import timedelta

from lparkube.api.v1alpha1.hibernationimage import CAPTURED, HIBERNATION_IMAGE
from lparkube.domain.conditions import TRUE
from lparkube.kubectl_plugin.cluster import object_ref
from lparkube.kubectl_plugin.images import current_condition
from lparkube.kubectl_plugin.images import resumed_verdict as verdict
from lparkube.kubectl_plugin.verb import OK, PluginError, Session, Verb, reason_and_message
from lparkube.kubectl_plugin.verbs.common import wait_and_report

DEFAULT_TIMEOUT = timedelta(minutes=10)  # a new QEMU process boots and the kernel restores


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the HibernationImage to resume from")


def run(session: Session, args: argparse.Namespace) -> int:
    cluster, namespace, name = session.cluster, session.namespace, args.image
    image = cluster.get(HIBERNATION_IMAGE, namespace, name)
    ref = object_ref(HIBERNATION_IMAGE, name)
    captured = current_condition(image, CAPTURED)
    if captured is None or captured.get("status") != TRUE:
        state = f"Captured={captured.get('status')}, " if captured else ""
        raise PluginError(
            f"{ref} is not captured ({state}{reason_and_message(captured)}): nothing to resume"
        )
    cluster.merge_patch(HIBERNATION_IMAGE, namespace, name, {"spec": {"resume": True}})
    session.say(f"{ref} resume requested")
    if not session.wait:
        return OK
    return wait_and_report(
        session, HIBERNATION_IMAGE, name, verdict, session.timeout or DEFAULT_TIMEOUT
    )


VERB = Verb(
    name="resume",
    summary="resume a partition from a HibernationImage and wait until it has Resumed",
    description="Set spec.resume on a Captured HibernationImage: the operator checks that the "
    "VM's adapter configuration still matches the captured one, starts the VM again, and the "
    "guest's kernel restores its memory from the image. Waits until Resumed; exit 1 when the "
    "resume is refused (a changed adapter configuration) or the guest booted afresh instead "
    "(its reason and message are printed).",
    examples="  kubectl lparkube resume web-1-x7k2p\n"
    "  kubectl lparkube resume web-1-friday -n shop --timeout 20m",
    add_arguments=add_arguments,
    run=run,
    timeout_help=f"how long to wait for Resumed (default {DEFAULT_TIMEOUT.seconds // 60}m)",
)
