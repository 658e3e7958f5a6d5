"""progress=(bytes_done, bytes_total) callbacks, blocking and asyncio, both backends."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from backends import Backend
from sockets import Peer

import arraywire
from arraywire import BrokenStreamError, aio
from arraywire._wire.engine import plan_send
from arraywire._wire.limits import PROGRESS_INTERVAL

SLOW_BYTES = 8 << 20  # moved in ~0.6 s by the slow peers below
SLOW_STEP = 256 << 10
SLOW_PAUSE = 0.02


class Recorder:
    """Collects (done, total, time, thread) for every progress call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, float, int]] = []
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total, time.monotonic(), threading.get_ident()))

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(done, total) for done, total, _, _ in self.calls]

    def check(self, total: int) -> None:
        """Monotonic, one total, ends exactly once with (total, total), throttled."""
        pairs = self.pairs
        assert pairs, "progress was never called"
        assert pairs[-1] == (total, total)
        assert all(t == total for _, t in pairs)
        done = [d for d, _ in pairs]
        assert done == sorted(done)
        assert done.count(total) == 1, "the end is reported once"
        # At most about every PROGRESS_INTERVAL: count the calls over the whole
        # transfer (delivery to an event loop adds jitter to single gaps), and
        # refuse gaps so short that they mean no throttling at all.
        times = [when for _, _, when, _ in self.calls]
        elapsed = times[-1] - self.started
        assert len(times) - 1 <= elapsed / PROGRESS_INTERVAL + 1, (len(times), elapsed)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times[:-1])]
        assert all(gap >= PROGRESS_INTERVAL / 2 for gap in gaps), gaps


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def slow_reader(sock: socket.socket, nbytes: int) -> bytes:
    sock.setblocking(True)
    got = bytearray()
    while len(got) < nbytes:
        chunk = sock.recv(min(SLOW_STEP, nbytes - len(got)))
        assert chunk
        got += chunk
        time.sleep(SLOW_PAUSE)
    return bytes(got)


def slow_writer(sock: socket.socket, data: bytes) -> None:
    sock.setblocking(True)
    for start in range(0, len(data), SLOW_STEP):
        sock.sendall(data[start : start + SLOW_STEP])
        time.sleep(SLOW_PAUSE)


def message_bytes(array: np.ndarray) -> bytes:
    return plan_send([array]).header + array.tobytes()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# --- blocking -----------------------------------------------------------------


def test_blocking_send_reports_the_whole_message(backend: Backend, pair) -> None:
    a, b = pair
    array = np.arange(SLOW_BYTES // 8, dtype=np.float64)
    total = len(message_bytes(array))
    record = Recorder()
    reader = Peer(slow_reader, b, total)
    assert arraywire.send_array(array, a, progress=record) == total
    assert reader.result() == message_bytes(array)
    record.check(total)
    assert len(record.calls) >= 3, "a 0.6 s transfer reports along the way"


def test_blocking_receive_reports_the_message(backend: Backend, pair) -> None:
    a, b = pair
    array = np.arange(SLOW_BYTES // 8, dtype=np.float64)
    record = Recorder()
    writer = Peer(slow_writer, a, message_bytes(array))
    received = arraywire.recv_array(b, progress=record)
    writer.result()
    np.testing.assert_array_equal(received, array)
    record.check(len(message_bytes(array)))  # the sender's total too
    assert len(record.calls) >= 3


def test_blocking_raw_and_multi_array_calls(backend: Backend, pair) -> None:
    a, b = pair
    arrays = [np.ones(1000), np.arange(10)[::2], np.zeros((0,))]
    sent, received = Recorder(), Recorder()
    sender = Peer(arraywire.send_arrays, arrays, a)
    got = arraywire.recv_arrays(b, progress=received)
    sender.result()
    assert [g.shape for g in got] == [(1000,), (5,), (0,)]
    received.check(len(plan_send(arrays).header) + sum(x.nbytes for x in arrays))
    data = bytes(range(256)) * 100
    into = bytearray(len(data))
    receiver = Peer(arraywire.recv_into, into, b)
    arraywire.send_from(data, a, progress=sent)
    receiver.result()
    sent.check(len(data))


def test_blocking_callback_error_stops_the_transfer(backend: Backend, pair) -> None:
    a, b = pair

    def fail(done: int, total: int) -> None:
        raise RuntimeError(f"stop at {done}")

    reader = Peer(slow_reader, b, SLOW_BYTES)
    with pytest.raises(RuntimeError, match="stop at") as raised:
        arraywire.send_from(bytes(SLOW_BYTES), a, progress=fail)
    assert 0 < raised.value.bytes_done <= SLOW_BYTES  # type: ignore[attr-defined]
    a.close()
    reader.join(10)


# --- asyncio ----------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, SLOW_BYTES], ids=["native", "threaded"])
def test_aio_send_reports_in_the_loop_thread(backend: Backend, pair, size: int) -> None:
    a, b = pair
    a.setblocking(False)
    array = np.arange(size // 8, dtype=np.float64)
    total = len(message_bytes(array))
    record = Recorder()

    async def body() -> int:
        reader = asyncio.to_thread(slow_reader, b, total)
        _, got = await asyncio.gather(aio.send_array(array, a, progress=record), reader)
        assert got == message_bytes(array)
        return threading.get_ident()

    loop_thread = run(body())
    record.check(total)
    assert {thread for *_, thread in record.calls} == {loop_thread}
    if size == SLOW_BYTES:
        assert len(record.calls) >= 3


@pytest.mark.parametrize("size", [1000, SLOW_BYTES], ids=["native", "threaded"])
def test_aio_receive_reports_the_message(backend: Backend, pair, size: int) -> None:
    a, b = pair
    b.setblocking(False)
    array = np.arange(size // 8, dtype=np.float64)
    record = Recorder()

    async def body() -> tuple[np.ndarray, int]:
        writer = asyncio.to_thread(slow_writer, a, message_bytes(array))
        got, _ = await asyncio.gather(aio.recv_array(b, progress=record), writer)
        return got, threading.get_ident()

    got, loop_thread = run(body())
    np.testing.assert_array_equal(got, array)
    record.check(len(message_bytes(array)))
    assert {thread for *_, thread in record.calls} == {loop_thread}


def test_aio_and_blocking_report_alike(backend: Backend, pair) -> None:
    """Fast transfers: one report each, the same numbers from both APIs."""
    a, b = pair
    arrays = [np.arange(300), np.zeros((0, 2))]
    blocking_send, blocking_recv = Recorder(), Recorder()
    receiver = Peer(arraywire.recv_arrays, b)
    arraywire.send_arrays(arrays, a, progress=blocking_send)
    receiver.result()
    sender = Peer(arraywire.send_arrays, arrays, a)
    arraywire.recv_arrays(b, progress=blocking_recv)
    sender.result()

    a.setblocking(False)
    b.setblocking(False)
    aio_send, aio_recv = Recorder(), Recorder()

    async def body() -> None:
        await asyncio.gather(aio.send_arrays(arrays, a, progress=aio_send),
                             aio.recv_arrays(b, progress=aio_recv))

    run(body())
    total = plan_send(arrays).total
    assert aio_send.pairs == blocking_send.pairs == [(total, total)]
    assert aio_recv.pairs == blocking_recv.pairs == [(total, total)]


@pytest.mark.parametrize("size", [1000, SLOW_BYTES], ids=["native", "threaded"])
def test_aio_callback_error_aborts_and_breaks_the_stream(
    backend: Backend, pair, size: int
) -> None:
    a, b = pair
    a.setblocking(False)
    calls = []

    def fail(done: int, total: int) -> None:
        calls.append(done)
        raise RuntimeError("enough")

    async def body() -> None:
        reader = asyncio.ensure_future(asyncio.to_thread(slow_reader, b, size))
        with pytest.raises(RuntimeError, match="enough") as raised:
            await aio.send_from(bytes(size), a, progress=fail)
        moved = raised.value.bytes_done  # type: ignore[attr-defined]
        assert calls[0] <= moved <= size
        if moved < size:
            with pytest.raises(BrokenStreamError, match=f"after {moved:,} of {size:,}"):
                await aio.send_from(b"x", a)
        else:  # a small send: the callback failed at the end, the stream is whole
            await aio.send_from(b"x", a)
            size_read = await reader
            assert len(size_read) == size
            return
        reader.cancel()

    run(body())
    assert len(calls) == 1
