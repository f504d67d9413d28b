"""Pure parts of the guest agent: priority groups, input table, VMCOREINFO, results, parsing."""

from __future__ import annotations

import ast
import json
import threading
import time
from pathlib import Path

import pytest

from lparkube_agent import config as configs
from lparkube_agent.cli import main as cli_main
from lparkube_agent.inputtable import InputTable, encode_token
from lparkube_agent.journal import Journal
from lparkube_agent.methods import FAILED, SAVED, SKIPPED, TIMED_OUT, Outcome, SaveContext
from lparkube_agent.registry import Registration, Table, normalize_signal, parse_registration
from lparkube_agent.report import parse_vmcoreinfo
from lparkube_agent.runwrap import default_watch
from lparkube_agent.saves import (
    COMPLETED,
    SaveRequest,
    SaveRun,
    SaveStore,
    app_result,
    parse_save_request,
    parse_time,
    priority_groups,
)
from lparkube_agent.version import VERSION


def reg(name: str, priority: int, pid: int = 100, method: str = "Signal") -> Registration:
    return Registration(name=name, pid=pid, priority=priority, method=method)


# --- priority ---------------------------------------------------------------------------------


def test_priority_groups_lowest_first_equal_together() -> None:
    # The seed's example table: P2 first, then P1, P4, P0, P3.
    regs = [reg("P0", 4), reg("P1", 2), reg("P2", 1), reg("P3", 5), reg("P4", 3), reg("P5", 2)]
    groups = [[r.name for r in g] for g in priority_groups(regs)]
    assert groups == [["P2"], ["P1", "P5"], ["P4"], ["P0"], ["P3"]]


def test_priority_groups_of_nothing_is_empty() -> None:
    assert priority_groups([]) == []


def run_with(regs: list[Registration], save, timeout: float = 1.0, deadline=None) -> dict:  # type: ignore[no-untyped-def]
    run = SaveRun(SaveRequest("e1", "Manual", timeout, deadline, 0))
    run.execute(regs, save)
    return run.result()


def test_an_outcome_is_journaled_before_anyone_can_see_it() -> None:
    """A caller that saw "Saved" and then lost the agent (killed) must find it in the journal:
    otherwise the restarted agent saves the app again."""
    seen_while_journaling: list[tuple[list, list]] = []
    box: list[SaveRun] = []

    def journal() -> None:
        run = box[0]
        shown = [a["name"] for a in run.result()["applications"]]
        kept = [a["name"] for a in run.record().applications]
        seen_while_journaling.append((shown, kept))

    run = SaveRun(SaveRequest("e2", "Manual", 1.0, None, 0), on_change=journal)
    box.append(run)
    run.execute([reg("first", 1)], lambda r, ctx: Outcome(SAVED, "ok"))
    assert seen_while_journaling[0] == ([], ["first"])  # kept, not yet shown
    assert run.result()["state"] == "Completed"
    assert [a["name"] for a in run.result()["applications"]] == ["first"]


def test_run_orders_groups_and_reports_every_outcome() -> None:
    calls: list[tuple[str, float]] = []
    lock = threading.Lock()

    def save(r: Registration, ctx: SaveContext) -> Outcome:
        with lock:
            calls.append((r.name, time.monotonic()))
        if r.name == "hang":
            time.sleep(2)
        if r.name == "crash":
            raise RuntimeError("boom")  # a method that raises is still a recorded outcome
        return Outcome(SAVED, "ok")

    regs = [reg("late", 9), reg("hang", 1), reg("fast", 1), reg("mid", 5), reg("crash", 5)]
    start = time.monotonic()
    result = run_with(regs, save, timeout=0.3)
    assert time.monotonic() - start < 1.5  # 0.3 s timeout + 0.5 s grace, not the 2 s hang
    apps = {a["name"]: a for a in result["applications"]}
    assert result["state"] == COMPLETED and "completedAt" in result
    assert apps["hang"]["outcome"] == TIMED_OUT and apps["fast"]["outcome"] == SAVED
    assert apps["crash"]["outcome"] == FAILED and "boom" in apps["crash"]["message"]
    assert apps["late"]["outcome"] == SAVED
    assert [apps[n]["order"] for n in ("fast", "hang", "crash", "mid", "late")] == [1, 1, 2, 2, 3]
    names = [a["name"] for a in result["applications"]]
    assert names == ["fast", "hang", "crash", "mid", "late"]
    assert [n for n, _ in sorted(calls, key=lambda c: c[1])][-1] == "late"


def test_past_deadline_skips_the_remaining_groups() -> None:
    result = run_with([reg("a", 1)], lambda r, c: Outcome(SAVED), deadline=time.time() - 1)
    assert result["applications"][0]["outcome"] == SKIPPED


def test_app_result_shape() -> None:
    entry = app_result(reg("editor", 10, 42, "SimulatedInput"), 1, Outcome(FAILED, "x"), 130.7)
    assert entry == {
        "name": "editor",
        "pid": 42,
        "priority": 10,
        "order": 1,
        "method": "SimulatedInput",
        "outcome": "Failed",
        "durationMillis": 130,
        "message": "x",
    }


# --- input table ------------------------------------------------------------------------------


def test_shipped_defaults_for_nano_vim_emacs() -> None:
    table = InputTable()
    assert [encode_token(k) for k in table.lookup("nano").keys] == [b"\x0f", b"\r"]
    assert [encode_token(k) for k in table.lookup("vim").keys] == [b"\x1b", b":w", b"\r"]
    assert [encode_token(k) for k in table.lookup("emacs").keys] == [b"\x18", b"\x13"]


def test_lookup_by_alias_and_first_matching_name() -> None:
    table = InputTable()
    assert table.lookup("vim.basic").program == "vim"
    assert table.lookup("unknown", "emacs-nox").program == "emacs"
    assert table.lookup("bash") is None


def test_admin_file_overrides_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "input-table.json"
    path.write_text(
        json.dumps(
            {
                "nano": {"keys": ["C-s"], "settleMillis": 100},
                "joe": {"keys": ["C-k", "d", "Enter"], "aliases": ["jstar"]},
            }
        )
    )
    table = InputTable.load(path)
    assert table.lookup("nano").keys == ("C-s",)
    assert table.lookup("nano").settle_millis == 100
    assert table.lookup("jstar").program == "joe"
    assert table.lookup("vim").keys == ("Esc", ":w", "Enter")  # defaults stay
    assert InputTable.load(tmp_path / "missing.json").lookup("nano").keys == ("C-o", "Enter")


@pytest.mark.parametrize(
    "content",
    ['{"nano": {"keys": []}}', '{"nano": "C-s"}', "[1]", "{bad", '{"x": {"keys": ["C-1"]}}'],
)
def test_invalid_admin_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        InputTable.load(path)


def test_key_tokens() -> None:
    assert encode_token("M-x") == b"\x1bx"
    assert encode_token("C-\\") == b"\x1c"
    assert encode_token("Tab") == b"\t"
    assert encode_token(":wq") == b":wq"


# --- VMCOREINFO and reports -------------------------------------------------------------------


def test_vmcoreinfo_parsing() -> None:
    assert parse_vmcoreinfo("1f5c8b000 1000\n") == {"address": "0x1f5c8b000", "size": 4096}
    assert parse_vmcoreinfo("0x10 0x20") == {"address": "0x10", "size": 32}
    for bad in ("", "1f5c8b000", "zz 10", "10 0"):
        assert parse_vmcoreinfo(bad) is None


# --- parsing requests and registrations -------------------------------------------------------


def test_save_request_defaults_and_errors() -> None:
    request = parse_save_request({"id": "e1"})
    assert (request.reason, request.app_timeout, request.wait, request.deadline) == (
        "Other",
        30.0,
        25.0,
        None,
    )
    for bad in (
        [],
        {},
        {"id": ""},
        {"id": 5},
        {"id": "e", "applicationTimeoutSeconds": True},
        {"id": "e", "applicationTimeoutSeconds": -1},
        {"id": "e", "waitSeconds": "5"},
        {"id": "e", "deadline": "tomorrow"},
        {"id": "e", "reason": {"x": 1}},
    ):
        with pytest.raises(ValueError):
            parse_save_request(bad)


def test_rfc3339_times() -> None:
    assert parse_time("2026-11-21T22:10:00Z") == 1795299000.0
    assert parse_time("2026-11-21T23:10:00.5+01:00") == 1795299000.5


def test_registration_validation() -> None:
    app = parse_registration({"name": "db", "pid": 7, "priority": 3, "method": "signal"})
    assert (app.method, app.signal) == ("Signal", "SIGUSR1")
    assert normalize_signal("usr2") == "SIGUSR2"
    http = {"name": "x", "pid": 7, "method": "HTTP", "url": "http://127.0.0.1:9/save"}
    assert parse_registration(http).url == "http://127.0.0.1:9/save"
    for bad in (
        {"name": "x", "pid": 7, "method": "HTTP", "url": "http://10.0.0.1/save"},
        {"name": "x", "pid": 7, "method": "HTTP", "url": "file:///etc/passwd"},
        {"name": "x", "pid": 7, "method": "Signal", "signal": "SIGKILL"},
        {"name": "x", "pid": 7, "method": "Command", "command": []},
        {"name": "x", "pid": 7, "method": "UnixSocket", "socket": "relative.sock"},
        {"name": "x", "pid": True, "method": "Signal"},
        {"name": "", "pid": 7, "method": "Signal"},
        {"name": "x", "pid": 7, "method": "Telepathy"},
        {"name": "x", "pid": 7, "priority": 10**9, "method": "Signal"},
    ):
        with pytest.raises(ValueError):
            parse_registration(bad)


def test_default_watch_is_the_last_operand() -> None:
    assert default_watch(["nano", "-w", "notes.txt"], "/home/u") == "/home/u/notes.txt"
    assert default_watch(["vim", "/etc/x", "+10"], "/") == "/etc/x"
    assert default_watch(["vim"], "/") is None


# --- the table --------------------------------------------------------------------------------


def test_table_persists_and_prunes(tmp_path: Path) -> None:
    path = tmp_path / "registrations.json"
    living = {1: 11, 2: 22}
    table = Table(path, alive=lambda pid, started: living.get(pid) == started)
    table.add(Registration("a", 1, 5, "Signal", started=11))
    table.add(Registration("b", 2, 5, "Signal", started=22))
    again = Table(path, alive=lambda pid, started: living.get(pid) == started)
    assert sorted(r.name for r in again.entries()) == ["a", "b"]
    living[2] = 99  # pid 2 was reused by another process
    assert [r.name for r in again.prune()] == ["b"]
    assert [r.name for r in Table(path, alive=lambda p, s: True).entries()] == ["a"]


def test_unreadable_table_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "registrations.json"
    path.write_text("{torn")
    assert Table(path).entries() == []
    assert list(tmp_path.glob("registrations.json.corrupt-*"))


# --- config -----------------------------------------------------------------------------------


def write_tls_files(directory: Path) -> None:
    for name in configs.TLS_FILES.values():
        (directory / name).write_text("PEM")


def test_config_file_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"k" * 32)
    write_tls_files(tmp_path)
    settings = {
        "partition": "tenant-a/web-1",
        "listen": "[::]:8443",
        "operatorURL": "https://gw:8081",
        "reportIntervalSeconds": 5,
    }
    (tmp_path / "config.json").write_text(json.dumps(settings))
    config = configs.load(tmp_path / "config.json", {"stateDir": "/tmp/s", "socket": None})
    assert config.tls.ca == tmp_path / "ca.crt" and config.tls.key == tmp_path / "tls.key"
    assert config.key == b"k" * 32 and config.listen == ("::", 8443)
    assert config.state_dir == Path("/tmp/s") and config.report_interval == 5.0
    assert config.socket == Path(configs.DEFAULT_SOCKET)
    (tmp_path / "key").write_text("ab" * 32 + "\n")
    assert configs.load(tmp_path / "config.json").key == b"\xab" * 32


def test_the_agent_speaks_only_tls(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"k" * 32)
    write_tls_files(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"partition": "a/b", "operatorURL": "http://gw:8081"}))
    with pytest.raises(ValueError, match="https://"):
        configs.load(config)
    config.write_text(json.dumps({"partition": "a/b"}))
    (tmp_path / "tls.key").unlink()
    with pytest.raises(ValueError, match="tlsKeyFile: no file"):
        configs.load(config)


def test_config_errors(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"short")
    (tmp_path / "config.json").write_text(json.dumps({"partition": "tenant-a/web-1"}))
    with pytest.raises(ValueError):
        configs.load(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"partition": "nope"}))
    with pytest.raises(ValueError):
        configs.load(tmp_path / "config.json")
    with pytest.raises(ValueError):
        configs.parse_listen("8443")


# --- the guest's Python -----------------------------------------------------------------------

AGENT_DIR = Path(__file__).resolve().parents[2] / "guest-agent" / "lparkube_agent"
NEWER_THAN_39 = {"UTC", "pairwise", "TaskGroup", "Self", "TypeAlias", "kw_only", "slots", "strict"}


@pytest.mark.parametrize("module", sorted(p.name for p in AGENT_DIR.glob("*.py")))
def test_agent_code_runs_on_python_39(module: str) -> None:
    """Guests may have Python 3.9: no newer syntax, no newer library names."""
    source = (AGENT_DIR / module).read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    if "def " in source:  # `X | None` annotations are evaluated at runtime without it
        assert "from __future__ import annotations" in source
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords}
    assert not names & NEWER_THAN_39  # also catches zip(strict=...) and dataclass(slots=...)
    assert not any(isinstance(n, ast.Match) for n in ast.walk(tree))


def test_cli_version_and_missing_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["version"]) == 0
    assert capsys.readouterr().out.strip() == VERSION
    assert cli_main(["serve", "--config", "/nonexistent/a.json", "--config", "/nope.json"]) == 2
    assert "no config file" in capsys.readouterr().err


# --- the save journal -------------------------------------------------------------------------


def journaled_store(path: Path, calls: list[str]) -> SaveStore:
    def save(r: Registration, ctx: SaveContext) -> Outcome:
        calls.append(r.name)
        return Outcome(SAVED, "ok")

    return SaveStore(lambda: [reg("a", 1, pid=1), reg("b", 2, pid=2)], save, journal=Journal(path))


def test_a_new_store_answers_a_kept_id_without_saving(tmp_path: Path) -> None:
    calls: list[str] = []
    first, _ = journaled_store(tmp_path / "saves.json", calls).submit(
        SaveRequest("s1", "Power", 1.0, None, 0)
    )
    assert first.done.wait(5)
    again, new = journaled_store(tmp_path / "saves.json", calls).submit(
        SaveRequest("s1", "Power", 1.0, None, 0)
    )
    assert (new, calls) == (False, ["a", "b"])
    assert again.result()["applications"] == first.result()["applications"]


def test_an_interrupted_run_saves_only_the_apps_without_an_outcome(tmp_path: Path) -> None:
    path = tmp_path / "saves.json"
    kept = app_result(reg("a", 1, pid=1), 1, Outcome(SAVED, "ok"), 5)
    request = {"id": "s2", "reason": "Power", "app_timeout": 1.0, "deadline": None, "wait": 0}
    record = {"request": request, "state": "Running", "started_at": 1.0,
              "completed_at": None, "applications": [kept]}  # fmt: skip
    path.write_text(json.dumps({"version": 1, "runs": [record]}))
    calls: list[str] = []
    run, new = journaled_store(path, calls).submit(SaveRequest("s2", "Power", 1.0, None, 0))
    assert run.done.wait(5)
    assert (new, calls) == (True, ["b"])
    assert [a["name"] for a in run.result()["applications"]] == ["a", "b"]
    stored = json.loads(path.read_text())["runs"]
    assert [(r["request"]["id"], r["state"]) for r in stored] == [("s2", COMPLETED)]


@pytest.mark.parametrize(
    "runs",
    [
        [{"request": "x"}],
        [{"request": {"id": 3}, "state": "Completed", "started_at": 1, "completed_at": 2,
          "applications": []}],
        [{"request": {"id": "s"}, "state": "Completed", "started_at": 1, "completed_at": 2,
          "applications": [{"name": "a"}]}],
        [{"request": {"id": "s", "bogus": 1}, "state": "Completed", "started_at": 1,
          "completed_at": 2, "applications": []}],
        "not a list",
    ],
)  # fmt: skip
def test_malformed_journal_records_are_dropped_and_the_id_saves_afresh(
    tmp_path: Path, runs: object
) -> None:
    path = tmp_path / "saves.json"
    path.write_text(json.dumps({"version": 1, "runs": runs}))
    calls: list[str] = []
    run, new = journaled_store(path, calls).submit(SaveRequest("s", "Power", 1.0, None, 0))
    assert run.done.wait(5)
    assert (new, calls) == (True, ["a", "b"])


def test_an_unreadable_journal_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "saves.json"
    path.write_text("{torn")
    assert Journal(path).load() == []
    assert [p.name.startswith("saves.json.corrupt-") for p in tmp_path.iterdir()] == [True]
