"""Network failures in words, for status messages and Events."""

from __future__ import annotations

import os


def reason(error: BaseException) -> str:
    """Why a connection or request failed: ``connection refused`` rather than aiohttp's
    ``Cannot connect to host … [Connect call failed (…)]``; otherwise the error's type and
    text."""
    if isinstance(error, OSError) and error.errno and error.errno > 0:
        return os.strerror(error.errno).lower()
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
