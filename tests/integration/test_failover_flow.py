"""Failover run by the real operator at the cheap tier (the stand-in's simulated VMIs, real
agent processes over fake guest trees): a partition whose node lost power waits for the
fence, then restarts on another node from its boot image (it has no consistency image yet),
with no moment of two writers; a user's stop is never a failure.
"""

from __future__ import annotations

import signal
import time

import pytest
from kubernetes import client
from partition_helpers import Partitions, wait_for
from remote_restart_helpers import NodePool, boot_agent_on_target, events_of
from sleeper_helpers import Sleepers

from lparkube.api.v1alpha1 import failover as api
from lparkube.controllers.failover_run import POLL_SECONDS
from lparkube_devenv.controlplane import free_port
from lparkube_devenv.kubevirt import VM, VMI
from lparkube_devenv.kubevirt.storage import two_writers

pytestmark = pytest.mark.usefixtures("operator")

FAILOVER_TIMEOUT = 120.0
CLEAN = {"containerDisk": {"image": "registry.example/clean-root:1"}}
FAILOVER = {"enabled": True, "bootImage": CLEAN}


def failed_over(parts: Partitions, name: str, reason: str) -> dict:
    return wait_for(
        lambda: (c := parts.condition(name, api.FAILED_OVER)).get("reason") == reason and c,
        f"FailedOver {reason}",
        FAILOVER_TIMEOUT,
    )


def test_a_lost_node_fails_over_from_the_boot_image_once_fenced(
    api_client: client.ApiClient,
    parts: Partitions,
    sleepers: Sleepers,
    nodes: NodePool,
    guest_agent,  # type: ignore[no-untyped-def]
) -> None:
    source = nodes.add()
    # Its agent answers no save (it listens on another port than the Partition's), so no
    # consistency image is taken: the failover has only the boot image.
    sleeper = sleepers.create(
        "ha", paging=False, kernel=False, node_selector=nodes.selector, failover=FAILOVER,
        agent_port=free_port(),
    )  # fmt: skip
    # Every heartbeat answer grants a lease, recorded before the answer went out; the VM the
    # Partition made has the self-fence watchdog.
    wait_for(lambda: (parts.status("ha").get("failover") or {}).get("leaseExpiry"), "a lease")
    devices = parts.vm("ha")["spec"]["template"]["spec"]["domain"]["devices"]
    assert devices["watchdog"] == {"name": api.WATCHDOG_DEVICE, "i6300esb": {"action": "poweroff"}}
    target = nodes.add()
    nodes.power_off(source)
    sleeper.agent.process.stop(signal.SIGKILL)  # the guest died with its node

    # The node is lost and not fenced, and this agent could not arm a watchdog (a host process
    # has none): the failover waits, held Halted so KubeVirt starts nothing by itself.
    waiting = failed_over(parts, "ha", api.WAITING_FOR_FENCE)
    assert waiting["status"] == "False" and "did not arm its watchdog" in waiting["message"]
    current = parts.status("ha")["failover"]["current"]
    assert current["reason"] in (api.NODE_LOST, api.AGENT_LOST), current
    assert (current["phase"], current["image"], current["nodeName"]) == (
        api.FENCING,
        api.BOOT_IMAGE,
        source,
    )
    assert current["imageReason"] == "no consistency image yet"
    assert parts.vm("ha")["spec"]["runStrategy"] == "Halted"
    assert ("Warning", api.FAILURE_DETECTED_EVENT) in events_of(
        api_client, parts.namespace, "ha", "Partition"
    )

    nodes.fence(source)
    boot_agent_on_target(parts, guest_agent, sleeper, target)
    done = failed_over(parts, "ha", api.FROM_BOOT_IMAGE)
    assert done["status"] == "True" and target in done["message"]
    status = parts.status("ha")["failover"]
    assert (status["failures"], status["lastImage"]) == (1, api.BOOT_IMAGE)
    assert status["current"]["fence"]["by"] == api.NODE_FENCED
    assert [(h["reason"], h["result"]) for h in status["history"]] == [
        (current["reason"], api.DONE)
    ]
    vm = parts.vm("ha")
    root = vm["spec"]["template"]["spec"]["volumes"][0]
    assert root == {"name": root["name"], **CLEAN}, "the boot disk is the clean image"
    assert vm["spec"]["runStrategy"] == "Manual", "failover still owns its restarts"
    assert vm["metadata"]["annotations"][api.RUN_STRATEGY_ANNOTATION] == "Always"
    vmi = parts.vmi("ha")
    assert (vmi["status"]["phase"], vmi["status"]["nodeName"]) == ("Running", target)
    restart = status["current"]["restartName"]
    assert restart.startswith("ha-failover-")
    assert two_writers(parts.kubevirt.storage.attach_log_path) == []


def test_a_user_stop_is_never_a_failure(
    parts: Partitions, sleepers: Sleepers, nodes: NodePool
) -> None:
    nodes.add()
    sleepers.create(
        "calm", paging=False, kernel=False, node_selector=nodes.selector, failover=FAILOVER
    )
    parts.kubevirt.kube.merge_patch(
        VM.path(parts.namespace, "calm"), {"spec": {"runStrategy": "Halted"}}
    )
    wait_for(lambda: parts.vmi("calm") is None, "the VMI stopped")
    time.sleep(3 * POLL_SECONDS)  # three passes of the failover run: nothing recorded
    assert "current" not in (parts.status("calm").get("failover") or {})
    assert parts.vm("calm")["spec"]["runStrategy"] == "Halted"


def crash(parts: Partitions, name: str) -> str:
    """The instance dies on a node that answers: its VMI Failed, as virt-handler reports a
    crashed domain (a simulated VMI has no domain to crash); the node it ran on."""
    vmi = parts.vmi(name)
    # KubeVirt's VMI has no status subresource: virt-handler patches the object itself.
    parts.kubevirt.kube.merge_patch(
        VMI.path(parts.namespace, name), {"status": {"phase": "Failed"}}
    )
    return vmi["status"]["nodeName"]


def test_a_partition_that_keeps_failing_stops_with_a_condition(
    api_client: client.ApiClient,
    parts: Partitions,
    sleepers: Sleepers,
    nodes: NodePool,
    guest_agent,  # type: ignore[no-untyped-def]
) -> None:
    first = nodes.add()
    sleeper = sleepers.create(
        "flaky", paging=False, kernel=False, node_selector=nodes.selector, failover=FAILOVER
    )
    # Failover owns the restarts: KubeVirt must not restart a failed VMI by itself first.
    vm = wait_for(
        lambda: (v := parts.vm("flaky"))["spec"].get("runStrategy") == "Manual" and v,
        "the VM's runStrategy Manual",
    )
    assert vm["metadata"]["annotations"][api.RUN_STRATEGY_ANNOTATION] == "Always"
    second = nodes.add()
    assert crash(parts, "flaky") == first
    sleeper.agent.process.stop(signal.SIGKILL)  # the guest is gone
    agent = boot_agent_on_target(parts, guest_agent, sleeper, second)
    failed_over(parts, "flaky", api.FROM_BOOT_IMAGE)
    status = parts.status("flaky")["failover"]
    assert (status["current"]["reason"], status["current"]["fence"]["by"]) == (
        api.VMI_FAILED,
        api.INSTANCE_GONE,
    )

    # Again within escalationWindow, after a boot-image restart: it stops, and says why.
    crash(parts, "flaky")
    agent.process.stop(signal.SIGKILL)
    stopped = failed_over(parts, "flaky", api.REPEATED_FAILURES)
    assert stopped["status"] == "False" and "start VM flaky to try again" in stopped["message"]
    status = parts.status("flaky")["failover"]
    assert status["failures"] == 2
    assert [h["result"] for h in status["history"]] == [api.DONE, api.STOPPED]
    assert parts.vm("flaky")["spec"]["runStrategy"] == "Halted"
    wait_for(lambda: parts.vmi("flaky") is None, "the failed VMI gone")
    time.sleep(3 * POLL_SECONDS)  # no loop: nothing restarts it, nothing new is recorded
    assert parts.vmi("flaky") is None
    assert parts.status("flaky")["failover"]["failures"] == 2
    assert ("Warning", api.FAILOVER_STOPPED_EVENT) in events_of(
        api_client, parts.namespace, "flaky", "Partition"
    )
