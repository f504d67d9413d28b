"""Fuzz the agent's HTTP endpoint: 10,000+ requests, random ones and mutations of valid signed
ones (reports, saves, hibernations and storage changes), over real connections to a real agent
process in a fake guest tree. Nothing that is not validly signed and fresh may be accepted,
everything that is must be (a hibernation may be refused, signed, as Busy), the agent must
survive all of it, and no hibernation or storage change may run twice or for a request that
was refused.

Set LPARKUBE_FUZZ_SEED to replay a run; the seed is printed (pytest shows it on failure).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lparkube_agent import protocol
from lparkube_agent.fakeguest import FakeGuest
from lparkube_agent.testing import (
    AgentProcess,
    ReceivedBytes,
    TLSMaterial,
    cli,
    half_closed_exchange,
    lines,
    start_app,
)

TOTAL = 10_000
THREADS = 8
IDS = 20
SIGNATURE_HEADERS = (
    protocol.HEADER_PARTITION,
    protocol.HEADER_TIMESTAMP,
    protocol.HEADER_NONCE,
    protocol.HEADER_SIGNATURE,
)


@dataclass
class Request:
    """One request as parts, so mutations can change any of them."""

    method: str
    path: str
    body: bytes
    headers: list[tuple[str, str]]
    signed: protocol.Signed | None = None

    def render(self) -> tuple[bytes, list[tuple[int, int]], int]:
        """The bytes, the spans the signature covers, and where the last signed value ends."""
        covered: list[tuple[int, int]] = []
        data = bytearray()

        def put(text: bytes, cover: bool = False) -> None:
            if cover:
                covered.append((len(data), len(data) + len(text)))
            data.extend(text)

        put(self.method.encode(), True)
        put(b" ")
        put(self.path.encode(), True)
        put(b" HTTP/1.1\r\n")
        last_signed_end = 0
        for name, value in self.headers:
            is_signed = name in SIGNATURE_HEADERS
            put(name.encode(), is_signed)
            put(b": ")
            put(value.encode(), is_signed)
            last_signed_end = len(data) if is_signed else last_signed_end
            put(b"\r\n")
        put(b"\r\n")
        put(self.body, True)
        return bytes(data), [c for c in covered if c[1] > c[0]], last_signed_end


@dataclass
class Case:
    kind: str
    data: bytes
    accept: bool
    signed: protocol.Signed | None
    oneshot: bool = False
    save_id: str | None = None
    hibernate_id: str | None = None
    storage_id: str | None = None


@dataclass
class Tally:
    kinds: Counter = field(default_factory=Counter)
    accepted: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    hibernate_ids: set[str] = field(default_factory=set)  # answered Hibernating or Resumed
    storage_ids: set[str] = field(default_factory=set)  # storage changes answered
    lock: threading.Lock = field(default_factory=threading.Lock)


class Fuzzer:
    """Makes cases for one thread; every case knows whether it must be accepted."""

    def __init__(self, agent: AgentProcess, rng: random.Random) -> None:
        self.agent, self.rng = agent, rng
        self.accepted: list[bytes] = []  # sent and accepted: replaying them must fail

    def request(
        self,
        *,
        key: bytes | None = None,
        partition: str | None = None,
        skew: float = 0.0,
        body: bytes | None = None,
        route: tuple[str, str] | None = None,
    ) -> tuple[Request, str | None]:
        """A signed request and the id of the save or hibernation it asks for."""
        rng = self.rng
        ident = None
        if route is None:
            route = rng.choices(ROUTES, (4, 4, 2, 2))[0]
        method, path = route
        if body is None and path == "/v1/save":
            ident = f"fuzz-{rng.randrange(IDS)}"
            body = json.dumps({"id": ident, "reason": "Manual", "waitSeconds": 0}).encode()
        elif body is None and path == "/v1/hibernate":
            ident = f"fuzz-hibernate-{rng.randrange(IDS)}"
            body = json.dumps({"id": ident, "serial": "lparkube-paging"}).encode()
        elif body is None and path == "/v1/storage":
            ident = f"fuzz-storage-{rng.randrange(IDS)}"
            disks = [{"serial": "data", "name": "data", "change": rng.choice(STORAGE_CHANGES)}]
            body = json.dumps({"id": ident, "disks": disks}).encode()
        body = body or b""
        message = protocol.Message(
            protocol.TO_AGENT, method, path, partition or self.agent.partition, body
        )
        signed = protocol.sign(key or self.agent.key, message, now=time.time() + skew)
        headers = [("Host", "agent"), ("Content-Type", "application/json")]
        headers.append(("Content-Length", str(len(body))))
        headers += list(signed.headers().items())
        return Request(method, path, body, headers, signed), ident

    def _accepted(self, kind: str, request: Request, ident: str | None) -> Case:
        case = Case(kind, request.render()[0], True, request.signed)
        if request.path == "/v1/hibernate":
            case.hibernate_id = ident
        elif request.path == "/v1/storage":
            case.storage_id = ident
        else:
            case.save_id = ident
        return case

    def case(self) -> Case:
        kinds = list(MUTATIONS)
        weights = [MUTATIONS[k][1] for k in kinds]
        kind = self.rng.choices(kinds, weights)[0]
        if kind == "replay" and not self.accepted:
            kind = "valid"
        return MUTATIONS[kind][0](self)

    # --- accepted: validly signed and fresh, however the HTTP framing varies ---------------

    def valid(self) -> Case:
        return self._accepted("valid", *self.request())

    def reorder(self) -> Case:
        request, ident = self.request()
        self.rng.shuffle(request.headers)
        return self._accepted("reorder", request, ident)

    def header_case(self) -> Case:
        request, ident = self.request()
        request.headers = [(self._recase(n), v) for n, v in request.headers]
        return self._accepted("header-case", request, ident)

    def extra_header(self) -> Case:
        request, ident = self.request()
        junk = "".join(self.rng.choice("abcdefXYZ0123 -_/") for _ in range(20)).strip() or "x"
        request.headers.insert(self.rng.randrange(len(request.headers) + 1), ("X-Fuzz", junk))
        return self._accepted("extra-header", request, ident)

    def fresh_skew(self) -> Case:
        return self._accepted("fresh-skew", *self.request(skew=self.rng.uniform(-50, 50)))

    # --- refused ----------------------------------------------------------------------------

    def replay(self) -> Case:
        return Case("replay", self.rng.choice(self.accepted), False, None)

    def stale(self) -> Case:
        skew = self.rng.choice((-1, 1)) * self.rng.uniform(65, 10**7)
        return self._refused("stale", self.request(skew=skew)[0])

    def wrong_key(self) -> Case:
        return self._refused("wrong-key", self.request(key=protocol.new_key())[0])

    def wrong_partition(self) -> Case:
        other = self.rng.choice(["tenant-a/web-2", "tenant-b/web-1", "web-1", "x"])
        return self._refused("wrong-partition", self.request(partition=other)[0])

    def shift_timestamp(self) -> Case:
        request, _ = self.request()
        shift = self.rng.choice((-1, 1)) * self.rng.randint(1, 30)
        request.headers = [
            (n, str(int(v) + shift) if n == protocol.HEADER_TIMESTAMP else v)
            for n, v in request.headers
        ]
        return self._refused("shift-timestamp", request)

    def strip_header(self) -> Case:
        request, _ = self.request()
        gone = self.rng.choice(SIGNATURE_HEADERS)
        request.headers = [(n, v) for n, v in request.headers if n != gone]
        return self._refused("strip-header", request)

    def duplicate_header(self) -> Case:
        request, _ = self.request()
        name = self.rng.choice(SIGNATURE_HEADERS)
        value = dict(request.headers)[name]
        if self.rng.random() < 0.5:
            value = protocol.sign(protocol.new_key(), protocol.Message("x", "", "", "", b"")).nonce
        request.headers.insert(self.rng.randrange(len(request.headers) + 1), (name, value))
        return self._refused("duplicate-header", request)

    def bad_body(self) -> Case:
        route = self.rng.choice(ROUTES[1:])
        bodies = [b"", b"{", b"[]", b'{"id": 1}', b"\xff\xfe"]
        if route[1] == "/v1/save":
            bodies.append(b'{"id": "x", "waitSeconds": -1}')
        elif route[1] == "/v1/storage":  # disks: 1..64 of {serial, name, change}
            bodies += [b'{"id": "x"}', b'{"id": "x", "disks": []}', b'{"id": "x", "disks": [7]}']
            bodies.append(b'{"id": "x", "disks": [{"serial": "../sdb", "change": "Lost"}]}')
            bodies.append(b'{"id": "x", "disks": [{"serial": "data", "change": "Grown"}]}')
        else:  # a hibernation needs the paging disk's serial, and a deadline is a time
            bodies += [b'{"id": "x"}', b'{"id": "x", "serial": 7}', b'{"id": "x", "serial": ""}']
            bodies.append(b'{"id": "x", "serial": "lparkube-paging", "deadline": "soon"}')
        return self._refused("bad-body", self.request(body=self.rng.choice(bodies), route=route)[0])

    def wrong_route(self) -> Case:
        route = self.rng.choice(
            [("GET", "/v1/save"), ("POST", "/v1/report"), ("GET", "/"), ("POST", "/v1/save/"),
             ("GET", "/v1/hibernate"), ("PUT", "/v1/hibernate"), ("POST", "/v1/hibernate/"),
             ("GET", "/v1/storage"), ("POST", "/v1/storage/")]
        )  # fmt: skip
        return self._refused("wrong-route", self.request(route=route, body=b"{}")[0])

    def flip(self) -> Case:
        request, _ = self.request()
        data, covered, _ = request.render()
        start, end = self.rng.choice(covered)
        at = self.rng.randrange(start, end)
        old = data[at]
        same = {old, ord(chr(old).swapcase()) if chr(old).isalpha() else old}
        new = self.rng.choice([b for b in range(256) if b not in same])
        mutated = data[:at] + bytes([new]) + data[at + 1 :]
        return Case("flip", mutated, False, None, oneshot=True)

    def truncate(self) -> Case:
        request, _ = self.request()
        data, _, last_signed_end = request.render()
        cut = self.rng.randrange(len(data) if request.body else last_signed_end)
        return Case("truncate", data[:cut], False, None, oneshot=True)

    def oversized(self) -> Case:
        body = b'{"id": "huge", "pad": "' + b"x" * (protocol.MAX_BODY_BYTES + 1) + b'"}'
        request, _ = self.request(body=body, route=self.rng.choice(ROUTES[1:]))
        return Case("oversized", request.render()[0], False, None, oneshot=True)

    def garbage(self) -> Case:
        rng = self.rng
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
        else:
            path = rng.choice(["/v1/save", "/v1/hibernate", "/v1/storage"])
            head = [f"{rng.choice(['GET', 'POST', 'PUT', 'get'])} {path} HTTP/1.1"]
            for name in rng.sample(SIGNATURE_HEADERS, rng.randrange(5)):
                head.append(f"{name}: {rng.getrandbits(256):x}")
            data = ("\r\n".join(head) + "\r\n\r\n").encode()
        return Case("garbage", data, False, None, oneshot=True)

    def _refused(self, kind: str, request: Request) -> Case:
        return Case(kind, request.render()[0], False, request.signed)

    def _recase(self, name: str) -> str:
        return "".join(c.upper() if self.rng.random() < 0.5 else c.lower() for c in name)


ROUTES = [
    ("GET", "/v1/report"),
    ("POST", "/v1/save"),
    ("POST", "/v1/hibernate"),
    ("POST", "/v1/storage"),
]
STORAGE_CHANGES = ("Replaced", "Resized", "Lost")
MUTATIONS: dict[str, tuple[Callable[[Fuzzer], Case], int]] = {
    "valid": (Fuzzer.valid, 8),
    "reorder": (Fuzzer.reorder, 4),
    "header-case": (Fuzzer.header_case, 4),
    "extra-header": (Fuzzer.extra_header, 3),
    "fresh-skew": (Fuzzer.fresh_skew, 3),
    "replay": (Fuzzer.replay, 8),
    "stale": (Fuzzer.stale, 5),
    "wrong-key": (Fuzzer.wrong_key, 5),
    "wrong-partition": (Fuzzer.wrong_partition, 3),
    "shift-timestamp": (Fuzzer.shift_timestamp, 5),
    "strip-header": (Fuzzer.strip_header, 4),
    "duplicate-header": (Fuzzer.duplicate_header, 4),
    "bad-body": (Fuzzer.bad_body, 4),
    "wrong-route": (Fuzzer.wrong_route, 3),
    "flip": (Fuzzer.flip, 20),
    "truncate": (Fuzzer.truncate, 8),
    "oversized": (Fuzzer.oversized, 1),
    "garbage": (Fuzzer.garbage, 6),
}


class Connection:
    """A keep-alive connection that reconnects when the agent closes it."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.sock: socket.socket | None = None

    def exchange(self, data: bytes, oneshot: bool) -> tuple[int | None, dict, bytes]:
        if oneshot:  # a fresh connection, closed for sending after the data (over TLS too)
            answer = half_closed_exchange(self.agent.operator_context(), self.agent.port, data)
            return _parse(ReceivedBytes(answer))
        for attempt in (1, 2):
            if self.sock is None:
                self.sock = self.agent.connect(timeout=20)
            try:
                self.sock.sendall(data)
                status, headers, body = _parse(self.sock)
            except OSError:
                self.close()
                if attempt == 2:
                    raise
                continue
            if status is None or headers.get("connection", "").lower() == "close":
                self.close()
            if status is not None:
                return status, headers, body
        return None, {}, b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _parse(source: socket.socket | ReceivedBytes) -> tuple[int | None, dict, bytes]:
    response = http.client.HTTPResponse(source)  # type: ignore[arg-type]
    try:
        response.begin()
        body = response.read()
    except (http.client.HTTPException, ConnectionError):
        return None, {}, b""  # the agent closed without answering: refused
    headers = {k.lower(): v for k, v in response.getheaders()}
    return response.status, headers, body


def worker(agent: AgentProcess, seed: int, count: int, tally: Tally) -> None:
    fuzzer = Fuzzer(agent, random.Random(seed))
    conn = Connection(agent)
    try:
        for _ in range(count):
            case = fuzzer.case()
            status, headers, body = conn.exchange(case.data, case.oneshot)
            # Past authentication a hibernation may be refused (409, signed): Busy while another
            # runs or a save does. Only an authenticated request can get that far.
            accepted = status in (200, 202) or (status == 409 and case.hibernate_id is not None)
            problem = None
            if accepted != case.accept:
                problem = f"{case.kind}: answered {status} {body[:120]!r} to {case.data[:300]!r}"
            elif accepted:
                assert case.signed is not None
                try:
                    protocol.verify_response(agent.key, case.signed, status, headers, body)
                except protocol.AuthError as error:
                    problem = f"{case.kind}: unsigned or badly signed answer: {error}"
                fuzzer.accepted.append(case.data)
                del fuzzer.accepted[:-50]
            with tally.lock:
                tally.kinds[case.kind] += 1
                tally.accepted[case.kind] += accepted
                if problem:
                    tally.wrong.append(problem)
                if accepted and case.save_id:
                    tally.ids.add(case.save_id)
                if status in (200, 202) and case.hibernate_id:
                    tally.hibernate_ids.add(case.hibernate_id)
                if accepted and case.storage_id:
                    tally.storage_ids.add(case.storage_id)
    finally:
        conn.close()


def test_fuzz_the_agent_endpoint(tmp_path: Path, agent_tls: TLSMaterial) -> None:
    seed = int(os.environ.get("LPARKUBE_FUZZ_SEED") or random.SystemRandom().getrandbits(32))
    print(f"fuzz seed: {seed} (LPARKUBE_FUZZ_SEED={seed} replays this run)")
    guest = FakeGuest(tmp_path / "guest", mem_available=480 * 2**20)  # 32 MiB of 64 in use
    guest.attach_data_disk("data", 2**20, node="sdb", rescan=True)
    agent = AgentProcess(tmp_path, config=guest.config(), tls_material=agent_tls).start()
    out = tmp_path / "saves.log"
    # A socket app writes one line per save (signals could coalesce and hide a save).
    app, path = start_app("socket", "saver", out)
    try:
        cli(agent, "register", "--name=saver", f"--pid={app.pid}", "--method=UnixSocket",
            f"--unix-socket={path}")  # fmt: skip
        tally = Tally()
        start = time.monotonic()
        threads = [
            threading.Thread(target=worker, args=(agent, seed * 100 + i, TOTAL // THREADS, tally))
            for i in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - start
        total = sum(tally.kinds.values())
        print(f"{total} requests in {elapsed:.1f}s; by kind (sent, accepted):")
        for kind in MUTATIONS:
            print(f"  {kind:17} {tally.kinds[kind]:5} {tally.accepted[kind]:5}")

        assert total >= TOTAL
        assert not tally.wrong, f"seed {seed}: {len(tally.wrong)} wrong: {tally.wrong[:5]}"
        assert agent.alive(), f"seed {seed}: the agent died"
        for ident in sorted(tally.ids):  # every accepted save finishes, each saved once
            assert agent.save(ident, wait=20)["state"] == "Completed"
        assert agent.request("GET", "/v1/report")[0] == 200
        assert len(lines(out)) == len(tally.ids), f"seed {seed}: saves ran that were refused"
        # Every hibernation answered as a run suspended once, and no other one at all.
        log = agent.log_path.read_text()
        suspended = Counter(
            line.split("hibernate run ", 1)[1].split(":", 1)[0]
            for line in log.splitlines()
            if ": suspending to " in line
        )
        assert tally.hibernate_ids, f"seed {seed}: no hibernation was accepted"
        assert suspended == dict.fromkeys(tally.hibernate_ids, 1), f"seed {seed}: {suspended}"
        # Every storage change answered was handled once (found, rescanned unless lost).
        changed = Counter(
            line.split("storage change ", 1)[1].split(":", 1)[0]
            for line in log.splitlines()
            if "storage change fuzz-" in line and " of disk data (" in line
        )
        assert tally.storage_ids, f"seed {seed}: no storage change was accepted"
        assert changed == dict.fromkeys(tally.storage_ids, 1), f"seed {seed}: {changed}"
    finally:
        app.kill()
        app.wait()
        agent.stop()
