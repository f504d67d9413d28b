"""Guest-local rules of the agent, as pure logic: who may hold the registration socket's
connections, and which signals a Signal registration may name (the real agent and real processes
are in tests/integration/test_agent_guest_local.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from lparkube_agent import procinfo
from lparkube_agent.registry import SAVE_SIGNALS, normalize_signal, parse_registration
from lparkube_agent.regserver import ConnectionSlots, RefusedError

# --- connections ------------------------------------------------------------------------------


def take(slots: ConnectionSlots, uid: int, count: int) -> int:
    """Acquire up to `count` slots for uid; how many it got."""
    for got in range(count):
        try:
            slots.acquire(uid)
        except RefusedError:
            return got
    return count


def test_one_user_gets_only_their_share_of_connections() -> None:
    slots = ConnectionSlots(total=256, per_user=32, reserve=32)
    assert take(slots, 1000, 256) == 32  # the attack: one user asks for every connection
    with pytest.raises(RefusedError, match="uid 1000 already holds 32 connections"):
        slots.acquire(1000)
    assert take(slots, 1001, 32) == 32  # another user is not affected
    assert take(slots, 0, 10) == 10  # nor is root


def test_users_together_never_take_roots_reserve() -> None:
    slots = ConnectionSlots(total=256, per_user=32, reserve=32)
    assert [take(slots, uid, 32) for uid in range(1000, 1008)] == [32] * 7 + [0]
    with pytest.raises(RefusedError, match="serving 224 connections"):
        slots.acquire(2000)
    assert take(slots, 0, 64) == 32  # root takes the reserve, and only what is left


def test_released_connections_can_be_taken_again() -> None:
    slots = ConnectionSlots(total=4, per_user=2, reserve=1)
    assert take(slots, 1000, 2) == 2
    slots.release(1000)
    assert take(slots, 1000, 1) == 1
    assert take(slots, 1001, 5) == 1  # 4 total, 1 kept for root, 2 used by uid 1000
    for uid in (1000, 1000, 1001):
        slots.release(uid)
    assert take(slots, 0, 5) == 4


# --- signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "action"),
    [
        ("SIGSEGV", "dumps core and dies"),  # the three the review sent
        ("SIGTSTP", "stops"),
        ("SIGRTMIN", "dies"),
        ("SIGTERM", "dies"),
        ("SIGQUIT", "dumps core and dies"),
        ("SIGTTIN", "stops"),
        ("SIGKILL", "dies"),
    ],
)
def test_a_signal_that_kills_or_stops_by_default_is_refused(name: str, action: str) -> None:
    app = {"name": "db", "pid": 7, "method": "Signal", "signal": name}
    with pytest.raises(ValueError, match=f"{name} is refused as a save signal") as refused:
        parse_registration(app)
    assert f"does not handle it {action};" in str(refused.value)
    assert "SIGUSR1" in str(refused.value)  # says what to use instead


def test_only_request_and_harmless_signals_are_save_signals() -> None:
    accepted = set()
    for sig in signal.Signals:
        with contextlib.suppress(ValueError):
            accepted.add(normalize_signal(sig.name))
    assert accepted == set(SAVE_SIGNALS) == {
        "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGWINCH", "SIGURG", "SIGCHLD", "SIGCONT",
    }  # fmt: skip
    assert normalize_signal(10) == normalize_signal(" usr1 ") == "SIGUSR1"
    assert normalize_signal("SIGCLD") == "SIGCHLD"  # an alias
    for unknown in ("35", "²", "SIGNOPE", True, None):
        with pytest.raises(ValueError, match="unknown signal"):
            normalize_signal(unknown)


# --- process facts ----------------------------------------------------------------------------


def test_a_process_catches_only_the_signals_it_has_a_handler_for() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGUSR1, lambda *_: None);"
        "signal.signal(signal.SIGUSR2, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        with procinfo.Process(child.pid) as process:
            assert process.catches(signal.SIGUSR1)
            assert not process.catches(signal.SIGUSR2)  # ignored: sending it saves nothing
            assert not process.catches(signal.SIGHUP)  # no handler: it would die
            assert process.uids() == (os.getuid(), os.geteuid())
            assert process.alive(procinfo.start_time(child.pid))
            assert not process.alive(0)
    finally:
        child.kill()
        child.wait()
    with pytest.raises(ProcessLookupError):
        procinfo.Process(child.pid)
