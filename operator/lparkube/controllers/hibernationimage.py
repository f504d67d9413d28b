"""HibernationImage controller: one kopf daemon per image with work to do runs it
(``hibernation_run.HibernationRun``): a capture under way, or a resume asked for. kopf starts
the daemon again after an operator restart, and the run resumes from the image's status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from lparkube import metrics
from lparkube.api.resource import GROUP, VERSION
from lparkube.controllers.hibernation_run import HibernationRun, unfinished


def _has_work(spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any) -> bool:
    return unfinished(dict(spec or {}), dict(status or {}))


@kopf.daemon(
    GROUP, VERSION, "hibernationimages", when=_has_work, backoff=3.0, cancellation_timeout=10.0
)
async def hibernationimage_run(
    body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Capture (or resume) one image until its run has nothing left to do."""
    with metrics.handler_run("hibernationimages", "hibernationimage_run"):
        await HibernationRun(memo.kube, memo.agents, dict(body)).execute(stopped)
