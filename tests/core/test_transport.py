"""send_from / recv_into / sendmsg_from / recvmsg_into over real sockets, both backends."""

from __future__ import annotations

import array
import errno
import mmap
import socket
import ssl
import subprocess
import sys
import time

import numpy as np
import pytest
from backends import Backend, backend_env
from sockets import Peer

import arraywire


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _random(nbytes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.random.default_rng(1).random((300, 700)),
        lambda: np.asfortranarray(np.random.default_rng(2).random((300, 700))),
        lambda: np.arange(24, dtype=">i4").reshape(2, 3, 4),
        lambda: np.zeros((), dtype=np.complex128) + 3j,
        lambda: np.arange(10).astype("M8[s]"),
        lambda: np.zeros(5, dtype=[("a", "<f8"), ("b", "S3")]),
        lambda: np.ones(7, dtype=bool),
    ],
    ids=["c-order", "f-order", "big-endian-3d", "0d", "datetime", "structured", "bool"],
)
def test_numpy_round_trip(backend: Backend, pair, make) -> None:
    a, b = pair
    source = make()
    target = np.zeros_like(source)
    sender = Peer(backend.module.send_from, source, a)
    assert backend.module.recv_into(target, b) == source.nbytes
    assert sender.result() == source.nbytes
    assert target.tobytes(order="A") == source.tobytes(order="A")


def test_buffer_types(backend: Backend, pair, tmp_path) -> None:
    a, b = pair
    payload = bytes(_random(10_000))
    path = tmp_path / "data"
    path.write_bytes(payload)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        sources = [payload, bytearray(payload), memoryview(payload), mapped,
                   array.array("B", payload)]
        for source in sources:
            target = bytearray(len(payload))
            sender = Peer(backend.module.send_from, source, a)
            backend.module.recv_into(target, b)
            sender.result()
            assert target == payload, type(source)
    for target_type in (bytearray, lambda data: array.array("B", data),
                        lambda data: memoryview(bytearray(data))):
        target = target_type(bytes(len(payload)))
        sender = Peer(backend.module.send_from, payload, a)
        backend.module.recv_into(target, b)
        sender.result()
        assert bytes(target) == payload


def test_large_transfer_between_processes(backend: Backend) -> None:
    """A separate sender process over TCP: 64 MB arrive intact."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import socket, numpy as np, arraywire;"
            f"s = socket.create_connection(('127.0.0.1', {port}));"
            "x = np.random.default_rng(7).random(8_000_000);"
            "arraywire.send_from(x, s); s.close()"
        )
        child = subprocess.Popen([sys.executable, "-c", code], env=backend_env(backend.name))
        conn, _ = server.accept()
        with conn:
            target = np.empty(8_000_000)
            assert backend.module.recv_into(target, conn) == target.nbytes
        assert child.wait(30) == 0
    assert np.array_equal(target, np.random.default_rng(7).random(8_000_000))


def test_gather_scatter_many_buffers(backend: Backend, pair) -> None:
    """More than IOV_MAX buffers, zero-length ones among them."""
    a, b = pair
    sizes = [(i * 37) % 300 for i in range(3000)]
    sources = [_random(size, seed=i) for i, size in enumerate(sizes)]
    targets = [np.empty(size, np.uint8) for size in sizes]
    sender = Peer(backend.module.sendmsg_from, sources, a)
    assert backend.module.recvmsg_into(targets, b) == sum(sizes)
    assert sender.result() == sum(sizes)
    for source, target in zip(sources, targets, strict=True):
        assert np.array_equal(source, target)


def test_gather_into_one_and_scatter_from_one(backend: Backend, pair) -> None:
    """Partial transfers resume correctly across buffer boundaries."""
    a, b = pair
    whole = _random(5_000_000)
    pieces = np.split(whole, [1, 2, 100_000, 100_001, 4_000_000])
    sender = Peer(backend.module.sendmsg_from, pieces, a)
    target = np.empty_like(whole)
    backend.module.recv_into(target, b)
    sender.result()
    assert np.array_equal(target, whole)

    outs = [np.empty_like(piece) for piece in pieces]
    sender = Peer(backend.module.send_from, whole, a)
    backend.module.recvmsg_into(outs, b)
    sender.result()
    assert np.array_equal(np.concatenate(outs), whole)


def test_empty_transfers_make_no_calls(backend: Backend, pair) -> None:
    a, b = pair
    assert backend.module.send_from(b"", a) == 0
    assert backend.module.recv_into(bytearray(), b) == 0
    assert backend.module.sendmsg_from([], a) == 0
    assert backend.module.recvmsg_into([bytearray(), bytearray()], b) == 0
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)  # nothing was sent


def test_peer_closes_early(backend: Backend, pair) -> None:
    a, b = pair
    a.sendall(b"x" * 1000)
    a.close()
    target = bytearray(5000)
    with pytest.raises(arraywire.IncompleteTransferError) as info:
        backend.module.recv_into(target, b)
    assert isinstance(info.value, EOFError) and isinstance(info.value, ConnectionError)
    assert (info.value.bytes_done, info.value.bytes_expected) == (1000, 5000)
    assert target[:1000] == b"x" * 1000


def test_peer_closes_early_scatter(backend: Backend, pair) -> None:
    a, b = pair
    a.sendall(b"y" * 1500)
    a.close()
    targets = [bytearray(1000), bytearray(1000), bytearray(1000)]
    with pytest.raises(arraywire.IncompleteTransferError) as info:
        backend.module.recvmsg_into(targets, b)
    assert (info.value.bytes_done, info.value.bytes_expected) == (1500, 3000)


def test_inactivity_timeout(backend: Backend, pair) -> None:
    a, b = pair
    b.settimeout(0.3)
    a.sendall(b"z" * 100)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        backend.module.recv_into(bytearray(200), b)
    elapsed = time.monotonic() - started
    assert info.value.bytes_done == 100
    assert str(info.value) == "timed out"
    assert 0.25 < elapsed < 3


def test_slow_but_steady_peer_never_times_out(backend: Backend, pair) -> None:
    """The timeout bounds each wait for bytes, not the whole call: 1 s against
    pauses of 20 ms (a feeder kept off the CPU for most of a second still
    passes), in a call that lasts at least twice the timeout."""
    a, b = pair
    b.settimeout(1.0)
    chunk, chunks = 10_000, 101
    target = bytearray(chunk * chunks)

    def trickle() -> None:
        for end in range(chunk, len(target) + 1, chunk):
            a.sendall(b"q" * chunk)
            # pause only once the receiver holds it: its call cannot finish
            # sooner than 100 pauses, however late it started
            deadline = time.monotonic() + 10
            while target[end - 1] == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.02)

    feeder = Peer(trickle)
    started = time.monotonic()
    assert backend.module.recv_into(target, b) == len(target)
    assert time.monotonic() - started >= 2.0
    feeder.result()


def test_non_blocking_socket(backend: Backend, pair) -> None:
    a, b = pair
    b.setblocking(False)
    a.sendall(b"n" * 10)
    with pytest.raises(BlockingIOError) as info:
        backend.module.recv_into(bytearray(20), b)
    assert info.value.bytes_done == 10


def test_broken_pipe(backend: Backend, pair) -> None:
    a, b = pair
    b.close()
    with pytest.raises((BrokenPipeError, ConnectionResetError)) as info:
        backend.module.send_from(bytes(50_000_000), a)
    assert isinstance(info.value.bytes_done, int)
    assert 0 <= info.value.bytes_done < 50_000_000


def test_closed_socket(backend: Backend) -> None:
    a, b = socket.socketpair()
    a.close()
    b.close()
    with pytest.raises(OSError) as info:
        backend.module.send_from(b"data", a)
    assert info.value.errno == errno.EBADF


def test_ssl_socket_refused(backend: Backend) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with socket.socket() as raw:
        wrapped = context.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        with pytest.raises(TypeError, match="SSLSocket"):
            backend.module.send_from(b"data", wrapped)
        wrapped.close()


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        (b"read-only", TypeError, "read-only"),
        (_read_only(np.zeros(4)), TypeError, "read-only"),
        (np.zeros((4, 4))[:, ::2], ValueError, "not contiguous"),
        (np.zeros(3, dtype=object), TypeError, "Python objects"),
        (memoryview(np.zeros(3, dtype=object)), TypeError, "Python objects"),
        (12, TypeError, "exporting a buffer"),
    ],
    ids=["bytes", "readonly-array", "strided", "object-dtype", "object-memoryview", "int"],
)
def test_bad_targets(backend: Backend, pair, target, error, match) -> None:
    _, b = pair
    with pytest.raises(error, match=match):
        backend.module.recv_into(target, b)


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        (np.zeros((4, 4))[::2], ValueError, "not contiguous"),
        (memoryview(b"abcdef")[::2], ValueError, "not contiguous"),
        (np.zeros(3, dtype=[("a", "O")]), TypeError, "Python objects"),
        ("text", TypeError, "exporting a buffer"),
    ],
    ids=["strided-array", "strided-memoryview", "object-field", "str"],
)
def test_bad_sources(backend: Backend, pair, source, error, match) -> None:
    a, _ = pair
    with pytest.raises(error, match=match):
        backend.module.send_from(source, a)


def test_progress_reports(backend: Backend, pair) -> None:
    a, b = pair
    seen: list[tuple[int, int]] = []
    payload = bytes(3_000_000)

    def slow_sender() -> None:
        for start in range(0, len(payload), 300_000):
            a.sendall(payload[start : start + 300_000])
            time.sleep(0.03)

    feeder = Peer(slow_sender)
    started = time.monotonic()
    backend.module.recv_into(bytearray(len(payload)), b, progress=lambda d, t: seen.append((d, t)))
    elapsed = time.monotonic() - started
    feeder.result()
    assert seen[-1] == (len(payload), len(payload))
    # about every 100 ms while data flow, plus once at the end
    assert 2 <= len(seen) <= elapsed / 0.1 + 2
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
