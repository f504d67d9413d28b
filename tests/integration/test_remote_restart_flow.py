"""RemoteRestarts run by the real operator at the cheap tier (the stand-in's simulated VMIs, real
agent processes over fake guest trees): a restart from disk after the source node lost power,
which waits for the fence and never has two writers on a volume; and a resume from a
HibernationImage onto another node.
"""

from __future__ import annotations

import signal

import pytest
from hibernation_helpers import Images
from kubernetes import client
from partition_helpers import Partitions, wait_for
from remote_restart_helpers import (
    NodePool,
    assert_terminated,
    boot_agent_on_target,
    condition,
    create_restart,
    events_of,
    get_restart,
    hibernate_sleeper,
    leases_of,
    step,
    wait_terminated,
    wait_waiting,
)
from sleeper_helpers import Sleepers

from lparkube.api.v1alpha1 import remoterestart as api
from lparkube.api.v1alpha1.hibernationimage import RUN_STRATEGY_ANNOTATION
from lparkube.domain import remote_restart as rr
from lparkube_devenv.kubevirt.storage import two_writers

pytestmark = pytest.mark.usefixtures("operator")

RESTART_TIMEOUT = 120.0


def test_a_restart_from_disk_waits_for_the_fence_then_boots_on_the_target(
    api_client: client.ApiClient,
    parts: Partitions,
    sleepers: Sleepers,
    nodes: NodePool,
    guest_agent,  # type: ignore[no-untyped-def]
) -> None:
    source = nodes.add()
    sleeper = sleepers.create("fenced", paging=False, kernel=False, node_selector=nodes.selector)
    assert parts.vmi("fenced")["status"]["nodeName"] == source
    target = nodes.add()
    nodes.power_off(source)
    sleeper.agent.process.stop(signal.SIGKILL)  # the guest died with its node

    create_restart(api_client, parts.namespace, "fenced-restart", "fenced")
    # The source node is lost and not fenced: whatever became of its VMI, the guest may still
    # run there, so the operation waits and says so.
    seen = wait_waiting(api_client, parts.namespace, "fenced-restart", api.WAITING_FOR_SOURCE_STOP)
    token = seen["metadata"]["uid"]
    locked = condition(seen, api.LOCKED)
    assert locked["status"] == "False"
    assert f"node {source} is NotReady and not fenced" in locked["message"]
    assert "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute" in locked["message"]
    assert seen["status"]["step"] == api.LOCKING_ADAPTERS
    assert leases_of(api_client, token), "the adapters are locked while it waits"
    # Held while it waits, so KubeVirt does not start it elsewhere itself once the node is
    # fenced; not pinned yet.
    vm = wait_for(
        lambda: (v := parts.vm("fenced"))["spec"].get("runStrategy") == "Halted" and v,
        "the VM held (Halted) while the operation waits",
    )
    assert rr.hold_of(vm) == rr.Hold(token, "Always", nodes.selector)
    assert not (vm["spec"]["template"]["spec"].get("nodeSelector") or {}).get(api.HOSTNAME_LABEL)
    warning = ("Warning", api.WAITING_FOR_SOURCE_STOP_EVENT)
    wait_for(
        lambda: warning in events_of(api_client, parts.namespace, "fenced-restart"),
        "the WaitingForSourceStop event",
    )
    assert seen["status"]["targetNodeName"] == target
    nodes.fence(source)
    boot_agent_on_target(parts, guest_agent, sleeper, target)
    done = wait_terminated(api_client, parts.namespace, "fenced-restart", RESTART_TIMEOUT)
    assert_terminated(done, api.RESTART_SUCCEEDED)
    statuses = {s["name"]: s["status"] for s in done["status"]["steps"]}
    assert statuses.pop(api.RESTORING_MEMORY) == api.SKIPPED
    assert set(statuses.values()) == {api.DONE}, statuses
    assert step(done, api.BOOTING)["startTime"]
    assert {a["state"] for a in done["status"]["adapters"]} == {api.ADAPTER_RELEASED}
    vmi = parts.vmi("fenced")
    assert (vmi["status"]["phase"], vmi["status"]["nodeName"]) == ("Running", target)
    assert leases_of(api_client, token) == []
    vm = parts.vm("fenced")
    assert api.HOLD_ANNOTATION not in (vm["metadata"].get("annotations") or {})
    assert api.OPERATION_TOKEN_LABEL not in (vm["metadata"].get("labels") or {})
    assert vm["spec"]["template"]["spec"]["nodeSelector"] == nodes.selector
    assert vm["spec"]["runStrategy"] == "Always"
    posted = {
        ("Normal", api.RESTART_STARTED_EVENT),
        ("Normal", api.TARGET_CONFIGURED_EVENT),
        ("Normal", api.RESTART_SUCCEEDED_EVENT),
    }
    for name, kind in (("fenced-restart", api.KIND), ("fenced", "Partition")):
        try:
            wait_for(
                lambda n=name, k=kind: posted <= events_of(api_client, parts.namespace, n, k),
                f"the RemoteRestart's events on the {kind}",
            )
        except TimeoutError:
            core = client.CoreV1Api(api_client)
            found = core.list_namespaced_event(
                parts.namespace, field_selector=f"involvedObject.name={name}"
            ).items
            raise AssertionError([(e.reason, e.message) for e in found]) from None
    assert two_writers(parts.kubevirt.storage.attach_log_path) == []


def test_a_hibernated_partition_resumes_on_another_node(
    api_client: client.ApiClient,
    parts: Partitions,
    sleepers: Sleepers,
    nodes: NodePool,
    guest_agent,  # type: ignore[no-untyped-def]
) -> None:
    images = Images(api_client, parts.namespace)
    source = nodes.add()
    sleeper = sleepers.create("sleepy", node_selector=nodes.selector)
    boot_id = parts.status("sleepy")["agent"]["bootId"]
    hibernate_sleeper(parts, images, sleeper, "sleepy-img")
    target = nodes.add()

    create_restart(
        api_client, parts.namespace, "sleepy-restart", "sleepy", hibernationImageName="sleepy-img"
    )
    boot_agent_on_target(parts, guest_agent, sleeper, target)
    done = wait_terminated(api_client, parts.namespace, "sleepy-restart", RESTART_TIMEOUT)
    assert_terminated(done, api.RESTART_SUCCEEDED)
    assert done["status"]["sourceNodeName"] == source
    assert step(done, api.BOOTING)["status"] == api.SKIPPED
    assert step(done, api.RESTORING_MEMORY)["status"] == api.DONE
    assert parts.status("sleepy")["agent"]["bootId"] == boot_id
    vmi = parts.vmi("sleepy")
    assert (vmi["status"]["phase"], vmi["status"]["nodeName"]) == ("Running", target)
    assert leases_of(api_client, done["metadata"]["uid"]) == []
    vm = parts.vm("sleepy")
    annotations = vm["metadata"].get("annotations") or {}
    assert api.HOLD_ANNOTATION not in annotations and RUN_STRATEGY_ANNOTATION not in annotations
    assert vm["spec"]["runStrategy"] == "Always"
    image = images.get("sleepy-img")
    resumed = next(c for c in image["status"]["conditions"] if c["type"] == "Resumed")
    assert (resumed["status"], resumed["reason"]) == ("True", "ImageRestored")
    assert get_restart(api_client, parts.namespace, "sleepy-restart")["status"]["locks"] == []
