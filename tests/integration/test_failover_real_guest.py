"""Failover of a real guest (issue 14's acceptance at the real-guest tier): the real operator,
the stand-in's QEMU guest with Debian's kernel, its i6300esb watchdog and the real agent.

The guest's node is cut off the network: its kubelet and virt-handler go silent and the guest,
alive, can no longer reach the operator. Its agent stops petting the watchdog once its last
lease ran out, and the hypervisor powers the guest off; the operator, which never fenced the
node, restarts the partition on another node only after the lease, the watchdog timeout and
the margin have passed, from the consistency image taken before (restored with a
VirtualMachineRestore): the old QEMU process ended before the restart was requested, and the
attach log never shows the disk on two nodes.
"""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client
from partition_helpers import Partitions, wait_for
from remote_restart_helpers import NodePool
from test_hibernation_real_guest import sleeper_partition
from test_partition_real_guest import BOOT_TIMEOUT
from test_remote_restart_real_guest import on_pool

from lparkube.api.v1alpha1 import failover as api
from lparkube.domain.clock import parse_time
from lparkube_devenv.kubevirt.storage import two_writers

pytestmark = pytest.mark.realguest

FAILOVER = {"enabled": True, "bootImage": {"containerDisk": {"image": "registry.example/clean:1"}}}


def test_a_guest_cut_off_the_network_fences_itself_before_it_is_restarted_elsewhere(
    operator,  # type: ignore[no-untyped-def]
    parts: Partitions,
    api_client: client.ApiClient,
    vios_pool: str,
    nodes: NodePool,
) -> None:
    kubevirt = parts.kubevirt
    source = nodes.add()
    partition = on_pool(sleeper_partition("fenced", vios_pool), nodes)
    partition["spec"]["failover"] = FAILOVER
    parts.create(partition)
    parts.wait_condition("fenced", "Ready", "True", timeout=BOOT_TIMEOUT)
    # The real agent armed the guest's real watchdog with the lease's timeout.
    watchdog = wait_for(
        lambda: (w := parts.status("fenced")["agent"].get("watchdog")) and w.get("armed") and w,
        "the guest's watchdog armed",
        60,
    )
    assert (watchdog["device"], watchdog["timeoutSeconds"]) == ("/dev/watchdog", 10)
    # A consistency image (a save, then a snapshot) is taken once the agent connected.
    images = wait_for(
        lambda: (parts.status("fenced").get("failover") or {}).get("consistencyImages"),
        "a consistency image",
        120,
    )
    boot_id = parts.status("fenced")["agent"]["bootId"]
    old = kubevirt.guest(parts.namespace, "fenced")
    assert old is not None
    ended: list[float] = []
    watcher = threading.Thread(
        target=lambda: (old.launcher.wait_exit(BOOT_TIMEOUT), ended.append(time.time())),
        daemon=True,
    )
    watcher.start()
    target = nodes.add()

    nodes.isolate(source)
    waiting = wait_for(
        lambda: (
            (c := parts.condition("fenced", api.FAILED_OVER)).get("reason") == api.WAITING_FOR_FENCE
            and c
        ),
        "the failover waiting for the fence",
        60,
    )
    assert "powers itself off by" in waiting["message"], waiting
    done = wait_for(
        lambda: (c := parts.condition("fenced", api.FAILED_OVER)).get("status") == "True" and c,
        "FailedOver",
        BOOT_TIMEOUT,
    )
    assert done["reason"] == api.FROM_CONSISTENCY_IMAGE
    status = parts.status("fenced")
    current = status["failover"]["current"]
    assert current["fence"]["by"] == api.SELF_FENCED, current
    assert current["nodeName"] == source and current["instanceWatchdog"] is True
    assert current["snapshotName"] == images[-1]["name"] and current["restoreName"]

    # The old guest powered itself off (its watchdog, action poweroff) before the restart was
    # requested: no moment with two instances.
    watcher.join(10)
    assert ended and old.launcher.status.watchdog == "poweroff", old.launcher.status
    restart = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "lparkube.io", "v1alpha1", parts.namespace, "remoterestarts", current["restartName"]
    )
    requested = parse_time(restart["metadata"]["creationTimestamp"])
    assert requested is not None and ended[0] <= requested.timestamp()
    lease_expiry = parse_time(status["failover"]["leaseExpiry"])
    assert lease_expiry is not None and requested.timestamp() >= lease_expiry.timestamp() + 10
    vmi = parts.vmi("fenced")
    assert (vmi["status"]["phase"], vmi["status"]["nodeName"]) == ("Running", target)
    assert status["agent"]["bootId"] != boot_id, "a new boot on the target"
    assert two_writers(kubevirt.storage.attach_log_path) == []
    parts.delete("fenced")
    wait_for(lambda: kubevirt.guest(parts.namespace, "fenced") is None, "guest gone", 120)
