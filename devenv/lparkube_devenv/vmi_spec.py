"""Pure readings of a VMI spec that both the stand-in's controller and its QEMU launcher make,
so a real guest gets exactly the MAC and networks the VMI's status reports."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any


def dig(obj: Any, *path: str, default: Any = None) -> Any:
    """obj[p0][p1]..., tolerating missing keys and non-dict values anywhere on the way."""
    for part in path:
        if not isinstance(obj, Mapping):
            return default
        obj = obj.get(part)
        if obj is None:
            return default
    return obj


def stable_digest(value: str) -> int:
    return int.from_bytes(hashlib.sha256(value.encode()).digest()[:8], "big")


def mac_address(seed: str) -> str:
    """A stable locally administered unicast MAC for seed."""
    raw = stable_digest(seed).to_bytes(8, "big")[:5]
    return ":".join(f"{b:02x}" for b in (0x02, *raw))


def networks_of(spec: Mapping) -> list[dict]:
    """The VMI's networks; the pod network named default when none are given."""
    networks = [n for n in dig(spec, "networks", default=[]) or [] if isinstance(n, Mapping)]
    if networks:
        return [dict(n) for n in networks]
    if dig(spec, "domain", "devices", "autoattachPodInterface") is False:
        return []
    return [{"name": "default", "pod": {}}]
