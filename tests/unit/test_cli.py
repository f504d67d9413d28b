"""`lparkube` command-line parsing into Settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lparkube import cli
from lparkube.config import Address, parse_address
from lparkube.version import version


def settings(*argv: str):
    return cli.settings_from(cli.build_parser().parse_args(["run", *argv]))


def test_run_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    s = settings()

    assert s.kubeconfig is None
    assert s.clusterwide and s.namespaces == ()
    assert s.health_address == Address("", 8080)
    assert s.metrics_address == Address("", 9090)
    assert (s.lease.namespace, s.lease.name) == ("lparkube-system", "lparkube-operator")
    assert s.identity.endswith(f"-{os.getpid()}")
    assert (s.lease.duration, s.lease.renew_interval) == (15.0, 5.0)
    assert (s.log_level, s.log_format) == ("info", "json")


def test_lease_namespace_defaults_to_the_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ops")

    assert settings().lease.namespace == "ops"


def test_run_with_every_option(tmp_path: Path) -> None:
    (tmp_path / "kc").write_text("")
    s = settings(
        "--kubeconfig", str(tmp_path / "kc"), "--namespace", "a", "-n", "b", "-n", "a",
        "--health-address", "127.0.0.1:18080", "--metrics-address", "0",
        "--lease-namespace", "ops", "--lease-name", "l", "--identity", "me",
        "--lease-duration", "30", "--lease-renew-interval", "3",
        "--lease-renew-deadline", "20", "--lease-retry-interval", "1",
        "--log-level", "debug", "--log-format", "text",
    )  # fmt: skip

    assert s.kubeconfig == tmp_path / "kc"
    assert s.namespaces == ("a", "b") and not s.clusterwide
    assert s.health_address == Address("127.0.0.1", 18080)
    assert s.metrics_address is None
    assert (s.lease.namespace, s.lease.name, s.identity) == ("ops", "l", "me")
    assert (s.lease.duration, s.lease.renew_interval) == (30.0, 3.0)
    assert (s.lease.renew_deadline, s.lease.retry_interval) == (20.0, 1.0)
    assert (s.log_level, s.log_format) == ("debug", "text")


def test_agent_network_policy_is_off_unless_asked() -> None:
    assert not settings().agent_network_policy
    s = settings(
        "--agent-network-policy",
        "--operator-pod-labels=app.kubernetes.io/name=lparkube, component=operator,",
    )
    assert s.agent_network_policy
    assert s.operator_pod_labels == (
        ("app.kubernetes.io/name", "lparkube"),
        ("component", "operator"),
    )


def test_namespace_and_all_namespaces_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--namespace", "a", "--all-namespaces"])

    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--health-address", "8080"], "expected HOST:PORT"),
        (["--metrics-address", ":99999"], "port out of range"),
        (["--lease-renew-interval", "12"], "renew interval < renew deadline < duration"),
        (["--identity", ""], "identity must not be empty"),
        (["--kubeconfig", "/no/such/file"], "no such file"),
        (["--log-format", "xml"], "invalid choice"),
        (["--agent-network-policy"], "--agent-network-policy needs --operator-pod-labels"),
        (["--operator-pod-labels", "app"], "expected KEY=VALUE labels, got 'app'"),
        (["--operator-pod-labels", "a=b,bad key=x"], "got 'bad key=x'"),
        (["--operator-pod-labels", "a=" + "v" * 64], "expected KEY=VALUE labels"),
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", *argv])

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_command_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])

    assert exit_info.value.code == 2


def test_version_prints_the_installed_version(capsys) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == version() != ""


def test_the_version_option_prints_the_same_and_needs_no_command(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])

    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == version() != ""


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (":8080", Address("", 8080)),
        ("0.0.0.0:1", Address("0.0.0.0", 1)),
        ("[::1]:9090", Address("::1", 9090)),
        ("localhost:0", Address("localhost", 0)),
        ("0", None),
    ],
)
def test_parse_address(text: str, address: Address | None) -> None:
    assert parse_address(text) == address


def test_address_renders_ipv6_in_brackets() -> None:
    assert str(Address("::1", 80)) == "[::1]:80"
    assert str(Address("", 80)) == ":80"
