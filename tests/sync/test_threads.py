"""Threads: many connections at once, one socket shared, a transfer cancelled
from another thread. Every thread is joined with a time limit."""

from __future__ import annotations

import errno
import hashlib
import socket
import threading
import time

import numpy as np
import pytest
from backends import Backend
from faultkit import Pairs
from sockets import Peer

import arraywire

MB = 1 << 20
DTYPES = ["<f8", ">i4", "|u1", "<c16", "<f2", "|b1", "<M8[ms]", "|S7", "<i2,<f4"]


def _digest(array: np.ndarray) -> str:
    description = f"{array.dtype.str}{array.dtype.descr}{array.shape}".encode()
    return hashlib.blake2b(description + np.ascontiguousarray(array).tobytes()).hexdigest()


def _random_array(rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(DTYPES[rng.integers(len(DTYPES))])
    shape = tuple(int(n) for n in rng.integers(0, 40, rng.integers(0, 5)))
    raw = rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    array = raw.view(dtype).reshape(shape)
    layout = rng.integers(3)
    if layout == 1:
        return np.asfortranarray(array)
    if layout == 2 and array.ndim:
        return array[::2]  # not contiguous
    return array


def test_eight_threads_each_with_its_own_connection(backend: Backend, pairs: Pairs) -> None:
    def client(seed: int, sock: socket.socket) -> list[str]:
        rng = np.random.default_rng(seed)
        sent = []
        for _ in range(50):
            array = _random_array(rng)
            arraywire.send_array(array, sock)
            sent.append(_digest(array))
        return sent

    def server(sock: socket.socket) -> list[str]:
        return [_digest(arraywire.recv_array(sock)) for _ in range(50)]

    threads = []
    for seed in range(8):
        a, b = pairs("tcp" if seed % 2 else "unix")
        threads.append((Peer(client, seed, a), Peer(server, b)))
    for client_thread, server_thread in threads:
        assert client_thread.result(60) == server_thread.result(60)


def test_two_threads_sending_on_one_socket(backend: Backend, pairs: Pairs) -> None:
    """What happens: both transfers complete and every byte arrives once, but
    their bytes interleave at arbitrary points (the kernel takes each partial
    send as it comes), so the stream is no longer two messages. Give each
    thread its own socket, or hold a lock around each whole transfer."""
    a, b = pairs("tcp")
    ones, twos = np.full(32 * MB, 1, np.uint8), np.full(32 * MB, 2, np.uint8)
    target = np.empty(64 * MB, np.uint8)
    receiver = Peer(backend.module.recv_into, target, b)
    senders = [Peer(backend.module.send_from, ones, a), Peer(backend.module.send_from, twos, a)]
    assert [sender.result(60) for sender in senders] == [32 * MB, 32 * MB]
    assert receiver.result(60) == 64 * MB
    assert np.bincount(target, minlength=3).tolist() == [0, 32 * MB, 32 * MB]


def test_two_threads_receiving_on_one_socket(backend: Backend, pairs: Pairs) -> None:
    """Each receiver gets some of the bytes, in pieces of arbitrary size; the
    two together get each byte exactly once."""
    a, b = pairs("tcp")
    sent = np.random.default_rng(1).integers(0, 256, 64 * MB, dtype=np.uint8)
    halves = [np.empty(32 * MB, np.uint8), np.empty(32 * MB, np.uint8)]
    receivers = [Peer(backend.module.recv_into, half, b) for half in halves]
    assert backend.module.send_from(sent, a) == sent.nbytes
    assert [receiver.result(60) for receiver in receivers] == [32 * MB, 32 * MB]
    got = np.bincount(halves[0], minlength=256) + np.bincount(halves[1], minlength=256)
    assert got.tolist() == np.bincount(sent, minlength=256).tolist()


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["blocking", "timeout"])
@pytest.mark.parametrize("direction", ["receive", "send"])
def test_shutdown_from_another_thread_stops_a_transfer(
    backend: Backend, pairs: Pairs, direction: str, timeout: float | None
) -> None:
    """The way to cancel a blocked transfer from another thread is
    sock.shutdown(SHUT_RDWR): it wakes the call at once (close() does not)."""
    a, b = pairs("tcp")
    mine = b if direction == "receive" else a
    mine.settimeout(timeout)
    a.sendall(b"x" * 1000)
    stopper = threading.Timer(0.3, mine.shutdown, (socket.SHUT_RDWR,))
    stopper.start()
    started = time.monotonic()
    if direction == "receive":
        with pytest.raises(arraywire.IncompleteTransferError) as info:
            backend.module.recv_into(bytearray(10 * MB), b)
        assert info.value.bytes_done == 1000
    else:
        with pytest.raises(BrokenPipeError) as info:
            backend.module.send_from(bytes(64 * MB), a)
        assert 0 < info.value.bytes_done < 64 * MB
    stopper.join()
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["blocking", "timeout"])
def test_socket_closed_by_another_thread_mid_transfer(
    backend: Backend, pairs: Pairs, timeout: float | None
) -> None:
    """close() does not wake the call in progress, but the transfer's next call
    fails with EBADF, as Python's socket methods do: it never reaches the
    unrelated connection that gets the closed descriptor's number."""
    a, b = pairs("tcp")
    b.settimeout(timeout)
    target = bytearray(12)
    receiver = Peer(backend.module.recv_into, target, b)
    a.sendall(b"public")
    time.sleep(0.2)
    number = b.fileno()
    b.close()
    c, d = pairs()
    reused, other = (c, d) if c.fileno() == number else (d, c)
    assert reused.fileno() == number
    other.sendall(b"SECRET")
    try:  # wakes a call still blocked on the closed socket, if one is
        a.sendall(b"abc")
        a.shutdown(socket.SHUT_WR)
    except OSError:  # none was: the close was final and the peer got a reset
        pass
    with pytest.raises(OSError) as info:
        receiver.result(10)
    assert info.value.errno == errno.EBADF
    assert 6 <= info.value.bytes_done < 12  # type: ignore[attr-defined]
    assert bytes(target[6:]) != b"SECRET"
    assert reused.recv(6) == b"SECRET"
