"""The two backends side by side on random buffers, chunkings and failures:
same results, same bytes, same errors with the same messages and counts."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sockets import Peer

from arraywire._core import transport, transport_py
from arraywire._wire.engine import plan_send
from arraywire._wire.limits import numpy_bytes

if transport.NO_EXTENSIONS:
    pytest.skip("the compiled backend is switched off for this run", allow_module_level=True)
try:
    from arraywire._core import transport_c
except ImportError:  # tests/core/test_backends.py reports this as the failure
    pytest.skip("the compiled backend is not built", allow_module_level=True)

BACKENDS = (transport_c, transport_py)
DIFF = settings(max_examples=60, deadline=None)


def _outcome(call):
    try:
        return ("ok", call())
    except BaseException as exc:  # noqa: BLE001 - compared across backends
        return (type(exc), str(exc), getattr(exc, "bytes_done", None),
                getattr(exc, "bytes_expected", None))


def _receive(module, sizes, chunks, close_early, timeout):
    """Feed `chunks` from a thread, then receive into buffers of `sizes`."""
    a, b = socket.socketpair()
    payload = np.random.default_rng(len(chunks)).integers(0, 256, sum(chunks), dtype=np.uint8)

    def feed() -> None:
        offset = 0
        for chunk in chunks:
            a.sendall(payload[offset : offset + chunk])
            offset += chunk
        if close_early:
            a.close()

    b.settimeout(timeout)
    targets = [bytearray(size) for size in sizes]
    feeder = Peer(feed)
    if len(targets) == 1:
        outcome = _outcome(lambda: module.recv_into(targets[0], b))
    else:
        outcome = _outcome(lambda: module.recvmsg_into(targets, b))
    feeder.result()
    a.close()
    b.close()
    return outcome, b"".join(targets)


@DIFF
@given(
    sizes=st.lists(st.integers(0, 70_000), min_size=1, max_size=40),
    chunk_sizes=st.lists(st.integers(1, 50_000), min_size=1, max_size=30),
    short_by=st.integers(0, 3),
)
def test_receive_same_bytes_and_errors(sizes, chunk_sizes, short_by) -> None:
    total = sum(sizes)
    chunks: list[int] = []
    for chunk in chunk_sizes:  # cut the feed into the drawn chunks, up to total - short_by
        remaining = total - short_by - sum(chunks)
        if remaining <= 0:
            break
        chunks.append(min(chunk, remaining))
    if short_by == 0 and sum(chunks) < total:
        chunks.append(total - sum(chunks))
    close_early = sum(chunks) < total
    results = [_receive(m, sizes, chunks, close_early, None) for m in BACKENDS]
    assert results[0] == results[1]
    if not close_early:
        assert results[0][0] == ("ok", total)


@DIFF
@given(sizes=st.lists(st.integers(0, 300_000), min_size=1, max_size=30))
def test_send_gather_same_bytes(sizes) -> None:
    rng = np.random.default_rng(sum(sizes))
    sources = [rng.integers(0, 256, size, dtype=np.uint8) for size in sizes]
    received = []
    for module in BACKENDS:
        a, b = socket.socketpair()
        with a, b:
            sender = Peer(module.sendmsg_from if len(sources) > 1 else
                          lambda s, sock: module.send_from(s[0], sock), sources, a)
            target = bytearray(sum(sizes))
            transport_py.recv_into(target, b)
            assert sender.result() == sum(sizes)
            received.append(bytes(target))
    assert received[0] == received[1] == b"".join(s.tobytes() for s in sources)


@DIFF
@given(got=st.integers(0, 5000), wanted=st.integers(1, 6000))
def test_timeout_same_error(got, wanted) -> None:
    got = min(got, wanted - 1)
    results = [_receive(m, [wanted], [got] if got else [], False, 0.05) for m in BACKENDS]
    assert results[0] == results[1]
    assert results[0][0][:3] == (TimeoutError, "timed out", got)


BAD_OBJECTS = [
    b"bytes", 3.5, "text", None, np.zeros(4)[::2], memoryview(b"abcd")[::2],
    np.zeros(2, dtype=object), memoryview(np.zeros(2, dtype=object)),
    np.zeros(2, dtype=[("name", "O")]), np.frombuffer(b"12345678", dtype=np.uint8),
    np.zeros((3, 3)).T[::2],
]


@pytest.mark.parametrize("obj", BAD_OBJECTS, ids=lambda o: type(o).__name__)
@pytest.mark.parametrize("direction", ["send", "recv", "sendmsg", "recvmsg"])
def test_bad_input_same_error(obj, direction) -> None:
    outcomes = []
    for module in BACKENDS:
        a, b = socket.socketpair()
        b.settimeout(0.01)
        with a, b:
            if direction == "send":
                outcomes.append(_outcome(lambda: module.send_from(obj, a)))
            elif direction == "recv":
                outcomes.append(_outcome(lambda: module.recv_into(obj, b)))
            elif direction == "sendmsg":
                outcomes.append(_outcome(lambda: module.sendmsg_from([b"ok", obj], a)))
            else:
                outcomes.append(_outcome(lambda: module.recvmsg_into([bytearray(1), obj], b)))
    assert outcomes[0] == outcomes[1]


# --- a connection's Inbox and Outbox ---------------------------------------------

LAYOUT_DTYPES = [np.dtype(t) for t in ("<f8", ">i4", "u1", "<c16", "S3", "<U2", "?", "<f2")]


@st.composite
def layouts(draw):
    """A dtype, an order, and shapes of one number of dimensions."""
    dtype = draw(st.sampled_from(LAYOUT_DTYPES))
    ndim = draw(st.integers(0, 4))
    shapes = draw(st.lists(st.tuples(*[st.integers(0, 6)] * ndim), min_size=1, max_size=6))
    return dtype, draw(st.sampled_from("CF")), shapes


def _arrays(dtype, order, shapes):
    rng = np.random.default_rng(len(shapes))
    return [
        np.asarray(
            rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
            .view(dtype).reshape(shape), order=order,
        )
        for shape in shapes
    ]


def _packed(module, arrays):
    a, b = socket.socketpair()
    with a, b:
        outbox = module.Outbox(a)
        plan = plan_send((arrays[0],))
        outbox.learn(plan.header, arrays[0].dtype, arrays[0].shape, _engine_order(arrays[0]))
        staging = bytearray()
        counts = [outbox.pack(array, staging) for array in arrays]
    return counts, bytes(staging)


def _engine_order(array):
    return "C" if array.flags.c_contiguous else "F"


@DIFF
@given(layout=layouts())
def test_outbox_writes_what_the_engine_plans(layout) -> None:
    """An array of the learned order becomes the engine's message; any other
    is left to the engine (0)."""
    arrays = _arrays(*layout)
    learned = _engine_order(arrays[0])
    taken = [a for a in arrays if _engine_order(a) == learned]
    expected = b"".join(
        plan_send((array,)).header + numpy_bytes(array, False).tobytes() for array in taken
    )
    counts = [plan_send((a,)).total if _engine_order(a) == learned else 0 for a in arrays]
    for module in BACKENDS:
        assert _packed(module, arrays) == (counts, expected)


def _taken(module, learned, stream, max_bytes):
    """Learn a header, then take arrays from a stream of bytes until None."""
    a, b = socket.socketpair()
    with a, b:
        inbox = module.Inbox(b)
        header = plan_send((learned,)).header
        inbox.learn(header, learned.dtype, learned.shape, _engine_order(learned))
        a.sendall(stream)
        a.shutdown(socket.SHUT_WR)
        taken = []
        while True:
            outcome = _outcome(lambda: inbox.take_array(max_bytes))
            if outcome[0] != "ok" or outcome[1] is None:
                break
            array = outcome[1]
            taken.append((array.dtype.str, array.shape, array.flags.f_contiguous, array.tobytes()))
        return taken, outcome[:1] if outcome[0] == "ok" else outcome, inbox.buffered


@DIFF
@given(
    layout=layouts(),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=3),
    cut=st.integers(0, 64),
    max_bytes=st.one_of(st.none(), st.integers(0, 2000)),
)
def test_inbox_takes_the_same_messages(layout, flips, cut, max_bytes) -> None:
    """Messages of the learned layout, some bytes flipped and the end cut:
    both twins take the same arrays and stop at the same byte, for the same
    reason."""
    arrays = _arrays(*layout)
    stream = bytearray(
        b"".join(plan_send((a,)).header + numpy_bytes(a, False).tobytes() for a in arrays)
    )
    for at, mask in flips:
        stream[at % len(stream)] ^= mask
    stream = stream[: max(len(stream) - cut, 0)]
    outcomes = [_taken(module, arrays[0], bytes(stream), max_bytes) for module in BACKENDS]
    assert outcomes[0] == outcomes[1]
