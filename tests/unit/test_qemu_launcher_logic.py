"""The launcher's pure translations: final states to VMI phases, panics to event messages."""

from __future__ import annotations

import pytest

from lparkube_devenv.qemu.launcher import State, Status, panic_message, vmi_phase


@pytest.mark.parametrize(
    ("state", "graceful", "phase"),
    [
        (State.STARTING, True, None),
        (State.RUNNING, True, "Running"),
        (State.PAUSED, True, "Running"),
        (State.SHUTDOWN, True, "Succeeded"),
        (State.PANICKED, True, "Failed"),
        (State.CRASHED, False, "Failed"),
        (State.DESTROYED, True, "Failed"),  # ACPI and a grace period: the grace period ran out
        (State.DESTROYED, False, "Succeeded"),  # no ACPI, or grace period 0: destroy is the stop
    ],
)
def test_phases_follow_virt_handler(state: State, graceful: bool, phase: str | None) -> None:
    assert vmi_phase(Status(state), graceful_shutdown=graceful) == phase


def test_panic_messages_as_virt_launcher_formats_them() -> None:
    assert panic_message({"action": "pause"}) == "GuestPanicked (details unavailable)"
    assert panic_message(None) == "GuestPanicked (details unavailable)"
    assert panic_message({"info": {"type": "s390", "core": 0}}) == "GuestPanicked: type=s390"
    hyperv = {
        "info": {"type": "hyper-v", "arg1": 0x5A, "arg2": 1, "arg3": 0, "arg4": 16, "arg5": 0}
    }
    assert panic_message(hyperv) == "GuestPanicked: '0x5a', '0x1', '0x0', '0x10', '0x0'"


def test_final_states_stay_final() -> None:
    assert Status(State.SHUTDOWN).final and not Status(State.PAUSED).final
    assert Status(State.CRASHED, exit_code=-9).exited and not Status(State.RUNNING).exited
