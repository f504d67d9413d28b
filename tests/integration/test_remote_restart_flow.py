"""RemoteRestarts run by the real operator at the cheap tier (the stand-in's simulated VMIs, real
agent processes over fake guest trees): a restart from disk after the source node lost power,
which waits for the fence and never has two writers on a volume; and a resume from a
HibernationImage onto another node.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hibernation_helpers import Images
from kubernetes import client
from partition_helpers import Partitions, wait_for
from remote_restart_helpers import (
    NodePool,
    assert_terminated,
    condition,
    create_restart,
    events_of,
    get_restart,
    leases_of,
    node_pool,
    step,
    wait_terminated,
)
from sleeper_helpers import Sleeper, Sleepers

from lparkube.api.v1alpha1 import remoterestart as api
from lparkube.api.v1alpha1.hibernationimage import RUN_STRATEGY_ANNOTATION
from lparkube_devenv.kubevirt import StandIn
from lparkube_devenv.kubevirt.storage import two_writers

pytestmark = pytest.mark.usefixtures("operator")

RESTART_TIMEOUT = 120.0


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


@pytest.fixture
def sleepers(parts: Partitions, guest_agent, tmp_path: Path, vios_pool: str) -> Iterator[Sleepers]:  # type: ignore[no-untyped-def]
    made = Sleepers(parts, guest_agent, tmp_path, vios_pool)
    yield made
    made.close()


@pytest.fixture
def nodes(kubevirt: StandIn) -> Iterator[NodePool]:
    with node_pool(kubevirt) as pool:
        yield pool


def boot_agent_on_target(parts: Partitions, guest_agent, sleeper: Sleeper, target: str):  # type: ignore[no-untyped-def]
    """Once the VMI runs on the target, the guest's agent starts there (a new process over the
    same guest tree: the same boot id, as after a resume)."""
    wait_for(
        lambda: (
            (vmi := parts.vmi(sleeper.name))
            and (vmi.get("status") or {}).get("phase") == "Running"
            and (vmi.get("status") or {}).get("nodeName") == target
        ),
        f"{sleeper.name} Running on {target}",
        RESTART_TIMEOUT,
    )
    return guest_agent(
        parts.namespace, sleeper.name, ip=sleeper.agent.ip, config=sleeper.fake.config()
    )


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
    # The simulated tier fails a VMI as soon as its node is NotReady and may drop its launcher
    # pod with it (docs/kubevirt-standin.md): then the source is already proven stopped and
    # there is nothing to wait for. While the pod is there, the operation must wait and say so.
    seen = wait_for(
        lambda: (
            (r := get_restart(api_client, parts.namespace, "fenced-restart"))
            and (
                condition(r, api.LOCKED).get("reason") == api.WAITING_FOR_SOURCE_STOP
                or step(r, api.LOCKING_ADAPTERS).get("status") == api.DONE
            )
            and r
        ),
        "the source stop proven, or waited for",
        60,
    )
    token = seen["metadata"]["uid"]
    if condition(seen, api.LOCKED).get("reason") == api.WAITING_FOR_SOURCE_STOP:
        locked = condition(seen, api.LOCKED)
        assert locked["status"] == "False"
        assert f"node {source} is NotReady and not fenced" in locked["message"]
        assert "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute" in locked["message"]
        assert seen["status"]["step"] == api.LOCKING_ADAPTERS
        assert leases_of(api_client, token), "the adapters are locked while it waits"
        vm = parts.vm("fenced")
        assert api.HOLD_ANNOTATION not in (vm["metadata"].get("annotations") or {})
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
    images.create("sleepy-img", "sleepy")
    images.wait("sleepy-img", "Captured", 60)
    wait_for(lambda: parts.vmi("sleepy") is None, "the hibernated VM halted", 60)
    assert sleeper.kernel is not None
    sleeper.kernel.close()
    sleeper.fake.files.power.joinpath("state").unlink()
    sleeper.fake.files.power.joinpath("state").write_text("freeze mem disk\n")
    sleeper.fake.files.power.joinpath("resume").unlink()
    sleeper.fake.files.power.joinpath("resume").write_text("0:0\n")
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
