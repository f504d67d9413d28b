"""HibernationImages that must not be made, refused by the real operator with a clear condition
(Captured=False, the reason from lparkube.domain.hibernation), the VM left running as it was
and nothing lost; and saveFirst's order: the SaveEvent completes before the instruction.

The cheap tier: the stand-in's simulated VMIs, real agent processes over fake guest trees
(sleeper_helpers: the fake kernel thread plays the suspend to disk and the power-off).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hibernation_helpers import Images, condition
from kubernetes import client
from partition_helpers import Partitions, partition_manifest
from saving_helpers import results, save_command, wait_complete
from sleeper_helpers import Sleeper, Sleepers, run_strategy_annotation, wait_step

from lparkube.domain import hibernation as h
from lparkube_agent.testing import cli, lines, start_app
from lparkube_devenv.controlplane import free_port
from lparkube_devenv.kubevirt import StandIn

pytestmark = pytest.mark.usefixtures("operator")

REFUSAL_TIMEOUT = 30.0
CAPTURE_TIMEOUT = 60.0


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


@pytest.fixture
def sleepers(parts: Partitions, guest_agent, tmp_path: Path, vios_pool: str) -> Iterator[Sleepers]:  # type: ignore[no-untyped-def]
    made = Sleepers(parts, guest_agent, tmp_path, vios_pool)
    yield made
    made.close()


@pytest.fixture
def images(api_client: client.ApiClient, namespace: str) -> Images:
    return Images(api_client, namespace)


@pytest.fixture
def other_namespace(api_client: client.ApiClient) -> Iterator[str]:
    name = f"hib-elsewhere-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name, "labels": {"lparkube.test": "true"}}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def refused(images: Images, name: str, reason: str) -> dict:
    """The image once its capture was refused: Captured and Ready False for ``reason``."""
    image = images.wait(name, "Captured", REFUSAL_TIMEOUT)
    captured = condition(image, "Captured")
    assert (captured["status"], captured["reason"]) == ("False", reason), captured
    ready = condition(image, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert image["status"]["progress"]["step"] == "Failed"
    return image


def running_as_before(parts: Partitions, name: str, vmi_uid: str) -> None:
    """The VM runs as it did: its run strategy, nothing held on it, the same VMI Running."""
    vm = parts.vm(name)
    assert vm is not None
    assert vm["spec"]["runStrategy"] == "Always"
    assert run_strategy_annotation(vm) is None
    vmi = parts.vmi(name)
    assert vmi is not None and vmi["status"]["phase"] == "Running"
    assert vmi["metadata"]["uid"] == vmi_uid, "the VM was not restarted"


def nothing_hibernated(sleeper: Sleeper) -> None:
    """The agent ran no hibernation and the fake kernel files are as the guest booted."""
    assert sleeper.journal() == []
    power = sleeper.fake.files.power
    assert (power / "disk").read_text().startswith("[platform]")
    if (power / "resume").is_file():
        assert (power / "resume").read_text() == "0:0\n"
    if sleeper.kernel is not None:
        assert sleeper.kernel.resumes == [] and sleeper.kernel.states == []


def lu_kept(parts: Partitions, name: str) -> None:
    """The Partition's paging LU is still there, claimed by it."""
    claim = parts.status(name)["paging"]["claimName"]
    pvc = parts.core.read_namespaced_persistent_volume_claim(claim, parts.namespace)
    assert pvc.metadata.labels["lparkube.io/partition"] == name


def vmi_uid(parts: Partitions, name: str) -> str:
    vmi = parts.vmi(name)
    assert vmi is not None
    return vmi["metadata"]["uid"]


# --- refusals -------------------------------------------------------------------------------


def test_a_partition_without_a_paging_lu_is_refused(
    sleepers: Sleepers, parts: Partitions, images: Images
) -> None:
    sleeper = sleepers.create("plain", paging=False)
    running = vmi_uid(parts, "plain")
    images.create("plain-1", "plain")
    image = refused(images, "plain-1", h.NO_PAGING_LU)
    assert "set spec.paging" in condition(image, "Captured")["message"]
    assert "lu" not in image["status"] and "adapters" not in image["status"]
    running_as_before(parts, "plain", running)
    nothing_hibernated(sleeper)
    assert parts.status("plain").get("paging") is None


def test_an_agent_gone_before_the_instruction_ends_at_the_deadline_with_the_vm_handed_back(
    sleepers: Sleepers, parts: Partitions, images: Images
) -> None:
    sleeper = sleepers.create("gone", kernel=False)
    running = vmi_uid(parts, "gone")
    images.create("gone-1", "gone", saveFirst=False, deadline="12s")
    # Validated while the agent was there; it stops before the instruction can reach it.
    wait_step(lambda: images.get("gone-1"), h.PREPARING_LU, 20)
    sleeper.agent.stop()
    image = refused(images, "gone-1", h.DEADLINE_EXCEEDED)
    message = condition(image, "Captured")["message"]
    assert "the deadline passed; last answer" in message, message
    assert image["status"]["lu"]["claimName"] == parts.status("gone")["paging"]["claimName"]
    assert image["status"]["runStrategy"] == "Always"  # what was held, and handed back
    running_as_before(parts, "gone", running)
    nothing_hibernated(sleeper)
    lu_kept(parts, "gone")


def test_a_guest_whose_kernel_cannot_suspend_to_disk_refuses(
    sleepers: Sleepers, parts: Partitions, images: Images
) -> None:
    sleeper = sleepers.create("awake", power_states="freeze mem")
    running = vmi_uid(parts, "awake")
    images.create("awake-1", "awake", saveFirst=False)
    image = refused(images, "awake-1", h.GUEST_REFUSED)
    message = condition(image, "Captured")["message"]
    assert "(Unsupported)" in message and "suspend to disk" in message, message
    running_as_before(parts, "awake", running)
    nothing_hibernated(sleeper)
    assert sleeper.agent.alive()
    lu_kept(parts, "awake")


def test_an_image_naming_a_partition_of_another_namespace_finds_none(
    api_client: client.ApiClient,
    kubevirt: StandIn,
    images: Images,
    other_namespace: str,
) -> None:
    elsewhere = Partitions(api_client, kubevirt, other_namespace)
    elsewhere.create(partition_manifest("web", "127.0.69.2", free_port()))
    elsewhere.wait_condition("web", "VMReady", "True")
    running = vmi_uid(elsewhere, "web")
    images.create("web-1", "web")
    image = refused(images, "web-1", h.PARTITION_NOT_FOUND)
    message = condition(image, "Captured")["message"]
    assert f"not found in namespace {images.namespace}" in message, message
    running_as_before(elsewhere, "web", running)
    assert (
        Images(api_client, other_namespace).custom.list_namespaced_custom_object(
            "lparkube.io", "v1alpha1", other_namespace, "saveevents"
        )["items"]
        == []
    )


def test_a_second_image_while_one_holds_the_partition_is_refused(
    sleepers: Sleepers, parts: Partitions, images: Images
) -> None:
    hold = threading.Event()  # the first capture's guest waits at its first kernel write
    sleeper = sleepers.create("busy", hold=hold)
    assert sleeper.kernel is not None
    images.create("busy-1", "busy", saveFirst=False)
    wait_step(lambda: images.get("busy-1"), h.POWERING_OFF, 30)
    held = parts.vm("busy")
    assert held is not None and held["spec"]["runStrategy"] == "Manual"

    images.create("busy-2", "busy", saveFirst=False)
    second = refused(images, "busy-2", h.ALREADY_HIBERNATED)
    assert 'HibernationImage "busy-1"' in condition(second, "Captured")["message"]
    assert "lu" not in second["status"]
    after = parts.vm("busy")
    assert after is not None
    assert after["spec"] == held["spec"], "the refused image changed the VM"
    assert run_strategy_annotation(after) == run_strategy_annotation(held) == "Always"
    assert parts.vmi("busy")["status"]["phase"] == "Running"

    # The first capture goes on, alone: one run, its id, one image.
    hold.set()
    first = images.wait("busy-1", "Captured", CAPTURE_TIMEOUT)
    assert condition(first, "Captured")["status"] == "True"
    assert [run["id"] for run in sleeper.journal()] == [first["metadata"]["uid"]]
    assert sleeper.kernel.states == ["disk"]
    assert condition(images.get("busy-2"), "Captured")["reason"] == h.ALREADY_HIBERNATED


# --- saveFirst ------------------------------------------------------------------------------


def test_save_first_completes_the_save_event_before_the_instruction(
    sleepers: Sleepers,
    parts: Partitions,
    images: Images,
    api_client: client.ApiClient,
    tmp_path: Path,
) -> None:
    sleeper = sleepers.create("saver")
    assert sleeper.kernel is not None
    out = tmp_path / "saver.saves"
    idle, _ = start_app("idle", "saver-idle", out)
    try:
        cli(sleeper.agent.process, "register", "--name=editor", f"--pid={idle.pid}",
            "--method=Command", save_command(out, "editor", 1.0))  # fmt: skip
        images.create("saver-1", "saver")  # saveFirst: true by default
        image = images.wait("saver-1", "Captured", CAPTURE_TIMEOUT)
    finally:
        idle.kill()
        idle.wait()
    assert condition(image, "Captured")["status"] == "True", image["status"]
    assert image["status"]["saveEvent"] == "saver-1-save"

    save = wait_complete(api_client, parts.namespace, "saver-1-save", timeout=5)
    assert save["metadata"]["ownerReferences"][0]["uid"] == image["metadata"]["uid"]
    assert save["spec"]["targets"] == {"partitions": ["saver"]}
    [result] = results(save, parts.namespace).values()
    assert {a["name"]: a["outcome"] for a in result["applications"]} == {"editor": "Saved"}

    # The order, as the guest saw it: the editor saved, then the kernel got the run's writes.
    [(app, saved_at)] = lines(out)
    assert app == "editor"
    assert sleeper.kernel.resumed_at is not None and saved_at < sleeper.kernel.resumed_at
    assert sleeper.kernel.states == ["disk"]
    [run] = sleeper.journal()
    assert run["id"] == image["metadata"]["uid"]
