"""``kubectl lparkube restart`` and the RemoteRestart lines of ``status``: the pure parts — the
command line, the RemoteRestart it creates, step lines, the verdict (exit code) and how a
waiting verb prints an operation's steps once each."""

from __future__ import annotations

import io
import string
from datetime import UTC, datetime, timedelta

import pytest

from lparkube.api.v1alpha1 import remoterestart as rr
from lparkube.kubectl_plugin import restarts
from lparkube.kubectl_plugin.main import build_parser, main
from lparkube.kubectl_plugin.verb import FAILED, OK, USAGE
from lparkube.kubectl_plugin.verbs import restart, status
from lparkube.kubectl_plugin.waiting import ProgressLine

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def step(name: str, state: str, message: str = "") -> dict:
    return {"name": name, "status": state, "message": message}


def remote_restart(*steps: dict, name: str = "web-1-restart-abcde", **status) -> dict:
    """A RemoteRestart of web-1 as the controller writes it (every step listed, in order)."""
    listed = {s["name"]: s for s in steps}
    return {
        "metadata": {"name": name, "creationTimestamp": "2026-12-01T11:58:00Z"},
        "spec": {"partitionName": "web-1"},
        "status": {
            "steps": [listed.get(n, step(n, rr.PENDING)) for n in rr.STEPS],
            **status,
        },
    }


def complete(state: str, reason: str, message: str) -> dict:
    return {"type": rr.COMPLETE, "status": state, "reason": reason, "message": message}


# --- the command line ---------------------------------------------------------------------------


def test_restart_options_and_the_remote_restart_they_make() -> None:
    args = parse("restart", "web-1", "--to", "node-b", "--from", "web-1-img", "--deadline", "5m",
                 "--vios-cluster", "pool-1")  # fmt: skip
    assert args.verb_spec is restart.VERB
    assert restart.restart_body(args, "web-1-restart-qwert") == {
        "metadata": {"name": "web-1-restart-qwert"},
        "spec": {
            "partitionName": "web-1",
            "hibernationImageName": "web-1-img",
            "targetNodeName": "node-b",
            "viosClusterName": "pool-1",
            "deadline": "5m",
        },
    }
    assert restart.default_timeout(args) == timedelta(minutes=6)
    bare = parse("restart", "web-1")
    assert restart.restart_body(bare, "n") == {"metadata": {"name": "n"},
                                               "spec": {"partitionName": "web-1"}}  # fmt: skip
    assert restart.default_timeout(bare) == timedelta(minutes=16)  # the API's 15m + 1m
    assert (bare.wait, bare.timeout) == (True, None)


def test_restart_names_are_the_partition_restart_and_five_random_lowercase_letters() -> None:
    names = {restart.restart_name("web-1") for _ in range(20)}
    assert len(names) > 1
    for name in names:
        prefix, suffix = name[: -len("abcde")], name[-len("abcde") :]
        assert prefix == "web-1-restart-"
        assert len(suffix) == 5 and set(suffix) <= set(string.ascii_lowercase)
    long = restart.restart_name("p" * 250, "vwxyz")
    assert len(long) == 253 and long.endswith("p-restart-vwxyz")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["restart"], "the following arguments are required: PARTITION"),
        (["restart", "web-1", "--deadline", "soon"], "not a duration: 'soon'"),
        (["restart", "web-1", "--timeout", "0s"], "must be more than 0s"),
        (["restart", "web-1", "--to"], "expected one argument"),
        (["restart", "web-1", "node-b"], "unrecognized arguments: node-b"),
    ],
)
def test_restart_usage_errors_exit_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == USAGE
    assert complaint in capsys.readouterr().err


# --- step lines and the verdict -----------------------------------------------------------------


def test_a_step_line_is_name_status_and_message_on_one_line() -> None:
    assert restarts.step_line(step(rr.VALIDATING, rr.DONE)) == "Validating Done"
    waiting = step(rr.LOCKING_ADAPTERS, rr.RUNNING, "node a is NotReady\n  and not fenced")
    assert (
        restarts.step_line(waiting) == "LockingAdapters Running node a is NotReady and not fenced"
    )


def test_before_the_operator_writes_a_step_the_restart_is_waiting_for_it() -> None:
    fresh = {"metadata": {"name": "x"}, "spec": {"partitionName": "web-1"}}
    verdict = restarts.verdict(fresh)
    assert (verdict.done, verdict.line, verdict.log) == (False, restarts.NOT_STARTED, ())
    pending = restarts.verdict(remote_restart())  # every step Pending: nothing begun
    assert (pending.done, pending.line, pending.log) == (False, restarts.NOT_STARTED, ())


def test_while_it_runs_the_log_has_every_begun_step_and_the_line_is_the_current_one() -> None:
    running = remote_restart(
        step(rr.VALIDATING, rr.DONE, "target node-b"),
        step(rr.LOCKING_ADAPTERS, rr.RUNNING, "waiting for the source to stop"),
        step=rr.LOCKING_ADAPTERS,
    )
    verdict = restarts.verdict(running)
    assert not verdict.done
    assert verdict.log == (
        "Validating Done target node-b",
        "LockingAdapters Running waiting for the source to stop",
    )
    assert verdict.line == "LockingAdapters Running waiting for the source to stop"


def test_restart_succeeded_exits_0_naming_the_node() -> None:
    steps = [step(n, rr.DONE) for n in rr.STEPS if n != rr.RESTORING_MEMORY]
    done = remote_restart(
        *steps, step(rr.RESTORING_MEMORY, rr.SKIPPED), step=rr.UNLOCKING,
        terminationState=rr.RESTART_SUCCEEDED, terminationCode=0,
        sourceNodeName="node-a", targetNodeName="node-b",
        conditions=[complete("True", rr.RESTART_SUCCEEDED, "web-1 runs on node-b")],
    )  # fmt: skip
    verdict = restarts.verdict(done)
    assert (verdict.done, verdict.code) == (True, OK)
    assert (
        verdict.line == "RestartSucceeded: partition web-1 runs on node node-b (from node node-a)"
    )
    assert verdict.log[5] == "RestoringMemory Skipped"
    assert len(verdict.log) == len(rr.STEPS)


def test_restart_failed_exits_1_with_the_cause_from_complete() -> None:
    why = "node node-b does not match the VM's nodeSelector disk=ssd"
    failed = remote_restart(
        step(rr.VALIDATING, rr.FAILED, why), step=rr.VALIDATING,
        terminationState=rr.RESTART_FAILED, terminationCode=1,
        conditions=[complete("False", rr.NODE_SELECTOR_MISMATCH, why)],
    )  # fmt: skip
    verdict = restarts.verdict(failed)
    assert (verdict.done, verdict.code) == (True, FAILED)
    assert verdict.line == f"RestartFailed: NodeSelectorMismatch: {why}"
    assert verdict.log == (f"Validating Failed {why}",)
    # Without a Complete condition, the failed step says why.
    bare = remote_restart(step(rr.VALIDATING, rr.FAILED, why), terminationState=rr.RESTART_FAILED)
    assert restarts.verdict(bare).line == f"RestartFailed: Validating: {why}"


def test_a_pipe_gets_each_step_line_once_and_no_repeated_progress() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream)
    objects = [
        remote_restart(),
        remote_restart(step(rr.VALIDATING, rr.RUNNING)),
        remote_restart(step(rr.VALIDATING, rr.RUNNING)),  # an update that changed no step
        remote_restart(
            step(rr.VALIDATING, rr.DONE),
            step(rr.LOCKING_ADAPTERS, rr.DONE),
            step(rr.GATHERING_CONFIGURATION, rr.RUNNING),
        ),
        remote_restart(
            step(rr.VALIDATING, rr.DONE),
            step(rr.LOCKING_ADAPTERS, rr.DONE),
            step(rr.GATHERING_CONFIGURATION, rr.FAILED, "VM web-1 is gone"),
            terminationState=rr.RESTART_FAILED,
            conditions=[complete("False", rr.VM_NOT_FOUND, "VM web-1 is gone")],
        ),
    ]
    for obj in objects:
        progress.verdict(restarts.verdict(obj))
    progress.close(keep=False)
    assert stream.getvalue().splitlines() == [
        restarts.NOT_STARTED,
        "Validating Running",
        "Validating Done",
        "LockingAdapters Done",
        "GatheringConfiguration Running",
        "GatheringConfiguration Failed VM web-1 is gone",
        "RestartFailed: VMNotFound: VM web-1 is gone",
    ]


def test_on_a_terminal_step_lines_stay_and_the_progress_line_is_rewritten_above_none() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream, in_place=True)
    progress.verdict(restarts.verdict(remote_restart()))
    progress.verdict(restarts.verdict(remote_restart(step(rr.VALIDATING, rr.RUNNING))))
    progress.close()
    assert stream.getvalue() == f"\r\x1b[K{restarts.NOT_STARTED}\r\x1b[KValidating Running\n"


# --- status -------------------------------------------------------------------------------------


def test_status_shows_the_partitions_restarts_under_way_oldest_first() -> None:
    partition = {"metadata": {"namespace": "shop", "name": "web-1"}, "spec": {}, "status": {}}
    proceeding = remote_restart(
        step(rr.VALIDATING, rr.DONE), step(rr.LOCKING_ADAPTERS, rr.RUNNING),
        step=rr.LOCKING_ADAPTERS, progress={"completedSteps": 1, "totalSteps": 8},
        sourceNodeName="node-a", targetNodeName="node-b",
    )  # fmt: skip
    later = remote_restart(name="web-1-restart-later")
    later["metadata"]["creationTimestamp"] = "2026-12-01T11:59:30Z"
    ended = remote_restart(name="web-1-restart-ended", terminationState=rr.RESTART_FAILED)
    other = remote_restart(name="db-1-restart-zzzzz")
    other["spec"]["partitionName"] = "db-1"
    lines = status.render(partition, [], NOW, [later, ended, other, proceeding])
    at = lines.index("Hibernation: no run reported") + 1
    assert lines[at : at + 2] == [
        "Restart:     web-1-restart-abcde at LockingAdapters Running (1/8), node-a -> node-b, "
        "2m ago",
        "             web-1-restart-later at not started by the operator yet, 30s ago",
    ]
    assert lines[at + 2] == "Hibernation images:"
    assert "Restart:     none under way" in status.render(partition, [], NOW, [ended])
    missing = status.render(partition, [], NOW, "the server does not serve remoterestarts")
    assert "Restart:     the server does not serve remoterestarts" in missing


def test_a_skipped_step_is_shown_only_once_the_operation_went_past_it() -> None:
    skipped = step(rr.RESTORING_MEMORY, rr.SKIPPED)
    locking = remote_restart(
        step(rr.VALIDATING, rr.DONE), step(rr.LOCKING_ADAPTERS, rr.RUNNING), skipped
    )
    assert restarts.step_lines(locking) == ["Validating Done", "LockingAdapters Running"]
    refused = remote_restart(step(rr.VALIDATING, rr.FAILED, "no such node"), skipped)
    assert restarts.step_lines(refused) == ["Validating Failed no such node"]
    booting = remote_restart(
        *(step(name, rr.DONE) for name in rr.STEPS[:5]), skipped, step(rr.BOOTING, rr.RUNNING)
    )
    assert restarts.step_lines(booting)[-2:] == ["RestoringMemory Skipped", "Booting Running"]
