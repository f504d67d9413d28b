"""The paging disk and POST /v1/hibernate on a real agent process, against a fake guest tree
(``lparkube_agent.fakeguest``: /sys, /proc and /dev as files, mkswap/swapon/swapoff acting on
them): swap at start, suspend to disk through /sys/power, idempotency across restarts, every
refusal, and requests that must change nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_requests import HEADER_CASES, headers_for, post_raw, signed_headers
from kubernetes import client
from partition_helpers import Partitions, partition_manifest

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube.adapters.guest_agent import AgentClient, AgentError, AgentTarget
from lparkube_agent.fakeguest import MIB, PAGE, FakeGuest
from lparkube_agent.fakeguest import main as fake_command
from lparkube_agent.testing import AgentProcess, TLSMaterial, cli, signed_request, start_app
from lparkube_devenv.controlplane import free_port, wait_until
from lparkube_devenv.kubevirt import StandIn

UNCHANGED_STATE = "freeze mem disk\n"
UID = "test-uid"  # the partition uid agent_tls's certificates are made for


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    return wait_until(check, timeout, what, interval=0.05)


def paging_report(fake: FakeGuest, size: int) -> dict:
    """What the agent reports of a paging disk of ``size`` bytes that it made swap."""
    return {
        "serial": "lparkube-paging",
        "device": str(fake.disk),
        "sizeBytes": size,
        "swapBytes": size - PAGE,  # the header page is not swap
        "active": True,
        "message": "",
    }


class Guest:
    """A fake guest and the agent that runs in it, started on demand."""

    def __init__(self, root: Path, tls: TLSMaterial, identity: OperatorCredentials) -> None:
        self.root, self.tls, self.identity = root, tls, identity
        self.key = identity.identity.partition_key("tenant-a", "web-1", UID)
        self.fake: FakeGuest | None = None
        self.agent: AgentProcess | None = None

    def make(self, **options) -> FakeGuest:  # type: ignore[no-untyped-def]
        self.fake = FakeGuest(self.root / "guest", **options)
        return self.fake

    def start(self, *, paging_settles: bool = True) -> AgentProcess:
        fake = self.fake or self.make()
        (self.root / "agent").mkdir(exist_ok=True)
        self.agent = AgentProcess(
            self.root / "agent", key=self.key, config=fake.config(), tls_material=self.tls
        ).start()
        if paging_settles:  # the agent enables paging in the background at start
            wait_for(lambda: self.log_has("paging device"), what="paging at start")
        return self.agent

    def log_has(self, text: str) -> bool:
        assert self.agent is not None
        return text in self.agent.log_path.read_text()

    def report(self) -> dict:
        assert self.agent is not None
        status, report = self.agent.request("GET", "/v1/report")
        assert status == 200
        return report

    def journal(self) -> list[dict]:
        assert self.agent is not None
        path = self.agent.state_dir / "hibernations.json"
        return json.loads(path.read_text())["runs"] if path.exists() else []

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()


@pytest.fixture
def guest(
    tmp_path: Path, agent_tls: TLSMaterial, standalone_identity: OperatorCredentials
) -> Iterator[Guest]:
    made = Guest(tmp_path, agent_tls, standalone_identity)
    yield made
    made.close()


def fifo(path: Path) -> None:
    """Replace a sysfs file by a pipe: the agent's write blocks until the test reads it."""
    path.unlink()
    os.mkfifo(path)


def read_fifo(path: Path, into: list[str]) -> threading.Thread:
    def read() -> None:
        with path.open() as handle:  # opening unblocks the agent's open for writing
            into.append(handle.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


# --- paging at start ---------------------------------------------------------------------


def test_a_blank_paging_disk_is_formatted_and_made_swap(guest: Guest) -> None:
    fake = guest.make(disk_bytes=64 * MIB)
    guest.start()
    assert fake.commands() == ["mkswap", "swapon"]
    assert fake.signature() == b"SWAPSPACE2"
    assert fake.swap_bytes() == 64 * MIB - PAGE  # the header page is not swap
    report = guest.report()
    assert report["paging"] == paging_report(fake, 64 * MIB)
    assert report["bootId"] == fake.files.boot_id.read_text().strip()
    assert report["memory"] == {"totalBytes": 512 * MIB, "availableBytes": 480 * MIB}
    assert "hibernation" not in report


def test_a_disk_with_a_swap_signature_is_not_formatted_again(guest: Guest) -> None:
    fake = guest.make()
    assert fake_command(["mkswap", "--root", str(fake.root), str(fake.disk)]) == 0
    fake.log.unlink()
    guest.start()
    assert fake.commands() == ["swapon"]
    assert guest.report()["paging"]["active"] is True


def test_a_disk_holding_a_hibernation_image_is_never_formatted_nor_enabled(
    guest: Guest,
) -> None:
    fake = guest.make()
    fake.write_signature(b"S1SUSPEND")
    guest.start()
    assert fake.commands() == []
    assert fake.signature() == b"S1SUSPEND\0"
    paging = guest.report()["paging"]
    assert paging["active"] is False and paging["swapBytes"] == 0
    assert "hibernation image (S1SUSPEND)" in paging["message"]
    assert guest.agent is not None
    status, answer = guest.agent.hibernate("h-1")
    assert (status, answer["reason"]) == (409, "SwapInactive")
    assert "S1SUSPEND" in answer["message"]
    assert fake.signature() == b"S1SUSPEND\0" and fake.commands() == []


def test_no_paging_disk_no_paging_report(guest: Guest) -> None:
    guest.make(disk_bytes=None)
    agent = guest.start(paging_settles=False)
    time.sleep(0.5)
    assert "paging" not in guest.report()
    status, answer = agent.hibernate("h-1")
    assert (status, answer["error"], answer["reason"]) == (409, "refused", "NoPagingDevice")


# --- hibernating -------------------------------------------------------------------------


def test_hibernate_is_journaled_answered_and_suspends_to_the_paging_disk(guest: Guest) -> None:
    fake = guest.make()
    agent = guest.start()
    status, answer = agent.hibernate("uid-1", deadline="2099-01-01T00:00:00Z")
    assert status == 202
    assert answer["id"] == "uid-1" and answer["state"] == "Hibernating"
    assert [r["id"] for r in guest.journal()] == ["uid-1"]  # journaled before the answer

    wait_for(lambda: guest.report().get("hibernation", {}).get("state") == "Resumed",
             what="the run's end")  # fmt: skip
    assert fake.power("resume") == fake.numbers
    assert fake.power("disk") == "shutdown"
    assert fake.power("state") == "disk"
    hibernation = guest.report()["hibernation"]
    assert hibernation["id"] == "uid-1" and hibernation["message"] == ""
    assert hibernation["requestedAt"] <= hibernation["resumedAt"]

    # The same id again, also after a restart: the run's state, never a second suspend.
    (fake.files.power / "state").write_text(UNCHANGED_STATE)
    assert agent.hibernate("uid-1") == (200, hibernation)
    agent.restart()
    assert agent.hibernate("uid-1") == (200, hibernation)
    time.sleep(0.3)
    assert fake.power("state") == UNCHANGED_STATE


def test_the_image_size_comes_from_the_kernel_log_and_the_run_holds_one_at_a_time(
    guest: Guest,
) -> None:
    fake = guest.make()
    agent = guest.start()
    fake.log_kernel("PM: hibernation: Need to copy 999 pages")  # an older run's: not this one
    fifo(fake.files.power / "resume")
    assert agent.hibernate("uid-1")[0] == 202
    assert agent.hibernate("uid-1") == (202, guest.report()["hibernation"])  # attached
    status, answer = agent.hibernate("uid-2")
    assert (status, answer["reason"]) == (409, "Busy")

    # The "kernel": logs the image size before the snapshot, then lets the writes go on.
    fake.log_kernel("PM: hibernation: Need to copy 12345 pages")
    written: list[str] = []
    read_fifo(fake.files.power / "resume", written).join(10)
    assert written == [fake.numbers]
    wait_for(lambda: guest.report()["hibernation"]["state"] == "Resumed", what="Resumed")
    assert guest.report()["hibernation"]["imageBytes"] == 12345 * PAGE
    assert [r["id"] for r in guest.journal()] == ["uid-1"]


def test_an_agent_killed_while_hibernating_never_hibernates_that_id_again(guest: Guest) -> None:
    fake = guest.make()
    agent = guest.start()
    fifo(fake.files.power / "resume")  # the run stops at its first write
    assert agent.hibernate("uid-1")[0] == 202
    wait_for(lambda: guest.log_has("hibernate run uid-1: journaled"), what="the run")
    assert guest.journal()[0]["state"] == "Hibernating"
    agent.stop(signal.SIGKILL)

    (fake.files.power / "resume").unlink()
    (fake.files.power / "resume").write_text("0:0\n")  # writable again: a rerun would show
    agent.start()
    status, answer = agent.hibernate("uid-1")
    assert (status, answer["state"]) == (200, "Failed")
    assert "the agent stopped while hibernating" in answer["message"]
    assert guest.report()["hibernation"] == answer
    time.sleep(0.5)
    assert fake.power("resume") == "0:0\n" and fake.power("state") == UNCHANGED_STATE
    assert guest.journal()[0]["state"] == "Failed"
    # A new image (another id) hibernates again.
    assert agent.hibernate("uid-2")[0] == 202
    wait_for(lambda: fake.power("state") == "disk", what="the new run")


def test_a_run_started_before_a_reboot_ends_failed(guest: Guest) -> None:
    fake = guest.make()
    agent = guest.start()
    fifo(fake.files.power / "resume")
    assert agent.hibernate("uid-1")[0] == 202
    assert guest.journal()[0]["state"] == "Hibernating"
    agent.stop(signal.SIGKILL)
    fake.files.boot_id.write_text("a-new-boot\n")  # the guest booted without the image
    agent.start()
    status, answer = agent.hibernate("uid-1")
    assert (status, answer["state"]) == (200, "Failed")
    assert "booted again without restoring the image" in answer["message"]


def test_a_kernel_that_refuses_the_write_fails_the_run_with_its_errno(guest: Guest) -> None:
    fake = guest.make()
    agent = guest.start()
    resume = fake.files.power / "resume"
    resume.unlink()
    resume.symlink_to("/dev/full")  # every write: ENOSPC
    assert agent.hibernate("uid-1")[0] == 202
    wait_for(lambda: guest.report()["hibernation"]["state"] == "Failed", what="Failed")
    message = guest.report()["hibernation"]["message"]
    assert "No space left on device" in message and f"errno {28}" in message
    assert fake.power("state") == UNCHANGED_STATE  # nothing after the failed write


def test_a_grown_disk_gets_a_new_swap_area_before_hibernating(guest: Guest) -> None:
    fake = guest.make(disk_bytes=64 * MIB)
    agent = guest.start()
    fake.grow(256 * MIB)
    paging = guest.report()["paging"]
    assert (paging["sizeBytes"], paging["swapBytes"]) == (256 * MIB, 64 * MIB - PAGE)
    assert "larger than its swap area" in paging["message"]
    # 100 MiB in use: too much for the old area, enough for the grown disk.
    fake.set_memory(512 * MIB, 412 * MIB)
    assert agent.hibernate("uid-1")[0] == 202
    wait_for(lambda: fake.power("state") == "disk", what="the suspend")
    assert fake.commands() == ["mkswap", "swapon", "swapoff", "mkswap", "swapon"]
    assert fake.swap_bytes() == 256 * MIB - PAGE
    assert guest.report()["paging"]["message"] == ""


@pytest.mark.parametrize("grown", [False, True])
def test_too_small_a_swap_area_is_refused_with_nothing_done(guest: Guest, grown: bool) -> None:
    fake = guest.make(disk_bytes=64 * MIB, mem_available=412 * MIB)  # 100 MiB in use
    agent = guest.start()
    if grown:
        fake.grow(96 * MIB)  # larger, still too small: no swapoff/mkswap for nothing
    status, answer = agent.hibernate("uid-1")
    assert (status, answer["reason"]) == (409, "TooSmall")
    assert "needs about" in answer["message"]
    assert fake.commands() == ["mkswap", "swapon"] and guest.journal() == []
    assert fake.power("state") == UNCHANGED_STATE


def test_a_kernel_without_suspend_to_disk_is_unsupported(guest: Guest) -> None:
    fake = guest.make()
    agent = guest.start()
    (fake.files.power / "state").write_text("freeze mem\n")
    status, answer = agent.hibernate("uid-1")
    assert (status, answer["reason"]) == (409, "Unsupported")
    assert fake.power("resume") == "0:0\n" and guest.journal() == []


def test_another_serial_is_no_paging_device(guest: Guest) -> None:
    guest.make()
    agent = guest.start()
    status, answer = agent.hibernate("uid-1", serial="lparkube-dump")
    assert (status, answer["reason"]) == (409, "NoPagingDevice")


def test_a_save_under_way_makes_hibernation_busy(guest: Guest, tmp_path: Path) -> None:
    fake = guest.make()
    agent = guest.start()
    app, path = start_app("socket", "slow", tmp_path / "saves.log", delay=2.0)
    try:
        cli(agent, "register", "--name=slow", f"--pid={app.pid}", "--method=UnixSocket",
            f"--unix-socket={path}")  # fmt: skip
        assert agent.save("save-1", wait=0)["state"] == "Running"
        status, answer = agent.hibernate("uid-1")
        assert (status, answer["reason"]) == (409, "Busy")
        assert agent.save("save-1", wait=20)["state"] == "Completed"
        assert agent.hibernate("uid-1")[0] == 202
        wait_for(lambda: fake.power("state") == "disk", what="the suspend")
    finally:
        app.kill()
        app.wait()


# --- requests that must change nothing ----------------------------------------------------


def raw(agent: AgentProcess, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    return post_raw(agent, "/v1/hibernate", body, headers)


def signed(agent: AgentProcess, body: bytes, skew: float = 0.0) -> dict[str, str]:
    return signed_headers(agent, "/v1/hibernate", body, skew)


GOOD = json.dumps({"id": "uid-1", "serial": "lparkube-paging"}).encode()


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        *HEADER_CASES,
        ("oversized", 413, "oversized"),
        ("not-json", 400, "malformed"),
        ("no-serial", 400, "malformed"),
        ("bad-deadline", 400, "malformed"),
        ("no-id", 400, "malformed"),
    ],
)
def test_bad_requests_are_rejected_with_no_side_effect(
    guest: Guest, case: str, status: int, error: str
) -> None:
    fake = guest.make()
    agent = guest.start()
    body = {
        "oversized": json.dumps({"id": "uid-1", "pad": "x" * (64 * 1024)}).encode(),
        "not-json": b"{",
        "no-serial": b'{"id": "uid-1"}',
        "bad-deadline": b'{"id": "uid-1", "serial": "lparkube-paging", "deadline": "soon"}',
        "no-id": b'{"serial": "lparkube-paging"}',
    }.get(case, GOOD)
    headers = headers_for(case, agent, "/v1/hibernate", body)
    assert raw(agent, body, headers)[:1] == (status,)
    assert raw(agent, body, headers)[1]["error"] in (error, "replayed")
    assert_untouched(guest, fake)


def test_a_replayed_request_is_refused_and_runs_nothing_more(guest: Guest) -> None:
    fake = guest.make()
    agent = guest.start()
    fifo(fake.files.power / "resume")
    headers = signed(agent, GOOD)
    assert raw(agent, GOOD, headers)[0] == 202
    assert raw(agent, GOOD, headers) == (
        401,
        {"error": "replayed", "message": "this nonce was already used"},
    )
    assert len(guest.journal()) == 1


def assert_untouched(guest: Guest, fake: FakeGuest) -> None:
    time.sleep(0.3)
    assert guest.journal() == []
    assert fake.power("state") == UNCHANGED_STATE and fake.power("resume") == "0:0\n"
    assert "hibernation" not in guest.report()


# --- the operator's call ------------------------------------------------------------------


def test_the_operators_client_hibernates_and_reads_refusals(guest: Guest) -> None:
    fake = guest.make()
    agent = guest.start()
    client = AgentClient(guest.identity)
    target = AgentTarget("tenant-a", "web-1", UID, f"127.0.0.1:{agent.port}")
    instruction = {"id": "uid-1", "serial": "lparkube-paging", "deadline": "2099-01-01T00:00:00Z"}

    async def calls() -> tuple[dict, dict, AgentError]:
        try:
            first = await client.hibernate(target, instruction, timeout=10)
            await asyncio.to_thread(wait_for, lambda: fake.power("state") == "disk", "disk")
            again = await client.hibernate(target, instruction, timeout=10)
            (fake.files.power / "state").write_text("freeze mem\n")
            try:
                await client.hibernate(target, {**instruction, "id": "uid-2"}, timeout=10)
            except AgentError as refused:
                return first, again, refused
            raise AssertionError("the agent did not refuse")
        finally:
            await client.close()

    first, again, refused = asyncio.run(calls())
    assert first["state"] == "Hibernating" and again["state"] == "Resumed"
    assert (refused.reason, refused.refusal, refused.status) == ("refused", "Unsupported", 409)
    assert "suspend to disk" in str(refused)


# --- through the operator's gateway into Partition status ---------------------------------


@pytest.mark.usefixtures("operator")
def test_the_gateway_writes_the_guest_facts_into_partition_status(
    api_client: client.ApiClient,
    kubevirt: StandIn,
    namespace: str,
    guest_agent,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    parts = Partitions(api_client, kubevirt, namespace)
    ip, port = "127.0.0.23", free_port()
    parts.create(partition_manifest("hib-1", ip, port))
    fake = FakeGuest(tmp_path / "guest")
    agent = guest_agent(namespace, "hib-1", ip=ip, config=fake.config())

    def reported(field: str):  # type: ignore[no-untyped-def]
        return lambda: (parts.status("hib-1").get("agent") or {}).get(field)

    def paging_on() -> dict | None:  # the first report may come before swapon is done
        paging = reported("paging")()
        return paging if paging and paging["active"] else None

    assert wait_for(paging_on, "status.agent.paging active", 30) == paging_report(fake, 64 * MIB)
    status = parts.status("hib-1")["agent"]
    assert status["bootId"] == fake.files.boot_id.read_text().strip()
    assert status["memory"] == {"totalBytes": 512 * MIB, "availableBytes": 480 * MIB}

    fifo(fake.files.power / "resume")  # the "kernel" holds the run at its first write
    body = json.dumps({"id": "image-uid-1", "serial": "lparkube-paging"}).encode()
    process = agent.process
    answer = signed_request(
        agent.ip, agent.port, process.key, partition=process.partition, method="POST",
        path="/v1/hibernate", body=body, context=process.operator_context(),
    )  # fmt: skip
    assert answer[0] == 202
    running = wait_for(reported("hibernation"), "status.agent.hibernation", 30)
    assert (running["id"], running["state"]) == ("image-uid-1", "Hibernating")
    fake.log_kernel("PM: hibernation: Need to copy 4242 pages")
    read_fifo(fake.files.power / "resume", []).join(10)

    def resumed() -> dict | None:
        hibernation = reported("hibernation")()
        return hibernation if hibernation and hibernation["state"] == "Resumed" else None

    done = wait_for(resumed, "Resumed in status", 30)
    assert done["imageBytes"] == 4242 * PAGE
    assert done["resumedAt"] >= done["requestedAt"] and done["message"] == ""
