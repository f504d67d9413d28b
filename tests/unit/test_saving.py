"""SaveEvent domain: targets, instruction, result shaping, summary, conditions, resume."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from lparkube.domain import saving
from lparkube.domain.conditions import FALSE, TRUE, UNKNOWN

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def partition(
    name: str,
    namespace: str = "tenant",
    *,
    node: str = "node-a",
    endpoint: str = "10.0.0.1:8443",
    connected: bool = True,
    labels: dict | None = None,
) -> dict:
    status: dict = {
        "nodeName": node,
        "vmName": f"{name}-vm",
        "agent": {"endpoint": endpoint, "keySecretName": f"{name}-key"},
        "conditions": [
            {"type": "AgentConnected", "status": TRUE if connected else FALSE, "reason": "X"}
        ],
    }
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "labels": labels or {},
        },
        "spec": {},
        "status": status,
    }


def test_label_selector_semantics() -> None:
    labels = {"tier": "frontend", "zone": "a"}
    assert saving.selector_matches({}, labels)
    assert saving.selector_matches({"matchLabels": {"tier": "frontend"}}, labels)
    assert not saving.selector_matches({"matchLabels": {"tier": "db"}}, labels)
    expr = {"key": "zone", "operator": "In", "values": ["a", "b"]}
    assert saving.selector_matches({"matchExpressions": [expr]}, labels)
    assert not saving.selector_matches(
        {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, labels
    )
    assert saving.selector_matches(
        {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, labels
    )
    assert not saving.selector_matches(
        {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, labels
    )


def test_target_reads_partition_status() -> None:
    target = saving.target_of(partition("web-1"))
    assert target == saving.Target(
        namespace="tenant",
        name="web-1",
        node_name="node-a",
        vm_name="web-1-vm",
        endpoint="10.0.0.1:8443",
        uid="uid-web-1",
        connected=True,
        connected_message="X",
    )


def test_a_bare_partition_targets_its_own_vm() -> None:
    bare = {"metadata": {"name": "p", "namespace": "n"}}
    assert saving.target_of(bare).vm_name == "p"
    assert saving.target_of(bare).uid == ""


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ({"partitions": ["b", "zz"]}, ["b"]),
        ({"selector": {"matchLabels": {"tier": "db"}}}, ["c"]),
        ({"nodeName": "node-b"}, ["b", "c"]),
        ({"all": True}, ["a", "b", "c"]),
        ({}, []),
    ],
)
def test_select_targets(targets: dict, expected: list[str]) -> None:
    found = [
        partition("c", node="node-b", labels={"tier": "db"}),
        partition("a"),
        partition("b", node="node-b"),
    ]
    assert [t.name for t in saving.select(targets, found)] == expected


def test_missing_names_are_reported() -> None:
    chosen = saving.select({"partitions": ["a", "zz"]}, [partition("a")])
    assert saving.missing_names({"partitions": ["a", "zz"]}, chosen, "tenant") == ["zz"]


def test_all_namespaces_only_in_the_system_namespace() -> None:
    wide = {"all": True, "allNamespaces": True}
    assert saving.refusal("tenant", "lparkube-system", wide) is not None
    assert saving.refusal("lparkube-system", "lparkube-system", wide) is None
    assert saving.refusal("tenant", "lparkube-system", {"all": True}) is None
    assert saving.list_scope("lparkube-system", "lparkube-system", wide) is None
    assert saving.list_scope("tenant", "lparkube-system", {"all": True}) == "tenant"


def test_initial_entries_instruct_reachable_and_fail_the_rest() -> None:
    targets = saving.select(
        {"all": True},
        [partition("up"), partition("down", connected=False), partition("new", endpoint="")],
    )
    items = saving.initial_entries(targets, ["ghost"], "tenant", T0)
    by_name = {i["name"]: i for i in items}
    assert by_name["up"] == {
        "namespace": "tenant",
        "name": "up",
        "nodeName": "node-a",
        "outcome": "Instructed",
        "instructedTime": "2026-11-21T12:00:00Z",
    }
    assert by_name["down"]["outcome"] == "Unreachable"
    assert "AgentConnected" in by_name["down"]["message"]
    assert by_name["new"]["outcome"] == "Unreachable"
    assert "endpoint" in by_name["new"]["message"]
    assert by_name["ghost"]["outcome"] == "Failed"
    assert [i["name"] for i in items] == ["down", "ghost", "new", "up"]


def test_resume_plan_never_resends_finished_partitions() -> None:
    items = [
        {"namespace": "n", "name": "a", "outcome": "Succeeded"},
        {"namespace": "n", "name": "b", "outcome": "Instructed"},
        {"namespace": "n", "name": "c", "outcome": "Pending"},
        {"namespace": "n", "name": "d", "outcome": "Unreachable"},
        {"namespace": "n", "name": "e", "outcome": "TimedOut"},
    ]
    plan = saving.resume_plan(items)
    assert plan.attach == (("n", "b"),)
    assert plan.pending == (("n", "c"),)
    assert plan.finished == (("n", "a"), ("n", "d"), ("n", "e"))


def test_instruction_carries_the_same_id_and_bounded_wait() -> None:
    spec = {"reason": "Thermal", "applicationTimeout": "20s"}
    deadline = T0 + timedelta(seconds=7)
    body = saving.instruction("uid-1", spec, deadline, T0, wait=10)
    assert body == {
        "id": "uid-1",
        "reason": "Thermal",
        "applicationTimeoutSeconds": 20,
        "deadline": "2026-11-21T12:00:07Z",
        "waitSeconds": 7,
    }
    late = saving.instruction("uid-1", spec, deadline, T0 + timedelta(minutes=1), wait=10)
    assert late["waitSeconds"] == 0


def test_deadline_is_creation_plus_spec_deadline() -> None:
    meta = {"creationTimestamp": "2026-11-21T12:00:00Z"}
    assert saving.deadline_of(meta, {"deadline": "2m"}) == T0 + timedelta(minutes=2)
    assert saving.deadline_of(meta, {}) == T0 + timedelta(minutes=5)


AGENT_RESULT = {
    "id": "uid-1",
    "state": "Completed",
    "applications": [
        {"name": "late", "pid": 7, "priority": 20, "order": 2, "method": "Signal",
         "outcome": "Saved", "durationMillis": 5, "message": ""},
        {"name": "hang", "pid": 8, "priority": 10, "order": 1, "method": "Command",
         "outcome": "TimedOut", "durationMillis": 1000, "message": "no answer"},
        {"name": "editor", "pid": 9, "priority": 10, "order": 1, "method": "SimulatedInput",
         "outcome": "Saved", "durationMillis": 130, "message": ""},
    ],
}  # fmt: skip


def test_applications_in_run_order_clamped_to_schema() -> None:
    apps = saving.application_results(AGENT_RESULT)
    assert [a["name"] for a in apps] == ["editor", "hang", "late"]
    assert apps[0] == {
        "name": "editor",
        "pid": 9,
        "priority": 10,
        "order": 1,
        "method": "SimulatedInput",
        "outcome": "Saved",
        "durationMillis": 130,
    }
    odd = saving.application_result({"name": "x", "outcome": "Exploded", "method": "Telepathy"})
    assert odd["outcome"] == "Failed"
    assert "method" not in odd
    assert "Exploded" in odd["message"]
    long = saving.application_result({"name": "x", "outcome": "Failed", "message": "m" * 5000})
    assert len(long["message"]) == saving.MAX_MESSAGE


def test_a_timed_out_app_fails_the_partition_but_others_are_recorded_saved() -> None:
    item = {"namespace": "n", "name": "p", "outcome": "Instructed"}
    done = saving.with_agent_result(item, AGENT_RESULT, T0)
    assert done["outcome"] == "Failed"
    assert "hang (TimedOut)" in done["message"]
    assert done["completionTime"] == "2026-11-21T12:00:00Z"
    assert [a["outcome"] for a in done["applications"]] == ["Saved", "TimedOut", "Saved"]


def test_running_result_keeps_partition_instructed() -> None:
    item = {"namespace": "n", "name": "p", "outcome": "Instructed"}
    running = saving.with_agent_result(item, {**AGENT_RESULT, "state": "Running"}, T0)
    assert running["outcome"] == "Instructed"
    assert len(running["applications"]) == 3


def test_partition_verdicts() -> None:
    assert saving.partition_verdict([])[0] == "Succeeded"
    saved = [{"name": "a", "outcome": "Saved"}, {"name": "b", "outcome": "Skipped"}]
    assert saving.partition_verdict(saved) == ("Succeeded", "1 of 2 applications saved")


def test_deadline_marks_reached_timed_out_and_silent_unreachable() -> None:
    item = {"namespace": "n", "name": "p", "outcome": "Instructed"}
    assert saving.at_deadline(item, True, T0)["outcome"] == "TimedOut"
    assert saving.at_deadline(item, False, T0)["outcome"] == "Unreachable"
    done = {**item, "outcome": "Succeeded"}
    assert saving.at_deadline(done, True, T0) == done


def test_deadline_message_names_the_last_failed_attempt() -> None:
    item = {"namespace": "n", "name": "p", "outcome": "Instructed"}
    refused = "n/p: cannot reach 10.0.0.5:8443: connection refused"
    timed_out = saving.at_deadline(item, True, T0, refused)
    assert (timed_out["outcome"], timed_out["message"]) == (
        "TimedOut",
        "the deadline passed before it finished; last attempt: " + refused,
    )
    assert saving.at_deadline(item, True, T0)["message"] == (
        "the deadline passed before it finished"
    )
    silent = saving.at_deadline(item, False, T0, refused)["message"]
    assert silent == "the agent never answered before the deadline; last attempt: " + refused


def test_summary_counts() -> None:
    items = [
        {"outcome": "Succeeded", "applications": [{"outcome": "Saved"}, {"outcome": "Saved"}]},
        {"outcome": "Failed", "applications": [{"outcome": "Saved"}, {"outcome": "TimedOut"}]},
        {"outcome": "Instructed"},
        {"outcome": "Unreachable"},
    ]
    assert saving.summary(items) == {
        "partitions": 4,
        "pending": 1,
        "succeeded": 1,
        "failed": 2,
        "applications": 4,
        "applicationsSaved": 3,
        "applicationsFailed": 1,
    }


@pytest.mark.parametrize(
    ("outcomes", "pods_bad", "reason"),
    [
        (["Succeeded", "Succeeded"], 0, "Succeeded"),
        (["Succeeded", "Failed"], 0, "PartiallySucceeded"),
        (["Unreachable", "Failed"], 0, "Failed"),
        (["Succeeded", "TimedOut"], 0, "DeadlineExceeded"),
        (["Succeeded"], 1, "PartiallySucceeded"),
        ([], 0, "NoTargets"),
        ([], 1, "Failed"),
    ],
)
def test_completion_reason(outcomes: list[str], pods_bad: int, reason: str) -> None:
    items = [{"outcome": o} for o in outcomes]
    assert saving.completion_reason(saving.summary(items), items, pods_bad) == reason


def test_conditions() -> None:
    counts = saving.summary([{"outcome": "Succeeded"}, {"outcome": "Instructed"}])
    complete, succeeded = saving.running_conditions(counts)
    assert (complete.status, succeeded.status) == (FALSE, UNKNOWN)
    complete, succeeded = saving.final_conditions("Succeeded", counts)
    assert (complete.status, complete.reason, succeeded.status) == (TRUE, "Succeeded", TRUE)
    complete, succeeded = saving.final_conditions("DeadlineExceeded", counts)
    assert (complete.status, succeeded.status) == (TRUE, FALSE)


def test_nothing_matched_completes_succeeded_with_a_message_naming_the_targets() -> None:
    counts = saving.summary([])
    targets = saving.describe_targets({"selector": {"matchLabels": {"tier": "db"}}}, "shop")
    complete, succeeded = saving.final_conditions("NoTargets", counts, 0, targets)
    message = "no Partition matched the targets (selector tier=db in namespace shop); "
    message += "nothing was instructed"
    assert (complete.status, complete.reason, complete.message) == (TRUE, "NoTargets", message)
    assert (succeeded.status, succeeded.reason) == (TRUE, "NoTargets")
    complete, succeeded = saving.final_conditions("Failed", counts, 1, targets)
    assert complete.message == message + "; 1 pod save hooks failed"
    assert succeeded.status == FALSE


@pytest.mark.parametrize(
    ("targets", "scope", "text"),
    [
        ({"nodeName": "node-a", "allNamespaces": True}, None, "nodeName node-a in every namespace"),
        ({"all": True}, "shop", "all in namespace shop"),
        ({"partitions": ["a", "b"]}, "shop", "partitions a, b in namespace shop"),
        ({"selector": {}}, "shop", "selector {} (every Partition) in namespace shop"),
        (
            {
                "selector": {
                    "matchLabels": {"tier": "web", "app": "shop"},
                    "matchExpressions": [
                        {"key": "zone", "operator": "In", "values": ["a", "b"]},
                        {"key": "env", "operator": "NotIn", "values": ["dev"]},
                        {"key": "gpu", "operator": "Exists"},
                        {"key": "legacy", "operator": "DoesNotExist"},
                    ],
                }
            },
            "shop",
            "selector app=shop,tier=web,zone in (a,b),env notin (dev),gpu,!legacy "
            "in namespace shop",
        ),
    ],
)
def test_targets_are_described_as_kubectl_writes_them(
    targets: dict, scope: str | None, text: str
) -> None:
    assert saving.describe_targets(targets, scope) == text


def test_a_refused_event_is_complete_and_not_succeeded() -> None:
    complete, succeeded = saving.refused_conditions("allNamespaces outside the system namespace")
    assert (complete.type, complete.status, complete.reason) == ("Complete", TRUE, "Refused")
    assert (succeeded.type, succeeded.status, succeeded.reason) == ("Succeeded", FALSE, "Refused")


def test_finished_status() -> None:
    assert not saving.finished(None)
    running = {"conditions": [{"type": "Complete", "status": "False", "reason": "InProgress"}]}
    assert not saving.finished(running)
    refused = {"conditions": [{"type": "Complete", "status": "True", "reason": "Refused"}]}
    assert saving.finished(refused)
    # refused before Complete became True for it: stored so, and still finished
    stored_before = {"conditions": [{"type": "Complete", "status": "False", "reason": "Refused"}]}
    assert saving.finished(stored_before)
    assert saving.finished({"conditions": [{"type": "Complete", "status": "True"}]})


@pytest.mark.parametrize(
    ("annotation", "port", "path", "error"),
    [
        ("http://:8080/save", 8080, "/save", ""),
        ("http://:9000", 9000, "/", ""),
        ("exec:/bin/sync", 0, "/", "exec"),
        ("http://other:80/x", 0, "/", "unrecognised"),
        ("http://:70000/x", 0, "/", "unrecognised"),
    ],
)
def test_save_hook_annotation(annotation: str, port: int, path: str, error: str) -> None:
    hook = saving.parse_save_hook(annotation)
    assert (hook.port, hook.path) == (port, path)
    assert error in hook.error
    assert bool(hook.error) == bool(error)


def test_snapshot_names_are_deterministic_and_bounded() -> None:
    assert saving.snapshot_name("nightly", "db-1") == "db-1-nightly"
    long = saving.snapshot_name("s" * 200, "v" * 200)
    assert len(long) <= 253
    assert long == saving.snapshot_name("s" * 200, "v" * 200)
    body = saving.snapshot_body("snap", "p" * 80, "vm", "se")
    assert len(body["metadata"]["labels"]["lparkube.io/partition"]) <= 63
    assert body["spec"]["source"] == {
        "apiGroup": "kubevirt.io",
        "kind": "VirtualMachine",
        "name": "vm",
    }


# --- result size ------------------------------------------------------------------------------


def app(name: str, outcome: str, message: str = "ok") -> dict:
    return {"name": name, "pid": 1, "priority": 1, "order": 1, "method": "HTTP",
            "outcome": outcome, "durationMillis": 5, "message": message}  # fmt: skip


def entry(apps: list[dict], message: str = "") -> dict:
    item = {"namespace": "tenant-a", "name": "db-1", "nodeName": "node-a",
            "outcome": "Failed", "instructedTime": "2026-11-21T10:00:00Z",
            "completionTime": "2026-11-21T10:00:01Z", "applications": apps}  # fmt: skip
    return {**item, "message": message} if message else item


def test_a_result_within_its_budget_is_kept_whole() -> None:
    item = entry([app("a", "Saved"), app("b", "Failed", "x" * 500)], "y" * 900)
    assert saving.fit_entry(item, 10_000) == item


def test_saved_applications_fold_into_counts_before_failures() -> None:
    apps = [app(f"ok-{i}", "Saved", "z" * 300) for i in range(20)] + [app("bad", "TimedOut")]
    fitted = saving.fit_entry(entry(apps, "m" * 1000), 1000)

    assert [a["name"] for a in fitted["applications"]] == ["bad"]
    assert fitted["omittedApplications"] == {"Saved": 20}
    assert len(fitted["message"]) == 2 * saving.SHORT_MESSAGE
    assert saving.application_outcomes(fitted) == {"Saved": 20, "TimedOut": 1}
    assert len(json.dumps(fitted, separators=(",", ":"))) <= 1000


def test_under_a_tiny_budget_every_application_is_a_count() -> None:
    apps = [app(f"bad-{i}", "Failed", "e" * 1000) for i in range(128)]
    fitted = saving.fit_entry(entry(apps), saving.entry_budget(saving.MAX_TARGETS))
    assert "applications" not in fitted
    assert fitted["omittedApplications"] == {"Failed": 128}
    counts = saving.summary([fitted])
    assert (counts["applications"], counts["applicationsFailed"]) == (128, 128)


def test_the_worst_results_of_the_most_targets_fit_the_budget() -> None:
    apps = [app(f"app-{i:03}", "Failed", "e" * 1024) for i in range(saving.MAX_APPLICATIONS)]
    budget = saving.entry_budget(saving.MAX_TARGETS)
    fitted = [saving.fit_entry(entry(apps, "m" * 1024), budget) for _ in range(saving.MAX_TARGETS)]
    assert len(json.dumps(fitted, separators=(",", ":"))) <= saving.RESULTS_BUDGET_BYTES


def test_too_many_targets_is_refused_with_what_to_do() -> None:
    assert saving.too_many_targets(saving.MAX_TARGETS) is None
    message = saving.too_many_targets(saving.MAX_TARGETS + 1)
    assert message is not None and "Split it" in message


def test_the_cached_fields_of_a_partition_target_it_as_the_whole_object_does() -> None:
    whole = partition("db-1", "tenant-a", endpoint="10.0.0.5:8443", labels={"tier": "db"})
    whole["metadata"].update(uid="u", resourceVersion="9")
    whole["status"]["conditions"].append({"type": "Ready", "status": "True"})
    whole["status"]["addresses"] = [{"ip": "10.0.0.5"}]
    cached = saving.target_fields(whole)
    assert saving.target_of(cached) == saving.target_of(whole)
    assert cached["metadata"] == {
        "namespace": "tenant-a",
        "name": "db-1",
        "uid": "u",
        "labels": {"tier": "db"},
    }
    assert [c["type"] for c in cached["status"]["conditions"]] == ["AgentConnected"]
    assert "addresses" not in cached["status"]
