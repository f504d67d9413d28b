"""Self-fencing in the agent: the lease a report's answer grants, and the watchdog it lets the
agent pet, with an injected clock, a plain file for the device and a stand-in for its ioctls."""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path

import pytest

from lparkube_agent import cli, protocol
from lparkube_agent.report import MAX_LEASE_SECONDS, parse_answer
from lparkube_agent.watchdog import (
    DISARM,
    INT,
    WDIOC_GETTIMEOUT,
    WDIOC_SETTIMEOUT,
    Lease,
    Watchdog,
)

LEASE = Lease(seconds=10, watchdog_timeout=7, renew=3)


class Device:
    """The ioctls a watchdog takes, on whatever file the watchdog opened; ``fail`` names a
    request to refuse, ``rounds`` is added to every timeout set (a driver's granularity)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.timeout, self.rounds, self.fail = 0, 0, 0

    def __call__(self, fd: int, request: int, arg: bytearray) -> None:
        os.fstat(fd)  # an open descriptor
        self.calls.append((request, INT.unpack(arg)[0]))
        if request == self.fail:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        if request == WDIOC_SETTIMEOUT:
            self.timeout = INT.unpack(arg)[0] + self.rounds
        arg[:] = INT.pack(self.timeout)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "watchdog"
    path.write_bytes(b"")
    return path


def make(path: Path) -> tuple[Watchdog, Device, Clock]:
    ioctls, clock = Device(), Clock()
    return Watchdog(path, clock=clock, ioctl=ioctls), ioctls, clock


def test_the_ioctl_numbers_are_linux_watchdog_h_s() -> None:
    assert (WDIOC_SETTIMEOUT, WDIOC_GETTIMEOUT) == (0xC0045706, 0x80045707)


def test_no_lease_no_device_touched(device: Path) -> None:
    watchdog, ioctls, _ = make(device)
    assert not watchdog.pet()
    watchdog.answered(None, 1000.0)  # 204 from an operator without self-fencing
    assert not watchdog.pet()
    assert (device.read_bytes(), ioctls.calls, watchdog.report()) == (b"", [], None)


def test_the_first_lease_arms_with_the_timeout_read_back(device: Path) -> None:
    watchdog, ioctls, _ = make(device)
    ioctls.rounds = 1
    watchdog.answered(LEASE, 1000.0)
    assert ioctls.calls == [(WDIOC_SETTIMEOUT, 7), (WDIOC_GETTIMEOUT, 0)]
    assert watchdog.report() == {
        "device": str(device), "timeoutSeconds": 8, "armed": True, "message": "",
    }  # fmt: skip
    watchdog.answered(LEASE, 1003.0)  # a renewal with the same timeout: nothing asked again
    assert len(ioctls.calls) == 2


def test_pets_only_while_the_lease_counted_from_the_report_holds(device: Path) -> None:
    watchdog, _, clock = make(device)
    clock.now = 1002.0  # the answer came 2 s after the report left
    watchdog.answered(LEASE, 1000.0)
    assert watchdog.pet()
    clock.now = 1009.9
    assert watchdog.pet()
    clock.now = 1010.0  # sent_at + seconds, not the answer's time + seconds
    assert not watchdog.pet()
    assert device.read_bytes() == b".."
    watchdog.answered(LEASE, 1011.0)  # the operator is back: petting resumes, no new arming
    assert watchdog.pet() and device.read_bytes() == b"..."
    assert b"V" not in device.read_bytes(), "a pet must never be the magic character"


def test_a_disarm_answer_disarms_a_204_does_not_and_a_later_lease_arms_again(
    device: Path,
) -> None:
    watchdog, ioctls, _ = make(device)
    watchdog.answered(LEASE, 1000.0)
    watchdog.pet()
    watchdog.answered(None, 1003.0)  # 204: nothing changes, the lease runs out
    assert watchdog.report()["armed"]  # type: ignore[index]
    watchdog.answered(DISARM, 1003.0)
    assert device.read_bytes() == b".V"
    assert not watchdog.pet()
    assert watchdog.report() == {
        "device": str(device), "timeoutSeconds": 0, "armed": False,
        "message": "disarmed: the operator turned self-fencing off",
    }  # fmt: skip
    watchdog.answered(DISARM, 1004.0)  # already disarmed: nothing written
    watchdog.answered(LEASE, 1005.0)
    assert watchdog.report()["armed"] and len(ioctls.calls) == 4  # type: ignore[index]
    assert watchdog.pet() and device.read_bytes() == b".V."


def test_stopping_never_magic_closes(device: Path) -> None:
    watchdog, _, _ = make(device)
    watchdog.answered(LEASE, 1000.0)
    watchdog.stop()
    assert device.read_bytes() == b"" and watchdog.report()["armed"]  # type: ignore[index]


def test_a_missing_device_is_not_armed_the_lease_kept_and_tried_again(tmp_path: Path) -> None:
    path = tmp_path / "watchdog"
    watchdog, ioctls, _ = make(path)
    watchdog.answered(LEASE, 1000.0)
    report = watchdog.report()
    assert report is not None and not report["armed"] and ioctls.calls == []
    assert report["message"] == f"cannot open {path}: No such file or directory"
    path.write_bytes(b"")  # the driver came up
    watchdog.answered(LEASE, 1003.0)
    assert watchdog.report()["armed"] and watchdog.pet()  # type: ignore[index]


@pytest.mark.parametrize("failing", ["WDIOC_SETTIMEOUT", "WDIOC_GETTIMEOUT"])
def test_a_failed_ioctl_magic_closes_and_says_which(device: Path, failing: str) -> None:
    watchdog, ioctls, _ = make(device)
    ioctls.fail = {"WDIOC_SETTIMEOUT": WDIOC_SETTIMEOUT, "WDIOC_GETTIMEOUT": WDIOC_GETTIMEOUT}[
        failing
    ]
    watchdog.answered(LEASE, 1000.0)
    assert device.read_bytes() == b"V", "opening started the timer: it is stopped again"
    assert watchdog.report() == {
        "device": str(device), "timeoutSeconds": 0, "armed": False,
        "message": f"{failing} (7 s) on {device} failed: Inappropriate ioctl for device",
    }  # fmt: skip
    assert not watchdog.pet()
    ioctls.fail = 0
    watchdog.answered(LEASE, 1003.0)
    assert watchdog.pet() and device.read_bytes() == b"V."


def test_a_new_timeout_is_set_on_the_armed_device(device: Path) -> None:
    watchdog, ioctls, _ = make(device)
    watchdog.answered(LEASE, 1000.0)
    watchdog.answered(Lease(10, 20, 3), 1003.0)
    assert ioctls.calls[2:] == [(WDIOC_SETTIMEOUT, 20), (WDIOC_GETTIMEOUT, 0)]
    assert watchdog.report()["timeoutSeconds"] == 20  # type: ignore[index]
    assert device.read_bytes() == b"", "the device stayed open"


def test_disarming_to_hibernate_until_the_next_lease(device: Path) -> None:
    watchdog, _, _ = make(device)
    watchdog.disarm("disarmed to hibernate")  # not armed: nothing written
    watchdog.answered(LEASE, 1000.0)
    watchdog.disarm("disarmed to hibernate")
    assert device.read_bytes() == b"V"
    assert watchdog.report()["message"] == "disarmed to hibernate"  # type: ignore[index]
    watchdog.answered(LEASE, 1003.0)
    assert watchdog.report()["armed"]  # type: ignore[index]


# --- the answer -------------------------------------------------------------------------------


def lease_body(**fields: object) -> bytes:
    lease = {"seconds": 10, "watchdogTimeoutSeconds": 10, "renewSeconds": 3, **fields}
    return json.dumps({"lease": {k: v for k, v in lease.items() if v is not None}}).encode()


def test_an_answer_grants_a_lease_or_none() -> None:
    assert parse_answer(lease_body()) == Lease(10, 10, 3)
    assert parse_answer(lease_body(seconds=2.5, renewSeconds=0.5)) == Lease(2.5, 10, 0.5)
    assert parse_answer(b"") is None  # 204
    assert parse_answer(b"{}") is None
    assert parse_answer(b'{"lease": null, "other": 1}') is None
    assert parse_answer(b'{"disarm": true}') is DISARM
    assert parse_answer(b'{"disarm": false}') is None


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b"\xff",
        b'"lease"',
        b'{"lease": 10}',
        b'{"lease": []}',
        lease_body(seconds=None),
        lease_body(watchdogTimeoutSeconds=None),
        lease_body(renewSeconds=None),
        lease_body(seconds="10"),
        lease_body(seconds=True),
        lease_body(seconds=0),
        lease_body(renewSeconds=-1),
        lease_body(seconds=MAX_LEASE_SECONDS + 1),
        lease_body(watchdogTimeoutSeconds=10.0),
        lease_body(watchdogTimeoutSeconds=2**40),
        b'{"lease": {"seconds": NaN, "watchdogTimeoutSeconds": 10, "renewSeconds": 3}}',
        b'{"lease": {"seconds": Infinity, "watchdogTimeoutSeconds": 10, "renewSeconds": 3}}',
    ],
)
def test_a_malformed_answer_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_answer(body)


def test_fuzzed_answers_grant_a_lease_in_bounds_or_are_refused() -> None:
    """Mutations of a lease answer: each one either grants a lease within bounds or raises
    ValueError (which the reporter takes as no answer), never anything else."""
    seed = int(os.environ.get("LPARKUBE_FUZZ_SEED") or random.SystemRandom().getrandbits(32))
    rng = random.Random(seed)
    valid = lease_body()
    for _ in range(5000):
        body = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(body))
            action = rng.randrange(3)
            if action == 0:
                body[at] = rng.randrange(256)
            elif action == 1:
                del body[at]
            else:
                body.insert(at, rng.choice(b'0123456789.-eE"{}[],:tnfNI '))
        try:
            lease = parse_answer(bytes(body))
        except ValueError:
            continue
        if lease is not None:
            times = (lease.seconds, lease.watchdog_timeout, lease.renew)
            assert all(0 < t <= MAX_LEASE_SECONDS for t in times), (seed, bytes(body))
            assert isinstance(lease.watchdog_timeout, int), (seed, bytes(body))


# --- where the device is ----------------------------------------------------------------------


def test_the_device_is_devfs_watchdog_unless_configured_or_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "key").write_bytes(protocol.new_key())
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_text("PEM")
    config = tmp_path / "config.json"
    devices: list[Path] = []

    def no_daemon(loaded: object) -> None:
        devices.append(loaded.watchdog_device)  # type: ignore[attr-defined]
        raise RuntimeError("no daemon in a unit test")

    monkeypatch.setattr(cli, "Agent", no_daemon)
    for settings, options in [
        ({}, []),
        ({"devfs": "dev"}, []),
        ({"devfs": "dev", "watchdogDevice": "dev/watchdog1"}, []),
        ({"watchdogDevice": "dev/watchdog1"}, [f"--watchdog-device={tmp_path / 'w'}"]),
    ]:
        config.write_text(json.dumps({"partition": "tenant-a/web-1", **settings}))
        assert cli.main(["serve", f"--config={config}", *options]) == 2
    expected = [Path("/dev/watchdog"), tmp_path / "dev/watchdog", tmp_path / "dev/watchdog1"]
    assert devices == [*expected, tmp_path / "w"]
