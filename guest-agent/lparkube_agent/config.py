"""The agent's configuration: the operator-provided JSON plus local paths.

The operator writes `config.json` (partition, listen, operatorURL, reportIntervalSeconds) and,
next to it (Secret disk or cloud-init), the raw key, the CA the agent pins and the agent's own
TLS certificate and key (`ca.crt`, `tls.crt`, `tls.key`). Every local path is configurable, in the
file or on the command line, so tests run unprivileged in temporary directories.
"""

from __future__ import annotations

import json
import shlex
import string
from dataclasses import dataclass
from dataclasses import field as default_of
from pathlib import Path

from . import protocol
from .guestfiles import GuestFiles
from .paging import SwapCommands
from .tls import TLSFiles

DEFAULT_LISTEN = "0.0.0.0:8443"
DEFAULT_SOCKET = "/run/lparkube/agent.sock"
DEFAULT_STATE_DIR = "/var/lib/lparkube"
DEFAULT_INPUT_TABLE = "/etc/lparkube/input-table.json"
DEFAULT_VMCOREINFO = "/sys/kernel/vmcoreinfo"


@dataclass
class Config:
    partition: str
    key: bytes
    tls: TLSFiles
    listen: tuple[str, int] = ("0.0.0.0", 8443)
    operator_url: str | None = None
    report_interval: float = 30.0
    state_dir: Path | None = Path(DEFAULT_STATE_DIR)
    socket: Path | None = Path(DEFAULT_SOCKET)
    input_table: Path | None = Path(DEFAULT_INPUT_TABLE)
    vmcoreinfo: Path = Path(DEFAULT_VMCOREINFO)
    # Where /sys, /proc and /dev are, and the swap commands: a test's fake tree and scripts.
    files: GuestFiles = default_of(default_factory=GuestFiles)
    swap_commands: SwapCommands = default_of(default_factory=SwapCommands)
    watchdog_device: Path = GuestFiles().watchdog


def parse_listen(text: object) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError("listen must be HOST:PORT, e.g. 0.0.0.0:8443")
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    number = protocol.ascii_decimal(port, 5)
    if number is None or number > 65535:
        raise ValueError(f"listen: bad port {port!r}")
    return host or "0.0.0.0", number


def read_key(path: Path) -> bytes:
    """The partition key: the file's raw bytes (64 hex digits are decoded as hex)."""
    raw = path.read_bytes()
    text = raw.strip()
    if len(text) == 64 and all(chr(c) in string.hexdigits for c in text):
        raw = bytes.fromhex(text.decode())
    if len(raw) < protocol.MIN_KEY_BYTES:
        raise ValueError(f"key file {path} holds fewer than {protocol.MIN_KEY_BYTES} bytes")
    return raw


TLS_FILES = {"caFile": "ca.crt", "tlsCertFile": "tls.crt", "tlsKeyFile": "tls.key"}


def tls_files(data: dict, base: Path) -> TLSFiles:
    """The CA, certificate and key files, each required: the agent speaks only TLS."""
    paths = {}
    for field, default in TLS_FILES.items():
        path = _path(data, field, default, base)
        if path is None or not path.is_file():
            raise ValueError(
                f"{field}: no file {path} (the operator's key Secret holds {default}; "
                "the agent speaks only TLS)"
            )
        paths[field] = path
    return TLSFiles(paths["caFile"], paths["tlsCertFile"], paths["tlsKeyFile"])


def guest_files(data: dict, base: Path) -> GuestFiles:
    """The roots ``sysfs``, ``procfs`` and ``devfs`` (default /sys, /proc, /dev)."""
    default = GuestFiles()
    return GuestFiles(
        _path(data, "sysfs", str(default.sys), base) or default.sys,
        _path(data, "procfs", str(default.proc), base) or default.proc,
        _path(data, "devfs", str(default.dev), base) or default.dev,
    )


def swap_commands(data: dict) -> SwapCommands:
    """``mkswap``, ``swapon``, ``swapoff``: each a command line (string or list), the device
    appended as its last argument."""
    commands = {}
    for name, default in vars(SwapCommands()).items():
        value = data.get(name, list(default))
        argv = shlex.split(value) if isinstance(value, str) else value
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"{name} must be a command line such as {default[0]!r}")
        commands[name] = tuple(argv)
    return SwapCommands(**commands)


def _path(data: dict, name: str, default: str | None, base: Path) -> Path | None:
    value = data.get(name, default)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a path")
    return base / value


def load(path: Path, overrides: dict | None = None) -> Config:
    """Read the config file; `overrides` (from the command line) win over its fields."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a JSON object")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    partition = data.get("partition")
    if not isinstance(partition, str) or partition.count("/") != 1:
        raise ValueError("partition must be namespace/name")
    interval = data.get("reportIntervalSeconds", 30)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise ValueError("reportIntervalSeconds must be a positive number")
    url = data.get("operatorURL") or None
    if url is not None and (not isinstance(url, str) or not url.startswith("https://")):
        raise ValueError("operatorURL must be an https:// URL (reports go only over TLS)")
    base = path.parent
    files = guest_files(data, base)
    key_path = _path(data, "keyFile", "key", base)
    if key_path is None:
        raise ValueError("keyFile must name the partition key file")
    return Config(
        partition=partition,
        key=read_key(key_path),
        tls=tls_files(data, base),
        listen=parse_listen(data.get("listen", DEFAULT_LISTEN)),
        operator_url=url,
        report_interval=float(interval),
        state_dir=_path(data, "stateDir", DEFAULT_STATE_DIR, base) or Path(DEFAULT_STATE_DIR),
        socket=_path(data, "socket", DEFAULT_SOCKET, base),
        input_table=_path(data, "inputTable", DEFAULT_INPUT_TABLE, base),
        vmcoreinfo=_path(data, "vmcoreinfo", DEFAULT_VMCOREINFO, base) or Path("/nonexistent"),
        files=files,
        swap_commands=swap_commands(data),
        watchdog_device=_path(data, "watchdogDevice", None, base) or files.watchdog,
    )
