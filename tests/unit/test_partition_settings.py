"""The agent gateway's command-line settings: where it listens and the URL agents are given."""

from __future__ import annotations

import pytest

from lparkube import cli
from lparkube.config import Address, LeaseConfig, Settings


def settings(*argv: str) -> Settings:
    return cli.settings_from(cli.build_parser().parse_args(["run", *argv]))


def test_gateway_defaults_follow_the_lease_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    default = settings()
    assert default.agent_gateway_address == Address("", 8081)
    assert default.agent_gateway_url == "https://lparkube-agent-gateway.lparkube-system.svc:8081"
    moved = settings("--lease-namespace", "ops")
    assert moved.agent_gateway_url == "https://lparkube-agent-gateway.ops.svc:8081"


def test_gateway_can_be_placed_or_disabled() -> None:
    placed = settings(
        "--agent-gateway-address", "127.0.0.1:18081",
        "--agent-gateway-url", "http://127.0.0.1:18081",
    )  # fmt: skip
    assert placed.agent_gateway_address == Address("127.0.0.1", 18081)
    assert placed.agent_gateway_url == "http://127.0.0.1:18081"
    assert settings("--agent-gateway-address", "0").agent_gateway_address is None


def test_embedded_settings_serve_no_gateway_unless_asked() -> None:
    embedded = Settings(lease=LeaseConfig(identity="in-process"))
    assert embedded.agent_gateway_address is None
