"""The guest's NoCloud applier: the subset of cloud-init this image implements.

Runs inside the guest (``python3 /usr/lib/lparkube-guest/nocloud.py SEED_DIR``, from rcS,
before the agent starts) on the mounted ``cidata`` disk, with nothing but Debian's python3 and
python3-yaml. What it does with the seed:

- ``user-data``, when a ``#cloud-config`` document: each ``write_files`` entry is written, with
  ``path`` (required), ``content``, ``encoding`` (none/``text/plain``, ``b64``/``base64``,
  ``gz``/``gzip``, ``gz+b64``/``gzip+base64`` and their mixes), ``owner`` (``user[:group]``,
  names from /etc/passwd and /etc/group, or numbers; default ``root:root``), ``permissions``
  (octal, default ``0644``) and ``append``; parent directories are made (mode 0755).
  ``defer`` is accepted, and deferred files are written in the same pass (this guest has no
  later stage). ``hostname`` sets the hostname. ``runcmd`` becomes the script
  ``/var/lib/cloud/instance/scripts/runcmd`` (a string is a shell line, a list an argv), which
  init runs once the agent has started (``usr/lib/lparkube-guest/final``), as cloud-init's
  final stage runs it, its output in ``/var/log/cloud-init-output.log``.
- ``meta-data``: ``local-hostname`` sets the hostname when the user data names none.
- Anything else (other cloud-config keys, scripts, MIME multipart, ``network-config``: the
  network is static) is ignored, and the ignored keys are named on the console.

One bad entry does not stop the others; the exit status is 1 when any failed.
"""

from __future__ import annotations

import base64
import binascii
import grp
import gzip
import os
import pwd
import shlex
import sys
from pathlib import Path

import yaml

CLOUD_CONFIG_HEADER = "#cloud-config"
HOSTNAME_FILE = Path("/etc/hostname")
HANDLED_KEYS = {"write_files", "hostname", "runcmd"}
RUNCMD_SCRIPT = Path("/var/lib/cloud/instance/scripts/runcmd")
DEFAULT_OWNER = "root:root"
DEFAULT_PERMISSIONS = 0o644
B64 = {"b64", "base64"}
GZ = {"gz", "gzip"}


class EntryError(ValueError):
    """One write_files entry cannot be applied."""


def say(message: str) -> None:
    print(f"lparkube-guest: nocloud: {message}", flush=True)


def decode_content(content: object, encoding: object) -> bytes:
    """The bytes of an entry's content under its encoding (cloud-init's names)."""
    if content is None:
        content = ""
    if not isinstance(content, str | bytes):
        raise EntryError(f"content must be text, not {type(content).__name__}")
    data = content.encode() if isinstance(content, str) else content
    steps = str(encoding or "text/plain").lower().split("+")
    if steps == ["text/plain"]:
        return data
    if not set(steps) <= B64 | GZ:
        raise EntryError(f"unknown encoding {encoding!r}")
    try:
        if steps[-1] in B64:
            data = base64.b64decode(data, validate=False)
        if steps[0] in GZ:
            data = gzip.decompress(data)
    except (binascii.Error, OSError, EOFError) as exc:
        raise EntryError(f"content is not {encoding}: {exc}") from exc
    return data


def parse_permissions(value: object) -> int:
    """Octal permissions from a string ("0600") or an int YAML already read (0o600 or 600)."""
    if value is None:
        return DEFAULT_PERMISSIONS
    try:
        mode = int(str(value), 8)
    except ValueError as exc:
        raise EntryError(f"permissions {value!r} are not octal") from exc
    if not 0 <= mode <= 0o7777:
        raise EntryError(f"permissions {value!r} out of range")
    return mode


def parse_owner(value: object) -> tuple[int, int]:
    """(uid, gid) from "user[:group]" (names or numbers); the group defaults to the user's."""
    text = str(value or DEFAULT_OWNER)
    user, _, group = text.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except (KeyError, ValueError) as exc:
        raise EntryError(f"unknown owner {text!r}") from exc
    return uid, gid


def write_entry(entry: object) -> Path:
    """Write one write_files entry; returns its path."""
    if not isinstance(entry, dict) or not entry.get("path"):
        raise EntryError("an entry without a path")
    path = Path(str(entry["path"]))
    if not path.is_absolute():
        raise EntryError(f"{path}: not an absolute path")
    data = decode_content(entry.get("content"), entry.get("encoding"))
    mode = parse_permissions(entry.get("permissions"))
    uid, gid = parse_owner(entry.get("owner"))
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if entry.get("append") else os.O_TRUNC)
    fd = os.open(path, flags | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


def write_files(entries: object) -> bool:
    """Every entry written that can be; True when all were."""
    if entries is None:
        return True
    if not isinstance(entries, list):
        say("write_files is not a list: ignored")
        return False
    ok = True
    for entry in entries:
        try:
            say(f"wrote {write_entry(entry)}")
        except (EntryError, OSError) as exc:
            say(f"write_files: {exc}")
            ok = False
    return ok


def runcmd_script(commands: object) -> str | None:
    """The runcmd entries as one shell script (None when there are none or they are not a list)."""
    if not isinstance(commands, list) or not commands:
        return None
    lines = ["#!/bin/sh"]
    for command in commands:
        if isinstance(command, list):
            lines.append(shlex.join(str(arg) for arg in command))
        elif isinstance(command, str):
            lines.append(command)
        else:
            say(f"runcmd: not a string or a list, ignored: {command!r}")
    return "\n".join(lines) + "\n"


def write_runcmd(commands: object, target: Path = RUNCMD_SCRIPT) -> None:
    if commands is not None and not isinstance(commands, list):
        say("runcmd is not a list: ignored")
    script = runcmd_script(commands)
    if script is None:
        return
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    target.write_text(script)
    target.chmod(0o700)
    say(f"wrote {target}")


def read_yaml(path: Path) -> object:
    if not path.is_file():
        return None
    try:
        return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        say(f"{path.name} is not YAML: {exc}")
        return None


def cloud_config(seed: Path) -> dict:
    """The user data as a mapping, or {} when it is missing or not a #cloud-config."""
    path = seed / "user-data"
    if not path.is_file():
        return {}
    if not path.read_bytes().lstrip().startswith(CLOUD_CONFIG_HEADER.encode()):
        say("user-data is not a #cloud-config document: ignored")
        return {}
    document = read_yaml(path)
    if not isinstance(document, dict):
        say("user-data is not a mapping: ignored")
        return {}
    return document


def hostname_of(config: dict, meta_data: object) -> str | None:
    """The cloud-config's hostname, else the meta-data's local-hostname (cloud-init's order)."""
    local = meta_data.get("local-hostname") if isinstance(meta_data, dict) else None
    for name in (config.get("hostname"), local):
        if isinstance(name, str) and name.strip():
            return name.strip()
    return None


def apply(seed: Path) -> bool:
    config = cloud_config(seed)
    ignored = sorted(set(config) - HANDLED_KEYS)
    if ignored:
        say(f"not implemented by this image, ignored: {', '.join(ignored)}")
    ok = write_files(config.get("write_files"))
    write_runcmd(config.get("runcmd"))
    name = hostname_of(config, read_yaml(seed / "meta-data"))
    if name:
        HOSTNAME_FILE.write_text(f"{name}\n")
        say(f"hostname {name}")
    return ok


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: nocloud.py SEED_DIR", file=sys.stderr)
        return 2
    return 0 if apply(Path(argv[0])) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
