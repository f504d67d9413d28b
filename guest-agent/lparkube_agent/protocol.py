"""The signed wire protocol between the operator and a guest agent (standard library only).

Both directions carry an HMAC-SHA256 signature made with the per-partition key over a canonical
string that binds the direction, method, path, partition, time, a one-time nonce and the body.
A receiver rejects anything unsigned, signed with another key, older or newer than the allowed
clock skew, seen before, or too large, before it parses the body. Responses are signed too and
bound to the request's nonce, so a client cannot be fed a replayed or forged answer.

The operator imports this module, so both sides share one implementation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

VERSION = "LPK1"
TO_AGENT = "operator->agent"
TO_OPERATOR = "agent->operator"
RESPONSE = "response"

HEADER_PARTITION = "X-Lparkube-Partition"
HEADER_TIMESTAMP = "X-Lparkube-Timestamp"
HEADER_NONCE = "X-Lparkube-Nonce"
HEADER_SIGNATURE = "X-Lparkube-Signature"

MAX_BODY_BYTES = 64 * 1024
MAX_SKEW_SECONDS = 60
MAX_TIMESTAMP_DIGITS = 12
NONCE_BYTES = 16
KEY_BYTES = 32
MIN_KEY_BYTES = 16


class AuthError(Exception):
    """A request or response failed authentication; `reason` is a stable, machine-readable word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Signed:
    """The headers of one signed message."""

    partition: str
    timestamp: int
    nonce: str
    signature: str

    def headers(self) -> dict[str, str]:
        return {
            HEADER_PARTITION: self.partition,
            HEADER_TIMESTAMP: str(self.timestamp),
            HEADER_NONCE: self.nonce,
            HEADER_SIGNATURE: self.signature,
        }


def new_key() -> bytes:
    """A fresh partition key."""
    return secrets.token_bytes(KEY_BYTES)


@dataclass(frozen=True)
class Message:
    """What a signature covers, besides the time and the nonce."""

    direction: str
    method: str
    path: str
    partition: str
    body: bytes

    def canonical(self, timestamp: int, nonce: str) -> bytes:
        """The exact bytes that are signed; a change to any part breaks the signature."""
        digest = hashlib.sha256(self.body).hexdigest()
        fields = (VERSION, self.direction, self.method.upper(), self.path, self.partition)
        return "\n".join((*fields, str(timestamp), nonce, digest)).encode()


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign(
    key: bytes, message: Message, *, now: float | None = None, nonce: str | None = None
) -> Signed:
    """Sign a message; `nonce` is given only for responses (the request's nonce)."""
    timestamp = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(NONCE_BYTES)
    return Signed(
        message.partition, timestamp, nonce, _mac(key, message.canonical(timestamp, nonce))
    )


def response_message(status: int, partition: str, body: bytes) -> Message:
    """A response is signed like a message whose method is its status code."""
    return Message(RESPONSE, str(status), "", partition, body)


def sign_response(
    key: bytes, request: Signed, status: int, body: bytes, *, now: float | None = None
) -> Signed:
    """Sign a response, bound to the request it answers through the request's nonce."""
    message = response_message(status, request.partition, body)
    return sign(key, message, now=now, nonce=request.nonce)


def ascii_decimal(text: str, max_digits: int) -> int | None:
    """The value of 1 to `max_digits` ASCII digits, else None. Not str.isdigit() or int()
    alone: they also take superscripts, other scripts' digits, signs, "_" and spaces."""
    if 0 < len(text) <= max_digits and all("0" <= c <= "9" for c in text):
        return int(text)
    return None


def read_headers(headers: Mapping[str, str]) -> Signed:
    """The signature headers, or AuthError naming what is missing or malformed.

    The timestamp must be written exactly as `sign` writes it (ASCII digits, no leading zero),
    so the canonical string holds the header's own text: a rewritten timestamp is refused,
    it cannot keep a valid signature.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    values = {}
    for name in (HEADER_PARTITION, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE):
        value = lowered.get(name.lower())
        if not value:
            raise AuthError("unsigned", f"missing header {name}")
        values[name] = value.strip(" \t")  # HTTP's whitespace only, not str.strip()'s
    text = values[HEADER_TIMESTAMP]
    timestamp = ascii_decimal(text, MAX_TIMESTAMP_DIGITS)
    if timestamp is None or str(timestamp) != text:
        raise AuthError("malformed", f"{HEADER_TIMESTAMP} must be Unix seconds in decimal")
    nonce = values[HEADER_NONCE]
    if len(nonce) != 2 * NONCE_BYTES or not _is_hex(nonce):
        raise AuthError("malformed", f"{HEADER_NONCE} must be {2 * NONCE_BYTES} hex digits")
    signature = values[HEADER_SIGNATURE]
    if len(signature) != 64 or not _is_hex(signature):
        raise AuthError("malformed", f"{HEADER_SIGNATURE} must be 64 hex digits")
    return Signed(values[HEADER_PARTITION], timestamp, nonce, signature)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


class NonceCache:
    """Nonces seen within the freshness window; bounded, thread-safe, oldest evicted first."""

    def __init__(self, window: float = 2 * MAX_SKEW_SECONDS, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._window = window
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, nonce: str, now: float) -> bool:
        """Record a nonce; False if it was already seen (a replay)."""
        with self._lock:
            self._expire(now)
            if nonce in self._seen:
                return False
            if len(self._seen) >= self._capacity:
                self._seen.popitem(last=False)
            self._seen[nonce] = now
            return True

    def _expire(self, now: float) -> None:
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= self._window:
                return
            del self._seen[oldest]


class Verifier:
    """Checks signed requests for one receiver: key, freshness and replay."""

    def __init__(self, key: bytes, partition: str, *, max_skew: int = MAX_SKEW_SECONDS) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a partition key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._partition = partition
        self._max_skew = max_skew
        self._nonces = NonceCache(window=2 * max_skew)

    def verify(
        self, message: Message, headers: Mapping[str, str], *, now: float | None = None
    ) -> Signed:
        """Returns the verified headers or raises AuthError; a replayed nonce is rejected."""
        now = time.time() if now is None else now
        if len(message.body) > MAX_BODY_BYTES:
            raise AuthError("oversized", f"body exceeds {MAX_BODY_BYTES} bytes")
        signed = read_headers(headers)
        if signed.partition != self._partition or message.partition != self._partition:
            raise AuthError("wrong-partition", "the request is for another partition")
        expected = _mac(self._key, message.canonical(signed.timestamp, signed.nonce))
        if not hmac.compare_digest(expected, signed.signature):
            raise AuthError("bad-signature", "signature does not match the partition key")
        if abs(now - signed.timestamp) > self._max_skew:
            raise AuthError("stale", f"timestamp is more than {self._max_skew}s from now")
        if not self._nonces.add(signed.nonce, now):
            raise AuthError("replayed", "this nonce was already used")
        return signed


def verify_response(
    key: bytes,
    request: Signed,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> None:
    """Raises AuthError unless the response is signed by the key and answers this request."""
    signed = read_headers(headers)
    if signed.nonce != request.nonce or signed.partition != request.partition:
        raise AuthError("mismatch", "the response does not answer this request")
    message = response_message(status, request.partition, body)
    expected = _mac(key, message.canonical(signed.timestamp, signed.nonce))
    if not hmac.compare_digest(expected, signed.signature):
        raise AuthError("bad-signature", "response signature does not match the partition key")
    now = time.time() if now is None else now
    if abs(now - signed.timestamp) > MAX_SKEW_SECONDS:
        raise AuthError("stale", "response timestamp is outside the allowed skew")
