"""The operator's client of guest agents: TLS to a verified agent, signed requests, verified
responses.

Every connection is TLS with the operator's certificate, to an agent whose certificate names
its partition (checked before a byte of the request is sent). Every request is signed with
the partition key (docs/agent-protocol.md), derived from the operator's identity, and every
answer must carry a valid signature bound to the request's nonce: an answer that does not is
treated like no answer at all (retried until the caller's deadline), and what it says never
reaches status or events. One aiohttp session serves all agents, so connections are reused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from lparkube.adapters import net_errors
from lparkube.adapters.agent_identity import OperatorCredentials, agent_server_name
from lparkube_agent import protocol

SAVE_PATH = "/v1/save"
HIBERNATE_PATH = "/v1/hibernate"
STORAGE_PATH = "/v1/storage"
REPORT_PATH = "/v1/report"
REPORT_TIMEOUT = 10.0
MAX_WAIT_SECONDS = 25
POLL_PAUSE = 0.2  # between 202 answers, should an agent return before its waitSeconds


@dataclass(frozen=True)
class AgentTarget:
    """One agent to call: its Partition (namespace, name and uid) and ``host:port``."""

    namespace: str
    name: str
    uid: str
    endpoint: str

    @property
    def partition(self) -> str:
        return f"{self.namespace}/{self.name}"


class AgentError(Exception):
    """A call failed; ``reason`` is ``unreachable``, ``rejected``, ``refused``,
    ``bad-response`` or ``timeout``. ``refused`` is the agent's signed 409: it cannot do it
    now, ``refusal`` says why (for a hibernation: ``NoPagingDevice``, ``SwapInactive``,
    ``TooSmall``, ``Busy`` or ``Unsupported``)."""

    def __init__(
        self, reason: str, message: str, *, status: int | None = None, refusal: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.refusal = refusal


class AgentClient:
    """Calls guest agents; create once, share, close at shutdown."""

    def __init__(self, credentials: OperatorCredentials, *, connect_timeout: float = 5.0) -> None:
        self._identity = credentials.identity
        self._tls = credentials.client_context()
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout)
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=4)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def save(
        self,
        target: AgentTarget,
        instruction: dict,
        *,
        timeout: float,
        on_progress: Callable[[dict], None] | None = None,
        first_wait: float | None = None,
    ) -> dict:
        """Instruct a save and wait for its final result (200) for at most ``timeout`` seconds.

        While the agent answers 202 (still saving) the same instruction is sent again with a
        fresh nonce; the agent attaches to the running save by its id and never saves twice.
        Each 202's partial result (the applications done so far) goes to ``on_progress``.
        The first request (the instruction itself) waits at most ``first_wait`` for the
        result, so a caller limiting instructions in flight gets its answer, and the slot,
        back soon even from a guest whose applications take long.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        first = True
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AgentError(
                    "timeout", f"{target.partition}: save not finished in {timeout:g}s"
                )
            body = dict(instruction)
            if "waitSeconds" not in instruction:
                body["waitSeconds"] = max(0, min(MAX_WAIT_SECONDS, int(remaining) - 1))
            if first and first_wait is not None:
                body["waitSeconds"] = min(body["waitSeconds"], first_wait)
            payload = json.dumps(body).encode()
            status, result = await self._call(target, "POST", SAVE_PATH, payload, remaining)
            first = False
            if status == 200:
                return result
            if on_progress is not None:
                on_progress(result)
            await asyncio.sleep(min(POLL_PAUSE, max(0.0, deadline - loop.time())))

    async def hibernate(self, target: AgentTarget, instruction: dict, *, timeout: float) -> dict:
        """Instruct a hibernation once (``POST /v1/hibernate``, body ``{id, serial, deadline}``)
        and return the run's verified state: ``Hibernating`` for a run the agent journaled
        (the guest then writes its image and powers off: no later answer comes from it),
        or, for an id it knows, that run's state (``Resumed``, ``Failed``). Sending the same
        id again never hibernates twice. A signed refusal raises ``AgentError`` ``refused``
        with the agent's reason in ``refusal``; an unverified answer is ``unreachable``."""
        payload = json.dumps(instruction).encode()
        _, result = await self._call(target, "POST", HIBERNATE_PATH, payload, timeout)
        return result

    async def storage_changed(
        self, target: AgentTarget, body: dict, *, timeout: float = REPORT_TIMEOUT
    ) -> dict:
        """Tell the agent that disks' backing storage changed (``POST /v1/storage``, body
        ``{id, disks: [{serial, name, change}]}``) and return its verified answer: each disk
        as the guest found it (``{serial, device, sizeBytes, rescanned, message}``). The
        agent acts on an id once; sending it again returns the kept answer."""
        payload = json.dumps(body).encode()
        status, result = await self._call(target, "POST", STORAGE_PATH, payload, timeout)
        if status != 200:
            raise AgentError("bad-response", f"{target.partition}: storage answered {status}")
        return result

    async def report(self, target: AgentTarget) -> dict:
        """The agent's current report (``GET /v1/report``)."""
        status, result = await self._call(target, "GET", REPORT_PATH, b"", REPORT_TIMEOUT)
        if status != 200:
            raise AgentError("bad-response", f"{target.partition}: report answered {status}")
        return result

    async def _call(
        self, target: AgentTarget, method: str, path: str, body: bytes, timeout: float
    ) -> tuple[int, dict]:
        """One signed request; a verified 200 or 202 answer, else AgentError."""
        key = self._identity.partition_key(target.namespace, target.name, target.uid)
        message = protocol.Message(protocol.TO_AGENT, method, path, target.partition, body)
        signed = protocol.sign(key, message)
        headers = {**signed.headers(), "Content-Type": "application/json"}
        url = f"https://{target.endpoint}{path}"
        try:
            async with asyncio.timeout(timeout):
                async with self._client().request(
                    method,
                    url,
                    data=body or None,
                    headers=headers,
                    ssl=self._tls,
                    server_hostname=agent_server_name(target.partition),
                ) as response:
                    data = await response.content.read(protocol.MAX_BODY_BYTES + 1)
                    return _verified(
                        target, signed, response.status, response.headers, data, key=key
                    )
        except TimeoutError as exc:
            raise AgentError("timeout", f"{target.partition}: no answer in {timeout:g}s") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise AgentError(
                "unreachable",
                f"{target.partition}: {target.endpoint} is not this partition's agent (its TLS "
                "certificate does not name it)",
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise AgentError(
                "unreachable",
                f"{target.partition}: cannot reach {target.endpoint}: {net_errors.reason(exc)}",
            ) from exc


def _verified(
    target: AgentTarget,
    request: protocol.Signed,
    status: int,
    headers: Any,
    body: bytes,
    *,
    key: bytes,
) -> tuple[int, dict]:
    """Check size, signature and JSON of an answer. Only a verified answer counts: anything
    else is as good as no answer (``unreachable``, retried), and its text is dropped; a
    verified refusal from the agent is ``rejected`` with the agent's own words."""
    where = target.partition
    try:
        if len(body) > protocol.MAX_BODY_BYTES:
            raise protocol.AuthError("oversized", "answer too large")
        protocol.verify_response(key, request, status, headers, body)
    except protocol.AuthError as exc:
        raise AgentError(
            "unreachable",
            f"{where}: the answer from {target.endpoint} failed verification ({exc.reason})",
            status=status,
        ) from exc
    refusal = _refusal(body) if status == 409 else None
    if refusal is not None:
        reason, detail = refusal
        raise AgentError("refused", f"{where}: {detail}", status=status, refusal=reason)
    if 400 <= status < 500:
        detail = _error_text(body)
        raise AgentError("rejected", f"{where}: agent answered {status} {detail}", status=status)
    if status not in (200, 202):
        raise AgentError("bad-response", f"{where}: unexpected status {status}", status=status)
    try:
        result = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AgentError("bad-response", f"{where}: answer is not JSON", status=status) from exc
    if not isinstance(result, dict):
        raise AgentError("bad-response", f"{where}: answer is not a JSON object", status=status)
    return status, result


def _refusal(body: bytes) -> tuple[str, str] | None:
    """(reason, message) of a verified ``{"error": "refused", "reason", "message"}``."""
    try:
        error = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(error, dict) or error.get("error") != "refused":
        return None
    reason, message = error.get("reason"), error.get("message")
    if not isinstance(reason, str) or not reason.isascii() or not 0 < len(reason) <= 64:
        return None
    return reason, message[:512] if isinstance(message, str) else ""


def _error_text(body: bytes) -> str:
    try:
        error = json.loads(body)
        return f"{error.get('error', '')}: {error.get('message', '')}".strip(": ")
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
