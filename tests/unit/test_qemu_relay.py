"""The guestfwd relay as libslirp runs it: one real process per connection, the guest's
connection on its stdin, stdout and stderr, a real TCP service on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

RELAY = [sys.executable, "-m", "lparkube_devenv.qemu.relay"]


@pytest.fixture
def service() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A loopback TCP service answering one connection with ``handler``; its port."""
    listeners: list[socket.socket] = []

    def serve(handler: Callable[[socket.socket], None]) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def accept() -> None:
            connection, _ = listener.accept()
            with connection:
                handler(connection)

        threading.Thread(target=accept, daemon=True).start()
        return listener.getsockname()[1]

    yield serve
    for listener in listeners:
        listener.close()


def relay_for(port: int | str) -> tuple[subprocess.Popen, socket.socket]:
    """The relay with the guest's end of a connection as stdin, stdout and stderr (as
    libslirp's fork_exec hands it over); the test holds the guest's other end."""
    guest, relay_end = socket.socketpair()
    process = subprocess.Popen([*RELAY, "127.0.0.1", str(port)], stdin=relay_end,
                               stdout=relay_end, stderr=relay_end)  # fmt: skip
    relay_end.close()
    guest.settimeout(10)
    return process, guest


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def echo(connection: socket.socket) -> None:
    while data := connection.recv(65536):
        connection.sendall(data)


def test_bytes_go_both_ways_and_a_half_close_passes_through(service) -> None:
    process, guest = relay_for(service(echo))
    payload = bytes(range(256)) * 4096  # 1 MiB, more than any buffer
    sender = threading.Thread(target=lambda: (guest.sendall(payload), guest.shutdown(1)))
    sender.start()
    assert read_all(guest) == payload  # nothing but the service's bytes: stderr stays silent
    sender.join()
    assert process.wait(10) == 0


def test_the_service_closing_first_ends_the_guest_s_reading(service) -> None:
    def banner(connection: socket.socket) -> None:
        connection.sendall(b"hello guest\n")

    process, guest = relay_for(service(banner))
    assert read_all(guest) == b"hello guest\n"
    guest.close()
    assert process.wait(10) == 0


def test_a_service_that_does_not_answer_closes_the_guest_s_connection() -> None:
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    process, guest = relay_for(port)
    assert read_all(guest) == b""
    assert process.wait(10) == 1


def test_wrong_arguments_are_a_usage_error() -> None:
    process, guest = relay_for("not-a-port")
    assert process.wait(10) == 2
    guest.close()
