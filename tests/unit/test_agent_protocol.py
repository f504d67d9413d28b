"""The signed protocol: what is accepted, and every way a message is refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lparkube_agent import protocol
from lparkube_agent.protocol import TO_AGENT, TO_OPERATOR, AuthError, Message, Verifier

KEY = b"k" * 32
PARTITION = "tenant-a/web-1"
NOW = 1_800_000_000.0
BODY = b'{"id": "e1"}'


def message(body: bytes = BODY, path: str = "/v1/save", partition: str = PARTITION) -> Message:
    return Message(TO_AGENT, "POST", path, partition, body)


def signed_headers(key: bytes = KEY, now: float = NOW, **kw) -> dict[str, str]:
    return protocol.sign(key, message(**kw), now=now).headers()


def verify(headers: dict[str, str], now: float = NOW, **kw) -> protocol.Signed:
    return Verifier(KEY, PARTITION).verify(message(**kw), headers, now=now)


def reason(call: Callable[[], object]) -> str:
    with pytest.raises(AuthError) as caught:
        call()
    return caught.value.reason


def test_a_fresh_signed_request_is_accepted() -> None:
    assert verify(signed_headers()).partition == PARTITION


def test_unsigned_wrong_key_tampered_and_misrouted_requests_are_refused() -> None:
    assert reason(lambda: verify({})) == "unsigned"
    assert reason(lambda: verify(signed_headers(key=b"x" * 32))) == "bad-signature"
    assert reason(lambda: verify(signed_headers(), body=b'{"id": "e2"}')) == "bad-signature"
    assert reason(lambda: verify(signed_headers(), path="/v1/report")) == "bad-signature"
    other = "tenant-b/web-1"
    assert reason(lambda: verify(signed_headers(partition=other), partition=other)) == (
        "wrong-partition"
    )


def test_the_direction_is_signed_so_a_message_cannot_be_reflected() -> None:
    reflected = Message(TO_OPERATOR, "POST", "/v1/save", PARTITION, BODY)
    call = lambda: Verifier(KEY, PARTITION).verify(reflected, signed_headers(), now=NOW)  # noqa: E731
    assert reason(call) == "bad-signature"


def test_stale_and_future_requests_are_refused() -> None:
    assert reason(lambda: verify(signed_headers(now=NOW - 61))) == "stale"
    assert reason(lambda: verify(signed_headers(now=NOW + 61))) == "stale"


def test_a_replayed_request_is_refused() -> None:
    verifier = Verifier(KEY, PARTITION)
    headers = signed_headers()
    verifier.verify(message(), headers, now=NOW)
    assert reason(lambda: verifier.verify(message(), headers, now=NOW + 1)) == "replayed"


def test_oversized_and_malformed_headers_are_refused() -> None:
    big = b"x" * (protocol.MAX_BODY_BYTES + 1)
    assert reason(lambda: verify(signed_headers(body=big), body=big)) == "oversized"
    for header, value in [
        (protocol.HEADER_TIMESTAMP, "yesterday"),
        (protocol.HEADER_NONCE, "zz"),
        (protocol.HEADER_SIGNATURE, "0" * 63),
    ]:
        headers = {**signed_headers(), header: value}
        assert reason(lambda h=headers: verify(h)) == "malformed"


def test_nonce_cache_expires_and_stays_bounded() -> None:
    cache = protocol.NonceCache(window=10, capacity=2)
    assert cache.add("a", 0)
    assert not cache.add("a", 5)
    assert cache.add("a", 11)
    cache.add("b", 11)
    cache.add("c", 11)
    assert cache.add("a", 11), "the oldest entry was evicted at capacity"


def test_responses_are_bound_to_the_request_and_the_key() -> None:
    body = b'{"ok": true}'
    request = protocol.sign(KEY, message(), now=NOW)
    answer = protocol.sign_response(KEY, request, 200, body, now=NOW).headers()
    protocol.verify_response(KEY, request, 200, answer, body, now=NOW)
    other_request = protocol.sign(KEY, message(), now=NOW)
    for key, req, status in [
        (KEY, request, 500),
        (KEY, other_request, 200),
        (b"x" * 32, request, 200),
    ]:
        with pytest.raises(AuthError):
            protocol.verify_response(key, req, status, answer, body, now=NOW)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Verifier(b"short", PARTITION)
