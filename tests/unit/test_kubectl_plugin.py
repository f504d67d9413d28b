"""The kubectl plugin's pure parts: argument parsing, the objects it creates, progress text,
condition -> exit code, error messages, and how it writes ages, sizes and progress lines."""

from __future__ import annotations

import ast
import io
import json
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from lparkube.api.v1alpha1.partition import PARTITION
from lparkube.kubectl_plugin import images, text
from lparkube.kubectl_plugin.cluster import api_error
from lparkube.kubectl_plugin.main import build_parser, main
from lparkube.kubectl_plugin.verb import (
    FAILED,
    OK,
    USAGE,
    Group,
    NotFoundError,
    PluginError,
    Verb,
    go_duration,
)
from lparkube.kubectl_plugin.verbs import VERBS, hibernate, save, status
from lparkube.kubectl_plugin.waiting import ProgressLine

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "operator" / "lparkube" / "kubectl_plugin"
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == USAGE
    return capsys.readouterr().err


def condition(type_: str, status: str, reason: str, message: str = "", generation: int = 1):
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


# --- the command line ---------------------------------------------------------------------------


COMMANDS = [
    command
    for verb in VERBS
    for command in (
        [[verb.name, sub.name] for sub in verb.verbs] if isinstance(verb, Group) else [[verb.name]]
    )
]  # every command line that runs a verb


def test_the_verbs_are_save_hibernate_resume_restart_status_and_failover_status() -> None:
    assert [v.name for v in VERBS] == [
        "save", "hibernate", "resume", "restart", "status", "failover",
    ]  # fmt: skip
    assert COMMANDS[-1] == ["failover", "status"]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_verb_has_help_with_the_cluster_options_and_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == OK
    out = capsys.readouterr().out
    verb = " ".join(command)
    assert out.startswith(f"usage: kubectl lparkube {verb}")
    for option in ("-n NAMESPACE, --namespace NAMESPACE", "--kubeconfig FILE", "--timeout"):
        assert option in out
    assert f"kubectl lparkube {verb} " in out.split("examples:")[1]
    assert "exit codes: 0 success; 1" in out
    assert ("--no-wait" in out) == (command[-1] != "status")


def test_a_groups_verbs_take_the_common_options_after_the_group_name() -> None:
    """``kubectl lparkube NOUN VERB ARGS -n NS``: the leaf verb is what runs."""
    leaf = Verb("peek", "s", "d", "  kubectl lparkube thing peek x", lambda p: None,
                lambda session, args: OK, waits=False)  # fmt: skip
    parser = build_parser([Group("thing", "things", "about things", (leaf,))])
    args = parser.parse_args(["thing", "peek", "-n", "shop", "--timeout", "5s"])
    assert (args.verb_spec, args.namespace, args.timeout) == (leaf, "shop", timedelta(seconds=5))
    assert "    thing " in parser.format_help()  # the group is listed, not its verbs
    assert "peek" not in parser.format_help()


def test_common_options_parse_as_kubectl_names_them() -> None:
    args = parse("save", "web-1", "-n", "shop", "--kubeconfig", "/k", "--context", "c",
                 "--timeout", "90s", "--no-wait")  # fmt: skip
    assert (args.namespace, args.kubeconfig, args.context) == ("shop", "/k", "c")
    assert args.timeout == timedelta(seconds=90)
    assert args.wait is False
    defaults = parse("save", "web-1")
    assert (defaults.namespace, defaults.kubeconfig, defaults.timeout, defaults.wait) == (
        None,
        None,
        None,
        True,
    )


def test_save_needs_partitions_or_all_in_namespace_but_not_both(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "name at least one PARTITION" in usage_error(capsys, "save")
    assert "not both" in usage_error(capsys, "save", "web-1", "--all-in-namespace")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["save", "web-1", "--reason", "Bored"], "invalid choice: 'Bored'"),
        (["save", "web-1", "--deadline", "soon"], "not a duration: 'soon'"),
        (["save", "web-1", "--timeout", "0s"], "must be more than 0s"),
        (["hibernate"], "the following arguments are required: PARTITION"),
        (["hibernate", "web-1", "--deadline", "10"], "not a duration"),
        (["resume"], "the following arguments are required: IMAGE"),
        (["status", "a", "b"], "unrecognized arguments: b"),
        (["status", "web-1", "--no-wait"], "unrecognized arguments: --no-wait"),
        (["failover"], "the following arguments are required: VERB"),
        (["failover", "status"], "the following arguments are required: PARTITION"),
        (["failover", "show", "web-1"], "invalid choice: 'show'"),
        (["failover", "status", "web-1", "--no-wait"], "unrecognized arguments: --no-wait"),
        (["reboot", "web-1"], "invalid choice: 'reboot'"),
        ([], "the following arguments are required: VERB"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert complaint in usage_error(capsys, *argv)


def test_the_package_installs_the_plugin_as_kubectl_lparkube() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-lparkube"] == "lparkube.kubectl_plugin.main:main"


def test_the_plugin_stays_light_no_kopf_nor_operator_internals() -> None:
    """A CLI starts fast: it imports neither kopf nor the operator's controllers or runtime."""
    banned = ("kopf", "aiohttp", "lparkube.controllers", "lparkube.runtime")
    for path in PLUGIN.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert not name.startswith(banned), f"{path.name} imports {name}"


# --- save ---------------------------------------------------------------------------------------


def test_save_event_for_named_partitions() -> None:
    body = save.save_event_body(parse("save", "web-1", "web-2", "web-1", "--reason", "Power"))
    assert body == {
        "metadata": {"generateName": "save-web-1-"},
        "spec": {"reason": "Power", "targets": {"partitions": ["web-1", "web-2"]}},
    }


def test_save_event_for_the_whole_namespace_with_name_message_and_deadline() -> None:
    args = parse("save", "--all-in-namespace", "--name", "now", "--message", "UPS on battery",
                 "--deadline", "2m")  # fmt: skip
    assert save.save_event_body(args) == {
        "metadata": {"name": "now"},
        "spec": {
            "reason": "Manual",
            "targets": {"all": True},
            "message": "UPS on battery",
            "deadline": "2m",
        },
    }
    assert save.default_timeout(args) == timedelta(minutes=3)
    assert save.default_timeout(parse("save", "x")) == timedelta(minutes=6)


def test_a_short_save_deadline_shortens_the_application_timeout_too() -> None:
    spec = save.save_event_body(parse("save", "web-1", "--deadline", "10s"))["spec"]
    assert (spec["deadline"], spec["applicationTimeout"]) == ("10s", "10s")


def test_a_long_partition_name_gives_a_generate_name_the_api_accepts() -> None:
    name = "a" * 60 + "-b"
    prefix = save.save_event_body(parse("save", name))["metadata"]["generateName"]
    assert prefix.startswith("save-aaa") and prefix.endswith("-")
    assert len(prefix) <= save.MAX_PREFIX


@pytest.mark.parametrize(
    ("summary", "line"),
    [
        (None, "saved 0/0"),
        ({"partitions": 5, "succeeded": 3, "failed": 1, "pending": 1}, "saved 3/5 (1 failed)"),
        ({"partitions": 2, "succeeded": 2, "failed": 0}, "saved 2/2"),
    ],
)
def test_save_progress_text(summary, line: str) -> None:
    assert save.progress_text(summary) == line


def save_event(conditions: list[dict], summary: dict | None = None, **status) -> dict:
    return {"status": {"conditions": conditions, "summary": summary or {}, **status}}


def test_save_verdict_while_it_runs() -> None:
    assert save.verdict({}).line == "waiting for the operator to start the save"
    running = save_event(
        [condition("Complete", "False", "InProgress"), condition("Succeeded", "Unknown", "x")],
        {"partitions": 5, "succeeded": 3, "failed": 1},
    )
    verdict = save.verdict(running)
    assert (verdict.done, verdict.line) == (False, "saved 3/5 (1 failed)")


@pytest.mark.parametrize("reason", ["Succeeded", "NoTargets"])
def test_save_verdict_succeeded_exits_0(reason: str) -> None:
    done = save_event(
        [condition("Complete", "True", reason, "2 of 2 partitions saved"),
         condition("Succeeded", "True", reason, "2 of 2 partitions saved")],
        {"partitions": 2, "succeeded": 2},
    )  # fmt: skip
    verdict = save.verdict(done)
    assert (verdict.done, verdict.code) == (True, OK)
    assert verdict.line == f"saved 2/2: {reason}: 2 of 2 partitions saved"


def test_save_verdict_failed_exits_1_with_reason_message_and_the_failed_partitions() -> None:
    done = save_event(
        [condition("Complete", "True", "PartiallySucceeded", "1 of 2 saved"),
         condition("Succeeded", "False", "PartiallySucceeded", "1 of 2 saved")],
        {"partitions": 2, "succeeded": 1, "failed": 1},
        partitions=[
            {"namespace": "shop", "name": "web-1", "outcome": "Succeeded"},
            {"namespace": "shop", "name": "web-2", "outcome": "Unreachable",
             "message": "the guest agent is not connected"},
        ],
        pods=[{"namespace": "shop", "name": "cache", "outcome": "Failed", "message": "500"}],
    )  # fmt: skip
    verdict = save.verdict(done)
    assert (verdict.done, verdict.code) == (True, FAILED)
    assert verdict.line == "saved 1/2 (1 failed): PartiallySucceeded: 1 of 2 saved"
    assert verdict.details == (
        "partition shop/web-2: Unreachable: the guest agent is not connected",
        "pod shop/cache: Failed: 500",
    )


def test_a_refused_save_event_is_finished_also_in_the_old_shape() -> None:
    old = save_event([condition("Complete", "False", "Refused", "allNamespaces outside")])
    verdict = save.verdict(old)
    assert (verdict.done, verdict.code) == (True, FAILED)
    assert "Refused: allNamespaces outside" in verdict.line


def test_many_failures_are_counted_after_the_first_twenty() -> None:
    items = [{"namespace": "n", "name": f"p{i}", "outcome": "Failed"} for i in range(25)]
    lines = save.failures({"partitions": items})
    assert len(lines) == 21 and lines[-1] == "... and 5 more"


# --- hibernate and resume -----------------------------------------------------------------------


def test_hibernation_image_for_the_command_line() -> None:
    assert hibernate.image_body(parse("hibernate", "web-1")) == {
        "metadata": {"generateName": "web-1-"},
        "spec": {"partitionName": "web-1", "saveFirst": True},
    }
    args = parse("hibernate", "web-1", "--name", "friday", "--no-save-first", "--deadline",
                 "1h30m", "--vios-cluster", "thin", "--retain-after-resume")  # fmt: skip
    assert hibernate.image_body(args) == {
        "metadata": {"name": "friday"},
        "spec": {
            "partitionName": "web-1",
            "saveFirst": False,
            "deadline": "1h30m",
            "viosClusterName": "thin",
            "retainAfterResume": True,
        },
    }
    assert hibernate.default_timeout(args) == timedelta(minutes=91)
    assert hibernate.default_timeout(parse("hibernate", "x")) == timedelta(minutes=11)


def image(generation: int = 1, conditions: list[dict] | None = None, **status) -> dict:
    return {
        "metadata": {"name": "web-1-x", "generation": generation},
        "spec": {"partitionName": "web-1", "resume": generation > 1},
        "status": {"conditions": conditions or [], **status},
    }


def test_captured_verdict_follows_the_progress() -> None:
    assert images.captured_verdict(image()).line == "waiting for the operator to start the capture"
    progress = {"step": "Suspending", "completedSteps": 3, "totalSteps": 6, "bytesWritten": 3 << 20}
    running = image(conditions=[condition("Captured", "Unknown", "Suspending")], progress=progress)
    verdict = images.captured_verdict(running)
    assert (verdict.done, verdict.line) == (False, "Suspending (3/6), 3.0 MiB written")
    pending = image(conditions=[condition("Captured", "False", "InProgress")], progress=progress)
    assert not images.captured_verdict(pending).done


def test_captured_true_exits_0_with_what_was_written() -> None:
    done = image(
        conditions=[condition("Captured", "True", "Captured")],
        lu={"claimName": "web-1-paging", "usedBytes": 300 << 20},
        memoryBytes=512 << 20,
        sourceNodeName="node-a",
        bootId="b0",
    )
    verdict = images.captured_verdict(done)
    assert (verdict.done, verdict.code) == (True, OK)
    assert verdict.line == (
        "captured: 300.0 MiB on LU web-1-paging (memory 512.0 MiB, node node-a, boot b0)"
    )


def test_captured_false_with_a_final_reason_exits_1_with_it() -> None:
    refused = image(conditions=[condition("Captured", "False", "NoPagingLU", "no spec.paging")])
    verdict = images.captured_verdict(refused)
    assert (verdict.done, verdict.code) == (True, FAILED)
    assert verdict.line == "not captured: NoPagingLU: no spec.paging"


def test_resumed_verdicts_ignore_conditions_of_an_older_generation() -> None:
    captured = condition("Captured", "True", "Captured")
    stale = image(2, [captured, condition("Resumed", "False", "ImageNotRestored", "", 1)])
    assert not images.resumed_verdict(stale).done
    assert images.image_state(stale) == "Resuming"
    refused = image(
        2, [captured, condition("Resumed", "False", "AdapterConfigurationChanged", "disk", 2)]
    )
    verdict = images.resumed_verdict(refused)
    assert (verdict.done, verdict.code) == (True, FAILED)
    assert verdict.line == "not resumed: AdapterConfigurationChanged: disk"
    assert images.image_state(refused) == "ResumeFailed: AdapterConfigurationChanged"
    resumed = image(2, [captured, condition("Resumed", "True", "SameBootId", "", 2)], bootId="b0")
    verdict = images.resumed_verdict(resumed)
    assert (verdict.done, verdict.code, verdict.line) == (True, OK, "resumed: boot b0")
    waiting = image(2, [captured, condition("Resumed", "Unknown", "Starting", "VM starting", 2)])
    assert images.resumed_verdict(waiting).line == "resuming: Starting: VM starting"


def test_image_states_for_the_status_table() -> None:
    assert images.image_state(image()) == "Pending"
    progress = {"step": "Saving", "completedSteps": 1, "totalSteps": 6}
    assert images.image_state(image(progress=progress)) == "Capturing: Saving 1/6"
    captured = image(conditions=[condition("Captured", "True", "Captured")])
    assert images.image_state(captured) == "Captured"
    failed = image(conditions=[condition("Captured", "False", "AgentUnreachable")])
    assert images.image_state(failed) == "Failed: AgentUnreachable"


# --- errors, text and progress lines ------------------------------------------------------------


def api_exception(status: int, body: dict | None) -> ApiException:
    error = ApiException(status=status, reason="Not Found")
    error.body = json.dumps(body) if body is not None else None
    return error


def test_api_errors_say_which_object_kind_or_namespace_is_missing() -> None:
    missing = api_error(
        PARTITION, "shop", "web", api_exception(404, {"details": {"name": "web"}, "message": "x"})
    )
    assert isinstance(missing, NotFoundError)
    assert missing.message == 'partitions.lparkube.io "web" not found in namespace "shop"'
    no_crd = api_error(PARTITION, "shop", "web", api_exception(404, {"details": {}}))
    assert not isinstance(no_crd, NotFoundError)
    assert no_crd.message.startswith(
        "the server does not serve partitions.lparkube.io (lparkube.io/v1alpha1): install"
    )
    namespace = {"details": {"name": "shop", "kind": "namespaces"},
                 "message": 'namespaces "shop" not found'}  # fmt: skip
    assert api_error(PARTITION, "shop", None, api_exception(404, namespace)).message == (
        'namespaces "shop" not found'
    )
    invalid = {"message": "spec.deadline: must be more than 0s"}
    assert api_error(PARTITION, "shop", None, api_exception(422, invalid)).message == (
        "spec.deadline: must be more than 0s"
    )
    assert api_error(PARTITION, "s", None, api_exception(500, None)).message == (
        "the API server answered 500 Not Found"
    )
    assert isinstance(missing, PluginError) and missing.code == FAILED


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(5, "5s"), (119, "119s"), (200, "3m20s"), (300, "5m"), (3600, "60m"), (3 * 3600 + 600,
     "3h10m"), (20 * 3600, "20h"), (3 * 86400 + 4 * 3600, "3d4h"), (30 * 86400, "30d"),
     (800 * 86400, "2y"), (-5, "0s")],
)  # fmt: skip
def test_ages_read_like_kubectl(seconds: int, shown: str) -> None:
    since = (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert text.age(since, NOW) == shown
    assert text.age(None, NOW) == "-"


def test_sizes_tables_and_durations() -> None:
    assert [text.size(n) for n in (None, 0, 1023, 1536, 5 << 30)] == [
        "-", "0 B", "1023 B", "1.5 KiB", "5.0 GiB"
    ]  # fmt: skip
    assert text.table([("A", "BB"), ("ccc", "d")]) == ["  A     BB", "  ccc   d"]
    assert [go_duration(timedelta(seconds=s)) for s in (90, 600, 5400, 0)] == [
        "1m30s", "10m", "1h30m", "0s"
    ]  # fmt: skip


def test_progress_lines_in_a_pipe_are_printed_once_each() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream)
    for line in ("saved 0/2", "saved 0/2", "saved 1/2", "saved 2/2"):
        progress.show(line)
    progress.close()
    assert stream.getvalue() == "saved 0/2\nsaved 1/2\nsaved 2/2\n"


def test_progress_lines_on_a_terminal_are_rewritten_in_place() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream, in_place=True)
    progress.show("saved 0/2")
    progress.show("saved 2/2")
    progress.close()
    assert stream.getvalue() == "\r\x1b[Ksaved 0/2\r\x1b[Ksaved 2/2\n"
    erased = io.StringIO()
    progress = ProgressLine(erased, in_place=True)
    progress.show("saved 1/2 (1 failed): Failed")
    progress.close(keep=False)  # the error message says it again
    assert erased.getvalue() == "\r\x1b[Ksaved 1/2 (1 failed): Failed\r\x1b[K"


def test_status_screen_of_a_partition() -> None:
    partition = {
        "metadata": {"namespace": "shop", "name": "web-1"},
        "spec": {"viosClusterName": "thin", "paging": {}},
        "status": {
            "vmName": "web-1",
            "nodeName": "node-a",
            "addresses": [{"interface": "default", "ip": "10.0.0.5"}],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                 "lastTransitionTime": "2026-12-01T11:55:00Z"},
                {"type": "AgentConnected", "status": "True", "reason": "Heartbeat",
                 "message": "reported " + "x" * 100, "lastTransitionTime": "2026-12-01T11:00:00Z"},
            ],
            "agent": {"version": "0.1.0", "kernelRelease": "6.1.0", "bootId": "b0",
                      "lastHeartbeatTime": "2026-12-01T11:59:48Z", "applications": 2,
                      "endpoint": "10.0.0.5:8443",
                      "memory": {"totalBytes": 512 << 20, "availableBytes": 256 << 20},
                      "paging": {"serial": "lparkube-paging", "device": "/dev/vdc",
                                 "sizeBytes": 640 << 20, "swapBytes": 639 << 20,
                                 "active": True, "message": ""},
                      "hibernation": {"id": "u1", "state": "Resumed",
                                      "requestedAt": "2026-12-01T11:50:00Z",
                                      "resumedAt": "2026-12-01T11:55:00Z",
                                      "imageBytes": 300 << 20, "message": ""}},
            "paging": {"claimName": "lu-7", "size": "1280Mi"},
        },
    }  # fmt: skip
    captured = image(conditions=[condition("Captured", "True", "Captured")],
                     lu={"usedBytes": 300 << 20}, sourceNodeName="node-a")  # fmt: skip
    captured["metadata"]["creationTimestamp"] = "2026-12-01T11:58:00Z"
    lines = status.render(partition, [captured], NOW)
    assert lines[0] == "Partition:   shop/web-1"
    assert lines[1] == "VM:          web-1 on node node-a, 10.0.0.5"
    assert lines[3].split() == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    assert lines[4].split()[:4] == ["AgentConnected", "True", "Heartbeat", "60m"]
    assert lines[4].endswith("…") and len(lines[4]) < 120
    assert lines[5].split()[:4] == ["Ready", "True", "Ready", "5m"]
    assert lines[6] == (
        "Agent:       at 10.0.0.5:8443, version 0.1.0, kernel 6.1.0, boot b0, heartbeat 12s "
        "ago, 2 applications, memory 512.0 MiB (256.0 MiB free)"
    )
    assert lines[7] == (
        "Paging:      LU lu-7 (1280Mi), swap active on /dev/vdc (639.0 MiB of 640.0 MiB)"
    )
    assert lines[8] == (
        "Hibernation: last run Resumed, requested 10m ago, image 300.0 MiB, resumed 5m ago"
    )
    assert lines[9] == "Restart:     none under way"
    assert lines[10] == "Hibernation images:"
    assert lines[11].split() == ["NAME", "STATE", "SIZE", "NODE", "AGE"]
    assert lines[12].split() == ["web-1-x", "Captured", "300.0", "MiB", "node-a", "2m"]
    bare = {"metadata": {"namespace": "shop", "name": "db"}, "spec": {}, "status": {}}
    lines = status.render(bare, "the server does not serve hibernationimages", NOW)
    assert "VM:          - (not running on a node)" in lines
    assert "  none yet (the operator has not reconciled this Partition)" in lines
    assert "Agent:       no report yet" in lines
    assert "Paging:      none (spec.paging is not set: this partition cannot hibernate)" in lines
    assert "Hibernation: no run reported" in lines
    assert lines[-1] == "  the server does not serve hibernationimages"
