"""Kubernetes resource quantities ("512Mi", "1G", "500m", "1e3") as exact numbers.

The grammar is Kubernetes' (k8s.io/apimachinery resource.Quantity): a signed decimal number
followed by a binary suffix (Ki..Ei), a decimal suffix (n, u, m, "", k, M..E) or a decimal
exponent (e3, E-2). ``whole`` rounds up, as ``Quantity.Value()`` does.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?:[eE](?P<exponent>[+-]?\d+))|(?P<decimal>[numkMGTPE]?))$"
)


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def parse(text: str | int) -> Fraction:
    """The exact value of a quantity (an int is taken as it is)."""
    if isinstance(text, int):
        return Fraction(text)
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity (like 512Mi, 1G or 500m)")
    number = Fraction(match["number"])
    if match["binary"]:
        return number * 1024 ** BINARY[match["binary"]]
    if match["exponent"] is not None:
        return number * Fraction(10) ** int(match["exponent"])
    return number * Fraction(10) ** DECIMAL[match["decimal"] or ""]


def whole(text: str | int) -> int:
    """The quantity rounded up to an integer (``resource.Quantity.Value()``)."""
    return math.ceil(parse(text))
