"""AgentClient against a local aiohttp agent that speaks the signed protocol."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from lparkube.adapters.guest_agent import (
    AgentClient,
    AgentError,
    AgentKeyMissingError,
    AgentTarget,
    load_agent_key,
)
from lparkube_agent import protocol

KEY = bytes(range(32))
PARTITION = "tenant-a/web-1"
RESULT = {"id": "se-1", "state": "Completed", "applications": []}


class FakeAgent:
    """Verifies each request like a real agent; ``mode`` chooses how it answers."""

    def __init__(self, mode: str = "ok", key: bytes = KEY) -> None:
        self.mode = mode
        self.key = key
        self.verifier = protocol.Verifier(KEY, PARTITION)
        self.requests: list[tuple[str, dict, str]] = []  # (path, body, nonce)
        self.saves = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/save", self.save)
        app.router.add_get("/v1/report", self.report)
        return app

    async def _verify(self, request: web.Request) -> tuple[protocol.Signed, bytes]:
        body = await request.read()
        message = protocol.Message(
            protocol.TO_AGENT, request.method, request.path_qs, PARTITION, body
        )
        return self.verifier.verify(message, request.headers), body

    def _answer(self, signed: protocol.Signed, status: int, payload: Any) -> web.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = protocol.sign_response(self.key, signed, status, body).headers()
        if self.mode == "unsigned":
            headers = {}
        if self.mode == "replayed-nonce":
            headers = protocol.sign_response(
                self.key, protocol.Signed(PARTITION, 0, "0" * 32, ""), status, body
            ).headers()
        return web.Response(status=status, body=body, headers=headers)

    async def save(self, request: web.Request) -> web.Response:
        try:
            signed, body = await self._verify(request)
        except protocol.AuthError as exc:
            error = {"error": exc.reason, "message": str(exc)}
            return web.json_response(error, status=401)
        instruction = json.loads(body)
        self.requests.append((request.path, instruction, signed.nonce))
        if self.mode == "hang":
            await asyncio.sleep(30)
        if self.mode == "slow" and len(self.requests) < 3:
            return self._answer(signed, 202, {**RESULT, "state": "Running"})
        if self.mode == "not-json":
            return self._answer(signed, 200, b"<html>")
        if self.mode == "huge":
            return self._answer(signed, 200, b"x" * (protocol.MAX_BODY_BYTES + 10))
        if self.mode == "error":
            return self._answer(signed, 500, {"error": "internal", "message": "boom"})
        self.saves += 1
        return self._answer(signed, 200, {**RESULT, "id": instruction["id"]})

    async def report(self, request: web.Request) -> web.Response:
        signed, _ = await self._verify(request)
        return self._answer(signed, 200, {"agentVersion": "0.1.0", "applications": []})


@asynccontextmanager
async def serving(agent: FakeAgent):
    runner = web.AppRunner(agent.app(), shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = AgentClient(connect_timeout=1.0)
    try:
        yield client, AgentTarget(PARTITION, f"127.0.0.1:{port}", KEY)
    finally:
        await client.close()
        await runner.cleanup()


def run(agent: FakeAgent, scenario: Callable[[AgentClient, AgentTarget], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with serving(agent) as (client, target):
            return await scenario(client, target)

    return asyncio.run(main())


def test_save_returns_the_verified_result() -> None:
    agent = FakeAgent()
    result = run(agent, lambda c, t: c.save(t, {"id": "se-9", "reason": "Manual"}, timeout=5))
    assert result == {**RESULT, "id": "se-9"}
    ((path, body, _),) = agent.requests
    assert path == "/v1/save"
    assert body["reason"] == "Manual"
    assert 0 <= body["waitSeconds"] <= 25


def test_save_asks_again_with_the_same_id_and_fresh_nonces_while_running() -> None:
    agent = FakeAgent("slow")
    instruction = {"id": "se-1", "reason": "Thermal", "waitSeconds": 0}
    result = run(agent, lambda c, t: c.save(t, instruction, timeout=5))
    assert result["state"] == "Completed"
    assert [body["id"] for _, body, _ in agent.requests] == ["se-1"] * 3
    assert len({nonce for _, _, nonce in agent.requests}) == 3
    assert agent.saves == 1


def test_only_the_instruction_waits_briefly_and_progress_is_reported() -> None:
    agent = FakeAgent("slow")
    progress: list[dict] = []
    instruction = {"id": "se-2", "reason": "Power", "waitSeconds": 3}
    result = run(
        agent,
        lambda c, t: c.save(
            t, instruction, timeout=5, on_progress=progress.append, first_wait=0.25
        ),
    )
    assert result["state"] == "Completed"
    assert [body["waitSeconds"] for _, body, _ in agent.requests] == [0.25, 3, 3]
    assert [p["state"] for p in progress] == ["Running", "Running"]


def test_report() -> None:
    assert run(FakeAgent(), lambda c, t: c.report(t))["agentVersion"] == "0.1.0"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("unsigned", "bad-response"),
        ("replayed-nonce", "bad-response"),
        ("not-json", "bad-response"),
        ("huge", "bad-response"),
        ("error", "bad-response"),
        ("hang", "timeout"),
    ],
)
def test_untrusted_or_broken_answers(mode: str, reason: str) -> None:
    agent = FakeAgent(mode)
    with pytest.raises(AgentError) as caught:
        run(agent, lambda c, t: c.save(t, {"id": "x"}, timeout=1.0))
    assert caught.value.reason == reason


def test_an_answer_signed_with_another_key_is_not_trusted() -> None:
    agent = FakeAgent(key=b"k" * 32)
    with pytest.raises(AgentError) as caught:
        run(agent, lambda c, t: c.save(t, {"id": "x"}, timeout=2))
    assert caught.value.reason == "bad-response"
    assert "bad-signature" in str(caught.value)


def test_an_agent_with_another_key_rejects_us() -> None:
    async def scenario(client: AgentClient, target: AgentTarget) -> Any:
        wrong = AgentTarget(target.partition, target.endpoint, b"w" * 32)
        return await client.save(wrong, {"id": "x"}, timeout=2)

    agent = FakeAgent()
    with pytest.raises(AgentError) as caught:
        run(agent, scenario)
    assert (caught.value.reason, caught.value.status) == ("rejected", 401)
    assert "bad-signature" in str(caught.value)
    assert agent.saves == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nobody_listening_is_unreachable() -> None:
    endpoint = f"127.0.0.1:{free_port()}"

    async def scenario() -> None:
        client = AgentClient(connect_timeout=1.0)
        try:
            await client.save(AgentTarget(PARTITION, endpoint, KEY), {"id": "x"}, timeout=2)
        finally:
            await client.close()

    with pytest.raises(AgentError) as caught:
        asyncio.run(scenario())
    assert caught.value.reason == "unreachable"
    assert str(caught.value) == f"{PARTITION}: cannot reach {endpoint}: connection refused"


class FakeSecrets:
    """Just enough of Kube for load_agent_key."""

    def __init__(self, data: dict | None) -> None:
        self.data = data
        self.core = self

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        if self.data is None:
            raise ApiException(status=404, reason="Not Found")
        return type("Secret", (), {"data": self.data})()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def test_load_agent_key() -> None:
    secret = FakeSecrets({"key": base64.b64encode(KEY).decode()})
    assert asyncio.run(load_agent_key(secret, "ns", "s")) == KEY  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data", [None, {}, {"key": "!!"}, {"key": base64.b64encode(b"short").decode()}]
)
def test_missing_or_unusable_keys(data: dict | None) -> None:
    with pytest.raises(AgentKeyMissingError):
        asyncio.run(load_agent_key(FakeSecrets(data), "ns", "s"))  # type: ignore[arg-type]
