"""The operator's agent gateway, attacked over its TLS port: nothing that is not validly
signed, fresh and newer than the last accepted report changes a Partition; a valid report does.
Floods, idle and slow connections, replays across a restart and report storms cost the operator
neither API calls nor its agents' heartbeats. Clients speak TLS with certificates the
operator's identity issues (as a Partition's Secret delivers them, or as the agent of a
Partition that is gone still holds)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kubernetes import client, watch
from partition_helpers import GROUP, PLURAL, VERSION, Partitions, partition_manifest, wait_for
from prometheus_client.parser import text_string_to_metric_families

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube_agent import protocol, tls
from lparkube_agent.client import Client
from lparkube_devenv.controlplane import apiserver_gets, free_port
from lparkube_devenv.kubevirt import StandIn

if TYPE_CHECKING:
    from conftest import GuestAgentFactory, OperatorProcess

REPORT = {"agentVersion": "9.9.9", "kernelRelease": "forged", "applications": [{"name": "x"}]}
REQUEST_SECONDS = 5.0  # the gateway's deadline for a whole request


@pytest.fixture
def parts(api_client: client.ApiClient, kubevirt: StandIn, namespace: str) -> Partitions:
    return Partitions(api_client, kubevirt, namespace)


def agent_context(
    credentials: OperatorCredentials, partition: str, uid: str, directory: Path
) -> ssl.SSLContext:
    """The TLS client side of the agent of ``partition`` (with that uid): the files its key
    Secret delivers, as the operator's identity makes them."""
    namespace, name = partition.split("/")
    made = credentials.identity.agent_credentials(namespace, name, uid)
    stem = directory / f"{namespace}-{name}"
    files = tls.TLSFiles(
        stem.with_suffix(".ca"), stem.with_suffix(".crt"), stem.with_suffix(".key")
    )
    files.ca.write_bytes(made.ca_pem)
    files.cert.write_bytes(made.cert_pem)
    files.key.write_bytes(made.key_pem)
    return tls.client_context(files)


class Gateway:
    """Sends reports to the operator's gateway the way an agent does, or not."""

    def __init__(self, url: str, partition: str, key: bytes, context: ssl.SSLContext) -> None:
        self.url = f"{url}/v1/reports"
        self.partition = partition
        self.key = key
        self.context = context  # TLS as the partition's agent (its delivered certificate)

    def headers(self, body: bytes, **overrides: object) -> tuple[protocol.Signed, dict]:
        key = overrides.pop("key", self.key)
        partition = str(overrides.pop("partition", self.partition))
        message = protocol.Message(protocol.TO_OPERATOR, "POST", "/v1/reports", partition, body)
        signed = protocol.sign(key, message, **overrides)  # type: ignore[arg-type]
        return signed, signed.headers()

    def post(self, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def refused(self, body: bytes, headers: dict) -> tuple[int, str]:
        status, data, _ = self.post(body, headers)
        return status, json.loads(data)["error"]

    def answer(self, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
        """Everything an answer says, but its date."""
        status, data, response_headers = self.post(body, headers)
        return status, data, {k: v for k, v in response_headers.items() if k != "Date"}

    def post_when_available(self, body: bytes, headers: dict, timeout: float = 30) -> tuple:
        """Post until the gateway is past its start (503 while its directory syncs)."""
        return wait_for(
            lambda: (answer := self.post(body, headers))[0] != 503 and answer,
            "the gateway past its start",
            timeout,
        )


def heartbeat_fields(parts: Partitions, name: str) -> dict:
    agent = parts.status(name).get("agent") or {}
    return {k: v for k, v in agent.items() if k not in ("endpoint", "keySecretName")}


def scrape(operator: OperatorProcess) -> dict[tuple[str, tuple], float]:
    """Every sample the operator exports: (name, labels) -> value."""
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def api_reads(api: client.ApiClient) -> float:
    """How many GETs of Partitions and Secrets the API server has served (its own metrics)."""
    return apiserver_gets(api, ("partitions", "secrets"))


def reports(samples: dict, result: str) -> float:
    return samples.get(("lparkube_agent_reports_total", (("result", result),)), 0.0)


def counter(samples: dict, name: str) -> float:
    return samples.get((f"{name}_total", ()), 0.0)


class Agents:
    """Gateways as the agents of this test's Partitions (or of ones that do not exist)."""

    def __init__(
        self, parts: Partitions, operator: OperatorProcess, credentials: OperatorCredentials
    ) -> None:
        self.parts, self.operator, self.credentials = parts, operator, credentials

    def ready(self, name: str, ip: str, directory: Path) -> Gateway:
        """A new Partition whose VM runs, and its agent's gateway client."""
        created = self.parts.create(partition_manifest(name, ip, free_port()))
        self.parts.wait_condition(name, "VMReady", "True")
        key = self.parts.secret_file(f"{name}-agent-key", "key")
        return self.gateway(
            f"{self.parts.namespace}/{name}", created["metadata"]["uid"], key, directory
        )

    def gateway(self, partition: str, uid: str, key: bytes, directory: Path) -> Gateway:
        context = agent_context(self.credentials, partition, uid, directory)
        return Gateway(self.operator.gateway_url, partition, key, context)


@pytest.fixture
def agents(
    parts: Partitions, operator: OperatorProcess, operator_credentials: OperatorCredentials
) -> Agents:
    return Agents(parts, operator, operator_credentials)


def test_forged_reports_change_nothing(
    parts: Partitions, operator: OperatorProcess, agents: Agents, tmp_path: Path
) -> None:
    gateway = agents.ready("target", "127.0.0.41", tmp_path)
    key = gateway.key
    body = json.dumps(REPORT).encode()

    _, good = gateway.headers(body)
    ghost = gateway.headers(body, partition=f"{parts.namespace}/ghost")[1]
    unsigned = {k: v for k, v in good.items() if k != protocol.HEADER_SIGNATURE}
    big = b"{" + b" " * protocol.MAX_BODY_BYTES + b"}"
    attempts = [
        ((body, {}), (401, "unsigned")),
        ((body, unsigned), (401, "unsigned")),
        ((body, gateway.headers(body, key=b"w" * 32)[1]), (401, "bad-signature")),
        ((body.replace(b"forged", b"FORGED"), good), (401, "bad-signature")),
        ((body, gateway.headers(body, now=time.time() - 600)[1]), (401, "stale")),
        ((big, gateway.headers(big)[1]), (413, "oversized")),
        ((body, ghost), (401, "bad-signature")),
        ((body, {**good, protocol.HEADER_NONCE: "nope"}), (400, "malformed")),
        ((b"[1, 2]", gateway.headers(b"[1, 2]")[1]), (400, "malformed")),
        ((b"{oops", gateway.headers(b"{oops")[1]), (400, "malformed")),
    ]  # fmt: skip
    for (data, headers), expected in attempts:
        assert gateway.refused(data, headers) == expected
    assert heartbeat_fields(parts, "target") == {}
    assert parts.condition("target", "AgentConnected")["reason"] == "NoHeartbeat"

    # The same report, validly signed, is accepted, answered signed, and shows in status; its
    # signed time is the heartbeat.
    signed, headers = gateway.headers(body)
    status, data, response_headers = gateway.post(body, headers)
    assert status == 204
    protocol.verify_response(key, signed, 204, response_headers, data)
    connected = parts.wait_condition("target", "AgentConnected", "True")
    assert connected["agent"]["kernelRelease"] == "forged"
    assert connected["agent"]["applications"] == 1
    assert connected["agent"]["lastHeartbeatTime"] == stamp(signed.timestamp)

    # Replaying it, even with a newer body under the old signature, or with a fresh nonce in
    # the same second, is refused.
    before = heartbeat_fields(parts, "target")
    assert gateway.refused(body, headers) == (401, "replayed")
    newer = json.dumps({**REPORT, "kernelRelease": "replayed"}).encode()
    assert gateway.refused(newer, headers) == (401, "bad-signature")
    same_second = gateway.headers(newer, now=signed.timestamp)[1]
    assert gateway.refused(newer, same_second) == (401, "replayed")
    assert heartbeat_fields(parts, "target") == before

    samples = scrape(operator)
    for result in ("accepted", "unsigned", "bad-signature", "wrong-partition", "stale"):
        assert reports(samples, result) > 0, result
    for result in ("replayed", "oversized"):
        assert reports(samples, result) > 0, result

    # With no further heartbeat the agent counts as lost after the 3s timeout.
    parts.wait_condition("target", "AgentConnected", "False", timeout=15)
    wait_for(lambda: "AgentLost" in parts.reasons("target"), "the AgentLost event")


def stamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_unknown_partitions_and_bad_signatures_get_one_answer(
    parts: Partitions, agents: Agents, tmp_path: Path
) -> None:
    """No existence oracle: a real Partition's wrong signature, a name with no Partition
    behind it (here or in another namespace; asked with a certificate for that name, as a
    deleted Partition's agent still holds one) and a name other than the certificate's all
    get byte for byte the same answer."""
    real = agents.ready("real", "127.0.0.42", tmp_path)
    body = json.dumps(REPORT).encode()
    stranger = secrets.token_bytes(32)
    ghosts = [
        agents.gateway(name, "gone-uid", stranger, tmp_path)
        for name in (f"{parts.namespace}/ghost", "kube-system/real")
    ]
    asks = [
        (real, real.partition),
        *((ghost, ghost.partition) for ghost in ghosts),
        (real, f"{parts.namespace}/ghost"),
    ]
    answers = [
        sender.answer(body, sender.headers(body, key=stranger, partition=name)[1])
        for sender, name in asks
    ]
    assert answers[0][0] == 401
    assert json.loads(answers[0][1]) == {
        "error": "bad-signature",
        "message": "signature does not match the partition key",
    }
    assert all(answer == answers[0] for answer in answers), answers


# --- floods and slow clients -----------------------------------------------------------------


async def flood(
    port: int, context: ssl.SSLContext, names: int, idle: int, concurrency: int
) -> Counter:
    """``idle`` connections that never send a byte, from 20 addresses (pods), and meanwhile
    ``names`` reports for partitions that do not exist, signed with random keys, each on its
    own TLS connection with ``context``'s certificate, from 8 other addresses; the statuses
    they were answered with."""

    async def connect(
        source: str, tls_context: ssl.SSLContext | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), ssl=tls_context
        )

    body = json.dumps(REPORT).encode()
    statuses: Counter = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def hold(i: int) -> None:
        with contextlib.suppress(OSError):
            _, writer = await connect(f"127.0.1.{i % 20 + 1}")
            await asyncio.sleep(REQUEST_SECONDS + 1)
            writer.close()

    async def one(i: int) -> None:
        partition = f"flood-{i % 97}/ghost-{i}"
        message = protocol.Message(protocol.TO_OPERATOR, "POST", "/v1/reports", partition, body)
        headers = protocol.sign(secrets.token_bytes(32), message).headers()
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"POST /v1/reports HTTP/1.1\r\nHost: gateway\r\nContent-Length: {len(body)}\r\n"
        async with gate:
            try:
                reader, writer = await connect(f"127.0.2.{i % 8 + 1}", context)
                writer.write(f"{head}{lines}\r\n".encode() + body)
                status = (await reader.readline()).split(b" ")[1].decode()
            except (IndexError, OSError):
                statuses["closed"] += 1
                return
            statuses[status] += 1
            writer.close()

    holders = [asyncio.create_task(hold(i)) for i in range(idle)]
    await asyncio.gather(*(one(i) for i in range(names)))
    await asyncio.gather(*holders)
    return statuses


def report_failures(log_text: str) -> int:
    return log_text.count("report to the operator failed")


def test_a_flood_of_fresh_names_costs_no_lookup_and_no_heartbeat(
    agents: Agents, guest_agent: GuestAgentFactory, api_client: client.ApiClient, tmp_path: Path
) -> None:
    """Thousands of reports for partitions that do not exist (over TLS with the certificate of
    a Partition that is gone), plus more idle connections than the gateway holds, from 28
    other addresses: not one key lookup (the API server serves only what the real agent's
    reports cost), and a real agent reporting every second through it never misses its 3s
    heartbeat."""
    parts, operator = agents.parts, agents.operator
    parts.create(partition_manifest("steady", "127.0.0.43", free_port()))
    parts.wait_condition("steady", "VMReady", "True")
    agent = guest_agent(parts.namespace, "steady", ip="127.0.0.43")
    connected = parts.wait_condition("steady", "AgentConnected", "True", timeout=15)
    since = next(c for c in connected["conditions"] if c["type"] == "AgentConnected")
    log_before = agent.log_path.read_text()
    before, reads_before = scrape(operator), api_reads(api_client)

    port = int(operator.gateway_url.rsplit(":", 1)[1])
    stolen = agent_context(agents.credentials, "flood/gone", "gone-uid", tmp_path)
    started = time.monotonic()
    statuses = asyncio.run(flood(port, stolen, names=2000, idle=1100, concurrency=128))
    flooded_for = time.monotonic() - started

    after, reads = scrape(operator), api_reads(api_client) - reads_before
    assert set(statuses) <= {"401", "closed"} and statuses["401"] > 400, statuses
    assert reads < 10 * flooded_for + 20, f"{reads} GETs of Partitions and Secrets"
    refused = reports(after, "wrong-partition") - reports(before, "wrong-partition")
    assert refused == statuses["401"], "another name than the certificate's, answered as unknown"
    assert counter(after, "lparkube_agent_key_lookups") == counter(
        before, "lparkube_agent_key_lookups"
    ), "an unknown name must cost no API call"
    condition = parts.condition("steady", "AgentConnected")
    assert condition["status"] == "True"
    assert condition["lastTransitionTime"] == since["lastTransitionTime"], "never lost"
    new_log = agent.log_path.read_text()[len(log_before) :]
    assert report_failures(new_log) == 0, new_log[-2000:]
    assert reports(after, "accepted") - reports(before, "accepted") >= int(flooded_for) - 1


def closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes (reading and discarding), None if it stays open."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < timeout:
        try:
            if not sock.recv(4096):
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def test_idle_slow_header_and_slow_body_connections_are_closed(
    operator: OperatorProcess, operator_credentials: OperatorCredentials, tmp_path: Path
) -> None:
    """A connection that never says hello, and TLS connections that dribble their headers or
    their body, are all closed by the gateway's deadline for a whole request."""
    host, port = operator.gateway_url.removeprefix("https://").rsplit(":", 1)
    context = agent_context(operator_credentials, "slow/client", "uid", tmp_path)
    head = b"POST /v1/reports HTTP/1.1\r\nHost: gateway\r\nContent-Length: 1000\r\n"
    idle = socket.create_connection((host, int(port)))
    slow_head, slow_body = (
        context.wrap_socket(socket.create_connection((host, int(port)))) for _ in range(2)
    )
    slow_body.sendall(head + b"\r\n")
    stop = threading.Event()

    def dribble(sock: socket.socket, data: bytes) -> None:
        for byte in data:
            if stop.wait(0.5):
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return

    feeders = [
        threading.Thread(target=dribble, args=(slow_head, head * 20), daemon=True),
        threading.Thread(target=dribble, args=(slow_body, b"x" * 1000), daemon=True),
    ]
    for feeder in feeders:
        feeder.start()
    try:
        closed = [closed_within(sock, REQUEST_SECONDS + 5) for sock in (idle, slow_head, slow_body)]
    finally:
        stop.set()
        for sock in (idle, slow_head, slow_body):
            sock.close()
    assert all(t is not None and t < REQUEST_SECONDS + 2 for t in closed), closed


# --- replays and storms ----------------------------------------------------------------------


def test_a_replay_after_a_restart_never_moves_the_heartbeat(
    parts: Partitions, operator: OperatorProcess, agents: Agents, tmp_path: Path
) -> None:
    """The last accepted signed time lives in status, not only in memory: a report captured
    before an operator restart is refused after it, and the heartbeat stays where it was."""
    gateway = agents.ready("replayed", "127.0.0.44", tmp_path)
    body = json.dumps(REPORT).encode()
    earlier = gateway.headers(body, now=time.time() - 5)[1]  # captured, never delivered
    signed, captured = gateway.headers(body)
    assert gateway.post(body, captured)[0] == 204
    parts.wait_condition("replayed", "AgentConnected", "True")
    heartbeat = parts.status("replayed")["agent"]["lastHeartbeatTime"]
    assert heartbeat == stamp(signed.timestamp)

    operator.kill()
    operator.start()
    status, data, _ = gateway.post_when_available(body, captured)
    assert status == 401 and json.loads(data)["error"] == "replayed", (status, data)
    assert gateway.refused(body, earlier) == (401, "replayed")
    assert parts.status("replayed")["agent"]["lastHeartbeatTime"] == heartbeat

    # The agent's next report, signed later, is accepted as ever.
    signed, fresh = gateway.headers(body, now=max(time.time(), signed.timestamp + 1))
    assert gateway.post(body, fresh)[0] == 204
    wait_for(
        lambda: parts.status("replayed")["agent"]["lastHeartbeatTime"] == stamp(signed.timestamp),
        "the new heartbeat",
    )


class StatusWrites:
    """Counts the writes to one Partition while it runs (a watch from a resourceVersion)."""

    def __init__(self, parts: Partitions, name: str) -> None:
        self.parts, self.name = parts, name
        self.count = 0
        self._stop = threading.Event()
        version = (parts.get(name) or {})["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._watch, args=(version,), daemon=True)
        self._thread.start()

    def _watch(self, version: str) -> None:
        stream = watch.Watch()
        for event in stream.stream(
            self.parts.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.parts.namespace,
            PLURAL,
            field_selector=f"metadata.name={self.name}",
            resource_version=version,
            timeout_seconds=60,
        ):
            if event["type"] == "MODIFIED":
                self.count += 1
            if self._stop.is_set():
                stream.stop()

    def stop(self) -> int:
        time.sleep(1.5)  # the last coalesced write lands
        self._stop.set()
        self.parts.custom.patch_namespaced_custom_object(  # one event to end the watch with
            GROUP, VERSION, self.parts.namespace, PLURAL, self.name,
            {"metadata": {"annotations": {"test.lparkube.io/watched": "done"}}},
        )  # fmt: skip
        self._thread.join(10)
        return self.count - 1


def test_a_registration_storm_makes_few_status_writes(
    parts: Partitions, operator: OperatorProcess, guest_agent: GuestAgentFactory
) -> None:
    """A guest user toggling a registration as fast as the socket answers for 5s: the agent
    reports at most once a second, so the Partition is written about as often."""
    parts.create(partition_manifest("storm", "127.0.0.45", free_port()))
    parts.wait_condition("storm", "VMReady", "True")
    agent = guest_agent(parts.namespace, "storm", ip="127.0.0.45")
    parts.wait_condition("storm", "AgentConnected", "True", timeout=15)
    before = scrape(operator)
    writes = StatusWrites(parts, "storm")
    toggles = 0
    app = {"name": "toggled", "pid": os.getpid(), "method": "Signal"}
    with Client(agent.socket) as registration:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            registration.request({"op": "register", "app": app})
            registration.request({"op": "unregister", "pid": os.getpid(), "name": "toggled"})
            toggles += 1
    written = writes.stop()
    accepted = reports(scrape(operator), "accepted") - reports(before, "accepted")
    assert toggles > 100
    assert accepted <= 9, f"{accepted} reports accepted for {toggles} toggles"
    assert written <= 12, f"{written} status writes for {toggles} toggles"
    wait_for(lambda: parts.status("storm")["agent"]["applications"] == 0, "the final state")


def test_a_burst_of_signed_reports_is_written_once_a_second(
    parts: Partitions, operator: OperatorProcess, agents: Agents, tmp_path: Path
) -> None:
    """A key holder bypassing the agent's pacing: 20 reports signed in 20 successive seconds,
    sent within half a second. Every one is answered 204 once it (or a later one) is written,
    and the Partition is written at most once a second."""
    gateway = agents.ready("burst", "127.0.0.46", tmp_path)
    before = scrape(operator)
    writes = StatusWrites(parts, "burst")
    now = int(time.time())
    bodies = [json.dumps({**REPORT, "applications": [{}] * i}).encode() for i in range(20)]
    results: list[tuple[int, float]] = [(0, 0.0)] * 20

    def send(i: int) -> None:
        started = time.monotonic()
        headers = gateway.headers(bodies[i], now=now - 20 + i)[1]
        results[i] = (gateway.post(bodies[i], headers)[0], time.monotonic() - started)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
        time.sleep(0.025)  # in signed order
    for thread in threads:
        thread.join(15)
    written = writes.stop()
    after = scrape(operator)
    assert [status for status, _ in results] == [204] * 20
    assert max(seconds for _, seconds in results) < 3
    report_writes = counter(after, "lparkube_agent_report_writes")
    assert report_writes - counter(before, "lparkube_agent_report_writes") <= 3
    assert written <= 4, written
    agent = parts.status("burst")["agent"]
    assert (agent["applications"], agent["lastHeartbeatTime"]) == (19, stamp(now - 1))


def test_plain_http_to_the_gateway_gets_no_answer(operator: OperatorProcess) -> None:
    """The gateway speaks only TLS: a plain HTTP report is never read as one, nor answered."""
    host, port = operator.gateway_url.removeprefix("https://").rsplit(":", 1)
    body = json.dumps(REPORT).encode()
    request = (
        f"POST /v1/reports HTTP/1.1\r\nHost: gateway\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection((host, int(port)), timeout=10) as plain:
        plain.sendall(request)
        answer = b""
        with contextlib.suppress(ConnectionError):
            while chunk := plain.recv(4096):
                answer += chunk
    assert b"HTTP/" not in answer
