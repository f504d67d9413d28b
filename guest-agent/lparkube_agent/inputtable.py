"""The user input table: which keys make a terminal program save (the seed's Ctrl-S table).

An entry is a list of key tokens typed one after another with a short pause, so programs that
open a prompt (nano's "File Name to Write") or wait for an ambiguous Esc (vim) see each key in
the state it expects. Tokens: `C-x` (Ctrl), `M-x` (Meta = Esc then x), `Esc`, `Enter`, `Tab`,
`Space`, `Backspace`; anything else is typed literally (`:w`).

The shipped defaults cover nano, vim and emacs (and a few cousins). An administrator overrides
or extends them with a JSON file of the same shape, by default /etc/lparkube/input-table.json:

    {"nano": {"keys": ["C-s"]}, "joe": {"keys": ["C-k", "d", "Enter"], "aliases": ["jmacs"]}}

`delayMillis` is the pause between tokens; `settleMillis` is how long the agent waits after
typing before it calls a program saved when it has no file to watch (see methods.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DELAY_MILLIS = 150
DEFAULT_SETTLE_MILLIS = 500

NAMED_KEYS = {
    "esc": b"\x1b",
    "enter": b"\r",
    "return": b"\r",
    "tab": b"\t",
    "space": b" ",
    "backspace": b"\x7f",
}

DEFAULTS: dict[str, dict] = {
    "nano": {"keys": ["C-o", "Enter"], "aliases": ["pico", "rnano"]},
    "vim": {
        "keys": ["Esc", ":w", "Enter"],
        "aliases": ["vi", "vim.basic", "vim.tiny", "vim.nox", "nvim", "view"],
    },
    "emacs": {
        "keys": ["C-x", "C-s"],
        "aliases": ["emacs-nox", "emacs-gtk", "emacs-lucid", "mg", "jmacs"],
    },
    "micro": {"keys": ["C-s"]},
}


@dataclass(frozen=True)
class InputEntry:
    """The save keys of one program."""

    program: str
    keys: tuple[str, ...]
    delay_millis: int = DEFAULT_DELAY_MILLIS
    settle_millis: int = DEFAULT_SETTLE_MILLIS
    aliases: tuple[str, ...] = field(default=())

    def sequence(self) -> list[bytes]:
        """The bytes of each token, in typing order."""
        return [encode_token(token) for token in self.keys]


def encode_token(token: str) -> bytes:
    """The bytes a terminal sends for one key token; ValueError for an empty token."""
    if not token:
        raise ValueError("empty key token")
    lowered = token.lower()
    if lowered in NAMED_KEYS:
        return NAMED_KEYS[lowered]
    if len(token) == 3 and lowered.startswith("c-"):
        char = token[2].upper()
        if char == "?":
            return b"\x7f"
        code = ord(char) ^ 0x40
        if code < 0x20:
            return bytes([code])
        raise ValueError(f"no control key for {token!r}")
    if len(token) >= 3 and lowered.startswith("m-"):
        return b"\x1b" + encode_token(token[2:])
    return token.encode()


def _entry(program: str, spec: object) -> InputEntry:
    if not isinstance(spec, dict):
        raise ValueError(f"{program}: an entry must be an object with 'keys'")
    keys = spec.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{program}: 'keys' must be a non-empty list of key tokens")
    for token in keys:
        encode_token(token)
    aliases = spec.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ValueError(f"{program}: 'aliases' must be a list of program names")
    delay = _millis(program, spec, "delayMillis", DEFAULT_DELAY_MILLIS)
    settle = _millis(program, spec, "settleMillis", DEFAULT_SETTLE_MILLIS)
    return InputEntry(program, tuple(keys), delay, settle, tuple(aliases))


def _millis(program: str, spec: dict, name: str, default: int) -> int:
    value = spec.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 60_000:
        raise ValueError(f"{program}: '{name}' must be an integer 0..60000")
    return value


class InputTable:
    """Program name -> save keys; the admin's entries replace defaults of the same name."""

    def __init__(self, overrides: dict | None = None) -> None:
        specs = dict(DEFAULTS)
        specs.update(overrides or {})
        self._entries = {name: _entry(name, spec) for name, spec in specs.items()}
        self._index: dict[str, InputEntry] = {}
        for entry in self._entries.values():
            for alias in entry.aliases:
                self._index.setdefault(alias, entry)
        for name, entry in self._entries.items():
            self._index[name] = entry  # a program's own name beats another's alias

    @classmethod
    def load(cls, path: Path | None) -> InputTable:
        """Defaults plus the admin's file when it exists; ValueError if the file is invalid."""
        if path is None or not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"input table {path}: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"input table {path}: must be a JSON object of program entries")
        return cls(data)

    def lookup(self, *names: str) -> InputEntry | None:
        """The entry of the first name that matches, by exact program name then alias."""
        for name in names:
            if name in self._index:
                return self._index[name]
        return None

    def programs(self) -> list[str]:
        return sorted(self._entries)
