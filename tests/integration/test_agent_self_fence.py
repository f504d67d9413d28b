"""Self-fencing on a real agent process: a gateway that grants leases in its signed answers,
and the watchdog (a plain file in a fake guest tree, its ioctls answered as a kernel's) that the
agent pets while the leases come, stops petting once they stop, and disarms when told."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_gateway import FakeOperator

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube_agent import protocol
from lparkube_agent.fakeguest import MIB, FakeGuest
from lparkube_agent.testing import AgentProcess, TLSMaterial
from lparkube_devenv.controlplane import wait_until

LEASE_SECONDS = 3


def lease(timeout: int = 7) -> bytes:
    grant = {"seconds": LEASE_SECONDS, "watchdogTimeoutSeconds": timeout, "renewSeconds": 1}
    return json.dumps({"lease": grant}).encode()


@dataclass
class Scene:
    """The gateway and, once started, a fake guest with a watchdog and its agent."""

    tmp_path: Path
    operator: FakeOperator
    tls: TLSMaterial
    agent: AgentProcess | None = None

    def start(
        self, interval: float = 30, paging_bytes: int | None = None
    ) -> tuple[FakeGuest, AgentProcess]:
        guest = FakeGuest(self.tmp_path / "guest", disk_bytes=paging_bytes)
        guest.watchdog.write_bytes(b"")
        config = {
            **guest.config(), "operatorURL": self.operator.url, "reportIntervalSeconds": interval,
        }  # fmt: skip
        self.agent = AgentProcess(
            self.tmp_path, key=self.operator.key, config=config,
            command=guest.agent_command(), tls_material=self.tls,
        ).start()  # fmt: skip
        return guest, self.agent


@pytest.fixture
def scene(
    tmp_path: Path, standalone_identity: OperatorCredentials, agent_tls: TLSMaterial
) -> Iterator[Scene]:
    made = Scene(tmp_path, FakeOperator(protocol.new_key(), standalone_identity), agent_tls)
    yield made
    if made.agent is not None:
        made.agent.close()
        assert "Traceback" not in made.agent.log_path.read_text()
    made.operator.close()


def last_watchdog(operator: FakeOperator) -> dict | None:
    return operator.reports[-1][1].get("watchdog") if operator.reports else None


def test_pets_while_leased_stops_after_the_lease_and_disarms_when_told(scene: Scene) -> None:
    operator = scene.operator
    operator.answer = lease(timeout=3000)  # more than the device takes: EINVAL
    guest, agent = scene.start(interval=3)  # without a lease, a report every 3 s
    refused = wait_until(lambda: last_watchdog(operator), 10, "a report of the watchdog")
    assert refused == {
        "device": str(guest.watchdog), "timeoutSeconds": 0, "armed": False,
        "message": f"WDIOC_SETTIMEOUT (3000 s) on {guest.watchdog} failed: Invalid argument",
    }  # fmt: skip
    written = guest.watchdog.read_bytes()  # each lease tries again: opens, is refused, stops
    assert written and set(written) == {ord("V")}, written

    operator.answer = lease()
    armed = {"device": str(guest.watchdog), "timeoutSeconds": 7, "armed": True, "message": ""}
    wait_until(lambda: last_watchdog(operator) == armed, 10, "an armed watchdog")
    wait_until(lambda: guest.watchdog.read_bytes().count(b".") >= 3, 10, "three pets")
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(operator.reports[-4:])]
    assert all(0.9 < gap < 1.6 for gap in gaps), f"renewed each second, not at 30 s: {gaps}"

    agent.stop()  # a stop keeps the timer counting: no magic close
    assert guest.watchdog.read_bytes().endswith(b".")
    agent.start()
    wait_until(lambda: guest.watchdog_timeouts() == [7, 7], 10, "the restarted agent arming")

    operator.answer = None  # the operator is unreachable
    last_answer = operator.reports[-1][0]  # no later report got a lease
    petted, size = last_answer, len(guest.watchdog.read_bytes())
    while time.monotonic() < last_answer + LEASE_SECONDS + 2.5:
        if len(guest.watchdog.read_bytes()) != size:
            petted, size = time.monotonic(), len(guest.watchdog.read_bytes())
        time.sleep(0.05)
    assert petted > last_answer + LEASE_SECONDS - 1.5, "pets go on while the lease holds"
    assert petted <= last_answer + LEASE_SECONDS + 1, "no pet after the lease ended"
    pets = guest.watchdog.read_bytes().lstrip(b"V")  # after the refused armings' closes
    assert b"V" not in pets, "never disarmed while unreachable"

    operator.answer = b""  # 204: nothing granted, nothing disarmed
    count = len(operator.reports)
    wait_until(lambda: len(operator.reports) >= count + 1, 30, "a report answered 204")
    assert b"V" not in guest.watchdog.read_bytes().lstrip(b"V"), "a 204 never disarms"
    operator.answer = b'{"disarm": true}'  # the operator turned self-fencing off
    wait_until(lambda: guest.watchdog.read_bytes().endswith(b"V"), 10, "the magic close")
    status, report = agent.request("GET", "/v1/report")
    assert status == 200 and report["watchdog"] == {
        "device": str(guest.watchdog), "timeoutSeconds": 0, "armed": False,
        "message": "disarmed: the operator turned self-fencing off",
    }  # fmt: skip


def test_forged_and_malformed_leases_arm_nothing_and_are_retried(scene: Scene) -> None:
    operator = scene.operator
    operator.answer = b'{"lease": {"seconds": 3, "renewSeconds": 1}}'  # signed, malformed
    guest, agent = scene.start(interval=2)  # retries within 2 s
    wait_until(lambda: len(operator.reports) >= 2, 10, "the malformed answer retried")
    operator.forge = 1000  # first: no lease answer goes out signed from here on
    operator.answer = lease()  # unsigned: anyone on the path could send it
    count = len(operator.reports)
    wait_until(lambda: len(operator.reports) >= count + 2, 10, "the forged answer retried")
    assert guest.watchdog.read_bytes() == b"" and guest.watchdog_timeouts() == []
    assert all("watchdog" not in report for _, report in operator.reports)
    operator.forge = 0
    wait_until(lambda: last_watchdog(operator), 10, "the watchdog armed by a good lease")
    assert guest.watchdog_timeouts() == [7]
    log = agent.log_path.read_text()
    assert "failed (lease.watchdogTimeoutSeconds must be a number of seconds)" in log
    assert "failed (missing header X-Lparkube-Partition)" in log


def test_hibernating_disarms_and_the_next_lease_arms_again(scene: Scene) -> None:
    """The timer would power the guest off while its kernel writes the image, and the VM that
    resumes has a new device that is not running."""
    operator = scene.operator
    operator.answer = lease()
    guest, agent = scene.start(paging_bytes=64 * MIB)
    wait_until(lambda: (last_watchdog(operator) or {}).get("armed"), 10, "an armed watchdog")
    wait_until(guest.swap_bytes, 10, "the paging disk made swap")
    assert agent.hibernate("h-1")[0] == 202
    wait_until(lambda: guest.power("state") == "disk", 10, "the suspend")  # returns at once
    wait_until(lambda: guest.watchdog_timeouts() == [7, 7], 10, "armed again after resuming")
    petted = wait_until(lambda: guest.watchdog.read_bytes().partition(b"V")[2], 5, "pets")
    assert set(petted) == {ord(".")}, "disarmed once, then petted again"
