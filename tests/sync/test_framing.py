"""send_array / recv_array / send_arrays / recv_arrays over real sockets, both backends."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys

import numpy as np
import pytest
from backends import Backend, backend_env
from sockets import Peer

import arraywire
from arraywire._wire import engine
from arraywire._wire.header import PREAMBLE, ArraySpec, encode_header

DTYPES = [
    "?", "i1", "u1", "<i2", ">i2", "<u2", "<i4", ">i4", "<u4", "<i8", ">u8",
    "<f2", "<f4", ">f4", "<f8", ">f8", "<c8", ">c16", "<M8[ns]", ">M8[D]", "<m8[us]",
    "S5", "<U3", ">U2", "V4",
    [("a", "<i4"), ("b", ">f8"), ("c", "S2", (2, 3))],
    np.dtype({"names": ["x", "y"], "formats": ["u1", "<f8"], "offsets": [0, 8], "itemsize": 24}),
    np.dtype([("x", "u1"), ("y", "<f4")], align=True),
]


def _example(dtype: np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * dtype.itemsize,
                                               dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def _round_trip(backend: Backend, pair, array: np.ndarray) -> np.ndarray:
    a, b = pair
    sender = Peer(arraywire.send_array, array, a)
    received = arraywire.recv_array(b)
    sender.result()
    return received


def _same(received: np.ndarray, sent: np.ndarray) -> None:
    assert received.dtype == sent.dtype
    assert received.shape == sent.shape
    # compare bytes: NaN payloads and structured padding must survive too
    assert received.tobytes() == sent.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 0, 2), (4, 5, 3)], ids=str)
def test_dtype_shape_matrix(backend: Backend, dtype, shape) -> None:
    a, b = socket.socketpair()
    with a, b:
        sent = _example(np.dtype(dtype), shape)
        _same(_round_trip(backend, (a, b), sent), sent)


@pytest.mark.parametrize("order", ["C", "F"])
def test_memory_order_is_kept(backend: Backend, pair, order: str) -> None:
    sent = np.asarray(_example(np.dtype("<f8"), (60, 70)), order=order)
    received = _round_trip(backend, pair, sent)
    _same(received, sent)
    assert received.flags.f_contiguous == (order == "F")
    assert received.flags.c_contiguous == (order == "C")


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x[::2],
        lambda x: x.T[1:, ::3],
        lambda x: x[::-1, 1:],
        lambda x: x[:, :, ::2],
        lambda x: x[:, 1:],      # long contiguous runs: one iovec each
        lambda x: x.swapaxes(0, 1),
    ],
    ids=["step", "transpose-step", "reversed", "inner-step", "runs", "swapped"],
)
def test_non_contiguous_arrays(backend: Backend, pair, make) -> None:
    base = _example(np.dtype("<f8"), (40, 3, 9000))
    sent = make(base)
    assert not sent.flags.c_contiguous and not sent.flags.f_contiguous
    received = _round_trip(backend, pair, sent)
    assert received.flags.c_contiguous
    np.testing.assert_array_equal(received, sent)


def test_strided_runs_are_sent_without_packing(monkeypatch) -> None:
    array = np.zeros((10, 2, 40_000))[:, 1]  # 10 runs of 320 kB
    segments = engine.plan_send([array]).segments
    assert len(segments) == 10
    assert all(isinstance(s, np.ndarray) and s.flags.c_contiguous for s in segments)
    assert all(np.shares_memory(s, array) for s in segments)
    packed = np.zeros((1000, 40))[:, ::2]
    segments = engine.plan_send([packed]).segments
    assert len(segments) == 1 and not isinstance(segments[0], np.ndarray)


@pytest.mark.parametrize("shape", [(3000, 1000), (7, 5000, 3), (100_000,)], ids=str)
def test_packed_pieces_are_bounded(shape) -> None:
    array = _example(np.dtype("<i4"), shape)[..., ::3]
    pieces = list(engine.packed_pieces(array, 4096))
    assert max(piece.nbytes for piece in pieces) <= 4096
    flat = np.concatenate([piece.ravel() for piece in pieces])
    np.testing.assert_array_equal(flat, array.ravel())


def test_packing_through_a_small_staging_buffer(backend: Backend, pair, monkeypatch) -> None:
    monkeypatch.setattr(engine, "STAGING_BYTES", 1000)
    sent = _example(np.dtype("<i4"), (300, 100, 2))[:, ::3, ::-1]
    received = _round_trip(backend, pair, sent)
    np.testing.assert_array_equal(received, sent)


def test_several_arrays_in_one_message(backend: Backend, pair) -> None:
    a, b = pair
    sent = [
        _example(np.dtype("<f4"), (100, 3)),
        np.asfortranarray(_example(np.dtype(">i8"), (5, 6))),
        np.zeros((0, 4)),
        _example(np.dtype("S3"), ()),
        _example(np.dtype("<u2"), (50, 50))[::3, ::2],
    ]
    sender = Peer(arraywire.send_arrays, sent, a)
    received = arraywire.recv_arrays(b)
    sender.result()
    assert len(received) == len(sent)
    for got, want in zip(received, sent, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    sender = Peer(arraywire.send_arrays, [], a)
    assert arraywire.recv_arrays(b) == []
    sender.result()


def test_received_arrays_are_owned_writable_aligned(backend: Backend, pair) -> None:
    a, b = pair
    sent = [_example(np.dtype(d), (1000,)) for d in ("<f8", "u1", "<c16", "<i4")]
    sender = Peer(arraywire.send_arrays, sent, a)
    received = arraywire.recv_arrays(b)
    sender.result()
    for array in received:
        assert array.flags.owndata and array.flags.writeable and array.flags.aligned
        assert array.base is None
    for first, second in itertools.pairwise(received):
        assert not np.shares_memory(first, second)


def test_one_syscall_per_small_message(backend: Backend, pair, monkeypatch) -> None:
    """Header and payload leave in a single gather call."""
    a, b = pair
    calls: list[int] = []
    real = backend.module.sendmsg_from

    def counting(buffers, sock, **kwargs):
        calls.append(len(buffers))
        return real(buffers, sock, **kwargs)

    monkeypatch.setattr(backend.module, "sendmsg_from", counting)
    arraywire.send_array(np.arange(8.0), a)
    assert calls == [2]
    np.testing.assert_array_equal(arraywire.recv_array(b), np.arange(8.0))


def test_recv_into_out(backend: Backend, pair) -> None:
    a, b = pair
    sent = _example(np.dtype("<f8"), (30, 40))
    out = np.empty((30, 40))
    sender = Peer(arraywire.send_array, sent, a)
    assert arraywire.recv_array(b, out=out) is out
    sender.result()
    np.testing.assert_array_equal(out, sent)


@pytest.mark.parametrize(
    "out",
    [np.empty((30, 40), "<f4"), np.empty((40, 30)), np.empty((30, 40), order="F"),
     np.empty((30, 80))[:, ::2]],
    ids=["dtype", "shape", "order", "strided"],
)
def test_out_mismatch_drains_message(backend: Backend, pair, out) -> None:
    a, b = pair
    sent = _example(np.dtype("<f8"), (30, 40))
    follow_up = np.arange(5)
    sender = Peer(lambda: (arraywire.send_array(sent, a), arraywire.send_array(follow_up, a)))
    with pytest.raises(ValueError, match="out"):
        arraywire.recv_array(b, out=out)
    np.testing.assert_array_equal(arraywire.recv_array(b), follow_up)  # stream still in step
    sender.result()


def test_recv_array_of_a_multi_array_message(backend: Backend, pair) -> None:
    a, b = pair
    sender = Peer(lambda: (arraywire.send_arrays([np.ones(3), np.ones(4)], a),
                           arraywire.send_array(np.arange(3), a)))
    with pytest.raises(ValueError, match="one array"):
        arraywire.recv_array(b)
    np.testing.assert_array_equal(arraywire.recv_array(b), np.arange(3))
    sender.result()


@pytest.mark.parametrize("dtype", ["O", [("a", "<f8"), ("b", "O")]], ids=["object", "object-field"])
def test_object_dtype_is_never_sent(backend: Backend, pair, dtype) -> None:
    a, _ = pair
    with pytest.raises(TypeError, match="never pickles"):
        arraywire.send_array(np.empty(3, dtype=dtype), a)


def test_header_naming_object_dtype_is_refused(backend: Backend, pair) -> None:
    a, b = pair
    header = encode_header([ArraySpec(np.dtype("<i8"), (3,), "C", 24)])
    header = header.replace(b"<i8", b"|O8")
    a.sendall(header + bytes(24))
    with pytest.raises(arraywire.ProtocolError, match="Python objects"):
        arraywire.recv_array(b)


def test_max_bytes_is_checked_before_allocation(backend: Backend, pair) -> None:
    a, b = pair
    sender = Peer(arraywire.send_array, np.zeros(1000), a)
    with pytest.raises(arraywire.ProtocolError, match="max_bytes"):
        arraywire.recv_array(b, max_bytes=7999)
    sender.result()


def test_eof_mid_message_counts_message_bytes(backend: Backend, pair) -> None:
    a, b = pair
    header = encode_header([ArraySpec(np.dtype("<f8"), (100,), "C", 800)])
    a.sendall(header + bytes(300))
    a.close()
    with pytest.raises(arraywire.IncompleteTransferError) as info:
        arraywire.recv_array(b)
    assert info.value.bytes_done == len(header) + 300
    assert info.value.bytes_expected == len(header) + 800


@pytest.mark.parametrize("call", [arraywire.recv_array, arraywire.recv_arrays, arraywire.recv_message])
def test_clean_close_between_messages_is_a_plain_eof(backend: Backend, pair, call) -> None:
    """A consumer loop can tell a peer that finished from one that failed."""
    a, b = pair
    arraywire.send_array(np.arange(3), a)
    a.close()
    call(b)
    with pytest.raises(EOFError, match="between messages") as info:
        call(b)
    assert type(info.value) is EOFError


def test_close_inside_the_preamble_is_incomplete(backend: Backend, pair) -> None:
    a, b = pair
    a.sendall(b"AWIR\x01")
    a.close()
    with pytest.raises(arraywire.IncompleteTransferError) as info:
        arraywire.recv_array(b)
    assert (info.value.bytes_done, info.value.bytes_expected) == (5, PREAMBLE.size)


def test_progress_covers_the_whole_message(backend: Backend, pair) -> None:
    a, b = pair
    seen: list[tuple[int, int]] = []
    sent = _example(np.dtype("<f8"), (200, 300))[:, ::2]
    receiver = Peer(arraywire.recv_array, b)
    total = arraywire.send_array(sent, a, progress=lambda d, t: seen.append((d, t)))
    receiver.result()
    assert seen[-1] == (total, total)
    assert total > sent.nbytes


def test_big_array_between_processes(backend: Backend) -> None:
    """A child process sends 200 MB of float64 over TCP; values arrive intact."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        code = (
            "import socket, numpy as np, arraywire;"
            f"s = socket.create_connection(('127.0.0.1', {server.getsockname()[1]}));"
            "arraywire.send_array(np.arange(25_000_000, dtype=np.float64).reshape(5000, 5000), s)"
        )
        child = subprocess.Popen([sys.executable, "-c", code], env=backend_env(backend.name))
        conn, _ = server.accept()
        with conn:
            received = arraywire.recv_array(conn)
        assert child.wait(60) == 0
    assert received.shape == (5000, 5000)
    np.testing.assert_array_equal(received.ravel(), np.arange(25_000_000, dtype=np.float64))
