"""Requests to a real agent process that the tests shape byte by byte: a raw POST (any
headers, any body) and the signed headers of one (shared by the endpoint tests)."""

from __future__ import annotations

import http.client
import json
import time

from lparkube_agent import protocol
from lparkube_agent.testing import AgentProcess


def post_raw(
    agent: AgentProcess, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict]:
    """POST exactly these bytes and headers over the operator's TLS identity. A body over the
    agent's limit is announced (its Content-Length) and not sent: the agent refuses it on the
    length and closes at once, which could break sending the rest over TLS."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", agent.port, timeout=20, context=agent.operator_context()
    )
    try:
        if len(body) > protocol.MAX_BODY_BYTES:
            conn.putrequest("POST", path, skip_accept_encoding=True)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                conn.putheader(name, value)
            conn.endheaders()
        else:
            conn.request("POST", path, body, headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def signed_headers(
    agent: AgentProcess, path: str, body: bytes, skew: float = 0.0
) -> dict[str, str]:
    """The operator's signature headers for POST ``path`` with ``body``, ``skew`` seconds off."""
    message = protocol.Message(protocol.TO_AGENT, "POST", path, agent.partition, body)
    return protocol.sign(agent.key, message, now=time.time() + skew).headers()


# Refusals of a request's headers, the same at every signed endpoint: (case, status, error).
HEADER_CASES = [
    ("unsigned", 401, "unsigned"),
    ("wrong-key", 401, "bad-signature"),
    ("stale-past", 401, "stale"),
    ("stale-future", 401, "stale"),
]


def headers_for(case: str, agent: AgentProcess, path: str, body: bytes) -> dict[str, str]:
    """The headers a HEADER_CASES case sends with ``body``; any other case: rightly signed."""
    if case == "unsigned":
        return {}
    if case == "wrong-key":
        message = protocol.Message(protocol.TO_AGENT, "POST", path, agent.partition, body)
        return protocol.sign(protocol.new_key(), message).headers()
    # Well past the agent's 60 s window: a request signed 61 s ahead that waited a second on a
    # loaded machine arrived inside it (CI saw a 202).
    skew = {"stale-past": -61.0, "stale-future": 90.0}.get(case, 0.0)
    return signed_headers(agent, path, body, skew)
