"""The agent gateway refuses everything not validly signed and fresh, before any write."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lparkube.adapters.agent_gateway import MalformedReportError, Verifiers, gateway_app
from lparkube.domain.agent_report import parse_report
from lparkube.domain.partition import parse_partition_id
from lparkube_agent import protocol

KEY = bytes(range(32))
PARTITION = "tenant-a/web-1"
PATH = "/v1/reports"
REPORT = json.dumps({"agentVersion": "0.1.0", "kernelRelease": "6.1", "applications": []}).encode()


class Keys:
    """A key lookup that counts its calls."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self.keys = keys
        self.calls = 0

    async def __call__(self, partition: str) -> bytes | None:
        self.calls += 1
        return self.keys.get(partition)


def signed_headers(
    body: bytes = REPORT,
    *,
    key: bytes = KEY,
    partition: str = PARTITION,
    path: str = PATH,
    now: float | None = None,
    nonce: str | None = None,
) -> tuple[protocol.Signed, dict[str, str]]:
    message = protocol.Message(protocol.TO_OPERATOR, "POST", path, partition, body)
    signed = protocol.sign(key, message, now=now, nonce=nonce)
    return signed, signed.headers()


Scenario = Callable[[aiohttp.ClientSession, str], Awaitable[Any]]


RESULTS: list[str] = []


def run(scenario: Scenario, keys: Keys | None = None) -> tuple[Any, list]:
    """Serve the gateway on loopback, run the scenario; returns its result and the sink's.

    Every outcome the gateway counts lands in RESULTS.
    """
    recorded: list[tuple[str, Any]] = []
    RESULTS.clear()

    async def sink(partition: str, body: bytes) -> None:
        try:
            recorded.append((partition, parse_report(body)))
        except ValueError as exc:
            raise MalformedReportError(str(exc)) from exc

    async def main() -> Any:
        verifiers = Verifiers(keys or Keys({PARTITION: KEY}))
        app = gateway_app(
            verifiers, sink, lambda p: parse_partition_id(p) is not None, RESULTS.append
        )
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as session:
                return await scenario(session, url)
        finally:
            await runner.cleanup()

    return asyncio.run(main()), recorded


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict, bytes, dict]:
    async with session.post(url + PATH, data=body, headers=headers) as response:
        data = await response.read()
        error = json.loads(data) if data else {}
        return response.status, error, data, dict(response.headers)


def test_a_signed_report_is_recorded_and_answered_204_signed() -> None:
    signed, headers = signed_headers()

    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple:
        return await post(session, url, REPORT, headers)

    (status, _, body, response_headers), recorded = run(scenario)
    assert status == 204
    protocol.verify_response(KEY, signed, 204, response_headers, body)
    ((partition, report),) = recorded
    assert (partition, report.version) == (PARTITION, "0.1.0")


def refused(headers: dict[str, str], body: bytes = REPORT, keys: Keys | None = None) -> tuple:
    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple:
        return await post(session, url, body, headers)

    (status, error, _, _), recorded = run(scenario, keys)
    assert recorded == [], "a refused report must change nothing"
    return status, error["error"], error["message"]


def test_unsigned() -> None:
    assert refused({})[:2] == (401, "unsigned")
    _, headers = signed_headers()
    del headers[protocol.HEADER_SIGNATURE]
    assert refused(headers)[:2] == (401, "unsigned")


def test_malformed_headers() -> None:
    _, headers = signed_headers()
    assert refused({**headers, protocol.HEADER_NONCE: "xyz"})[:2] == (400, "malformed")
    assert refused({**headers, protocol.HEADER_TIMESTAMP: "soon"})[:2] == (400, "malformed")
    _, headers = signed_headers(partition="not a partition")
    assert refused(headers)[:2] == (400, "malformed")


def test_unknown_partition_and_wrong_key() -> None:
    _, headers = signed_headers(partition="tenant-a/other")
    assert refused(headers)[:2] == (401, "wrong-partition")
    _, headers = signed_headers(key=b"x" * 32)
    assert refused(headers)[:2] == (401, "bad-signature")


def test_a_tampered_body_or_path_breaks_the_signature() -> None:
    _, headers = signed_headers()
    assert refused(headers, body=REPORT.replace(b"6.1", b"6.2"))[:2] == (401, "bad-signature")
    _, headers = signed_headers(path="/v1/other")
    assert refused(headers)[:2] == (401, "bad-signature")


def test_stale() -> None:
    _, headers = signed_headers(now=time.time() - 300)
    assert refused(headers)[:2] == (401, "stale")


def test_oversized() -> None:
    big = b"x" * (protocol.MAX_BODY_BYTES + 1)
    _, headers = signed_headers(big)
    assert refused(headers, body=big)[:2] == (413, "oversized")


def test_signed_but_malformed_report_is_refused_signed() -> None:
    body = b'{"applications": "many"}'
    signed, headers = signed_headers(body)

    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple:
        return await post(session, url, body, headers)

    (status, error, raw, response_headers), recorded = run(scenario)
    assert (status, error["error"]) == (400, "malformed")
    assert "applications" in error["message"]
    protocol.verify_response(KEY, signed, 400, response_headers, raw)
    assert recorded == []


def test_replayed() -> None:
    _, headers = signed_headers()

    async def scenario(session: aiohttp.ClientSession, url: str) -> list:
        return [(await post(session, url, REPORT, headers))[:2] for _ in range(2)]

    results, recorded = run(scenario)
    assert results[0][0] == 204
    assert results[1] == (401, {"error": "replayed", "message": "this nonce was already used"})
    assert len(recorded) == 1
    assert RESULTS == ["accepted", "replayed"]


def test_keys_are_cached_and_nonces_tracked_across_refreshes() -> None:
    keys = Keys({PARTITION: KEY})
    clock = [0.0]
    verifiers = Verifiers(keys, ttl=10, negative_ttl=2, clock=lambda: clock[0])

    async def scenario() -> None:
        first = await verifiers.get(PARTITION)
        assert first is not None and (await verifiers.get(PARTITION)) == first
        assert keys.calls == 1
        clock[0] = 11  # refreshed, same key: the same verifier keeps its nonces
        assert (await verifiers.get(PARTITION)) == first
        assert keys.calls == 2
        keys.keys[PARTITION] = b"r" * 32  # rotated: a new verifier
        clock[0] = 22
        rotated = await verifiers.get(PARTITION)
        assert rotated is not None and rotated[0] == b"r" * 32 and rotated[1] is not first[1]

        assert await verifiers.get("tenant-a/ghost") is None
        assert await verifiers.get("tenant-a/ghost") is None
        assert keys.calls == 4, "unknown partitions are remembered briefly"
        clock[0] = 25
        assert await verifiers.get("tenant-a/ghost") is None
        assert keys.calls == 5

    asyncio.run(scenario())


def test_concurrent_requests_share_one_lookup() -> None:
    keys = Keys({PARTITION: KEY})
    gate = asyncio.Event()

    async def slow(partition: str) -> bytes | None:
        await gate.wait()
        return await keys(partition)

    async def scenario() -> None:
        verifiers = Verifiers(slow)
        waiting = [asyncio.create_task(verifiers.get(PARTITION)) for _ in range(5)]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(*waiting)
        assert len({id(r[1]) for r in results if r}) == 1
        assert keys.calls == 1

    asyncio.run(scenario())


def test_a_failing_lookup_is_503_and_not_cached() -> None:
    calls = []

    async def broken(partition: str) -> bytes | None:
        calls.append(partition)
        raise RuntimeError("API server down")

    _, headers = signed_headers()
    status, reason, _ = refused(headers, keys=broken)  # type: ignore[arg-type]
    assert (status, reason) == (503, "unavailable")


@pytest.mark.parametrize("count", [200])
def test_random_garbage_is_never_accepted(count: int) -> None:
    rng = random.Random(7)
    _, good = signed_headers()

    async def scenario(session: aiohttp.ClientSession, url: str) -> list[int]:
        statuses = []
        for _ in range(count):
            headers = dict(good)
            name = rng.choice(list(headers))
            value = headers[name]
            position = rng.randrange(len(value))
            headers[name] = value[:position] + rng.choice("0af/-x") + value[position + 1 :]
            if headers == good:
                continue
            body = REPORT if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(40))
            statuses.append((await post(session, url, body, headers))[0])
        return statuses

    statuses, recorded = run(scenario)
    assert 204 not in statuses
    assert recorded == []


# --- numbers from the wire: ASCII digits only (issue 10, finding 5) ---------------------------


def raw_report(headers: dict[str, str], length: bytes) -> tuple[int, bytes, list]:
    """A report sent as raw bytes (header values UTF-8, as aiohttp reads them): the status,
    the body of the answer and what reached the sink."""

    async def scenario(_: aiohttp.ClientSession, url: str) -> bytes:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
        writer.write(b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: gateway\r\n" + head)
        writer.write(b"Connection: close\r\nContent-Length: " + length + b"\r\n\r\n" + REPORT)
        answer = await reader.read()
        writer.close()
        return answer

    answer, recorded = run(scenario)
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2], recorded


@pytest.mark.parametrize("length", ["²".encode(), b"\xb2", "٢٠".encode(), b"+2", b"0x2"])
def test_a_content_length_in_other_digits_is_refused_by_aiohttp(length: bytes) -> None:
    _, headers = signed_headers()
    status, _, recorded = raw_report(headers, length)
    assert status == 400  # aiohttp's own answer, before the gateway sees the request
    assert recorded == [] and RESULTS == []


def arabic_indic(text: str) -> str:
    return "".join(chr(0x660 + int(c)) for c in text)


TIMESTAMP_REWRITES = {  # the signed timestamp written another way, or not a number at all
    "leading zero": lambda t: "0" + t,
    "Arabic-Indic digits": arabic_indic,
    "fullwidth digits": lambda t: "".join(chr(0xFF10 + int(c)) for c in t),
    "no-break space": lambda t: "\xa0" + t,
    "superscript": lambda t: t + "²",
}


@pytest.mark.parametrize("rewrite", TIMESTAMP_REWRITES)
def test_a_rewritten_timestamp_is_malformed_not_accepted_nor_a_crash(
    rewrite: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, headers = signed_headers()
    text = headers[protocol.HEADER_TIMESTAMP]
    headers[protocol.HEADER_TIMESTAMP] = TIMESTAMP_REWRITES[rewrite](text)
    status, body, recorded = raw_report(headers, str(len(REPORT)).encode())
    assert (status, json.loads(body)["error"]) == (400, "malformed")
    assert recorded == [] and RESULTS == ["malformed"]
    assert not [r for r in caplog.records if r.exc_info], "no traceback from any input"
