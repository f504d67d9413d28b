"""The operator killed (SIGKILL) at each hibernation step converges: the image is neither lost
nor written twice, and the VM is never left running with a half-written image marked Captured.

For each capture step in turn the operator is killed as soon as the image's
status.progress.step shows it (Validating: as soon as the image exists; "instructed": as soon
as the agent journaled the run, which may be before the operator recorded it), and started
again. The guest is held at its first kernel write (sleeper_helpers.FakeKernel) until the
restarted operator has watched it writing its image for a while, then suspends and powers off;
killed once the agent took the instruction, the guest powers off while no operator runs.
The run must end Captured and Hibernated (the VM halted, its VMI gone), the agent must have
hibernated exactly once (its journal, the fake kernel's writes), one SaveEvent at most, and at
no moment may the image be Captured while the VMI runs or before the kernel got `disk`.

The cheap tier: simulated VMIs, real agents over fake guest trees; an operator process of this
module's own (the session operator is stopped meanwhile: only one operator may run the images).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import OperatorProcess
from hibernation_helpers import Images, condition
from kubernetes import client
from partition_helpers import Partitions, wait_for
from saving_helpers import save_events
from sleeper_helpers import FakeKernel, Sleepers, run_strategy_annotation, step_of, wait_step

from lparkube.controllers.hibernation_run import HIBERNATED, POLL_SECONDS
from lparkube.domain import hibernation as h
from lparkube_devenv.controlplane import wait_until
from lparkube_devenv.kubevirt import StandIn

INSTRUCTED = "instructed"  # not a step: the agent journaled the run (Suspending's call went out)
KILL_POINTS = (*h.CAPTURE_STEPS[:5], INSTRUCTED, h.POWERING_OFF, h.CAPTURED)
CONVERGE_TIMEOUT = 60.0


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


@pytest.fixture
def images(api_client: client.ApiClient, namespace: str) -> Images:
    return Images(api_client, namespace)


@pytest.fixture
def sleepers(parts: Partitions, guest_agent, tmp_path: Path, vios_pool: str) -> Iterator[Sleepers]:  # type: ignore[no-untyped-def]
    made = Sleepers(parts, guest_agent, tmp_path, vios_pool)
    yield made
    made.close()


class Invariant:
    """Reads the image, then the VMI, every 20 ms in a thread; records every step seen and
    every moment the image was Captured while the VMI ran or before the kernel got `disk`.
    (A VMI that ended never runs again, so reading it after the image is enough.)"""

    def __init__(self, images: Images, parts: Partitions, name: str, kernel: FakeKernel) -> None:
        self.images, self.parts, self.name, self.kernel = images, parts, name, kernel
        self.partition = "sleeper"
        self.steps: list[str] = []
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="invariant", daemon=True)

    def __enter__(self) -> Invariant:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            try:
                image = self.images.get(self.name)
            except client.ApiException:
                continue  # not there yet
            step = step_of(image)
            if step and (not self.steps or self.steps[-1] != step):
                self.steps.append(step)
            captured = next(
                (c for c in (image.get("status") or {}).get("conditions") or []
                 if c["type"] == "Captured"),
                {},
            )  # fmt: skip
            if captured.get("status") != "True":
                continue
            suspended = self.kernel.suspended.is_set()
            vmi = self.parts.vmi(self.partition)
            phase = ((vmi or {}).get("status") or {}).get("phase")
            if phase == "Running" or not suspended:
                self.violations.append(f"Captured at step {step}: VMI {phase}, kernel {suspended}")


def agent_run(parts: Partitions) -> str | None:
    """The state of the agent's hibernate run as the Partition's status shows it."""
    agent = parts.status("sleeper").get("agent") or {}
    return (agent.get("hibernation") or {}).get("state")


def kill_when(
    point: str, images: Images, journal: Callable[[], list], operator: OperatorProcess
) -> str:
    """Kill the operator at `point`; the step the image showed right after (Validating: none)."""
    if point == INSTRUCTED:
        wait_until(journal, 30, "the agent journaled the run", interval=0.002)
    elif point != h.VALIDATING:  # Validating writes no step: kill at once
        wait_step(lambda: images.get("sleeper-1"), point, 30)
    operator.kill()
    return step_of(images.get("sleeper-1")) or h.VALIDATING


@pytest.mark.parametrize("point", KILL_POINTS)
def test_the_operator_killed_at_a_capture_step_converges(
    point: str,
    crashing_operator: OperatorProcess,
    sleepers: Sleepers,
    parts: Partitions,
    images: Images,
) -> None:
    hold = threading.Event()  # the guest waits at its first kernel write...
    if point == h.CAPTURED:
        hold.set()  # ...not when the kill comes after it powered off
    sleeper = sleepers.create("sleeper", hold=hold)
    kernel = sleeper.kernel
    assert kernel is not None
    claim = parts.status("sleeper")["paging"]["claimName"]
    save_first = point in (h.VALIDATING, h.SAVING)
    started = time.monotonic()
    with Invariant(images, parts, "sleeper-1", kernel) as invariant:
        images.create("sleeper-1", "sleeper", saveFirst=save_first)
        try:
            killed_at = kill_when(point, images, sleeper.journal, crashing_operator)
            if point == INSTRUCTED:  # the guest goes off while no operator runs
                hold.set()
                wait_for(kernel.suspended.is_set, "the guest suspended")
                wait_for(
                    lambda: parts.vmi("sleeper")["status"]["phase"] == "Succeeded",
                    "the VMI Succeeded while the operator is down",
                )
        finally:
            crashing_operator.start()
        if not hold.is_set():
            # The restarted operator sees the guest writing its image (the agent reports
            # the run, the VMI runs) for a while: it must wait, not call it Captured.
            wait_for(lambda: agent_run(parts) == "Hibernating", "the agent reporting the run")
            time.sleep(POLL_SECONDS + 0.5)  # at least one pass of the run sees it
            assert condition(images.get("sleeper-1"), "Captured")["reason"] == h.IN_PROGRESS
            hold.set()
        image = images.wait("sleeper-1", "Captured", CONVERGE_TIMEOUT)
        captured = condition(image, "Captured")
        assert captured["status"] == "True", (killed_at, image["status"])
        image = wait_step(lambda: images.get("sleeper-1"), HIBERNATED, CONVERGE_TIMEOUT)
        wait_for(lambda: parts.vmi("sleeper") is None, "the VMI gone: the VM halted")
    print(f"\nkilled at {point} (the image showed {killed_at}); steps {invariant.steps}; "
          f"converged {time.monotonic() - started:.1f} s after the image")  # fmt: skip

    assert invariant.violations == []
    # Written once: one run in the agent's journal, one suspend seen by the kernel.
    assert [run["id"] for run in sleeper.journal()] == [image["metadata"]["uid"]]
    assert kernel.resumes == [sleeper.fake.numbers] and kernel.states == ["disk"]
    # Not lost: the image names the LU it went to, still the Partition's, and the VM waits.
    status = image["status"]
    assert status["lu"]["claimName"] == claim == parts.status("sleeper")["paging"]["claimName"]
    assert status["runStrategy"] == "Always" and status["capturedTime"]
    assert condition(image, "Ready")["status"] == "True"
    vm = parts.vm("sleeper")
    assert vm is not None and vm["spec"]["runStrategy"] == "Halted"
    assert run_strategy_annotation(vm) == "Always"  # kept for the resume
    saves = [s["metadata"]["name"] for s in save_events(parts.custom.api_client, parts.namespace)]
    assert saves == (["sleeper-1-save"] if save_first else [])
