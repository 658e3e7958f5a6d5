"""Connected socket pairs of every kind the tests use, and a peer thread."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import arraywire

KINDS = ("socketpair", "tcp", "unix")


def connected_pair(kind: str) -> tuple[socket.socket, socket.socket]:
    """Two connected stream sockets of the given kind."""
    if kind == "socketpair":
        return socket.socketpair()
    if kind == "tcp":
        with socket.create_server(("127.0.0.1", 0)) as server:
            client = socket.create_connection(server.getsockname())
            peer, _ = server.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, peer
    if kind == "unix":
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "sock")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
                server.bind(path)
                server.listen(1)
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.connect(path)
                peer, _ = server.accept()
        return client, peer
    raise ValueError(kind)


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """Read size bytes, failing the test if the peer closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return data


class Peer(threading.Thread):
    """Runs fn(*args) in a thread; result() re-raises what it raised."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self._args = args
        self._value: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._error = exc

    def result(self, timeout: float = 60) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "peer thread did not finish"
        if self._error is not None:
            raise self._error
        return self._value


def message_of(array: Any, limit: float = 30.0) -> bytes:
    """The bytes of one message carrying array, as arraywire sends it."""
    a, b = socket.socketpair()
    with a, b:

        def send() -> None:
            arraywire.send_array(array, a)
            a.shutdown(socket.SHUT_WR)

        sending = threading.Thread(target=send)
        sending.start()
        data = b"".join(iter(lambda: b.recv(1 << 20), b""))
        sending.join(limit)
        return data
