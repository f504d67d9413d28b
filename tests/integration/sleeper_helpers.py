"""Hibernation at the cheap tier: Partitions with a paging LU on the stand-in's simulated VMIs,
each with a real agent process over a fake guest tree (``lparkube_agent.fakeguest``), and a test
thread playing the guest kernel's part of a suspend to disk (:class:`FakeKernel`).

The agent's run writes ``/sys/power/resume``, ``/sys/power/disk`` and then ``disk`` to
``/sys/power/state``; a real kernel never returns from that last write: it writes the image and
powers the machine off. Here ``resume`` is a pipe the kernel thread reads (the run's first write
waits for it, and can be held there); once it is read, ``state`` becomes a pipe too, and when
the agent's ``disk`` arrives the guest is off: the agent process is killed at once (nothing runs
in a powered-off guest) and the VMI ends as a guest's own power-off ends it
(``StandIn.power_off_guest``: phase Succeeded).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from partition_helpers import Partitions, partition_manifest, wait_for

from lparkube.api.v1alpha1.hibernationimage import RUN_STRATEGY_ANNOTATION
from lparkube_agent.fakeguest import FakeGuest
from lparkube_devenv.controlplane import free_port, wait_until

JOURNAL = "hibernations.json"  # the agent's hibernate runs, in its state dir
STEP_POLL = 0.02  # seconds: a capture step lasts about a second (the run's pass interval)
_ips = (f"127.0.{a}.{b}" for a, b in itertools.product(range(70, 80), range(2, 250)))


def with_persistent_root(manifest: dict) -> dict:
    """The VM's root disk on a DataVolume instead of a containerDisk, which KubeVirt makes anew
    for every VMI and hibernation therefore refuses (EphemeralDisk)."""
    name = manifest["metadata"]["name"]
    vm = manifest["spec"]["vmTemplate"]["spec"]
    storage = {"resources": {"requests": {"storage": "1Gi"}}}
    vm["dataVolumeTemplates"] = [
        {"metadata": {"name": f"{name}-root"}, "spec": {"storage": storage}}
    ]
    volumes = vm["template"]["spec"]["volumes"]
    vm["template"]["spec"]["volumes"] = [
        {"name": v["name"], "dataVolume": {"name": f"{name}-root"}} if "containerDisk" in v else v
        for v in volumes
    ]
    return manifest


class FakeKernel:
    """The guest kernel's part of a suspend to disk, in a thread (see the module docstring).

    It waits for the agent to journal a run (the run checked ``state`` before answering), makes
    ``state`` a pipe, and reads ``resume`` when ``hold`` (an Event, if given) is set: until then
    the run waits at its first write and the VMI stays Running. ``resumes`` and ``states`` are
    what the agent wrote to ``resume`` and ``state`` (``resumed_at``: when, wall clock, to compare
    with apps' save times); ``suspended`` is set once ``disk`` arrived,
    before the guest is powered off."""

    def __init__(
        self,
        fake: FakeGuest,
        journal: Path,
        power_off: Callable[[], None],
        hold: threading.Event | None = None,
    ) -> None:
        self.power, self.journal = fake.files.power, journal
        self.power_off = power_off
        self.hold = hold or threading.Event()
        if hold is None:
            self.hold.set()
        self.resumes: list[str] = []
        self.resumed_at: float | None = None  # when the run's first write came (wall clock)
        self.states: list[str] = []
        self.suspended = threading.Event()
        self._closing = threading.Event()
        resume = self.power / "resume"
        resume.unlink()
        os.mkfifo(resume)
        self._thread = threading.Thread(target=self._run, name="fake-kernel", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.journal.exists():  # the agent journals a run after its checks
            if self._closing.wait(STEP_POLL):
                return
        state = self.power / "state"
        state.unlink()
        os.mkfifo(state)
        self.hold.wait()
        with (self.power / "resume").open() as pipe:  # the run's first write may go on now
            written = pipe.read()
        if self._closing.is_set():
            return
        self.resumes.append(written)
        self.resumed_at = time.time()
        fd = os.open(state, os.O_RDONLY)  # returns once the run opens it to write
        try:
            written = os.read(fd, 64).decode()  # its close is not waited for: the guest goes
        finally:
            os.close(fd)
        if self._closing.is_set():
            return
        self.states.append(written)
        if written.strip() == "disk":
            self.suspended.set()
            self.power_off()

    def close(self) -> None:
        """Let the thread go wherever it waits (nothing more is recorded)."""
        self._closing.set()
        self.hold.set()
        for _ in range(50):
            if not self._thread.is_alive():
                return
            for name in ("resume", "state"):
                with contextlib.suppress(OSError):  # ENXIO: nobody waits at this one
                    os.close(os.open(self.power / name, os.O_WRONLY | os.O_NONBLOCK))
            self._thread.join(0.1)


@dataclass
class Sleeper:
    """One Partition, its simulated VM, its agent and (if asked) its fake kernel."""

    name: str
    fake: FakeGuest
    agent: Any  # conftest.GuestAgent
    kernel: FakeKernel | None

    def journal(self) -> list[dict]:
        """The agent's hibernate runs (its journal, hibernations.json in the state dir)."""
        path = self.agent.process.state_dir / JOURNAL
        return json.loads(path.read_text())["runs"] if path.exists() else []


class Sleepers:
    """Partitions of one namespace made to hibernate, with their agents and fake kernels."""

    def __init__(
        self, parts: Partitions, guest_agent: Callable[..., Any], tmp: Path, pool: str
    ) -> None:
        self.parts, self.kubevirt, self.namespace = parts, parts.kubevirt, parts.namespace
        self.guest_agent, self.tmp, self.pool = guest_agent, tmp, pool
        self.made: list[Sleeper] = []

    def create(
        self,
        name: str,
        *,
        paging: bool = True,
        power_states: str = "freeze mem disk",
        kernel: bool = True,
        hold: threading.Event | None = None,
        node_selector: dict[str, str] | None = None,
        failover: dict | None = None,
        agent_port: int | None = None,
    ) -> Sleeper:
        """A Partition (with a paging LU from the pool unless ``paging`` is False) whose VM
        runs (on a node with ``node_selector``'s labels, if given; with ``failover`` as its
        spec.failover) and whose agent is connected
        and, with paging, reports the LU as its swap. ``agent_port`` makes the agent listen
        on another port than its Partition's: it reports, but answers no call (no save)."""
        ip, port = next(_ips), free_port()
        manifest = with_persistent_root(partition_manifest(name, ip, port))
        if node_selector:
            template = manifest["spec"]["vmTemplate"]["spec"]["template"]["spec"]
            template["nodeSelector"] = dict(node_selector)
        if paging:
            manifest["spec"]["viosClusterName"] = self.pool
            manifest["spec"]["paging"] = {}
        if failover:
            manifest["spec"]["failover"] = failover
        self.parts.create(manifest)
        self.parts.wait_condition(name, "VMReady", "True")
        fake = FakeGuest(self.tmp / f"guest-{name}", disk_bytes=64 * 2**20 if paging else None)
        (fake.files.power / "state").write_text(power_states + "\n")
        agent = self.guest_agent(self.namespace, name, ip=ip, port=agent_port, config=fake.config())
        sleeper = Sleeper(name, fake, agent, None)
        if kernel:
            journal = agent.process.state_dir / JOURNAL
            sleeper.kernel = FakeKernel(fake, journal, lambda: self.power_off(sleeper), hold)
        self.made.append(sleeper)

        def ready() -> bool:
            status = self.parts.status(name)
            connected = self.parts.condition(name, "AgentConnected").get("status") == "True"
            swap = ((status.get("agent") or {}).get("paging") or {}).get("active")
            return connected and (bool(swap) or not paging)

        wait_for(ready, f"{name}: agent connected" + (", paging LU its swap" if paging else ""))
        return sleeper

    def power_off(self, sleeper: Sleeper) -> None:
        """The guest wrote its image and powered off: its agent is gone, its VMI ends."""
        sleeper.agent.process.stop(signal.SIGKILL)
        self.kubevirt.power_off_guest(self.namespace, sleeper.name)

    def close(self) -> None:
        for sleeper in self.made:
            if sleeper.kernel is not None:
                sleeper.kernel.close()


def run_strategy_annotation(vm: dict) -> str | None:
    """What the capture kept on the VM: the run strategy it replaced (None: nothing held)."""
    return ((vm.get("metadata") or {}).get("annotations") or {}).get(RUN_STRATEGY_ANNOTATION)


def step_of(image: dict | None) -> str | None:
    return (((image or {}).get("status") or {}).get("progress") or {}).get("step")


def wait_step(get: Callable[[], dict | None], step: str, timeout: float = 60.0) -> dict:
    """The image once status.progress.step shows ``step`` (polled fast: a step is short)."""
    return wait_until(
        lambda: (image := get()) is not None and step_of(image) == step and image,
        timeout,
        f"step {step}",
        interval=STEP_POLL,
    )
