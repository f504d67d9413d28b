"""How the plugin writes ages, sizes and tables, the way kubectl shows them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from lparkube.domain.clock import parse_time

NONE = "-"
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


_UNIT_NAMES = {1: "s", 60: "m", 3600: "h", 86400: "d"}
# (below this many seconds, show this unit, and this finer one when it is not zero)
_AGE_STEPS = (
    (120, 1, None),
    (600, 60, 1),
    (3 * 3600, 60, None),
    (8 * 3600, 3600, 60),
    (48 * 3600, 3600, None),
    (8 * 86400, 86400, 3600),
    (730 * 86400, 86400, None),
)


def age(since: str | None, now: datetime) -> str:
    """How long ago an RFC 3339 time was, as kubectl's AGE column says it: ``45s``, ``3m20s``,
    ``5m``, ``2h10m``, ``20h``, ``3d4h``, ``30d``, ``2y``; ``-`` when unknown."""
    moment = parse_time(since)
    if moment is None:
        return NONE
    seconds = max(0, int((now - moment).total_seconds()))
    for limit, unit, finer in _AGE_STEPS:
        if seconds < limit:
            text = f"{seconds // unit}{_UNIT_NAMES[unit]}"
            rest = (seconds % unit) // finer if finer else 0
            return f"{text}{rest}{_UNIT_NAMES[finer]}" if finer and rest else text
    return f"{seconds // (365 * 86400)}y"


def size(count: int | None) -> str:
    """Bytes in binary units with one decimal: ``512.0 MiB``, ``1.2 GiB``; ``-`` when unknown."""
    if count is None:
        return NONE
    value = float(count)
    for unit in _BINARY_UNITS:
        if value < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Rows as left-aligned columns three spaces apart, as ``kubectl get`` prints them."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    return [
        (
            indent + "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
