"""Kubernetes resource quantities <-> bytes (storage sizes only)."""

from __future__ import annotations

import math

from kubernetes.utils import parse_quantity

SECTOR = 512
_BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
_DECIMAL = (("E", 10**18), ("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3))


def to_bytes(quantity: str | int | float | None) -> int:
    """A storage quantity ('1Gi', '500M', 1024) in whole bytes, rounded up; 0 when absent."""
    if quantity in (None, ""):
        return 0
    return math.ceil(parse_quantity(quantity))


def round_to_sector(size: int) -> int:
    """Up to whole 512-byte sectors: a block device cannot end inside one (CSI may round up)."""
    return -(-size // SECTOR) * SECTOR


def format_bytes(size: int) -> str:
    """The shortest exact spelling: '1Gi', '1500M', or plain bytes."""
    for suffixes in (_BINARY, _DECIMAL):
        for suffix, factor in suffixes:
            if size and size % factor == 0:
                return f"{size // factor}{suffix}"
    return str(size)
