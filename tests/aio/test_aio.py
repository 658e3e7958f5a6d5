"""arraywire.aio over real sockets, both backends: round trips, interplay with
the blocking API, errors, event-loop responsiveness, cancellation, concurrency."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
from backends import Backend, backend_env
from sockets import connected_pair

import arraywire
from arraywire import BrokenStreamError, IncompleteTransferError, ProtocolError, aio
from arraywire._wire.engine import plan_send

T = TypeVar("T")

# Payload sizes on both sides of the native/threaded split.
SMALL = 1000  # float64 values
LARGE = (aio.NATIVE_BYTES // 8) * 3
LIMIT = 60.0


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, LIMIT)

    return asyncio.run(bounded())


@pytest.fixture(params=["socketpair", "tcp"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = connected_pair(request.param)
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def header_size(array: np.ndarray) -> int:
    return len(plan_send([array]).header)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("arraywire.aio")]


def workers_end_within(seconds: float) -> bool:
    """A cancelled transfer returns once its worker is done with the buffer;
    the idle worker then ends within a second."""
    for thread in worker_threads():
        thread.join(seconds + 1.0)
    return not worker_threads()


# --- round trips --------------------------------------------------------------


@pytest.mark.parametrize("values", [0, SMALL, LARGE], ids=["empty", "small", "large"])
def test_array_round_trip(backend: Backend, pair, values: int) -> None:
    a, b = pair
    sent = np.random.default_rng(values).standard_normal(values)

    async def body() -> tuple[int, np.ndarray]:
        return await asyncio.gather(aio.send_array(sent, a), aio.recv_array(b))

    count, received = run(body())
    assert count == header_size(sent) + sent.nbytes
    assert received.dtype == sent.dtype and received.shape == sent.shape
    assert received.tobytes() == sent.tobytes()


@pytest.mark.parametrize("scale", [1, 40], ids=["small", "large"])
def test_arrays_round_trip_keeps_dtype_shape_order(backend: Backend, pair, scale: int) -> None:
    a, b = pair
    base = np.arange(scale * 24_000, dtype="<i4").reshape(scale * 40, 600)
    sent = [
        np.asfortranarray(base.astype(">f8")),
        base[::3, 1::2],  # strided: sent through the staging path
        np.array(7, dtype="<u2"),
        np.zeros((0, 3), dtype="S4"),
        np.arange(scale * 50_000, dtype="<c8"),
    ]

    async def body() -> list[np.ndarray]:
        _, received = await asyncio.gather(aio.send_arrays(sent, a), aio.recv_arrays(b))
        return received

    received = run(body())
    assert len(received) == len(sent)
    for got, want in zip(received, sent, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert received[0].flags.f_contiguous and not received[0].flags.c_contiguous


@pytest.mark.parametrize("nbytes", [17, 3 * aio.NATIVE_BYTES + 5], ids=["small", "large"])
def test_raw_buffers(backend: Backend, pair, nbytes: int) -> None:
    a, b = pair
    sent = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8)
    into = bytearray(nbytes)

    async def body() -> list[int]:
        return await asyncio.gather(aio.send_from(sent, a), aio.recv_into(into, b))

    assert run(body()) == [nbytes, nbytes]
    assert bytes(into) == sent.tobytes()


def test_large_transfers_reuse_their_workers(backend: Backend, pair) -> None:
    """Workers outlive their transfer: five large messages each way are
    moved by at most the two workers a send and its receive need at once."""
    a, b = pair
    sent = np.arange(LARGE, dtype=np.float64)
    assert workers_end_within(1.0)  # those of earlier tests
    seen: set[threading.Thread] = set()

    async def body() -> None:
        for _ in range(5):
            _, got = await asyncio.gather(aio.send_array(sent, a), aio.recv_array(b))
            np.testing.assert_array_equal(got, sent)
            seen.update(worker_threads())

    run(body())
    assert 1 <= len(seen) <= 2
    assert workers_end_within(1.0)


def test_recv_array_into_out(backend: Backend, pair) -> None:
    a, b = pair
    sent = np.arange(LARGE, dtype=np.float64)
    out = np.empty_like(sent)

    async def body() -> np.ndarray:
        _, got = await asyncio.gather(aio.send_array(sent, a), aio.recv_array(b, out=out))
        return got

    assert run(body()) is out
    np.testing.assert_array_equal(out, sent)


@pytest.mark.parametrize("values", [SMALL, LARGE], ids=["small", "large"])
def test_blocking_and_async_speak_the_same_format(backend: Backend, pair, values: int) -> None:
    a, b = pair
    sent = np.arange(values, dtype="<i8")

    async def body() -> tuple[np.ndarray, np.ndarray]:
        b.setblocking(True)
        # blocking peer in a thread, asyncio side here, both directions
        to_blocking = asyncio.to_thread(arraywire.recv_array, b, max_bytes=None)
        got_blocking, _ = await asyncio.gather(to_blocking, aio.send_array(sent, a))
        from_blocking = asyncio.to_thread(arraywire.send_array, sent[::-1], b)
        _, got_async = await asyncio.gather(from_blocking, aio.recv_array(a))
        return got_blocking, got_async

    got_blocking, got_async = run(body())
    np.testing.assert_array_equal(got_blocking, sent)
    np.testing.assert_array_equal(got_async, sent[::-1])


# --- errors -----------------------------------------------------------------


def test_refuses_blocking_sockets_and_object_arrays(backend: Backend) -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ValueError, match="non-blocking"):
            run(aio.send_array(np.zeros(3), a))
        a.setblocking(False)
        with pytest.raises(TypeError, match="object"):
            run(aio.send_array(np.array([object()]), a))
        with pytest.raises(TypeError, match=r"socket\.socket"):
            run(aio.recv_array(object()))


@pytest.mark.parametrize("values", [SMALL, LARGE], ids=["small", "large"])
def test_truncated_message_fails_as_in_the_blocking_api(
    backend: Backend, values: int
) -> None:
    """Same error type, byte counts and message, then the socket is marked broken."""
    message = np.arange(values, dtype=np.float64)
    plan = plan_send([message])
    header, total = plan.header, plan.total
    cut = len(header) + message.nbytes // 2

    def truncated_peer() -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        threading.Thread(
            target=lambda: (a.sendall(header + message.tobytes()[: cut - len(header)]),
                            a.close()),
            daemon=True,
        ).start()
        return a, b

    a, b = truncated_peer()
    with a, b, pytest.raises(IncompleteTransferError) as blocking:
        arraywire.recv_array(b, max_bytes=None)
    a, b = truncated_peer()
    b.setblocking(False)
    with a, b:
        with pytest.raises(IncompleteTransferError) as asynchronous:
            run(aio.recv_array(b, max_bytes=None))
        assert asynchronous.value.bytes_done == blocking.value.bytes_done == cut
        assert asynchronous.value.bytes_expected == blocking.value.bytes_expected == total
        assert str(asynchronous.value) == str(blocking.value)
        with pytest.raises(BrokenStreamError, match=f"recv_array on this socket failed "
                           f"\\(IncompleteTransferError.*after {cut:,} of {total:,} bytes"):
            run(aio.recv_array(b))


def test_bad_header_and_limit(backend: Backend, pair) -> None:
    a, b = pair

    async def body() -> None:
        await aio.send_array(np.zeros(1000), a)
        with pytest.raises(ProtocolError, match="max_bytes=100"):
            await aio.recv_array(b, max_bytes=100)
        # the refused payload is still in the stream: b is out of step
        with pytest.raises(BrokenStreamError, match="recv_array"):
            await aio.recv_array(b)

    run(body())
    c, d = socket.socketpair()
    with c, d:
        d.setblocking(False)
        c.sendall(b"GET / HTTP/1.1\r\n")
        with pytest.raises(ProtocolError, match="not an arraywire message"):
            run(aio.recv_array(d))


@pytest.mark.parametrize("values", [SMALL, LARGE], ids=["small", "large"])
def test_mismatched_out_is_drained_and_the_stream_stays_usable(
    backend: Backend, pair, values: int
) -> None:
    a, b = pair
    wrong = np.empty(values, dtype=np.float32)
    sent = np.arange(values, dtype=np.float64)

    async def body() -> np.ndarray:
        sender = asyncio.ensure_future(aio.send_arrays([sent], a))
        with pytest.raises(ValueError, match="float32"):
            await aio.recv_array(b, out=wrong)
        await sender
        _, got = await asyncio.gather(aio.send_array(sent, a), aio.recv_array(b))
        return got

    np.testing.assert_array_equal(run(body()), sent)


def test_one_send_at_a_time_per_socket(backend: Backend, pair) -> None:
    a, b = pair

    async def body() -> None:
        first = asyncio.ensure_future(aio.send_array(np.zeros(LARGE), a))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match=r"another arraywire\.aio send"):
            await aio.send_array(np.zeros(3), a)
        # a receive on the same socket may run meanwhile (full duplex)
        await asyncio.gather(aio.send_array(np.ones(5), b), aio.recv_array(a))
        await asyncio.gather(first, aio.recv_array(b))

    run(body())


# --- the event loop stays responsive --------------------------------------------


async def max_tick_gap(transfer: Callable[[], Awaitable[T]]) -> tuple[float, int, T]:
    """Longest interval between wake-ups of a 1 ms ticker while transfer runs,
    the number of wake-ups, and what transfer returned."""
    gaps: list[float] = []
    running = True

    async def ticker() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.005)
    gaps.clear()
    result = await transfer()
    running = False
    await task
    return max(gaps), len(gaps), result


async def timed(awaitable: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await awaitable
    return time.perf_counter() - started


def test_ticker_never_waits_a_quarter_of_400MB_transfers(backend: Backend) -> None:
    """The loop sends 400 MB to one blocking peer thread while it receives
    400 MB from another: its two worker threads and both peers all compete
    with it for the 2 cores (and, on the pure backend, for the GIL).

    A transfer that blocked the loop would lie wholly inside one gap, so that
    gap would be at least as long as the shorter of the loop's two transfers,
    in every run. Gaps from threads kept off a CPU grow on a busy machine,
    but so do the transfers: the best of three runs must stay under a
    quarter of the shorter transfer (a few % is usual, idle or loaded).
    """
    sent = np.ones(50_000_000)
    into_peer = np.empty_like(sent)
    into_loop = np.empty_like(sent)
    out_a, out_b = socket.socketpair()
    in_a, in_b = socket.socketpair()
    out_a.setblocking(False)
    in_b.setblocking(False)

    async def transfer() -> float:
        """The time the shorter of the loop's two transfers took."""
        peers = asyncio.gather(
            asyncio.to_thread(arraywire.recv_array, out_b, out=into_peer, max_bytes=None),
            asyncio.to_thread(arraywire.send_array, sent, in_a),
        )
        sending, receiving, _ = await asyncio.gather(
            timed(aio.send_array(sent, out_a)),
            timed(aio.recv_array(in_b, out=into_loop, max_bytes=None)),
            peers,
        )
        return min(sending, receiving)

    shares = []
    with out_a, out_b, in_a, in_b:
        for _ in range(3):
            gap, ticks, shorter = run(max_tick_gap(transfer))
            assert ticks >= 10, "the ticker must have run during the transfers"
            shares.append(gap / shorter)
            if shares[-1] < 0.25:
                break
    assert into_peer[-1] == into_loop[-1] == 1.0
    print(f"{backend}: ticker max gaps {[f'{share:.1%}' for share in shares]} of a transfer")
    assert min(shares) < 0.25, shares


# --- cancellation ---------------------------------------------------------------


def test_cancel_before_any_byte_leaves_the_stream_intact(backend: Backend) -> None:
    # AF_UNIX: fixed buffers, so a full one stays full (TCP autotuning grows them)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    sent = np.arange(LARGE, dtype=np.float64)

    async def body() -> np.ndarray:
        waiting = asyncio.ensure_future(aio.recv_array(b))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # a send that cannot start (the peer's buffer is full) cancelled too
        fill = 0
        try:
            while True:
                fill += a.send(bytes(65536))
        except BlockingIOError:
            pass
        blocked = asyncio.ensure_future(aio.send_array(sent, a))
        await asyncio.sleep(0.05)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        await aio.recv_into(bytearray(fill), b)
        _, got = await asyncio.gather(aio.send_array(sent, a), aio.recv_array(b))
        return got

    with a, b:
        np.testing.assert_array_equal(run(body()), sent)


def test_cancelled_large_send_stops_its_thread_and_breaks_the_stream(
    backend: Backend, pair
) -> None:
    a, b = pair
    sent = np.ones(10_000_000)  # far more than the socket buffers hold
    total = header_size(sent) + sent.nbytes

    async def body() -> float:
        sending = asyncio.ensure_future(aio.send_array(sent, a))
        await asyncio.sleep(0.3)  # the worker is now blocked on a full buffer
        assert worker_threads()
        start = time.monotonic()
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        elapsed = time.monotonic() - start
        assert workers_end_within(1.0)
        with pytest.raises(BrokenStreamError) as broken:
            await aio.send_array(np.zeros(1), a)
        match = re.search(r"send_array on this socket was cancelled after ([\d,]+) of ([\d,]+)",
                          str(broken.value))
        assert match, str(broken.value)
        moved = int(match[1].replace(",", ""))
        assert 0 < moved < total and match[2] == f"{total:,}"
        with pytest.raises(BrokenStreamError):
            await aio.recv_array(a)
        # the peer sees the stream end instead of waiting forever
        with pytest.raises(IncompleteTransferError) as peer:
            await aio.recv_array(b, max_bytes=None)
        assert peer.value.bytes_done == moved
        return elapsed

    assert run(body()) < 5.0


@pytest.mark.parametrize("values", [SMALL, LARGE], ids=["small", "large"])
def test_cancelled_receive_mid_payload_says_how_much_arrived(
    backend: Backend, pair, values: int
) -> None:
    a, b = pair
    message = np.arange(values, dtype=np.float64)
    plan = plan_send([message])
    header, total = plan.header, plan.total
    part = len(header) + 4000  # fits in the socket buffer at once

    async def body() -> None:
        await aio.send_from(header + message.tobytes()[:4000], a)
        receiving = asyncio.ensure_future(aio.recv_array(b))
        await asyncio.sleep(0.3)
        receiving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await receiving
        assert workers_end_within(1.0)
        with pytest.raises(BrokenStreamError,
                           match=f"recv_array on this socket was cancelled after {part:,} "
                                 f"of {total:,} bytes"):
            await aio.recv_array(b)
        # shut down: the peer sees the end of the stream
        with pytest.raises(IncompleteTransferError):
            await aio.recv_into(bytearray(1), a)

    run(body())


def test_timeout_on_a_stalled_peer_breaks_the_stream(backend: Backend, pair) -> None:
    a, b = pair
    message = np.zeros(LARGE)
    plan = plan_send([message])
    header, total = plan.header, plan.total

    async def body() -> None:
        await aio.send_from(header + bytes(100), a)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(aio.recv_array(b), 0.2)
        with pytest.raises(BrokenStreamError, match=f"after {len(header) + 100:,} of {total:,}"):
            await aio.recv_array(b)

    run(body())


# --- many transfers in one loop ------------------------------------------------


def test_many_concurrent_transfers_on_different_sockets(backend: Backend) -> None:
    pairs = [connected_pair("socketpair" if i % 2 else "tcp") for i in range(8)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)
    rng = np.random.default_rng(3)
    # each pair exchanges arrays both ways at once, small and large mixed
    forth = [rng.standard_normal(LARGE if i % 3 == 0 else SMALL + i) for i in range(8)]
    back = [rng.integers(0, 1000, SMALL * (i + 1)) for i in range(8)]
    assert workers_end_within(1.0)  # those of earlier tests
    before = len(threading.enumerate())

    async def exchange(i: int) -> tuple[np.ndarray, list[np.ndarray]]:
        a, b = pairs[i]
        got_forth, got_back, _, _ = await asyncio.gather(
            aio.recv_array(b),
            aio.recv_arrays(a),
            aio.send_array(forth[i], a),
            aio.send_arrays([back[i], back[i][::2]], b),
        )
        for _ in range(20):  # then a burst of small messages
            await asyncio.gather(aio.send_array(back[i][:3], b), aio.recv_array(a))
        return got_forth, got_back

    async def body() -> list[tuple[np.ndarray, list[np.ndarray]]]:
        return await asyncio.gather(*(exchange(i) for i in range(8)))

    try:
        results = run(body())
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    for i, (got_forth, got_back) in enumerate(results):
        np.testing.assert_array_equal(got_forth, forth[i])
        np.testing.assert_array_equal(got_back[0], back[i])
        np.testing.assert_array_equal(got_back[1], back[i][::2])
    assert workers_end_within(1.0)
    assert len(threading.enumerate()) == before


SIGPIPE_AT_DEFAULT = """
import asyncio, signal, socket
import numpy as np
from arraywire import aio

signal.signal(signal.SIGPIPE, signal.SIG_DFL)
a, b = socket.socketpair()
b.close()
a.setblocking(False)

async def main():
    try:
        await aio.{call}(np.zeros({values}), a)
    except BrokenPipeError as exc:
        print("BrokenPipeError", exc.bytes_done)

asyncio.run(main())
"""


@pytest.mark.parametrize("values", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("call", ["send_from", "send_array"])
def test_send_to_a_closed_peer_raises_where_sigpipe_would_kill(
    backend: Backend, call: str, values: int
) -> None:
    """Sends pass MSG_NOSIGNAL on every path: EPIPE, not death by SIGPIPE."""
    code = SIGPIPE_AT_DEFAULT.format(call=call, values=values)
    child = subprocess.run(
        [sys.executable, "-c", code], env=backend_env(backend.name),
        capture_output=True, text=True, timeout=LIMIT,
    )
    assert child.returncode == 0, (child.returncode, child.stderr)
    assert child.stdout.split() == ["BrokenPipeError", "0"]
