"""The agent's hibernation and paging logic that needs no process: request parsing, journal
records, the kernel files' formats, signatures, sizes, and the configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lparkube_agent import config as configs
from lparkube_agent.guestfiles import (
    GuestFiles,
    SwapArea,
    kernel_messages,
    memory,
    parse_kmsg,
    swap_areas,
    unescape,
)
from lparkube_agent.hibernate import (
    MARGIN_BYTES,
    HibernateRun,
    decode_run,
    image_bytes,
    parse_hibernate_request,
    required_bytes,
)
from lparkube_agent.journal import Journal
from lparkube_agent.paging import Device, SwapCommands, expanded, signature_kind

MIB = 2**20


def test_a_hibernate_request_parses() -> None:
    request = parse_hibernate_request(
        {"id": "uid-1", "serial": "lparkube-paging", "deadline": "2026-11-21T22:10:00Z"}
    )
    assert (request.id, request.serial, request.deadline) == (
        "uid-1",
        "lparkube-paging",
        1795299000.0,
    )
    assert parse_hibernate_request({"id": "u", "serial": "s"}).deadline is None


@pytest.mark.parametrize(
    "body",
    [
        [],
        "x",
        {},
        {"id": "", "serial": "lparkube-paging"},
        {"id": "x" * 254, "serial": "lparkube-paging"},
        {"id": "a\nb", "serial": "lparkube-paging"},
        {"id": "u"},
        {"id": "u", "serial": 5},
        {"id": "u", "serial": ""},
        {"id": "u", "serial": "s" * 65},
        {"id": "u", "serial": "lparkube-paging", "deadline": "tomorrow"},
        {"id": "u", "serial": "lparkube-paging", "deadline": 5},
    ],
)
def test_malformed_hibernate_requests_are_refused(body: object) -> None:
    with pytest.raises(ValueError):
        parse_hibernate_request(body)


def test_a_run_survives_the_journal(tmp_path: Path) -> None:
    run = HibernateRun("uid-1", "lparkube-paging", "Resumed", 100.0, resumed_at=130.5,
                       image_bytes=4096, boot_id="b", kmsg_seq=7)  # fmt: skip
    journal = Journal(tmp_path / "h.json", decode_run, "hibernate")
    journal.write([run])
    assert journal.load() == [run]
    assert run.result() == {
        "id": "uid-1",
        "state": "Resumed",
        "requestedAt": "1970-01-01T00:01:40Z",
        "resumedAt": "1970-01-01T00:02:10Z",
        "imageBytes": 4096,
        "message": "",
    }
    fresh = HibernateRun("uid-2", "lparkube-paging", "Hibernating", 100.0)
    assert set(fresh.result()) == {"id", "state", "requestedAt", "message"}


@pytest.mark.parametrize(
    "change",
    [
        {"state": "Sleeping"},
        {"requested_at": "yesterday"},
        {"image_bytes": True},
        {"kmsg_seq": None},
        {"unknown": 1},
    ],
)
def test_unreadable_journal_records_are_dropped(tmp_path: Path, change: dict) -> None:
    good = HibernateRun("uid-1", "lparkube-paging", "Failed", 100.0).to_json()
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"version": 1, "runs": [{**good, **change}, good]}))
    assert [r.id for r in Journal(path, decode_run, "hibernate").load()] == ["uid-1"]


def test_the_image_size_is_the_last_count_after_the_request() -> None:
    log = "\n".join(
        [
            "6,10,100,-;PM: hibernation: Need to copy 50 pages",
            "6,11,101,-;PM: hibernation: Creating image:",
            " SUBSYSTEM=cpu",  # a dictionary line continues the record before it
            "6,12,102,-;PM: hibernation: Need to copy 70 pages",
            "6,13,103,-;PM: hibernation: Need to copy 80 pages",
        ]
    )
    messages = [m for m in map(parse_kmsg, log.splitlines()) if m is not None]
    assert [m.seq for m in messages] == [10, 11, 12, 13]
    assert image_bytes(messages, 11, 4096) == 80 * 4096
    assert image_bytes(messages, 13, 4096) is None


def test_kmsg_is_read_whole_from_a_plain_file(tmp_path: Path) -> None:
    files = GuestFiles(tmp_path, tmp_path, tmp_path)
    assert kernel_messages(files) == []
    (tmp_path / "kmsg").write_text("6,0,1,-;hello\nnot a record\n4,1,2,c;world\n")
    assert [(m.seq, m.text) for m in kernel_messages(files)] == [(0, "hello"), (1, "world")]


def test_proc_files_parse(tmp_path: Path) -> None:
    files = GuestFiles(tmp_path, tmp_path, tmp_path)
    (tmp_path / "meminfo").write_text(
        "MemTotal:         524288 kB\nMemFree: 1000 kB\nMemAvailable:     491520 kB\n"
    )
    assert memory(files) == {"totalBytes": 512 * MIB, "availableBytes": 480 * MIB}
    (tmp_path / "swaps").write_text(
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/dev/vdc                                partition\t65532\t\t1024\t\t-2\n"
        "/swap\\040file                          file\t1024\t\t0\t\t-3\n"
        "garbage line\n"
    )
    assert swap_areas(files) == [
        SwapArea("/dev/vdc", 65532 * 1024, 1024 * 1024),
        SwapArea("/swap file", 1024 * 1024, 0),
    ]
    assert unescape("a\\011b\\134c") == "a\tb\\c"
    (tmp_path / "meminfo").write_text("MemTotal: 5 kB\n")
    assert memory(files) is None


@pytest.mark.parametrize(
    ("signature", "kind"),
    [
        (b"SWAPSPACE2", "swap"),
        (b"S1SUSPEND\0", "image"),
        (b"S2SUSPEND\0", "image"),
        (b"ULSUSPEND\0", "image"),
        (b"LINHIB0001", "image"),
        (b"\0" * 10, "none"),
        (b"SWAP-SPACE", "none"),  # the old version 0 signature: mkswap makes a v1 area
        (b"", "none"),
    ],
)
def test_signatures(signature: bytes, kind: str) -> None:
    assert signature_kind(signature) == kind


def test_a_device_has_grown_when_it_has_pages_its_area_does_not_use() -> None:
    area = SwapArea("/dev/vdc", 64 * MIB - 4096, 0)
    assert not expanded(Device(Path("/dev/vdc"), "252:32", 64 * MIB), area, 4096)
    assert not expanded(Device(Path("/dev/vdc"), "252:32", 64 * MIB + 4095), area, 4096)
    assert expanded(Device(Path("/dev/vdc"), "252:32", 64 * MIB + 4096), area, 4096)
    assert not expanded(Device(Path("/dev/vdc"), "252:32", None), area, 4096)


def test_the_image_needs_the_memory_in_use_what_is_swapped_and_a_margin() -> None:
    in_use = {"MemTotal": 512 * MIB, "MemAvailable": 400 * MIB}
    assert required_bytes(in_use, 8 * MIB) == 120 * MIB + MARGIN_BYTES


def test_guest_paths_and_swap_commands_come_from_the_config(tmp_path: Path) -> None:
    for name in ("key", "ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_bytes(b"k" * 32)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"partition": "a/b"}))
    default = configs.load(path)
    assert default.files == GuestFiles()
    assert default.swap_commands == SwapCommands()
    overrides = {
        "sysfs": "/x/sys",
        "procfs": "/x/proc",
        "devfs": "/x/dev",
        "mkswap": "busybox mkswap",
    }
    configured = configs.load(path, {**overrides, "swapon": ["/sbin/swapon", "-p", "5"]})
    assert configured.files == GuestFiles(Path("/x/sys"), Path("/x/proc"), Path("/x/dev"))
    assert configured.swap_commands == SwapCommands(
        ("busybox", "mkswap"), ("/sbin/swapon", "-p", "5"), ("swapoff",)
    )
    for bad in ("", [], [1], 5):
        with pytest.raises(ValueError, match="swapoff"):
            configs.load(path, {"swapoff": bad})
