"""The agent gateway refuses everything not validly signed, fresh and newer, before any write;
it answers from the operator's directory without API calls, bounds its connections, and
writes each partition's reports at most once a window."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lparkube.adapters import agent_identity
from lparkube.adapters.agent_gateway import (
    Coalescer,
    Connections,
    Limits,
    MalformedReportError,
    ReportGateway,
    Verifiers,
)
from lparkube.controllers.agent_gateway import status_after_report
from lparkube.domain import failover
from lparkube.domain.agent_report import parse_report
from lparkube.domain.clock import rfc3339
from lparkube.domain.partition import parse_partition_id
from lparkube.domain.partition_directory import DirectoryEntry, PartitionDirectory
from lparkube_agent import protocol

KEY = bytes(range(32))
PARTITION = "tenant-a/web-1"
ENTRY = DirectoryEntry("tenant-a", "web-1", "uid-1", False, None)
PATH = "/v1/reports"
REPORT = json.dumps({"agentVersion": "0.1.0", "kernelRelease": "6.1", "applications": []}).encode()
DEFAULTS = Limits()
FAST = Limits(request_seconds=0.5, sweep_seconds=0.05)


class Keys:
    """A key lookup that counts its calls (every Partition in the directory has a key)."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self.keys = keys
        self.calls = 0

    async def __call__(self, entry: DirectoryEntry) -> bytes:
        self.calls += 1
        return self.keys[entry.partition]


def directory_of(*entries: DirectoryEntry, synced: bool = True) -> PartitionDirectory:
    directory = PartitionDirectory()
    for entry in entries:
        directory.observe(entry)
    if synced:
        directory.mark_synced()
    return directory


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
SERVING: list[ReportGateway] = []  # the gateway the running scenario talks to


def run(
    scenario: Scenario,
    keys: Any = None,
    *,
    directory: PartitionDirectory | None = None,
    limits: Limits = DEFAULTS,
    ssl_context: ssl.SSLContext | None = None,
    client_ssl: ssl.SSLContext | None = None,
    answer: dict | None = None,
) -> tuple[Any, list]:
    """Serve the gateway on loopback, run the scenario; returns its result and the sink's.

    Every outcome the gateway counts lands in RESULTS.
    """
    recorded: list[tuple[str, int, Any]] = []
    RESULTS.clear()

    def parse(body: bytes) -> Any:
        try:
            return parse_report(body)
        except ValueError as exc:
            raise MalformedReportError(str(exc)) from exc

    async def sink(entry: DirectoryEntry, signed_at: int, report: Any) -> dict | None:
        recorded.append((entry.partition, signed_at, report))
        return answer

    async def main() -> Any:
        gateway = ReportGateway(
            directory or directory_of(ENTRY),
            Verifiers(keys or Keys({PARTITION: KEY})),
            parse,
            sink,
            lambda p: parse_partition_id(p) is not None,
            record=RESULTS.append,
            limits=limits,
        )
        SERVING[:] = [gateway]
        listener = gateway.listen("127.0.0.1", 0, ssl_context)
        scheme = "https" if ssl_context else "http"
        connector = aiohttp.TCPConnector(ssl=client_ssl) if client_ssl else None
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                return await scenario(session, f"{scheme}://127.0.0.1:{listener.port}")
        finally:
            await listener.close()

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
    ((partition, signed_at, report),) = recorded
    assert (partition, signed_at, report.version) == (PARTITION, signed.timestamp, "0.1.0")


def test_a_lease_the_sink_granted_is_answered_200_signed() -> None:
    signed, headers = signed_headers()
    lease = {"lease": {"seconds": 10, "watchdogTimeoutSeconds": 10, "renewSeconds": 3}}

    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple:
        return await post(session, url, REPORT, headers)

    (status, answer, body, response_headers), _ = run(scenario, answer=lease)
    assert (status, answer) == (200, lease)
    protocol.verify_response(KEY, signed, 200, response_headers, body)


def test_a_report_write_records_the_lease_before_it_is_granted() -> None:
    report = parse_report(REPORT)
    meta = {"name": "web-1", "namespace": "tenant-a", "uid": "uid-1", "generation": 1}
    spec = {"failover": {"enabled": True, "bootImage": {"pvcName": "clean"}}}
    partition: dict[str, Any] = {"metadata": meta, "spec": spec}
    now = datetime(2026, 11, 21, 12, 0, 0, 400000, tzinfo=UTC)
    lease = failover.lease_answer(partition)
    signed_at = int(now.timestamp())
    status = status_after_report(partition, ENTRY, report, signed_at, now, lease=lease)
    assert status["failover"] == {"leaseExpiry": "2026-11-21T12:00:11Z"}
    partition["status"] = status
    assert status_after_report(partition, ENTRY, report, signed_at, now, lease=lease) == {}


def refused(headers: dict[str, str], body: bytes = REPORT, keys: Any = None, **kw: Any) -> tuple:
    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple:
        return await post(session, url, body, headers)

    (status, error, _, _), recorded = run(scenario, keys, **kw)
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


def answers(requests: list[tuple[bytes, dict]], **kw: Any) -> list[tuple[int, bytes, dict]]:
    """Status, body and headers (but the date) of each request's answer."""

    async def scenario(session: aiohttp.ClientSession, url: str) -> list:
        found = []
        for body, headers in requests:
            status, _, data, response_headers = await post(session, url, body, headers)
            response_headers.pop("Date", None)
            found.append((status, data, response_headers))
        return found

    return run(scenario, **kw)[0]


def test_unknown_deleting_and_wrongly_signed_partitions_get_one_answer() -> None:
    """No existence oracle: a name the operator does not know, one being deleted (signed with
    its real key) and a real one with a wrong signature are answered byte for byte alike."""
    gone = DirectoryEntry("tenant-a", "old", "uid-2", True, None)
    keys = Keys({PARTITION: KEY, "tenant-a/old": KEY})
    requests = [
        (REPORT, signed_headers(partition="tenant-b/ghost")[1]),
        (REPORT, signed_headers(partition="tenant-a/old")[1]),
        (REPORT, signed_headers(key=b"x" * 32)[1]),
    ]
    found = answers(requests, keys=keys, directory=directory_of(ENTRY, gone))
    assert found[0][0] == 401
    assert json.loads(found[0][1]) == {
        "error": "bad-signature",
        "message": "signature does not match the partition key",
    }
    assert all(answer == found[0] for answer in found), found
    assert RESULTS == ["unknown-partition"] * 2 + ["bad-signature"]
    assert keys.calls == 1, "only live Partitions in the directory are looked up"


def test_fresh_names_cost_no_key_lookup() -> None:
    keys = Keys({PARTITION: KEY})
    requests = [(REPORT, signed_headers(partition=f"tenant-{i}/p-{i}")[1]) for i in range(300)]
    found = answers(requests, keys=keys)
    assert {status for status, _, _ in found} == {401}
    assert keys.calls == 0
    assert RESULTS == ["unknown-partition"] * 300


def test_until_the_directory_is_synced_everything_is_unavailable() -> None:
    """Before the watch's first listing is in, "unknown" would be a guess: 503, retry."""
    directory = directory_of(ENTRY, synced=False)
    for partition in (PARTITION, "tenant-a/ghost"):
        _, headers = signed_headers(partition=partition)
        assert refused(headers, directory=directory)[:2] == (503, "unavailable")


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


def test_other_paths_are_not_served() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
        async with session.get(url + PATH) as wrong_method, session.post(url + "/x") as other:
            return wrong_method.status, other.status

    assert run(scenario)[0] == (404, 404)


def test_signed_but_malformed_report_is_refused_signed() -> None:
    """Answered signed, and not accepted: a good report signed in the same second still is."""
    body = b'{"applications": "many"}'
    now = time.time()
    signed, headers = signed_headers(body, now=now)
    _, good = signed_headers(now=now)

    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple:
        return await post(session, url, body, headers), (await post(session, url, REPORT, good))[0]

    ((status, error, raw, response_headers), then), recorded = run(scenario)
    assert (status, error["error"]) == (400, "malformed")
    assert "applications" in error["message"]
    protocol.verify_response(KEY, signed, 400, response_headers, raw)
    assert then == 204 and len(recorded) == 1


def test_a_report_must_be_signed_later_than_the_last_one() -> None:
    """The same request again, another nonce in the same second, or an older report: all
    replays; the next second is accepted."""
    now = time.time()
    first = signed_headers(now=now)[1]
    requests = [
        (REPORT, first),
        (REPORT, first),
        (REPORT, signed_headers(now=now)[1]),
        (REPORT, signed_headers(now=now - 5)[1]),
        (REPORT, signed_headers(now=now + 1)[1]),
    ]

    async def scenario(session: aiohttp.ClientSession, url: str) -> list:
        return [(await post(session, url, body, headers))[:2] for body, headers in requests]

    results, recorded = run(scenario)
    assert [status for status, _ in results] == [204, 401, 401, 401, 204]
    assert {error["error"] for _, error in results[1:4]} == {"replayed"}
    assert [signed_at for _, signed_at, _ in recorded] == [int(now), int(now) + 1]
    assert RESULTS == ["accepted", "replayed", "replayed", "replayed", "accepted"]


def test_the_last_accepted_time_comes_from_the_directory() -> None:
    """After a restart the directory holds the last accepted time from status: a report
    captured before it is refused."""
    now = time.time()
    seen = DirectoryEntry("tenant-a", "web-1", "uid-1", False, int(now))
    _, headers = signed_headers(now=now)
    assert refused(headers, directory=directory_of(seen))[:2] == (401, "replayed")


def test_status_keeps_the_signed_time_as_the_heartbeat() -> None:
    report = parse_report(REPORT)
    meta = {"name": "web-1", "namespace": "tenant-a", "uid": "uid-1", "generation": 1}
    partition: dict[str, Any] = {"metadata": meta}
    now = datetime(2026, 11, 21, 12, 0, 30, tzinfo=UTC)
    signed_at = int(datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC).timestamp())
    status = status_after_report(partition, ENTRY, report, signed_at, now)
    assert status["agent"]["lastHeartbeatTime"] == "2026-11-21T12:00:00Z"
    partition["status"] = status
    assert status_after_report(partition, ENTRY, report, signed_at, now) == {}, "a replay"
    assert status_after_report(partition, ENTRY, report, signed_at - 1, now) == {}
    later = status_after_report(partition, ENTRY, report, signed_at + 1, now)
    assert later["agent"]["lastHeartbeatTime"] == rfc3339(
        datetime.fromtimestamp(signed_at + 1, UTC)
    )
    successor = {**partition, "metadata": {**meta, "uid": "uid-2"}}
    assert status_after_report(successor, ENTRY, report, signed_at + 1, now) == {}, "recreated"


def test_a_key_is_looked_up_once_per_partition_and_uid() -> None:
    """The Verifier, and the nonces it saw, last while the Partition does; one recreated
    under the same name (a new uid) gets its own."""
    keys = Keys({PARTITION: KEY})
    verifiers = Verifiers(keys, capacity=2)
    other = DirectoryEntry("tenant-a", "db", "uid-5", False, None)
    third = DirectoryEntry("tenant-a", "cache", "uid-6", False, None)
    keys.keys.update({other.partition: b"o" * 32, third.partition: b"t" * 32})

    async def scenario() -> None:
        first = await verifiers.get(ENTRY)
        assert await verifiers.get(ENTRY) == first
        assert keys.calls == 1
        recreated = await verifiers.get(DirectoryEntry(**{**ENTRY.__dict__, "uid": "uid-new"}))
        assert keys.calls == 2 and recreated[1] is not first[1]
        await verifiers.get(other)
        await verifiers.get(third)  # over capacity: the least recently used goes
        assert keys.calls == 4
        await verifiers.get(third)
        await verifiers.get(other)
        assert keys.calls == 4

    asyncio.run(scenario())


def test_a_failing_lookup_is_503() -> None:
    async def broken(entry: DirectoryEntry) -> bytes:
        raise RuntimeError("API server down")

    _, headers = signed_headers()
    status, reason, _ = refused(headers, keys=broken)
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
def test_a_content_length_in_other_digits_is_refused_by_aiohttp(
    length: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    _, headers = signed_headers()
    with caplog.at_level(logging.DEBUG):
        status, _, recorded = raw_report(headers, length)
    assert status == 400  # aiohttp's own answer, before the gateway sees the request
    assert recorded == [] and RESULTS == []
    # What a peer sent wrong is no operator error: any client could fill the log otherwise.
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]


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


# --- connections -----------------------------------------------------------------------------


async def closed_after(reader: asyncio.StreamReader) -> float:
    """Seconds until the server closes the connection (reading whatever it sends)."""
    started = time.monotonic()
    try:
        while await reader.read(4096):
            pass
    except ConnectionResetError:
        pass  # closed with data unread: a reset
    return time.monotonic() - started


def test_idle_slow_header_and_slow_body_connections_are_closed() -> None:
    head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n".encode()

    async def dribble(writer: asyncio.StreamWriter, data: bytes) -> None:
        for byte in data:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)

    async def scenario(_: aiohttp.ClientSession, url: str) -> list[float]:
        port = int(url.rsplit(":", 1)[1])
        idle = await asyncio.open_connection("127.0.0.1", port)
        slow_head = await asyncio.open_connection("127.0.0.1", port)
        slow_body = await asyncio.open_connection("127.0.0.1", port)
        slow_body[1].write(head + b"\r\n")
        feeders = [
            asyncio.create_task(dribble(slow_head[1], head * 10)),
            asyncio.create_task(dribble(slow_body[1], b"x" * 100)),
        ]
        waits = [closed_after(reader) for reader, _ in (idle, slow_head, slow_body)]
        try:
            return await asyncio.wait_for(asyncio.gather(*waits), 5)
        finally:
            for feeder in feeders:
                feeder.cancel()

    elapsed, _ = run(scenario, limits=FAST)
    assert all(0.4 < seconds < 1.5 for seconds in elapsed), elapsed


def test_keep_alive_connections_must_send_their_next_request_in_time() -> None:
    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        _, headers = signed_headers()
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(REPORT)}\r\n{lines}\r\n"
        writer.write(request.encode() + REPORT)
        status_line = await reader.readline()
        return status_line, await asyncio.wait_for(closed_after(reader), 5)

    (status_line, idle_for), recorded = run(scenario, limits=FAST)
    assert status_line.startswith(b"HTTP/1.1 204")
    assert len(recorded) == 1
    assert 0.3 < idle_for < 1.5


async def connect(url: str, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def report_from(url: str, source: str, now: float) -> int:
    """A signed report on a fresh connection from ``source``; its status."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        return (await post(session, url, REPORT, signed_headers(now=now)[1]))[0]


async def closed_soon(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(closed_after(reader), 0.5)
    except TimeoutError:
        return False
    return True


def test_one_address_holds_only_its_share() -> None:
    """A flood from one address fills that address's share; newcomers from it are closed at
    once, and an agent elsewhere is served as ever."""
    limits = Limits(per_address=3, request_seconds=30)

    async def scenario(_: aiohttp.ClientSession, url: str) -> tuple:
        held = [await connect(url, "127.0.0.2") for _ in range(3)]
        refused = await connect(url, "127.0.0.2")
        status = await report_from(url, "127.0.0.1", time.time())
        results = await closed_soon(refused[0]), [await closed_soon(r) for r, _ in held], status
        for _, writer in [*held, refused]:
            writer.close()
        return results

    (refused, held, status), recorded = run(scenario, limits=limits)
    assert refused and held == [False] * 3
    assert status == 204 and len(recorded) == 1
    assert SERVING[0].connections.refused == 1


def test_at_the_cap_the_most_crowded_address_gives_way() -> None:
    """With every connection taken, a newcomer from an address holding fewer unproven
    connections takes the place of the crowded address's oldest; a newcomer from the crowded
    address is closed; a connection that delivered a verified report is never evicted."""
    limits = Limits(max_connections=4, per_address=10, request_seconds=30)

    async def scenario(session: aiohttp.ClientSession, url: str) -> tuple:
        status, *_ = await post(session, url, REPORT, signed_headers()[1])  # kept alive: proven
        crowd = [await connect(url, "127.0.0.2") for _ in range(3)]  # now full
        await asyncio.sleep(0.05)
        agent = await report_from(url, "127.0.0.3", time.time() + 1)
        oldest_evicted = await closed_soon(crowd[0][0])
        other = await connect(url, "127.0.0.4")  # full again, the agent having left
        late = await connect(url, "127.0.0.2")
        late_refused = await closed_soon(late[0])
        again, *_ = await post(session, url, REPORT, signed_headers(now=time.time() + 2)[1])
        for _, writer in [*crowd, other, late]:
            writer.close()
        return status, agent, oldest_evicted, late_refused, again

    (status, agent, evicted, refused, again), recorded = run(scenario, limits=limits)
    assert (status, agent, again) == (204, 204, 204)
    assert evicted and refused
    assert len(recorded) == 3
    connections = SERVING[0].connections
    assert (connections.evicted, connections.refused) == (1, 1)


class FakeSocket:
    """A socket as ``Connections`` sees one: its descriptor number, and a shutdown."""

    def __init__(self, fd: int) -> None:
        self.fd, self.shut = fd, False

    def fileno(self) -> int:
        return self.fd

    def shutdown(self, _: int) -> None:
        self.shut = True


def test_a_reused_descriptor_leaves_no_ghost_connection() -> None:
    """A TLS handshake fails and its socket is closed; before the failure is told, a newcomer
    is accepted on the same descriptor. Both are accounted for, and the deadline sweep ends."""
    clock = [0.0]
    connections = Connections(Limits(request_seconds=5), clock=lambda: clock[0])
    failed = connections.admit(FakeSocket(7), "10.0.0.1")  # type: ignore[arg-type]
    newcomer = connections.admit(FakeSocket(7), "10.0.0.2")  # type: ignore[arg-type]
    assert failed is not None and newcomer is not None
    connections.failed(failed)
    assert len(connections) == 1
    clock[0] = 10
    connections.expire()
    assert len(connections) == 0 and connections.closed_overdue == 1
    assert newcomer.sock.shut  # type: ignore[attr-defined]


# --- TLS -------------------------------------------------------------------------------------

ROOT = bytes(range(32, 64))


def agent_tls(tmp_path: Path, identity: agent_identity.AgentIdentity, name: str) -> ssl.SSLContext:
    """A client context as an agent of tenant-a/<name> has: the CA and its own certificate."""
    creds = identity.agent_credentials("tenant-a", name, "uid-1")
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert.write_bytes(creds.cert_pem)
    key.write_bytes(creds.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the operator's certificate names lparkube:operator
    context.load_verify_locations(cadata=creds.ca_pem.decode())
    context.load_cert_chain(cert, key)
    return context


def operator_tls(identity: agent_identity.AgentIdentity) -> ssl.SSLContext:
    return agent_identity.server_context(
        identity, identity.issue_operator_certificate(datetime.now(UTC))
    )


def test_over_tls_the_client_certificate_must_name_the_partition(tmp_path: Path) -> None:
    identity = agent_identity.AgentIdentity(ROOT)
    server = operator_tls(identity)
    key = identity.partition_key("tenant-a", "web-1", "uid-1")
    lookups: list[str] = []

    async def derived(entry: DirectoryEntry) -> bytes:  # as the operator derives keys
        lookups.append(entry.partition)
        return identity.partition_key(entry.namespace, entry.name, entry.uid)

    def over_tls(name: str, *requests: tuple[bytes, dict]) -> list:
        client = agent_tls(tmp_path, identity, name)
        return answers(list(requests), keys=derived, ssl_context=server, client_ssl=client)

    signed, headers = signed_headers(key=key)
    ((status, body, response_headers),) = over_tls("web-1", (REPORT, headers))
    assert status == 204
    protocol.verify_response(key, signed, 204, response_headers, body)
    assert lookups == [PARTITION]

    # Another partition's certificate with this partition's valid signature is refused before
    # its key is looked up, with the answer an unknown partition gets.
    lookups.clear()
    other = over_tls("db", (REPORT, signed_headers(key=key, now=time.time() + 1)[1]))
    assert RESULTS == ["wrong-partition"]
    unknown = over_tls("ghost", (REPORT, signed_headers(partition="tenant-a/ghost")[1]))
    assert other == unknown and other[0][0] == 401
    assert lookups == []


def test_over_tls_a_client_without_a_certificate_gets_nothing(tmp_path: Path) -> None:
    identity = agent_identity.AgentIdentity(ROOT)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=identity.ca_pem.decode())

    async def scenario(session: aiohttp.ClientSession, url: str) -> list[Exception]:
        port = int(url.rsplit(":", 1)[1])
        failures: list[Exception] = []
        try:
            await tls_request(port, anonymous)
        except (ssl.SSLError, ConnectionError) as exc:
            failures.append(exc)
        try:
            await post(session, f"http://127.0.0.1:{port}", REPORT, signed_headers()[1])
        except aiohttp.ClientError as exc:
            failures.append(exc)
        return failures

    failures, recorded = run(scenario, ssl_context=operator_tls(identity))
    assert len(failures) == 2, failures
    assert recorded == [] and RESULTS == []


async def tls_request(port: int, context: ssl.SSLContext) -> bytes:
    """What the server answers to a request over TLS with ``context``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    if not data:
        raise ConnectionError("closed without an answer")
    return data


def test_the_tls_handshake_has_a_deadline() -> None:
    server = operator_tls(agent_identity.AgentIdentity(ROOT))
    limits = Limits(handshake_seconds=0.5)

    async def scenario(_: aiohttp.ClientSession, url: str) -> float:
        port = int(url.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        with socket.create_connection(("127.0.0.1", port)) as raw:  # never says hello
            raw.setblocking(False)
            started = time.monotonic()
            while await asyncio.wait_for(loop.sock_recv(raw, 4096), 5):
                pass
            return time.monotonic() - started

    elapsed, _ = run(scenario, limits=limits, ssl_context=server)
    assert 0.3 < elapsed < 2


# --- coalescing ------------------------------------------------------------------------------


def test_writes_are_coalesced_to_one_per_window() -> None:
    """The first write goes at once; what arrives during the window waits, and only the
    latest of it is written; every caller returns after the write that carried its item."""
    written: list[tuple[str, int, float]] = []

    async def write(key: str, item: int) -> None:
        written.append((key, item, time.monotonic()))
        await asyncio.sleep(0.01)

    async def scenario() -> list[float]:
        writes = Coalescer(write, window=0.3)
        started = time.monotonic()

        async def submit(key: str, item: int, delay: float) -> float:
            await asyncio.sleep(delay)
            await writes.submit(key, item)
            return time.monotonic() - started

        done = await asyncio.gather(
            submit("a", 1, 0),
            *(submit("a", item, 0.02 * item) for item in range(2, 8)),
            submit("b", 1, 0.05),
        )
        await asyncio.sleep(0.35)
        assert len(writes) == 0, "idle keys are forgotten after their window"
        return done

    done = asyncio.run(scenario())
    assert [(key, item) for key, item, _ in written] == [("a", 1), ("b", 1), ("a", 7)]
    a_first, a_last = written[0][2], written[2][2]
    assert 0.28 < a_last - a_first < 0.4
    assert done[0] < 0.1 and all(0.28 < t < 0.45 for t in done[1:7])
    assert done[7] < 0.15, "another key has its own window"


def test_a_failed_write_fails_every_caller_it_carried() -> None:
    calls: list[int] = []

    async def write(_: str, item: int) -> None:
        calls.append(item)
        if item == 3:
            raise RuntimeError("API down")

    async def scenario() -> list:
        writes = Coalescer(write, window=0.1)
        await writes.submit("a", 1)
        results = await asyncio.gather(
            writes.submit("a", 2), writes.submit("a", 3), return_exceptions=True
        )
        await writes.submit("a", 4)
        return results

    results = asyncio.run(scenario())
    assert calls == [1, 3, 4]
    assert all(isinstance(r, RuntimeError) for r in results)
