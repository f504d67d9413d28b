"""The signed protocol: what is accepted, and every way a message is refused."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from lparkube_agent import config, protocol
from lparkube_agent.protocol import (
    HEADER_NONCE,
    HEADER_PARTITION,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    TO_AGENT,
    TO_OPERATOR,
    AuthError,
    Message,
    Verifier,
)

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


# --- numbers from the wire: ASCII digits only (issue 10, finding 5) ---------------------------


def in_digits(zero: int) -> Callable[[str], str]:
    """Writes a decimal's digits in the script whose zero is the code point `zero`."""
    return lambda text: "".join(chr(zero + int(c)) for c in text)


# The signed timestamp written another way that int() still reads as the same number.
REWRITES = {
    "leading zero": lambda t: "0" + t,
    "Arabic-Indic digits": in_digits(0x660),
    "Devanagari digits": in_digits(0x966),
    "fullwidth digits": in_digits(0xFF10),
    "no-break space": lambda t: "\xa0" + t,
    "sign": lambda t: "+" + t,
    "underscore": lambda t: t[:4] + "_" + t[4:],
}


@pytest.mark.parametrize("rewrite", REWRITES)
def test_a_rewritten_timestamp_is_refused_though_it_reads_as_the_signed_number(
    rewrite: str,
) -> None:
    headers = signed_headers()
    text = headers[protocol.HEADER_TIMESTAMP]
    rewritten = REWRITES[rewrite](text)
    assert int(rewritten) == int(text) and rewritten != text
    headers[protocol.HEADER_TIMESTAMP] = rewritten
    assert reason(lambda: verify(headers)) == "malformed"
    request = protocol.sign(KEY, message(), now=NOW)
    answer = protocol.sign_response(KEY, request, 200, b"{}", now=NOW).headers()
    answer[protocol.HEADER_TIMESTAMP] = REWRITES[rewrite](answer[protocol.HEADER_TIMESTAMP])
    call = lambda: protocol.verify_response(KEY, request, 200, answer, b"{}", now=NOW)  # noqa: E731
    assert reason(call) == "malformed"


@pytest.mark.parametrize(
    "value", ["²", "1800000000²", "¹⁸⁰⁰", "①", "\U0001d7cf\U0001d7d6", "0x6b49d200", ""]
)
def test_digits_int_cannot_read_make_a_malformed_timestamp_not_a_crash(value: str) -> None:
    headers = {**signed_headers(), protocol.HEADER_TIMESTAMP: value}
    assert reason(lambda: verify(headers)) in ("malformed", "unsigned")


def test_no_header_value_raises_anything_but_an_auth_error() -> None:
    rng = random.Random(10)
    digits = "0123456789²¹①٣۳३\uff13\U0001d7d7"  # what str.isdigit() takes
    anything = digits + "abcdef /\t\xa0\x85-+_\udcff\udc80é\x00"
    names = (HEADER_PARTITION, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
    request = protocol.sign(KEY, message(), now=NOW)
    for _ in range(3000):
        headers = signed_headers()
        for name in rng.sample(names, rng.randint(1, 4)):
            alphabet = rng.choice((digits, anything))
            headers[name] = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 70)))
        with pytest.raises(AuthError):
            verify(headers)
        with pytest.raises(AuthError):
            protocol.verify_response(KEY, request, 200, headers, b"", now=NOW)


FULLWIDTH_8443 = "\uff18\uff14\uff14\uff13"


def test_ascii_decimal_reads_ascii_digits_only() -> None:
    assert protocol.ascii_decimal("8443", 5) == 8443
    assert protocol.ascii_decimal("0", 1) == 0
    for text in ["", "²", "٨٤٤٣", FULLWIDTH_8443, "+1", "-1", " 1", "1 ", "1_0", "123456"]:
        assert protocol.ascii_decimal(text, 5) is None, text


@pytest.mark.parametrize("port", ["٨٤٤٣", FULLWIDTH_8443, "²", "+80", "65536", ""])
def test_a_listen_port_is_ascii_digits(port: str) -> None:
    assert config.parse_listen("[::1]:8443") == ("::1", 8443)
    with pytest.raises(ValueError, match="bad port"):
        config.parse_listen(f"0.0.0.0:{port}")
