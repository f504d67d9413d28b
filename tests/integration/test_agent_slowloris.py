"""Slow and idle connections cannot lock the operator out of an agent (issue 10, finding 1).

The attack: 128 connections that each send one more byte of a request every 5 s, reopened as
soon as the agent closes one (under TLS they never finish the handshake: it shares the
request's deadline). Against the real agent process with its real limits, a signed
save instruction still gets in at once, every slow connection is cut by the total request
deadline, and a SaveEvent completes within its deadline. The rest of the connection policy (idle
keep-alive, trust, eviction) runs against the real endpoint in-process with its limits scaled
down, so that each rule is seen exactly.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kubernetes import client
from partition_helpers import wait_for
from saving_helpers import Fleet, results, wait_complete

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube_agent import protocol, tls
from lparkube_agent.httpapi import AgentAPI, AgentHTTPServer, Limits
from lparkube_agent.saves import SaveStore
from lparkube_agent.testing import AgentProcess, Slowloris, TLSMaterial, cli, start_app

if TYPE_CHECKING:
    from conftest import OperatorProcess

PACE = 5.0  # seconds between two bytes of a slow request, as in the issue
CONNECTIONS = 128  # the agent's cap on connections that have not delivered a verified request
REAL = Limits()


def test_a_signed_save_gets_through_a_slowloris_and_the_deadline_cuts_every_slow_connection(
    agent: AgentProcess,
) -> None:
    out = agent.root / "saves.log"
    app, _ = start_app("signal", "saver", out)
    try:
        cli(agent, "register", "--name=saver", f"--pid={app.pid}", "--method=Signal")
        with Slowloris(("127.0.0.1", agent.port)) as attack:
            time.sleep(PACE + 1)  # each has sent a second byte: a per-read timeout never fires
            instructed = time.monotonic()
            assert attack.open_since(instructed) == CONNECTIONS  # the table is full
            answer = agent.save("through-the-slowloris", wait=10, timeout=5)
            took = time.monotonic() - instructed
            wait_for(
                lambda: attack.open_since(instructed) == 0,
                "the deadline to cut the slow connections",
                timeout=REAL.request_seconds + 5,
            )
            lived = sorted(attack.closed_since(instructed))
    finally:
        app.kill()
        app.wait()
    evicted = [t for t in lived if t < REAL.request_seconds - 0.5]
    print(
        f"signed save during a {CONNECTIONS}-connection slowloris: answered in {took:.3f}s; "
        f"slow connections closed after {lived[len(evicted)]:.2f}-{lived[-1]:.2f}s "
        f"(median {lived[len(lived) // 2]:.2f}s), {len(evicted)} evicted earlier to admit it"
    )
    assert answer["state"] == "Completed"
    assert [a["outcome"] for a in answer["applications"]] == ["Saved"]
    assert took < 1.0
    assert len(lived) == CONNECTIONS
    assert lived[-1] < REAL.request_seconds + 1.0  # the total deadline, whatever the pace
    # Room was made for the instruction. While its TLS handshake runs (milliseconds) it is not
    # yet the operator's, and each connection the attacker reopens evicts the next oldest:
    # a few, never the instruction's (the newest), whatever the attacker's pace.
    assert 1 <= len(evicted) <= 16
    assert attack.answers == []  # cut, never answered
    assert "Traceback" not in agent.log_path.read_text()


def test_a_save_event_completes_within_its_deadline_during_a_slowloris(
    fleet: Fleet, api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    agent = fleet.partition("besieged", "node-a", [("ledger", 10, 0.0)])
    with Slowloris((agent.ip, agent.port)) as attack:
        time.sleep(PACE + 1)
        assert attack.open_since(time.monotonic()) == CONNECTIONS
        created = time.monotonic()
        spec = {
            "reason": "Manual",
            "targets": {"partitions": ["besieged"]},
            "deadline": "20s",
            "applicationTimeout": "2s",
        }
        fleet.create_save_event("through-slowloris", spec)
        saved = wait_complete(api_client, namespace, "through-slowloris", timeout=30)
        took = time.monotonic() - created
    print(f"SaveEvent during a {CONNECTIONS}-connection slowloris on its agent: {took:.2f}s")
    assert results(saved, namespace)["besieged"]["outcome"] == "Succeeded"
    assert saved["status"]["completionTime"] <= saved["status"]["deadlineTime"]
    assert [app for app, _ in fleet.written("besieged")] == ["ledger"]


# --- the connection policy, in-process with scaled limits ------------------------------------

PARTITION = "tenant-a/web-1"
SCALED = Limits(
    request_seconds=1.0, idle_seconds=2.0, untrusted_connections=8, trusted_connections=2
)
CAP = SCALED.untrusted_connections


@dataclass
class Endpoint:
    server: AgentHTTPServer
    key: bytes
    operator_tls: ssl.SSLContext

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.server.server_address[1]

    def connection(self) -> http.client.HTTPSConnection:
        """A connection as the operator's (its client certificate)."""
        return http.client.HTTPSConnection(*self.address, timeout=10, context=self.operator_tls)

    def report(self, conn: http.client.HTTPConnection, signed: bool = True) -> tuple[int, str]:
        """GET /v1/report on `conn`; the status and the Connection header."""
        message = protocol.Message(protocol.TO_AGENT, "GET", "/v1/report", PARTITION, b"")
        headers = protocol.sign(self.key, message).headers() if signed else {}
        conn.request("GET", "/v1/report", headers=headers)
        response = conn.getresponse()
        json.loads(response.read())
        return response.status, response.getheader("Connection", "")


@pytest.fixture
def endpoint(agent_tls: TLSMaterial, tmp_path: Path) -> Iterator[Endpoint]:
    """The agent's real HTTPS endpoint in this process, with SCALED limits."""
    key = protocol.new_key()
    saves = SaveStore(list, lambda *_: None)  # nothing registered
    api = AgentAPI(key, PARTITION, saves, lambda: {"applications": []})
    server_tls = tls.server_context(agent_tls.write_agent_files(tmp_path))
    server = AgentHTTPServer(("127.0.0.1", 0), api, server_tls, SCALED)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Endpoint(server, key, agent_tls.operator_context(tmp_path))
    server.shutdown()
    server.server_close()
    thread.join()


def closes_after(sock: socket.socket, since: float) -> float:
    """Seconds from `since` until the agent closes `sock` (which must send nothing)."""
    sock.settimeout(10)
    assert sock.recv(1) == b""
    return time.monotonic() - since


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def test_a_silent_connection_is_closed_at_the_request_deadline(endpoint: Endpoint) -> None:
    opened = time.monotonic()
    with socket.create_connection(endpoint.address) as silent:
        waited = closes_after(silent, opened)
    assert SCALED.request_seconds - 0.1 < waited < SCALED.request_seconds + 0.5


def test_only_the_operator_gets_past_tls_and_an_idle_connection_is_closed(
    endpoint: Endpoint, standalone_identity: OperatorCredentials, tmp_path: Path
) -> None:
    # Another partition's agent: a certificate from the same CA, not the operator's name.
    other = standalone_identity.identity.agent_credentials("tenant-b", "db", "uid-2")
    impostor = TLSMaterial(other.ca_pem, b"", b"", other.cert_pem, other.key_pem)
    (tmp_path / "impostor").mkdir()
    conn = http.client.HTTPSConnection(
        *endpoint.address, timeout=10, context=impostor.operator_context(tmp_path / "impostor")
    )
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        endpoint.report(conn)
    with socket.create_connection(endpoint.address) as plain:  # plain HTTP: no answer at all
        plain.sendall(b"GET /v1/report HTTP/1.1\r\nHost: agent\r\n\r\n")
        plain.settimeout(5)
        assert b"HTTP/" not in plain.recv(4096)
    kept = endpoint.connection()
    assert endpoint.report(kept) == (200, "")
    sock = kept.sock
    time.sleep(SCALED.idle_seconds / 2)
    assert endpoint.report(kept) == (200, "")  # the same connection, kept alive
    answered = time.monotonic()
    assert kept.sock is sock
    waited = closes_after(sock, answered)
    assert SCALED.idle_seconds - 0.1 < waited < SCALED.idle_seconds + 0.5
    kept.close()


def test_a_flood_evicts_the_oldest_untrusted_connections_never_a_trusted_one(
    endpoint: Endpoint,
) -> None:
    kept = endpoint.connection()
    assert endpoint.report(kept) == (200, "")
    flood = [socket.create_connection(endpoint.address) for _ in range(3 * CAP)]
    try:
        time.sleep(0.3)  # accepted, and the oldest evicted
        assert [still_open(s) for s in flood] == [False] * (2 * CAP) + [True] * CAP
        assert endpoint.report(kept) == (200, "")  # the trusted connection was kept
        assert endpoint.report(endpoint.connection()) == (200, "")  # and a new one gets in
    finally:
        for sock in flood:
            sock.close()
        kept.close()


def test_verified_connections_beyond_the_trusted_allowance_are_served_then_closed(
    endpoint: Endpoint,
) -> None:
    conns = [endpoint.connection() for _ in range(SCALED.trusted_connections + 1)]
    answers = [endpoint.report(conn) for conn in conns]
    assert answers == [(200, "")] * SCALED.trusted_connections + [(200, "close")]
    for conn in conns:
        conn.close()
