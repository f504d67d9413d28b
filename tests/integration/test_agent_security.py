"""Every way a request is refused, with the documented status, and proof that it ran nothing;
and the registration socket's rule that a user registers only their own processes."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lparkube_agent import protocol
from lparkube_agent.testing import (
    AgentProcess,
    ReceivedBytes,
    TLSMaterial,
    cli,
    half_closed_exchange,
    lines,
    start_app,
)

NOBODY = 65534


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, agent_tls: TLSMaterial
) -> Iterator[AgentProcess]:
    """One agent for the module: every refusal below must leave it unchanged anyway."""
    process = AgentProcess(tmp_path_factory.mktemp("agent"), tls_material=agent_tls).start()
    yield process
    process.stop()
    assert "Traceback" not in process.log_path.read_text()


@pytest.fixture(scope="module")
def saver_log(agent: AgentProcess) -> Iterator[Path]:
    """A registered app that appends a line each time it is told to save."""
    out = agent.root / "saves.log"
    proc, _ = start_app("signal", "saver", out)
    cli(agent, "register", "--name=saver", f"--pid={proc.pid}", "--method=Signal")
    yield out
    proc.kill()
    proc.wait()


@dataclass
class Saver:
    out: Path
    before: int  # lines in the log when the test started

    def saves(self) -> int:
        """Saves run since the test started."""
        return len(lines(self.out)) - self.before


@pytest.fixture
def saver(saver_log: Path) -> Saver:
    return Saver(saver_log, len(lines(saver_log)))


def save_body(ident: str = "evil") -> bytes:
    return json.dumps({"id": ident, "waitSeconds": 5}).encode()


def signed(
    agent: AgentProcess,
    body: bytes,
    *,
    key: bytes | None = None,
    partition: str | None = None,
    now: float | None = None,
    path: str = "/v1/save",
) -> tuple[protocol.Signed, dict[str, str]]:
    message = protocol.Message(protocol.TO_AGENT, "POST", path, partition or agent.partition, body)
    sig = protocol.sign(key or agent.key, message, now=now)
    return sig, sig.headers()


def send(
    agent: AgentProcess, body: bytes, headers: dict[str, str], path: str = "/v1/save"
) -> tuple[int, dict[str, str], dict]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", agent.port, timeout=15, context=agent.operator_context()
    )
    try:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response.status, dict(response.getheaders()), json.loads(data)


def raw(agent: AgentProcess, data: bytes) -> tuple[int, dict]:
    """Bytes as they are, over the operator's TLS, closed for sending after them."""
    answer = half_closed_exchange(agent.operator_context(), agent.port, data, timeout=15)
    response = http.client.HTTPResponse(ReceivedBytes(answer))  # type: ignore[arg-type]
    response.begin()
    return response.status, json.loads(response.read())


def assert_ran_nothing(saver: Saver) -> None:
    time.sleep(0.2)  # a save, had one started, would have written by now
    assert saver.saves() == 0


def refused(status: int, answer: dict, expected_status: int, reason: str) -> None:
    assert (status, answer["error"]) == (expected_status, reason), answer
    assert answer["message"]


def test_unsigned(agent: AgentProcess, saver: Saver) -> None:
    status, headers, answer = send(agent, save_body(), {})
    refused(status, answer, 401, "unsigned")
    assert protocol.HEADER_SIGNATURE not in headers
    assert_ran_nothing(saver)


def test_wrong_key(agent: AgentProcess, saver: Saver) -> None:
    _, headers = signed(agent, save_body(), key=protocol.new_key())
    refused(*send(agent, save_body(), headers)[::2], 401, "bad-signature")
    assert_ran_nothing(saver)


def test_wrong_partition(agent: AgentProcess, saver: Saver) -> None:
    _, headers = signed(agent, save_body(), partition="tenant-b/other")
    refused(*send(agent, save_body(), headers)[::2], 401, "wrong-partition")
    assert_ran_nothing(saver)


def test_tampered_body(agent: AgentProcess, saver: Saver) -> None:
    _, headers = signed(agent, save_body("harmless"))
    refused(*send(agent, save_body("evil"), headers)[::2], 401, "bad-signature")
    assert_ran_nothing(saver)


def test_replayed(agent: AgentProcess, saver: Saver) -> None:
    body = save_body("once")
    sig, headers = signed(agent, body)
    status, response_headers, answer = send(agent, body, headers)
    assert status == 200 and answer["applications"][0]["outcome"] == "Saved"
    protocol.verify_response(agent.key, sig, status, response_headers, json.dumps(answer).encode())
    deadline = time.monotonic() + 5
    while saver.saves() == 0 and time.monotonic() < deadline:  # the app writes after the signal
        time.sleep(0.02)
    assert saver.saves() == 1
    refused(*send(agent, body, headers)[::2], 401, "replayed")
    # The same bytes again, even for a new save id, cannot be replayed: a new id needs a new
    # signature, and the old signature fails on the new body.
    refused(*send(agent, save_body("twice"), headers)[::2], 401, "bad-signature")
    time.sleep(0.3)
    assert saver.saves() == 1


@pytest.mark.parametrize("skew", [-120, 120])
def test_expired_or_future(agent: AgentProcess, saver: Saver, skew: int) -> None:
    _, headers = signed(agent, save_body(), now=time.time() + skew)
    refused(*send(agent, save_body(), headers)[::2], 401, "stale")
    assert_ran_nothing(saver)


def test_oversized_body(agent: AgentProcess, saver: Saver) -> None:
    body = b'{"id": "big", "pad": "' + b"x" * (protocol.MAX_BODY_BYTES + 10) + b'"}'
    _, headers = signed(agent, body)
    # Refused on its Content-Length, before a byte of the body is read: only the head is sent
    # (the agent closes at once, which could break sending the rest over TLS).
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length")
    head = f"POST /v1/save HTTP/1.1\r\n{fields}Content-Length: {len(body)}\r\n\r\n"
    refused(*raw(agent, head.encode()), 413, "oversized")
    # A huge declared length is refused at once, without waiting for the body.
    start = time.monotonic()
    status, answer = raw(agent, b"POST /v1/save HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n")
    refused(status, answer, 413, "oversized")
    assert time.monotonic() - start < 2
    assert_ran_nothing(saver)


@pytest.mark.parametrize(
    "body", [b"not json", b'{"id": 5}', b"[]", b'{"id": "x", "waitSeconds": "soon"}', b"[" * 5000]
)
def test_signed_but_malformed_body(agent: AgentProcess, saver: Saver, body: bytes) -> None:
    sig, headers = signed(agent, body)
    status, response_headers, answer = send(agent, body, headers)
    refused(status, answer, 400, "malformed")
    protocol.verify_response(
        agent.key, sig, status, response_headers, json.dumps(answer).encode()
    )  # an authenticated error is signed
    assert_ran_nothing(saver)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (protocol.HEADER_NONCE, "not-hex"),
        (protocol.HEADER_TIMESTAMP, "yesterday"),
        (protocol.HEADER_SIGNATURE, "ABCDEF"),
    ],
)
def test_malformed_headers(agent: AgentProcess, saver: Saver, header: str, value: str) -> None:
    _, headers = signed(agent, save_body())
    headers[header] = value
    refused(*send(agent, save_body(), headers)[::2], 400, "malformed")
    assert_ran_nothing(saver)


def test_malformed_http(agent: AgentProcess, saver: Saver) -> None:
    _, headers = signed(agent, save_body())
    lines_ = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    chunked = f"POST /v1/save HTTP/1.1\r\nTransfer-Encoding: chunked\r\n{lines_}\r\n"
    refused(*raw(agent, chunked.encode() + b"5\r\nhello\r\n0\r\n\r\n"), 400, "malformed")
    twice = f"POST /v1/save HTTP/1.1\r\n{lines_}{lines_}Content-Length: 0\r\n\r\n"
    refused(*raw(agent, twice.encode()), 400, "malformed")
    short = f"POST /v1/save HTTP/1.1\r\n{lines_}Content-Length: 100\r\n\r\n" + "{}"
    refused(*raw(agent, short.encode()), 400, "malformed")
    status, _ = raw(agent, b"GARBAGE\r\n\r\n")
    assert status == 400
    assert_ran_nothing(saver)


@pytest.mark.parametrize("length", [b"\xb2", b"1\xb9", "٢".encode(), b"+2", b"0x2"])
def test_a_content_length_in_other_digits_is_malformed_not_a_crash(
    agent: AgentProcess, saver: Saver, length: bytes
) -> None:
    _, headers = signed(agent, b"{}")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    request = b"POST /v1/save HTTP/1.1\r\n" + head + b"Content-Length: " + length + b"\r\n\r\n{}"
    refused(*raw(agent, request), 400, "malformed")
    assert_ran_nothing(saver)


@pytest.mark.parametrize("rewrite", ["0{}", "\xa0{}", "{}\xb2", "\xb2"])
def test_a_rewritten_timestamp_is_malformed_and_runs_nothing(
    agent: AgentProcess, saver: Saver, rewrite: str
) -> None:
    body = save_body("rewritten")
    _, headers = signed(agent, body)
    headers[protocol.HEADER_TIMESTAMP] = rewrite.format(headers[protocol.HEADER_TIMESTAMP])
    refused(*send(agent, body, headers)[::2], 400, "malformed")
    assert_ran_nothing(saver)


def test_slow_clients_do_not_block_others(agent: AgentProcess, saver: Saver) -> None:
    stalled = []
    for _ in range(20):
        sock = agent.connect()
        sock.sendall(b"POST /v1/save HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        stalled.append(sock)
    try:
        start = time.monotonic()
        assert agent.request("GET", "/v1/report")[0] == 200
        assert time.monotonic() - start < 2
    finally:
        for sock in stalled:
            sock.close()
    assert_ran_nothing(saver)


# --- the registration socket ------------------------------------------------------------------


def as_user(uid: int, socket_path: Path, request: dict) -> dict:
    """Send one registration request from a child process running as `uid`."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to uid, ask, report back through the pipe
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(socket_path))
                sock.sendall(json.dumps(request).encode() + b"\n")
                answer = sock.makefile("rb").readline()
            os.write(write_end, answer)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_users_register_and_unregister_only_their_own_processes(agent: AgentProcess) -> None:
    assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o666
    mine = subprocess.Popen(["sleep", "60"], user=NOBODY, group=NOBODY)
    roots = subprocess.Popen(["sleep", "60"])
    try:
        app = {"name": "x", "method": "Signal", "signal": "SIGCONT"}
        steal = as_user(NOBODY, agent.socket, {"op": "register", "app": {**app, "pid": roots.pid}})
        assert not steal["ok"] and "another user" in steal["error"]

        own = as_user(NOBODY, agent.socket, {"op": "register", "app": {**app, "pid": mine.pid}})
        assert own["ok"] and own["application"]["uid"] == NOBODY

        cli(agent, "register", "--name=root-app", f"--pid={roots.pid}", "--method=Signal",
            "--signal=SIGCONT")  # fmt: skip
        theft = as_user(NOBODY, agent.socket, {"op": "unregister", "pid": roots.pid})
        assert not theft["ok"] and "only your own" in theft["error"]
        assert as_user(NOBODY, agent.socket, {"op": "unregister", "pid": mine.pid})["ok"]

        no_tty = {"op": "register", "app": {**app, "pid": mine.pid, "method": "SimulatedInput"}}
        assert "lparkube-agent run" in as_user(NOBODY, agent.socket, no_tty)["error"]
        assert "root-app" in cli(agent, "list").stdout
    finally:
        for proc in (mine, roots):
            proc.kill()
            proc.wait()
