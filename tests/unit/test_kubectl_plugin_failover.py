"""``kubectl lparkube failover status``: the screen of sample Partitions — settings, the
FailedOver condition, the failover under way, the escalation state (``choose_image`` at the
plugin's clock), the consistency images, the lease and the history — and the verb's run."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest

from lparkube.api.v1alpha1 import failover as api
from lparkube.kubectl_plugin import main as plugin_main
from lparkube.kubectl_plugin.verb import FAILED, OK, NotFoundError
from lparkube.kubectl_plugin.verbs import failover

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
SPEC = {"enabled": True, "bootImage": {"pvcName": "web-1-boot"}, "nodeSelector": {"role": "ha"}}
IMAGES = [
    {"name": "web-1-ci-a", "time": "2026-12-01T10:00:00Z", "consistency": "Application",
     "saveEvent": "web-1-save-a"},
    {"name": "web-1-ci-b", "time": "2026-12-01T11:00:00Z", "consistency": "Crash"},
]  # fmt: skip
DONE_BEFORE = {
    "id": "f1", "reason": "VMIFailed", "message": "VMI failed on node node-b (Crashed)",
    "detectedAt": "2026-11-30T12:00:00Z", "image": "Consistency",
    "imageReason": "the newest consistency image", "result": "Done",
    "completedAt": "2026-11-30T12:00:40Z",
}  # fmt: skip


def partition(spec: dict[str, Any] | None = None, **failover_status: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"failover": failover_status} if failover_status else {}
    return {
        "metadata": {"namespace": "shop", "name": "web-1"},
        "spec": {"failover": SPEC if spec is None else spec},
        "status": status,
    }


def failed_over(status: str, reason: str, message: str, at: str = "2026-12-01T11:58:00Z"):
    return {"type": api.FAILED_OVER, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": at}  # fmt: skip


def line(lines: list[str], label: str) -> list[str]:
    """The field's lines: the one with the label and those that go on under it."""
    start = next(i for i, text in enumerate(lines) if text.startswith(f"{label}:"))
    rest = lines[start + 1 :]
    more = next((i for i, text in enumerate(rest) if not text.startswith(failover.MORE)), None)
    return lines[start : start + 1 + (len(rest) if more is None else more)]


def items(lines: list[str], label: str) -> list[str]:
    """The field's texts, each unwrapped (a wrapped text goes on indented two more)."""
    texts: list[str] = []
    for text in line(lines, label):
        if text.startswith(failover.MORE + "  "):
            texts[-1] += " " + text.strip()
        else:
            texts.append(text.removeprefix(f"{label}:").strip())
    return texts


# --- the whole screen ---------------------------------------------------------------------------


def test_a_partition_without_failover_says_so_and_shows_no_state() -> None:
    lines = failover.render(partition(spec={}), NOW)
    assert lines == [
        "Partition:   shop/web-1",
        "Failover:    disabled (spec.failover.enabled is not true)",
        "Lease:       none granted",
        "Condition:   none (no failure yet)",
        "Under way:   none",
        "Failures:    0 recorded, 0 in the last 15m",
        "Escalation:  none: failover is disabled, a failure is not failed over",
        "Consistency images (every 1h, 3 kept):",
        "  none",
        "History (newest last):",
        "  none",
    ]


def test_a_failover_under_way_with_its_escalation_images_lease_and_history() -> None:
    """A second failure 2m ago, within the window of one at 11:50 that restarted from a
    consistency image: it restarts from the boot image, and one more failure would stop the
    partition until the window closes at 12:13."""
    current = {
        "id": "f3", "reason": "NodeLost", "message": "node node-a is not Ready",
        "detectedAt": "2026-12-01T11:58:00Z", "phase": "Fencing", "image": "Boot",
        "imageReason": "a second failure within 15m: escalated to the boot image",
        "nodeName": "node-a",
    }  # fmt: skip
    second = {**DONE_BEFORE, "id": "f2", "reason": "AgentLost", "message": "lease ran out",
              "detectedAt": "2026-12-01T11:50:00Z",
              "completedAt": "2026-12-01T11:51:05Z"}  # fmt: skip
    p = partition(
        failures=3, lastFailureTime="2026-12-01T11:58:00Z", lastImage="Consistency",
        consistencyImages=IMAGES, nextConsistencyImageTime="2026-12-01T12:40:00Z",
        leaseExpiry="2026-12-01T11:58:08Z", current=current, history=[DONE_BEFORE, second],
    )  # fmt: skip
    p["status"]["conditions"] = [
        failed_over("False", "WaitingForFence", "the instance on node node-a may still run")
    ]
    p["status"]["agent"] = {"watchdog": {"device": "/dev/watchdog", "timeoutSeconds": 10,
                                         "armed": True}}  # fmt: skip
    assert failover.render(p, NOW) == [
        "Partition:   shop/web-1",
        "Failover:    enabled, escalation window 15m, boot image PVC web-1-boot",
        "Nodes:       role=ha (and the VM's own constraints)",
        "Self-fence:  lease 10s, watchdog timeout 10s: the guest counts as off 25s after",
        "               its last lease",
        "Watchdog:    armed, /dev/watchdog, timeout 10s",
        "Lease:       ran out 112s ago (2026-12-01T11:58:08Z)",
        "Condition:   False WaitingForFence, 2m ago: the instance on node node-a may",
        "               still run",
        "Under way:   NodeLost on node node-a 2m ago, now Fencing: node node-a is not",
        "               Ready",
        "             restarts from Boot: a second failure within 15m: escalated to the",
        "               boot image",
        "             fence: not proven yet (the condition says what it waits for)",
        "Failures:    3 recorded, 2 in the last 15m, the last 2m ago",
        "Escalation:  the next failure after this failover stops it (FailedOver=False,",
        "               RepeatedFailures): failed again within 15m of a boot-image",
        "               restart",
        "             from 2026-12-01T12:13:00Z (in 13m) it restarts from Consistency:",
        "               the newest consistency image",
        "Consistency images (every 1h, 3 kept; the next due in 40m):",
        "  NAME         CONSISTENCY   AGE    SAVEEVENT",
        "  web-1-ci-a   Application   120m   web-1-save-a",
        "  web-1-ci-b   Crash         60m    -",
        "History (newest last):",
        "  DETECTED   REASON      IMAGE         RESULT   TOOK   MESSAGE",
        "  24h        VMIFailed   Consistency   Done     40s    VMI failed on node node-b "
        "(Crashed)",
        "  10m        AgentLost   Consistency   Done     1m5s   lease ran out",
    ]


def test_a_proven_fence_and_the_objects_the_failover_made() -> None:
    current = {
        "id": "f3", "reason": "AgentLost", "message": "the guest agent's lease ran out",
        "detectedAt": "2026-12-01T11:59:00Z", "phase": "Restarting", "image": "Consistency",
        "imageReason": "the newest consistency image", "nodeName": "node-a",
        "fence": {"by": "SelfFenced", "at": "2026-12-01T11:59:30Z",
                  "message": "the guest's watchdog powered it off"},
        "snapshotName": "web-1-ci-b", "restoreName": "web-1-restore-f3",
        "restartName": "web-1-failover-f3",
    }  # fmt: skip
    lines = failover.render(partition(current=current, consistencyImages=IMAGES), NOW)
    assert line(lines, "Under way") == [
        "Under way:   AgentLost on node node-a 60s ago, now Restarting: the guest",
        "               agent's lease ran out",
        "             restarts from Consistency: the newest consistency image",
        "             fenced: SelfFenced 30s ago: the guest's watchdog powered it off",
        "             snapshot web-1-ci-b, restore web-1-restore-f3, restart",
        "               web-1-failover-f3",
    ]


def test_self_fence_off_an_unarmed_watchdog_and_a_lease_still_held() -> None:
    off = failover.render(partition(spec={**SPEC, "selfFence": {"enabled": False}}), NOW)
    assert "Self-fence:  off: a restart waits for the node's fence" in off
    assert not any(text.startswith("Watchdog:") for text in off)
    unarmed = partition(leaseExpiry="2026-12-01T12:00:08Z")
    unarmed["status"]["agent"] = {"watchdog": {"armed": False, "message": "no /dev/watchdog"}}
    lines = failover.render(unarmed, NOW)
    assert "Watchdog:    not armed: no /dev/watchdog" in lines
    assert "Lease:       runs out in 8s (2026-12-01T12:00:08Z)" in lines
    assert "Watchdog:    not reported by the guest agent" in failover.render(partition(), NOW)


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ({"pvcName": "gold"}, "PVC gold"),
        ({"containerDisk": {"image": "quay.io/x/fedora:42"}}, "containerDisk quay.io/x/fedora:42"),
        ({"dataVolumeTemplate": {"spec": {}}}, "a DataVolume from its template"),
    ],
)
def test_the_boot_image_source(source: dict[str, Any], text: str) -> None:
    lines = failover.render(partition(spec={**SPEC, "bootImage": source}), NOW)
    assert items(lines, "Failover") == [f"enabled, escalation window 15m, boot image {text}"]


def test_a_finished_failover_is_not_under_way_and_the_condition_says_how_it_ended() -> None:
    done = {**DONE_BEFORE, "phase": "Done"}
    p = partition(current=done, history=[DONE_BEFORE], lastImage="Consistency",
                  lastFailureTime=DONE_BEFORE["detectedAt"], failures=1)  # fmt: skip
    p["status"]["conditions"] = [
        failed_over("True", "FromConsistencyImage", "restarted on node node-c from the "
                    "consistency image", "2026-11-30T12:00:40Z")
    ]  # fmt: skip
    lines = failover.render(p, NOW)
    assert "Under way:   none" in lines
    assert line(lines, "Condition") == [
        "Condition:   True FromConsistencyImage, 23h ago: restarted on node node-c from",
        "               the consistency image",
    ]
    assert "Failures:    1 recorded, 0 in the last 15m, the last 24h ago" in lines


# --- the escalation state -----------------------------------------------------------------------


DONE = {**DONE_BEFORE, "phase": "Done"}
FROM_CONSISTENCY = "restarts from Consistency: the newest consistency image"
ANEW = f"the next failure {FROM_CONSISTENCY}"


@pytest.mark.parametrize(
    ("failover_status", "shown"),
    [
        pytest.param({}, [ANEW], id="first failure"),
        pytest.param(
            {"consistencyImages": []},
            ["the next failure restarts from Boot: no consistency image yet"],
            id="first failure, no image yet",
        ),
        pytest.param(
            {"lastImage": "Consistency", "lastFailureTime": "2026-12-01T11:55:00Z",
             "current": DONE},
            ["the next failure restarts from Boot: a second failure within 15m: escalated to "
             "the boot image",
             f"from 2026-12-01T12:10:00Z (in 10m) it {FROM_CONSISTENCY}"],
            id="within the window of a consistency restart: boot image until it closes",
        ),
        pytest.param(
            {"lastImage": "Boot", "lastFailureTime": "2026-12-01T11:59:00Z", "current": DONE},
            ["the next failure stops it (FailedOver=False, RepeatedFailures): failed again "
             "within 15m of a boot-image restart",
             f"from 2026-12-01T12:14:00Z (in 14m) it {FROM_CONSISTENCY}"],
            id="within the window of a boot restart: a stop until it closes",
        ),
        pytest.param(
            {"lastImage": "Boot", "lastFailureTime": "2026-12-01T11:40:00Z"}, [ANEW],
            id="after the window",
        ),
        pytest.param(
            {"lastImage": "Boot", "lastFailureTime": "2026-12-01T11:59:00Z",
             "current": {**DONE, "phase": "Stopped", "image": None}},
            [ANEW],
            id="started again after a stop",
        ),
    ],
)  # fmt: skip
def test_the_escalation_state_is_what_the_next_failure_restarts_from(
    failover_status: dict[str, Any], shown: list[str]
) -> None:
    lines = failover.render(partition(**{"consistencyImages": IMAGES, **failover_status}), NOW)
    assert items(lines, "Escalation") == shown


# --- the verb -----------------------------------------------------------------------------------


class OnePartition:
    """A cluster holding web-1 in namespace shop."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj

    def get(self, kind, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) != ("shop", "web-1"):
            raise NotFoundError(f'{kind.crd_name} "{name}" not found in namespace "{namespace}"')
        return self.obj


def run(monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str, str]:
    cluster = OnePartition(partition(spec={}))
    monkeypatch.setattr(plugin_main, "connect", lambda *a: (cluster, "default"))
    out, err = io.StringIO(), io.StringIO()
    code = plugin_main.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_the_verb_prints_the_screen_and_a_missing_partition_exits_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out, err = run(monkeypatch, "failover", "status", "web-1", "-n", "shop")
    assert (code, err) == (OK, "")
    assert out.splitlines()[:2] == [
        "Partition:   shop/web-1",
        "Failover:    disabled (spec.failover.enabled is not true)",
    ]
    code, out, err = run(monkeypatch, "failover", "status", "ghost", "-n", "shop")
    assert (code, out) == (FAILED, "")
    assert err == 'error: partitions.lparkube.io "ghost" not found in namespace "shop"\n'
