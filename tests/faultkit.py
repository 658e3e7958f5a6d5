"""Helpers of the fault tests: child processes, listeners, checkable payloads."""

from __future__ import annotations

import fcntl
import os
import select
import socket
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from backends import backend_env
from sockets import connected_pair

# Payload bytes are never SENTINEL, so a receive buffer prefilled with it shows
# exactly how many bytes were written into it.
SENTINEL = 255


def payload(nbytes: int, seed: int = 0) -> np.ndarray:
    """Random bytes in 0..250: no period, so a lost or repeated chunk shows."""
    return np.random.default_rng(seed).integers(0, 251, nbytes, dtype=np.uint8)


def sentinel_buffer(nbytes: int) -> np.ndarray:
    return np.full(nbytes, SENTINEL, dtype=np.uint8)


def assert_exact_prefix(received: np.ndarray, sent: np.ndarray, bytes_done: int) -> None:
    """bytes_done bytes arrived intact and not one byte more was written."""
    assert np.array_equal(received[:bytes_done], sent[:bytes_done])
    assert (received[bytes_done:] == SENTINEL).all()


@contextmanager
def listener(kind: str) -> Iterator[tuple[socket.socket, str]]:
    """A listening socket and the Python expression of its address for a child."""
    if kind == "tcp":
        with socket.create_server(("127.0.0.1", 0)) as server:
            yield server, repr(server.getsockname())
        return
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(path)
            server.listen(1)
            yield server, repr(path)


def connect_code(kind: str, address: str) -> str:
    family = "AF_INET" if kind == "tcp" else "AF_UNIX"
    return f"sock = socket.socket(socket.{family}, socket.SOCK_STREAM)\nsock.connect({address})\n"


class Child:
    """A Python child process on the chosen backend, talking through stdout lines.

    The code is run as given (build it from unindented lines), after the
    command `prefix` if one is given (such as `ip netns exec NAME`).
    """

    def __init__(self, backend: str, code: str, prefix: tuple[str, ...] = ()) -> None:
        prelude = "import os, signal, socket, sys, time\nimport numpy as np\nimport arraywire\n"
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", prelude + code],
            env=backend_env(backend),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def line(self, timeout: float = 30) -> str:
        """The next line the child prints; fails the test if none comes in time."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"child printed nothing for {timeout} s"
        text = self.proc.stdout.readline()
        assert text, f"child exited early: {self.stderr()}"
        return text.strip()

    def stderr(self) -> str:
        self.wait()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"child still running after {timeout} s") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def wait_for_stall(sock: socket.socket, quiet: float = 0.3, limit: float = 20) -> int:
    """Wait until no more bytes arrive at sock for `quiet` s; return those queued."""
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        queued = queued_bytes(sock)
        if queued == last and queued > 0:
            return queued
        last = queued
        time.sleep(quiet)
    raise AssertionError("the peer never stalled")


def queued_bytes(sock: socket.socket) -> int:
    """Bytes waiting to be read at sock (FIONREAD)."""
    out = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(out, sys.byteorder)


def drain(sock: socket.socket) -> bytes:
    """Everything that can be read from sock without waiting."""
    chunks = []
    previous = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.settimeout(previous)
    return b"".join(chunks)


class Pairs:
    """Makes connected socket pairs and closes them all at the end of a test."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def __call__(self, kind: str = "socketpair") -> tuple[socket.socket, socket.socket]:
        a, b = connected_pair(kind)
        self.sockets += [a, b]
        return a, b

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
