"""AgentClient against a local aiohttp agent that speaks the signed protocol over TLS."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube.adapters.guest_agent import AgentClient, AgentError, AgentTarget
from lparkube_agent import protocol

CREDENTIALS = OperatorCredentials.issue(bytes(range(32)), datetime.now(UTC))
UID = "uid-1"
KEY = CREDENTIALS.identity.partition_key("tenant-a", "web-1", UID)
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


def agent_tls(tmp: Path, name: str = "web-1", *, tls: bool = True) -> ssl.SSLContext | None:
    """The server side of an agent of ``tenant-a/<name>``: its delivered certificate."""
    if not tls:
        return None
    made = CREDENTIALS.identity.agent_credentials("tenant-a", name, UID)
    (tmp / "tls.crt").write_bytes(made.cert_pem)
    (tmp / "tls.key").write_bytes(made.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "tls.crt", tmp / "tls.key")
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=made.ca_pem.decode())
    return context


@asynccontextmanager
async def serving(agent: FakeAgent, server_tls: ssl.SSLContext | None):
    runner = web.AppRunner(agent.app(), shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    port = runner.addresses[0][1]
    client = AgentClient(CREDENTIALS, connect_timeout=1.0)
    try:
        yield client, AgentTarget("tenant-a", "web-1", UID, f"127.0.0.1:{port}")
    finally:
        await client.close()
        await runner.cleanup()


def run(
    agent: FakeAgent,
    scenario: Callable[[AgentClient, AgentTarget], Awaitable[Any]],
    server_tls: ssl.SSLContext | None = None,
) -> Any:
    async def main() -> Any:
        with tempfile.TemporaryDirectory() as tmp:
            tls = server_tls or agent_tls(Path(tmp))
            async with serving(agent, tls) as (client, target):
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
        ("unsigned", "unreachable"),
        ("replayed-nonce", "unreachable"),
        ("not-json", "bad-response"),
        ("huge", "unreachable"),
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
    assert caught.value.reason == "unreachable"
    assert "failed verification (bad-signature)" in str(caught.value)


def test_an_unsigned_refusal_is_no_answer_and_its_text_is_dropped() -> None:
    """Anyone on the path could send a 401 with words of their choosing: it counts as
    unreachable (retried until the deadline) and what it says reaches no status."""

    async def scenario(client: AgentClient, target: AgentTarget) -> Any:
        wrong = replace(target, uid="another-uid")  # another key: the agent refuses, unsigned
        return await client.save(wrong, {"id": "x"}, timeout=2)

    agent = FakeAgent()
    with pytest.raises(AgentError) as caught:
        run(agent, scenario)
    assert caught.value.reason == "unreachable"
    assert str(caught.value).endswith("failed verification (unsigned)")
    assert "signature does not match" not in str(caught.value)  # the refusal's own words
    assert agent.saves == 0


def test_an_agent_of_another_partition_never_sees_the_instruction(tmp_path: Path) -> None:
    """Its certificate is from the same CA but names tenant-a/db: the handshake fails on
    the name, before a byte of the request is sent."""
    agent = FakeAgent()
    impostor = agent_tls(tmp_path, "db")
    with pytest.raises(AgentError) as caught:
        run(agent, lambda c, t: c.save(t, {"id": "x"}, timeout=2), server_tls=impostor)
    assert caught.value.reason == "unreachable"
    assert "is not this partition's agent" in str(caught.value)
    assert agent.requests == []


def test_an_agent_speaking_plain_http_is_unreachable() -> None:
    async def scenario() -> None:
        async with serving(FakeAgent(), None) as (client, target):
            await client.save(target, {"id": "x"}, timeout=2)

    with pytest.raises(AgentError) as caught:
        asyncio.run(scenario())
    assert caught.value.reason == "unreachable"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nobody_listening_is_unreachable() -> None:
    endpoint = f"127.0.0.1:{free_port()}"

    async def scenario() -> None:
        client = AgentClient(CREDENTIALS, connect_timeout=1.0)
        try:
            target = AgentTarget("tenant-a", "web-1", UID, endpoint)
            await client.save(target, {"id": "x"}, timeout=2)
        finally:
            await client.close()

    with pytest.raises(AgentError) as caught:
        asyncio.run(scenario())
    assert caught.value.reason == "unreachable"
    assert str(caught.value) == f"{PARTITION}: cannot reach {endpoint}: connection refused"
