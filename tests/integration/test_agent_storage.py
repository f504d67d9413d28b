"""POST /v1/storage on a real agent process against a fake guest tree
(``lparkube_agent.fakeguest``): each disk of a change found by serial, rescanned when it has a
rescan file, its size re-read; idempotent by id across restarts; reported; and requests that
must change nothing. The operator's end of it (a Partition whose claim changes) is in
test_partition_storage.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_requests import HEADER_CASES, headers_for, post_raw, signed_headers

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube.adapters.guest_agent import AgentClient, AgentTarget
from lparkube_agent.fakeguest import MIB, FakeGuest
from lparkube_agent.testing import AgentProcess, TLSMaterial
from lparkube_devenv.controlplane import wait_until

UID = "test-uid"  # the partition uid agent_tls's certificates are made for
PATH = "/v1/storage"


class Guest:
    """A fake guest with a SCSI-like disk (sdb: it has a rescan file) and a virtio one (vdb),
    and the agent that runs in it."""

    def __init__(self, root: Path, tls: TLSMaterial, identity: OperatorCredentials) -> None:
        self.identity = identity
        self.key = identity.identity.partition_key("tenant-a", "web-1", UID)
        self.fake = FakeGuest(root / "guest", disk_bytes=None)
        self.fake.attach_data_disk("scsi-data", 64 * MIB, node="sdb", rescan=True)
        self.fake.attach_data_disk("data", 32 * MIB, node="vdb")
        (root / "agent").mkdir()
        self.agent = AgentProcess(
            root / "agent", key=self.key, config=self.fake.config(), tls_material=tls
        ).start()

    def change(self, ident: str, *disks: tuple[str, str]) -> tuple[int, dict]:
        body = {"id": ident, "disks": [{"serial": s, "name": s, "change": c} for s, c in disks]}
        return self.agent.request("POST", PATH, json.dumps(body).encode())

    def journal(self) -> list[dict]:
        path = self.agent.state_dir / "storage.json"
        return json.loads(path.read_text())["runs"] if path.exists() else []

    def report(self) -> dict:
        status, report = self.agent.request("GET", "/v1/report")
        assert status == 200
        return report


@pytest.fixture
def guest(
    tmp_path: Path, agent_tls: TLSMaterial, standalone_identity: OperatorCredentials
) -> Iterator[Guest]:
    made = Guest(tmp_path, agent_tls, standalone_identity)
    yield made
    made.agent.close()


def disk(guest: Guest, node: str, size: int, serial: str, *, rescanned: bool, message: str) -> dict:
    return {
        "serial": serial,
        "device": str(guest.fake.files.dev / node),
        "sizeBytes": size,
        "rescanned": rescanned,
        "message": message,
    }


LOST_MESSAGE = "its backing storage is lost: not rescanned"
NO_RESCAN = "no rescan for this device: the kernel has the host's size"


def test_a_change_rescans_what_can_be_and_reads_every_size(guest: Guest) -> None:
    guest.fake.resize_data_disk("vdb", 48 * MIB)  # virtio-blk: the kernel has the new size
    status, answer = guest.change("sc-1", ("scsi-data", "Resized"), ("data", "Replaced"))
    assert status == 200
    assert answer["id"] == "sc-1" and answer["at"]
    assert answer["disks"] == [
        disk(guest, "sdb", 64 * MIB, "scsi-data", rescanned=True, message=""),
        disk(guest, "vdb", 48 * MIB, "data", rescanned=False, message=NO_RESCAN),
    ]
    assert guest.fake.rescans("sdb") == "1"
    assert [run["id"] for run in guest.journal()] == ["sc-1"]
    assert guest.report()["storage"] == answer
    assert "storage change sc-1: Resized of disk scsi-data" in guest.agent.log_path.read_text()


def test_a_known_id_is_answered_from_the_journal_and_nothing_is_done_again(guest: Guest) -> None:
    first = guest.change("sc-1", ("scsi-data", "Resized"))
    (guest.fake.files.block("sdb") / "device/rescan").write_text("")
    assert guest.change("sc-1", ("scsi-data", "Resized")) == first
    guest.agent.restart()
    assert guest.change("sc-1", ("scsi-data", "Resized")) == first
    assert guest.fake.rescans("sdb") == ""  # not rescanned again
    assert guest.report()["storage"] == first[1]
    second = guest.change("sc-2", ("scsi-data", "Resized"))
    assert second[1]["id"] == "sc-2" and guest.fake.rescans("sdb") == "1"
    assert [run["id"] for run in guest.journal()] == ["sc-1", "sc-2"]


def test_a_lost_disk_is_not_rescanned_and_an_unknown_one_is_said(guest: Guest) -> None:
    status, answer = guest.change("sc-1", ("scsi-data", "Lost"), ("nowhere", "Replaced"))
    assert status == 200
    assert answer["disks"] == [
        disk(guest, "sdb", 64 * MIB, "scsi-data", rescanned=False, message=LOST_MESSAGE),
        {
            "serial": "nowhere",
            "device": "",
            "sizeBytes": 0,
            "rescanned": False,
            "message": "no disk with serial nowhere in the guest",
        },
    ]
    assert guest.fake.rescans("sdb") == ""


def test_a_long_serial_is_found_cut_as_the_kernel_keeps_it(guest: Guest) -> None:
    serial = "a-very-long-disk-serial-of-30c"
    guest.fake.attach_data_disk(serial, 16 * MIB, node="vdc")
    _, answer = guest.change("sc-1", (serial, "Replaced"))
    assert answer["disks"][0]["device"] == str(guest.fake.files.dev / "vdc")
    assert answer["disks"][0]["sizeBytes"] == 16 * MIB


def test_the_operators_client_tells_the_agent(guest: Guest) -> None:
    client = AgentClient(guest.identity)
    target = AgentTarget("tenant-a", "web-1", UID, f"127.0.0.1:{guest.agent.port}")
    body = {"id": "sc-9", "disks": [{"serial": "data", "name": "data", "change": "Resized"}]}

    async def call() -> dict:
        try:
            return await client.storage_changed(target, body)
        finally:
            await client.close()

    answer = asyncio.run(call())
    assert answer["id"] == "sc-9" and answer["disks"][0]["device"].endswith("/vdb")


# --- requests that must change nothing ----------------------------------------------------


def raw(agent: AgentProcess, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    return post_raw(agent, PATH, body, headers)


def signed(agent: AgentProcess, body: bytes, skew: float = 0.0) -> dict[str, str]:
    return signed_headers(agent, PATH, body, skew)


GOOD = json.dumps(
    {"id": "sc-1", "disks": [{"serial": "scsi-data", "name": "data", "change": "Resized"}]}
).encode()


def with_disks(*disks: object) -> bytes:
    return json.dumps({"id": "sc-1", "disks": list(disks)}).encode()


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        *HEADER_CASES,
        ("oversized", 413, "oversized"),
        ("not-json", 400, "malformed"),
        ("no-id", 400, "malformed"),
        ("no-disks", 400, "malformed"),
        ("too-many-disks", 400, "malformed"),
        ("bad-change", 400, "malformed"),
        ("path-serial", 400, "malformed"),
        ("disk-not-object", 400, "malformed"),
    ],
)
def test_bad_requests_are_rejected_with_no_side_effect(
    guest: Guest, case: str, status: int, error: str
) -> None:
    agent = guest.agent
    one = {"serial": "scsi-data", "change": "Resized"}
    body = {
        "oversized": json.dumps({"id": "sc-1", "pad": "x" * (64 * 1024)}).encode(),
        "not-json": b"{",
        "no-id": json.dumps({"disks": [one]}).encode(),
        "no-disks": with_disks(),
        "too-many-disks": with_disks(*[one] * 65),
        "bad-change": with_disks({**one, "change": "Shrunk"}),
        "path-serial": with_disks({**one, "serial": "../../sdb"}),
        "disk-not-object": with_disks("scsi-data"),
    }.get(case, GOOD)
    headers = headers_for(case, agent, PATH, body)
    answer = raw(agent, body, headers)
    assert answer[0] == status and answer[1]["error"] == error
    assert_untouched(guest)


def test_a_replayed_request_is_refused_and_does_nothing_more(guest: Guest) -> None:
    headers = signed(guest.agent, GOOD)
    assert raw(guest.agent, GOOD, headers)[0] == 200
    (guest.fake.files.block("sdb") / "device/rescan").write_text("")
    assert raw(guest.agent, GOOD, headers) == (
        401,
        {"error": "replayed", "message": "this nonce was already used"},
    )
    assert guest.fake.rescans("sdb") == "" and len(guest.journal()) == 1


def test_the_wrong_method_is_refused(guest: Guest) -> None:
    assert guest.agent.request("GET", PATH)[0] == 405


def assert_untouched(guest: Guest) -> None:
    time.sleep(0.2)
    assert guest.journal() == []
    assert guest.fake.rescans("sdb") == ""
    assert "storage" not in guest.report()
    wait_until(guest.agent.alive, 5, "the agent alive")
