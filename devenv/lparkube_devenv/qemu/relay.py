"""The per-connection relay QEMU's ``guestfwd=...-cmd:`` runs: the guest's connection <-> TCP.

``python -m lparkube_devenv.qemu.relay HOST PORT``. QEMU's user networking (libslirp) starts
the command once for every connection the guest opens to the forwarded address and hands it
that connection as standard input and output (and standard error too, so this program never
writes there: anything it printed would reach the guest). It connects to HOST:PORT (a loopback
service) and copies bytes both ways until both sides are done; an end of input on one side is
passed on as a half-close, and a HOST:PORT that does not answer just closes the guest's
connection. glib spawns it detached (a double fork: its parent is not QEMU), so it cannot die
with QEMU by PR_SET_PDEATHSIG; it needs not: when QEMU ends, the guest's side of the connection
ends, and so does the relay.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys

CONNECT_TIMEOUT = 10.0
CHUNK = 65536


def command() -> tuple[str, ...]:
    """The argv prefix for ``machine.Network.relay`` (HOST PORT follow)."""
    return (sys.executable, "-m", __name__)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        return 2
    _silence_stderr()
    try:
        upstream = socket.create_connection((args[0], int(args[1])), timeout=CONNECT_TIMEOUT)
    except OSError:
        return 1
    upstream.settimeout(None)
    with upstream:
        relay(0, 1, upstream)
    return 0


def relay(guest_in: int, guest_out: int, upstream: socket.socket) -> None:
    """Copy guest_in -> upstream and upstream -> guest_out until both reach their end."""
    selector = selectors.DefaultSelector()
    selector.register(guest_in, selectors.EVENT_READ, "guest")
    selector.register(upstream, selectors.EVENT_READ, "upstream")
    open_directions = 2
    while open_directions:
        for key, _ in selector.select():
            if key.data == "guest":
                data = _read_fd(guest_in)
                if data:
                    upstream.sendall(data)
                    continue
                selector.unregister(guest_in)
                _shutdown_socket(upstream)
            else:
                data = _recv(upstream)
                if data:
                    _write_fd(guest_out, data)
                    continue
                selector.unregister(upstream)
                _end_output(guest_out)
            open_directions -= 1
    selector.close()


def _read_fd(fd: int) -> bytes:
    try:
        return os.read(fd, CHUNK)
    except OSError:
        return b""


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(CHUNK)
    except OSError:
        return b""


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _shutdown_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def _end_output(fd: int) -> None:
    """Half-close the guest's side: shut a socket down for writing, or close a pipe."""
    duplicate = os.dup(fd)
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        os.close(fd)
        return
    with sock:
        _shutdown_socket(sock)


def _silence_stderr() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
