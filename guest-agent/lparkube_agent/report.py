"""The agent's report: what the operator records about this guest, pushed at boot and then
periodically, and served on demand at GET /v1/report.

The VMCOREINFO location matters after a crash: the diagnostic pod finds the kernel's
structures in a memory dump through it, so it is captured while the guest is healthy.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from . import procinfo, protocol, tls
from .saves import iso
from .version import VERSION
from .watchdog import DISARM, Disarm, Lease

log = logging.getLogger(__name__)

REPORTS_PATH = "/v1/reports"
MIN_BACKOFF = 1.0
MAX_LEASE_SECONDS = 3600  # any of the lease's times


def parse_vmcoreinfo(text: str) -> dict | None:
    """{"address": "0x…", "size": n} from the file's "<hex address> <hex size>", else None."""
    parts = text.split()
    if len(parts) < 2:
        return None
    try:
        address, size = int(parts[0], 16), int(parts[1], 16)
    except ValueError:
        return None
    if address < 0 or size <= 0:
        return None
    return {"address": hex(address), "size": size}


def read_vmcoreinfo(path: Path) -> dict | None:
    try:
        return parse_vmcoreinfo(path.read_text())
    except (OSError, ValueError):
        return None


def build_report(
    vmcoreinfo_path: Path, applications: list[dict], proc: Path = procinfo.PROC
) -> dict:
    """The report body (docs/agent-protocol.md) without the guest's optional facts (bootId,
    memory, paging, hibernation: the agent adds those it has)."""
    boot = procinfo.boot_time(proc)
    return {
        "agentVersion": VERSION,
        "bootTime": iso(boot) if boot is not None else None,
        "kernelRelease": os.uname().release,
        "vmcoreinfo": read_vmcoreinfo(vmcoreinfo_path),
        "applications": applications,
    }


def parse_answer(body: bytes) -> Lease | Disarm | None:
    """What a verified answer says: a lease, a disarm (``{"disarm": true}``), or nothing (an
    empty body, 204, or a JSON object with neither); ValueError for any other body, which
    counts as no answer at all."""
    if not body:
        return None
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the answer must be a JSON object")
    lease, disarm = data.get("lease"), data.get("disarm", False)
    if not isinstance(disarm, bool) or (disarm and lease is not None):
        raise ValueError("disarm must be true or false, and true only without a lease")
    if disarm:
        return DISARM
    if lease is None:
        return None
    if not isinstance(lease, dict):
        raise ValueError("lease must be an object {seconds, watchdogTimeoutSeconds, renewSeconds}")
    return Lease(
        _lease_time(lease, "seconds", (int, float)),
        int(_lease_time(lease, "watchdogTimeoutSeconds", int)),
        _lease_time(lease, "renewSeconds", (int, float)),
    )


def _lease_time(lease: dict, name: str, kinds: type | tuple[type, ...]) -> float:
    value = lease.get(name)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"lease.{name} must be a number of seconds")
    if not 0 < value <= MAX_LEASE_SECONDS:  # also refuses NaN and Infinity
        raise ValueError(f"lease.{name} must be more than 0 and at most {MAX_LEASE_SECONDS}")
    return value


def push(
    url: str,
    key: bytes,
    partition: str,
    report: dict,
    context: ssl.SSLContext,
    *,
    timeout: float = 10.0,
) -> Lease | Disarm | None:
    """POST the signed report over TLS to the operator (checked before anything is sent),
    verify its signed answer and return what it says (parse_answer); raises on any failure."""
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"operatorURL {url!r} is not an https URL")
    path = parts.path + REPORTS_PATH
    body = json.dumps(report).encode()
    message = protocol.Message(protocol.TO_OPERATOR, "POST", path, partition, body)
    signed = protocol.sign(key, message)
    headers = {"Content-Type": "application/json", **signed.headers()}
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context)
    try:
        conn.connect()
        tls.check_operator(conn.sock)
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        answer = response.read(protocol.MAX_BODY_BYTES + 1)
    finally:
        conn.close()
    protocol.verify_response(key, signed, response.status, dict(response.getheaders()), answer)
    if not 200 <= response.status < 300:
        raise RuntimeError(f"operator answered {response.status}: {answer[:200]!r}")
    return parse_answer(answer)


class Reporter:
    """Pushes the report at start, every interval (or sooner, when the last answer asked to be
    renewed sooner: ``send`` returns that delay, else None), soon after registrations change,
    and with backoff (never longer than that delay) while the operator is unreachable. Never
    raises out of its thread.

    Pokes are coalesced: at most one push per ``MIN_SPACING`` seconds, the registrations
    read when it starts. And never two pushes within one wall-clock second: the gateway accepts
    a report only when it is signed in a later second than the last one it accepted.
    """

    MIN_SPACING = 1.0  # seconds between two pushes, however often the registrations change

    def __init__(
        self,
        send: Callable[[], float | None],
        interval: float,
        max_backoff: float | None = None,
    ) -> None:
        self._send = send
        self._interval = max(1.0, interval)
        self._max_backoff = max_backoff or self._interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reporter", daemon=True)
        self.pushed = 0
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Report soon (the registrations changed)."""
        self._wake.set()

    def _loop(self) -> None:
        backoff, due = MIN_BACKOFF, self._interval
        started, signed_by = float("-inf"), -1  # the last push: monotonic start, wall second
        while not self._pace(started, signed_by):
            self._wake.clear()  # pokes from now on get the next push
            started = time.monotonic()
            try:
                renew = self._send()
                self.pushed += 1
                due = self._interval if renew is None else min(renew, self._interval)
                delay, backoff = due, MIN_BACKOFF
            except Exception as error:
                self.failures += 1
                delay = min(backoff, due)
                log.warning("report to the operator failed (%s); retrying in %gs", error, delay)
                backoff = min(backoff * 2, self._max_backoff)
            signed_by = int(time.time())  # the push was signed in this second or before
            self._wake.wait(delay)

    def _pace(self, started: float, signed_by: int) -> bool:
        """Wait until the next push may start; True when stopped meanwhile."""
        while not self._stop.is_set():
            now = time.time()
            pause = max(
                started + self.MIN_SPACING - time.monotonic(),
                signed_by + 1 - now if int(now) <= signed_by else 0.0,
            )
            if pause <= 0:
                return False
            self._stop.wait(pause)
        return True
