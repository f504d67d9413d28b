"""Verifying a RemoteRestart tells the source's leftover VMI from the target's: on a fenced node
KubeVirt fails the source's VMI only once its pod is force-deleted, the moment its volumes are
released, so it may still exist when the target start is requested."""

from __future__ import annotations

from datetime import UTC, datetime

from lparkube.api.v1alpha1 import remoterestart as api
from lparkube.domain import remote_restart as rr

STARTED = datetime(2026, 12, 1, 12, 0, 10, tzinfo=UTC)
PARTITION = {
    "status": {
        "conditions": [{"type": "AgentConnected", "status": "True"}],
        "agent": {"lastHeartbeatTime": "2026-12-01T12:00:30Z", "bootId": "b1"},
    }
}


def vmi(created: str, phase: str, node: str) -> dict:
    return {
        "metadata": {"creationTimestamp": created},
        "status": {"phase": phase, "nodeName": node},
    }


def test_the_sources_failed_vmi_created_before_the_start_is_waited_out() -> None:
    outcome = rr.verify(vmi("2026-12-01T11:50:00Z", "Failed", "a"), PARTITION, "b", STARTED)
    assert outcome.refusal is None and not outcome.done
    assert outcome.message == "waiting for the source's VMI (Failed on node a) to go"


def test_a_vmi_created_since_the_start_that_fails_is_the_targets_failure() -> None:
    outcome = rr.verify(vmi("2026-12-01T12:00:10Z", "Failed", "b"), PARTITION, "b", STARTED)
    assert outcome.refusal is not None and outcome.refusal.reason == api.TARGET_START_FAILED


def test_a_vmi_created_since_the_start_running_on_the_target_is_verified() -> None:
    outcome = rr.verify(vmi("2026-12-01T12:00:11Z", "Running", "b"), PARTITION, "b", STARTED)
    assert outcome.done and outcome.refusal is None
