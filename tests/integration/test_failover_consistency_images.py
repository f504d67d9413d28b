"""Consistency images taken by the real operator at the cheap tier (the stand-in's simulated
VMIs, whose snapshots copy the volumes' data, and a real agent process over a fake guest tree):
the first soon after the agent connects, the next ones each after a save the app did, keep=2
pruning the oldest snapshot, a guest without KubeVirt's guest agent giving a crash-consistent
image, and a failed save skipping the image with no snapshot.

The interval's minimum (1m) is too slow for a test: the test moves
status.failover.nextConsistencyImageTime into the past to make the next image due.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client
from partition_helpers import Partitions, wait_for
from remote_restart_helpers import events_of
from saving_helpers import save_command, save_event
from sleeper_helpers import Sleepers

from lparkube.api.v1alpha1 import failover as api
from lparkube.domain.clock import parse_time
from lparkube_agent.testing import cli, lines, start_app

pytestmark = pytest.mark.usefixtures("operator")

IMAGE_TIMEOUT = 90.0
FAILOVER = {
    "enabled": True,
    "bootImage": {"pvcName": "clean-root"},
    "consistencyImage": {"interval": "1m", "keep": 2},
}
PAST = "2000-01-01T00:00:00Z"


def failover(parts: Partitions, name: str) -> dict:
    return parts.status(name).get("failover") or {}


def images(parts: Partitions, name: str) -> list[dict]:
    return failover(parts, name).get("consistencyImages") or []


def snapshots(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, dict]:
    """This partition's consistency-image VirtualMachineSnapshots, by name."""
    listed = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "snapshot.kubevirt.io", "v1beta1", namespace, "virtualmachinesnapshots",
        label_selector=f"{api.PURPOSE_LABEL}=consistency-image,lparkube.io/partition={name}",
    )  # fmt: skip
    return {s["metadata"]["name"]: s for s in listed["items"]}


def image_due(parts: Partitions, name: str) -> None:
    """Make the next image due now (the interval is at least 1m)."""
    path = f"/apis/lparkube.io/v1alpha1/namespaces/{parts.namespace}/partitions/{name}/status"
    patch = {"status": {"failover": {"nextConsistencyImageTime": PAST}}}
    parts.kubevirt.kube.merge_patch(path, patch)


def wait_images(parts: Partitions, name: str, newest_not: str | None = None) -> list[dict]:
    """The images once a newer one than ``newest_not`` is listed and none is under way."""
    return wait_for(
        lambda: (
            (found := images(parts, name))
            and found[-1]["name"] != newest_not
            and "pendingImage" not in failover(parts, name)
            and found
        ),
        f"{name}: a consistency image after {newest_not}",
        IMAGE_TIMEOUT,
    )


def register(sleeper, apps: list[subprocess.Popen], out: Path, command: str) -> None:  # type: ignore[no-untyped-def]
    idle, _ = start_app("idle", f"{sleeper.name}-idle", out)
    apps.append(idle)
    cli(
        sleeper.agent.process, "register", "--name=db", f"--pid={idle.pid}", "--priority=1",
        "--method=Command", command,
    )  # fmt: skip


def partition_result(api_client: client.ApiClient, namespace: str, save: str) -> dict:
    found = save_event(api_client, namespace, save)["status"]["partitions"]
    assert len(found) == 1, "a SaveEvent for exactly this partition"
    return found[0]


def test_images_follow_saves_keep_prunes_the_oldest_and_status_lists_them(
    api_client: client.ApiClient,
    parts: Partitions,
    sleepers: Sleepers,
    apps: list[subprocess.Popen],
    tmp_path: Path,
) -> None:
    ns = parts.namespace
    sleeper = sleepers.create("ci", paging=False, kernel=False, failover=FAILOVER)
    # The first image soon after the agent connected, application-consistent (KubeVirt's
    # guest agent froze the file systems); the next one due an interval after it began.
    [first] = wait_images(parts, "ci")
    assert first["consistency"] == api.APPLICATION_CONSISTENT
    assert first["name"] == first["saveEvent"] and first["name"].startswith("ci-ci-")
    save = save_event(api_client, ns, first["saveEvent"])
    assert save["spec"]["reason"] == "Backup" and save["spec"]["targets"] == {"partitions": ["ci"]}
    assert save["metadata"]["labels"][api.PURPOSE_LABEL] == "consistency-image"
    assert [o["kind"] for o in save["metadata"]["ownerReferences"]] == ["Partition"]
    assert partition_result(api_client, ns, first["saveEvent"])["outcome"] == "Succeeded"
    snap = snapshots(api_client, ns, "ci")[first["name"]]
    assert snap["status"]["readyToUse"] and "GuestAgent" in snap["status"]["indications"]
    assert snap["metadata"]["labels"]["lparkube.io/save-event"] == first["saveEvent"]
    assert [o["kind"] for o in snap["metadata"]["ownerReferences"]] == ["Partition"]
    due = parse_time(failover(parts, "ci")["nextConsistencyImageTime"])
    assert 50 <= (due - parse_time(save["metadata"]["creationTimestamp"])).total_seconds() <= 65
    assert ("Normal", api.CONSISTENCY_IMAGE_TAKEN_EVENT) in events_of(
        api_client, ns, "ci", "Partition"
    )

    # An app registered: the next image follows its save.
    out = tmp_path / "db.saves"
    register(sleeper, apps, out, save_command(out, "db", 0.0))
    wait_for(lambda: parts.status("ci")["agent"].get("applications") == 1, "db registered")
    image_due(parts, "ci")
    second = wait_images(parts, "ci", first["name"])[-1]
    result = partition_result(api_client, ns, second["saveEvent"])
    assert result["outcome"] == "Succeeded"
    assert [(a["name"], a["outcome"]) for a in result["applications"]] == [("db", "Saved")]
    assert [n for n, _ in lines(out)] == ["db"], "the app saved once, before the snapshot"
    assert lines(out)[0][1] <= parse_time(second["time"]).timestamp() + 1

    # Without KubeVirt's guest agent the image is only crash-consistent; keep=2 prunes the first.
    parts.kubevirt.set_agent_connected(ns, "ci", False)
    image_due(parts, "ci")
    listed = wait_images(parts, "ci", second["name"])
    third = listed[-1]
    assert [(i["name"], i["consistency"]) for i in listed] == [
        (second["name"], api.APPLICATION_CONSISTENT),
        (third["name"], api.CRASH_CONSISTENT),
    ], "newest last, at most keep"
    assert third["saveEvent"] == third["name"] and third["time"] >= second["time"]
    wait_for(
        lambda: set(snapshots(api_client, ns, "ci")) == {second["name"], third["name"]},
        "the oldest VirtualMachineSnapshot deleted",
    )
    taken = [m for r, m in parts.events("ci") if r == api.CONSISTENCY_IMAGE_TAKEN_EVENT]
    assert any(third["name"] in m and "only crash-consistent" in m for m in taken), taken


def test_a_failed_save_skips_the_image_without_a_snapshot(
    api_client: client.ApiClient,
    parts: Partitions,
    sleepers: Sleepers,
    apps: list[subprocess.Popen],
    operator,  # type: ignore[no-untyped-def]
) -> None:
    ns = parts.namespace
    sleeper = sleepers.create("cifail", paging=False, kernel=False, failover=FAILOVER)
    before = wait_images(parts, "cifail")
    register(sleeper, apps, sleepers.tmp / "db.saves", "--command=sh -c 'echo disk full; exit 3'")
    wait_for(lambda: parts.status("cifail")["agent"].get("applications") == 1, "db registered")
    image_due(parts, "cifail")

    def skipped() -> str | None:
        return next(
            (m for r, m in parts.events("cifail") if r == api.CONSISTENCY_IMAGE_SKIPPED_EVENT),
            None,
        )

    message = wait_for(skipped, "ConsistencyImageSkipped", IMAGE_TIMEOUT)
    assert ("Warning", api.CONSISTENCY_IMAGE_SKIPPED_EVENT) in events_of(
        api_client, ns, "cifail", "Partition"
    )
    status = failover(parts, "cifail")
    assert "pendingImage" not in status
    assert status["consistencyImages"] == before, "no image recorded"
    assert set(snapshots(api_client, ns, "cifail")) == {i["name"] for i in before}, "no snapshot"
    failed = [
        s for s in client.CustomObjectsApi(api_client).list_namespaced_custom_object(
            "lparkube.io", "v1alpha1", ns, "saveevents"
        )["items"]
        if s["metadata"]["name"] not in {i["saveEvent"] for i in before}
    ]  # fmt: skip
    [save] = failed
    result = partition_result(api_client, ns, save["metadata"]["name"])
    assert result["outcome"] == "Failed"
    assert save["metadata"]["name"] in message and "db Failed (exit status 3" in message
    # The next try at the next interval.
    due = parse_time(status["nextConsistencyImageTime"])
    assert 50 <= (due - parse_time(save["metadata"]["creationTimestamp"])).total_seconds() <= 65
    assert f"next try at {status['nextConsistencyImageTime']}" in message
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert 'lparkube_consistency_images_total{consistency="Skipped"}' in text
