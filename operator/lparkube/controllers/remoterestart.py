"""RemoteRestart controller: one kopf daemon per unfinished RemoteRestart runs it
(``remote_restart_run.RemoteRestartRun``) to its termination state. kopf starts the daemon
again after an operator restart, and the run resumes from the RemoteRestart's status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from lparkube import metrics
from lparkube.api.resource import GROUP, VERSION
from lparkube.api.v1alpha1.remoterestart import PLURAL
from lparkube.controllers.remote_restart_run import RemoteRestartRun, unfinished


def _unfinished(status: Mapping[str, Any], **_: Any) -> bool:
    return unfinished(dict(status or {}))


# The pass that terminates the operation writes the status, which ends the `when` filter:
# without a cancellation backoff kopf cancels the daemon at once on that status change, in the
# middle of its last pass. With it, kopf only sets `stopped` first, and the daemon ends by
# itself after that pass.
@kopf.daemon(
    GROUP,
    VERSION,
    PLURAL,
    when=_unfinished,
    backoff=3.0,
    cancellation_backoff=5.0,
    cancellation_timeout=10.0,
)
async def remoterestart_run(
    body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Run one RemoteRestart until it reaches RestartSucceeded or RestartFailed."""
    with metrics.handler_run(PLURAL, "remoterestart_run"):
        await RemoteRestartRun(memo.kube, dict(body)).execute(stopped)
