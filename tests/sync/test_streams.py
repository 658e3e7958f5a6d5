"""Parallel streams: ``connect(streams=N)`` and the Listener's groups,
blocking and aio, both backends, over real loopback sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
from backends import Backend
from sockets import Peer, receive_exactly

import arraywire
from arraywire import BrokenStreamError, IncompleteTransferError, aio
from arraywire._wire.engine import plan_send

LIMIT = 60.0
KEY = b"k" * 32
T = TypeVar("T")
STRIPE = arraywire.STRIPE_BYTES


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, LIMIT)

    return asyncio.run(bounded())


@pytest.fixture(params=["tcp", "unix"])
def address(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "tcp":
        yield ("127.0.0.1", 0)
        return
    with tempfile.TemporaryDirectory() as directory:
        yield os.path.join(directory, "streams")


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("arraywire stream")]


def messages() -> list[Any]:
    """Striped and unstriped messages of every shape, in the order they go."""
    rng = np.random.default_rng(7)
    big = rng.random(3 * STRIPE // 8 + 5)
    matrix = rng.integers(0, 1 << 30, (1500, 700), dtype=np.int64)
    return [
        big,
        np.arange(10),
        np.asfortranarray(matrix),
        matrix[:, ::3],  # strided with short runs: packed
        matrix[::2],  # strided with long runs
        {"x": big, "y": np.arange(3.0)},
        np.zeros(0),
        rng.integers(0, 255, STRIPE, dtype=np.uint8),  # exactly the threshold
        rng.integers(0, 255, STRIPE - 1, dtype=np.uint8),  # just under it
    ]


def check_same(got: Any, sent: Any) -> None:
    if isinstance(sent, dict):
        assert list(got) == list(sent)
        for name in sent:
            np.testing.assert_array_equal(got[name], sent[name])
    else:
        np.testing.assert_array_equal(got, sent)
        assert got.dtype == sent.dtype


def send_all(channel: Any, items: list[Any]) -> None:
    for item in items:
        if isinstance(item, dict):
            channel.send_arrays(item, metadata=b"named")
        else:
            channel.send(item)


def receive_all(channel: Any, count: int) -> list[Any]:
    return [channel.recv_message().arrays for _ in range(count)]


def serve(listener: arraywire.Listener, handler: Any) -> Peer:
    """Accept one Channel in a thread, run handler on it, close it."""

    def accept_and_handle() -> Any:
        with listener.accept(timeout=LIMIT) as channel:
            return handler(channel)

    return Peer(accept_and_handle)


def unwrap(arrays: Any) -> Any:
    return arrays[0] if isinstance(arrays, list) else arrays


# --- messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("streams", [2, 3, 8])
def test_every_kind_of_message_crosses_the_streams_in_order(
    backend: Backend, address: Any, streams: int
) -> None:
    items = messages()
    with arraywire.listen(address) as listener:
        peer = serve(listener, lambda channel: receive_all(channel, len(items)))
        with arraywire.connect(listener.address, streams=streams, timeout=LIMIT) as channel:
            assert len(channel.sockets) == streams
            assert channel.socket is channel.sockets[0]
            assert f"streams={streams}" in repr(channel)
            send_all(channel, items)
            received = peer.result()
    for got, sent in zip(received, items, strict=True):
        check_same(unwrap(got), sent)


def test_aio_every_kind_of_message_crosses_the_streams_in_order(
    backend: Backend, address: Any
) -> None:
    items = messages()

    async def main() -> list[Any]:
        async with await aio.listen(address) as listener:

            async def receive() -> list[Any]:
                async with await listener.accept() as channel:
                    return [(await channel.recv_message()).arrays for _ in items]

            receiver = asyncio.ensure_future(receive())
            async with await aio.connect(listener.address, streams=3) as channel:
                assert len(channel.sockets) == 3
                for item in items:
                    if isinstance(item, dict):
                        await channel.send_arrays(item, metadata=b"named")
                    else:
                        await channel.send(item)
                return await receiver

    for got, sent in zip(run(main()), items, strict=True):
        check_same(unwrap(got), sent)


def test_blocking_and_aio_ends_stripe_alike(backend: Backend) -> None:
    """A blocking sender and an aio receiver agree on where each part goes."""
    data = np.random.default_rng(1).random(5 * STRIPE // 8 + 3)

    async def main() -> tuple[np.ndarray, np.ndarray]:
        async with await aio.listen(("127.0.0.1", 0)) as listener:
            port = listener.address[1]

            def blocking_peer() -> np.ndarray:
                with arraywire.connect(("127.0.0.1", port), streams=4) as channel:
                    channel.send(data)
                    return channel.recv()

            peer = Peer(blocking_peer)
            async with await listener.accept() as channel:
                got = await channel.recv()
                await channel.send(got * 2)
            return got, await asyncio.to_thread(peer.result)

    got, echoed = run(main())
    np.testing.assert_array_equal(got, data)
    np.testing.assert_array_equal(echoed, data * 2)


def test_send_many_and_iteration_over_streams(backend: Backend) -> None:
    items = [np.arange(5), np.ones(STRIPE // 4), np.arange(7.0), np.full(3, 9)]
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        peer = serve(listener, list)
        with arraywire.connect(listener.address, streams=2) as channel:
            assert channel.send_many(items) > STRIPE
        received = peer.result()
    for got, sent in zip(received, items, strict=True):
        check_same(got, sent)


def test_a_striped_message_into_out(backend: Backend) -> None:
    data = np.arange(STRIPE // 4, dtype=np.float64)
    out = np.empty_like(data)
    wrong = np.empty(3)
    with arraywire.listen(("127.0.0.1", 0)) as listener:

        def receive() -> np.ndarray:
            with listener.accept(timeout=LIMIT) as channel:
                with pytest.raises(ValueError, match="out is float64"):
                    channel.recv(out=wrong)  # drained from every stream
                result = channel.recv(out=out)
                return channel.recv() if result is out else result

        peer = Peer(receive)
        with arraywire.connect(listener.address, streams=3) as channel:
            channel.send(data)
            channel.send(data)
            channel.send(np.arange(4))
            np.testing.assert_array_equal(peer.result(), np.arange(4))
    np.testing.assert_array_equal(out, data)


def test_progress_over_streams_counts_the_whole_message(backend: Backend) -> None:
    data = np.ones(8 * STRIPE, np.uint8)
    reports: dict[str, list[tuple[int, int]]] = {"send": [], "recv": []}
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        peer = serve(
            listener,
            lambda channel: channel.recv(progress=lambda d, t: reports["recv"].append((d, t))),
        )
        with arraywire.connect(listener.address, streams=4) as channel:
            total = channel.send(data, progress=lambda d, t: reports["send"].append((d, t)))
            np.testing.assert_array_equal(peer.result(), data)
    for side in reports.values():
        done = [d for d, _ in side]
        assert done == sorted(done), "progress goes forward"
        assert side[-1] == (total, total)
        assert {t for _, t in side} == {total}


@pytest.mark.parametrize("ends", ["blocking", "aio to blocking", "blocking to aio"])
def test_a_learned_layout_never_takes_a_striped_message(backend: Backend, ends: str) -> None:
    """A small message teaches the cores a layout (dtype, dimensions, order);
    a large array of that layout still goes striped, and is read striped."""
    small, large = np.arange(10.0), np.random.default_rng(2).random(STRIPE // 4)
    items = [small, large, small * 2, large * 2, large * 3]

    def blocking_send(address: Any) -> None:
        with arraywire.connect(address, streams=2) as channel:
            channel.send(small)
            channel.send(large)
            channel.send(small * 2)
            channel.send_many([large * 2])
            channel.send(large * 3, progress=lambda done, total: None)

    async def aio_send(address: Any) -> None:
        async with await aio.connect(address, streams=2) as channel:
            for item in items:
                await channel.send(item)

    if ends == "blocking to aio":

        async def main() -> list[np.ndarray]:
            async with await aio.listen(("127.0.0.1", 0)) as listener:
                peer = Peer(blocking_send, ("127.0.0.1", listener.address[1]))
                async with await listener.accept() as channel:
                    received = [await channel.recv() for _ in items]
                await asyncio.to_thread(peer.result)
                return received

        received = run(main())
    else:
        with arraywire.listen(("127.0.0.1", 0)) as listener:
            peer = serve(listener, lambda channel: [channel.recv() for _ in items])
            if ends == "blocking":
                blocking_send(listener.address)
            else:
                run(aio_send(listener.address))
            received = peer.result()
    for got, sent in zip(received, items, strict=True):
        np.testing.assert_array_equal(got, sent)


# --- the wire: PROTOCOL.md's group hello and striping ---------------------------------


def _stripe_sizes(payload: int, streams: int) -> list[int]:
    """docs/PROTOCOL.md, "Parallel streams", written out."""
    part = -(-payload // streams)
    part = -(-part // 4096) * 4096
    return [max(0, min(part, payload - i * part)) for i in range(streams)]


def _raw_stream(address: Any, group: bytes, member: int, size: int) -> socket.socket:
    """A stream opened by hand from docs/PROTOCOL.md: hello with bit 1 and its
    group, then the listening end's hello and its 4-byte answer."""
    sock = socket.create_connection(address, timeout=LIMIT)
    sock.sendall(struct.pack("<4sBBHII", b"AWHI", 1, 2, 0x0002, 20, 0))
    sock.sendall(struct.pack("<16sHH", group, member, size))
    assert receive_exactly(sock, 16)[:4] == b"AWHI"
    status, _, max_streams = struct.unpack("<BBH", receive_exactly(sock, 4))
    assert (status, max_streams) == (1, 8)
    return sock


def test_a_sender_written_from_the_protocol_document(backend: Backend) -> None:
    data = np.random.default_rng(3).integers(0, 1 << 40, 3 * STRIPE // 8 + 11, dtype=np.int64)
    header = plan_send((data,)).header  # the message format, tested elsewhere
    payload = data.tobytes()
    sizes = _stripe_sizes(len(payload), 3)
    group = os.urandom(16)
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        peer = serve(listener, lambda channel: channel.recv())
        socks = [_raw_stream(listener.address, group, i, 3) for i in (2, 0, 1)]  # any order
        socks = [socks[1], socks[2], socks[0]]
        start = 0
        for i, sock in enumerate(socks):
            part = payload[start : start + sizes[i]]
            start += sizes[i]
            sock.sendall(header + part if i == 0 else part)
        np.testing.assert_array_equal(peer.result(), data)
        for sock in socks:
            sock.close()


def test_a_receiver_sees_the_parts_the_protocol_document_names(backend: Backend) -> None:
    data = np.arange(STRIPE + 12345, dtype=np.uint8)
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        accepting = Peer(lambda: listener.accept(timeout=LIMIT))
        with arraywire.connect(listener.address, streams=4) as channel:
            with accepting.result() as other:
                header = plan_send((data,)).header
                peer = Peer(channel.send, data)
                payload = data.tobytes()
                sizes = _stripe_sizes(len(payload), 4)
                assert all(sizes) and sum(sizes) == len(payload)
                start = 0
                for i, sock in enumerate(other.sockets):
                    expected = payload[start : start + sizes[i]]
                    start += sizes[i]
                    got = receive_exactly(sock, len(header) + sizes[0] if i == 0 else sizes[i])
                    assert got == (header + expected if i == 0 else expected)
                assert peer.result() == len(header) + len(payload)


def test_a_stream_cut_mid_part_counts_every_streams_bytes(backend: Backend) -> None:
    data = np.arange(2 * STRIPE, dtype=np.uint8)
    header = plan_send((data,)).header
    sizes = _stripe_sizes(data.nbytes, 2)
    payload = data.tobytes()
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        peer = Peer(lambda: listener.accept(timeout=LIMIT))
        group = os.urandom(16)
        first, second = (_raw_stream(listener.address, group, i, 2) for i in range(2))
        channel: arraywire.Channel = peer.result()
        first.sendall(header + payload[: sizes[0]])
        second.sendall(payload[sizes[0] : sizes[0] + 1000])
        second.close()
        with pytest.raises(IncompleteTransferError) as caught:
            channel.recv()
        # stream 1 moved its 1000 bytes; stream 0's part stops where the
        # failure shut it down
        assert len(header) + 1000 <= caught.value.bytes_done <= len(header) + sizes[0] + 1000
        assert caught.value.bytes_expected == len(header) + data.nbytes
        with pytest.raises(BrokenStreamError, match="out of step"):
            channel.recv()
        assert channel.fileno() == -1
        assert not stream_threads()
        first.close()


def test_a_failed_stream_fails_the_send_and_closes_the_channel(backend: Backend) -> None:
    data = np.ones(64 << 20, np.uint8)
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        accepting = Peer(lambda: listener.accept(timeout=LIMIT))
        with arraywire.connect(listener.address, streams=4) as channel:
            with accepting.result() as other:
                # the receiver reads nothing and resets its third stream
                killer = threading.Timer(0.3, lambda: _reset(other.sockets[2]))
                killer.start()
                with pytest.raises(OSError) as caught:
                    channel.send(data)
                killer.join()
                done = caught.value.bytes_done  # type: ignore[attr-defined]
                assert 0 < done < data.nbytes
                with pytest.raises(BrokenStreamError, match=f"after {done:,} of"):
                    channel.send(np.arange(3))
                assert all(sock.fileno() == -1 for sock in channel.sockets)
                assert not stream_threads()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_aio_a_first_part_read_ahead_whole(backend: Backend, address: Any) -> None:
    """Over 8 streams a 1 MiB payload's first part (128 KiB) fits the
    read-ahead buffer (AF_UNIX fills it in one receive): nothing more comes
    on stream 0, the rest on the others."""
    data = np.arange(STRIPE, dtype=np.uint8)

    async def main() -> np.ndarray:
        async with await aio.listen(address) as listener:
            channel = await aio.connect(listener.address, streams=8)
            other = await listener.accept()
            await channel.send(data)
            await asyncio.sleep(0.2)  # every part waits in the kernel
            received = await other.recv()
            channel.close()
            other.close()
            return received

    np.testing.assert_array_equal(run(main()), data)


def test_aio_a_cancelled_striped_send_stops_every_thread(backend: Backend) -> None:
    data = np.ones(64 << 20, np.uint8)

    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0)) as listener:
            channel = await aio.connect(listener.address, streams=3)
            other = await listener.accept()
            sending = asyncio.ensure_future(channel.send(data))
            await asyncio.sleep(0.3)  # the kernel's buffers are full: the threads wait
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            assert not stream_threads()
            with pytest.raises(BrokenStreamError):
                await channel.send(np.arange(3))
            channel.close()
            other.close()

    run(main())


def test_aio_a_stream_cut_mid_part_breaks_the_receive(backend: Backend) -> None:
    data = np.arange(2 * STRIPE, dtype=np.uint8)
    header = plan_send((data,)).header
    sizes = _stripe_sizes(data.nbytes, 2)

    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0)) as listener:
            group = os.urandom(16)
            first, second = await asyncio.gather(
                *(asyncio.to_thread(_raw_stream, listener.address, group, i, 2) for i in range(2))
            )
            channel = await listener.accept()
            first.sendall(header + data.tobytes()[: sizes[0]])
            second.sendall(data.tobytes()[sizes[0] : sizes[0] + 500])
            second.close()
            with pytest.raises(IncompleteTransferError) as caught:
                await channel.recv()
            assert len(header) + 500 <= caught.value.bytes_done <= len(header) + sizes[0] + 500
            with pytest.raises(BrokenStreamError):
                await channel.recv()
            channel.close()
            first.close()

    run(main())


def test_aio_cancelling_a_receive_stops_a_stalled_stream(backend: Backend) -> None:
    """Stream 0's part came whole, stream 1's stalls: a cancel still ends
    the receive at once, every stream shut down."""
    data = np.arange(2 * STRIPE, dtype=np.uint8)
    header = plan_send((data,)).header
    sizes = _stripe_sizes(data.nbytes, 2)

    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0)) as listener:
            group = os.urandom(16)
            first, second = await asyncio.gather(
                *(asyncio.to_thread(_raw_stream, listener.address, group, i, 2) for i in range(2))
            )
            channel = await listener.accept()
            first.sendall(header + data.tobytes()[: sizes[0]])
            second.sendall(data.tobytes()[sizes[0] : sizes[0] + 1000])
            receiving = asyncio.ensure_future(channel.recv())
            await asyncio.sleep(0.3)
            receiving.cancel()
            done, _ = await asyncio.wait({receiving}, timeout=5)
            assert done, "the cancel waited for the stalled stream"
            with pytest.raises(asyncio.CancelledError):
                receiving.result()
            assert not stream_threads()
            with pytest.raises(BrokenStreamError):
                await channel.recv()
            channel.close()
            first.close()
            second.close()

    run(main())


def test_draining_a_misfit_keeps_the_first_streams_timeout(backend: Backend) -> None:
    data = np.arange(2 * STRIPE, dtype=np.uint8)
    header = plan_send((data,)).header
    sizes = _stripe_sizes(data.nbytes, 2)
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        peer = Peer(lambda: listener.accept(timeout=LIMIT))
        group = os.urandom(16)
        first, second = (_raw_stream(listener.address, group, i, 2) for i in range(2))
        with peer.result() as channel:
            channel.socket.settimeout(0.5)
            first.sendall(header + data.tobytes()[: sizes[0]])
            second.sendall(data.tobytes()[sizes[0] : sizes[0] + 1000])  # then stalls
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                channel.recv(out=np.empty(3))
            assert time.monotonic() - started < LIMIT / 2
        first.close()
        second.close()


# --- groups: limits, refusals, timeouts -------------------------------------------------


def test_more_streams_than_the_listener_takes_is_refused_clearly(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0), max_streams=3) as listener:
        peer = serve(listener, lambda channel: channel.recv())  # goes on after the refusal
        with pytest.raises(ConnectionRefusedError, match="at most 3 streams per Channel"):
            arraywire.connect(listener.address, streams=4, timeout=LIMIT)
        with arraywire.connect(listener.address, streams=3) as channel:
            channel.send(np.arange(6))
            np.testing.assert_array_equal(peer.result(), np.arange(6))


def test_aio_more_streams_than_the_listener_takes_is_refused_clearly(backend: Backend) -> None:
    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0), max_streams=2) as listener:
            with pytest.raises(ConnectionRefusedError, match="at most 2 streams per Channel"):
                await aio.connect(listener.address, streams=5)
            async with await aio.connect(listener.address, streams=2) as channel:
                other = await listener.accept()
                await channel.send(np.arange(6))
                np.testing.assert_array_equal(await other.recv(), np.arange(6))
                other.close()

    run(main())


def test_a_stream_that_joins_twice_is_refused(backend: Backend) -> None:
    group = os.urandom(16)
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        peer = Peer(lambda: listener.accept(timeout=LIMIT))
        first = _raw_stream(listener.address, group, 0, 2)
        with socket.create_connection(listener.address, timeout=LIMIT) as again:
            again.sendall(struct.pack("<4sBBHII16sHH", b"AWHI", 1, 2, 2, 20, 0, group, 0, 2))
            receive_exactly(again, 16)
            assert struct.unpack("<BBH", receive_exactly(again, 4)) == (3, 0, 8)
            assert again.recv(1) == b""  # closed
        second = _raw_stream(listener.address, group, 1, 2)
        channel = peer.result()
        assert len(channel.sockets) == 2
        channel.close()
        first.close()
        second.close()


def test_a_group_that_never_completes_is_dropped(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0), handshake_timeout=0.5) as listener:
        lonely = _raw_stream_after_accepting(listener)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            listener.accept(timeout=1.5)
        lonely.settimeout(LIMIT)
        assert lonely.recv(1) == b""  # the Listener closed it
        assert time.monotonic() - started < 5
        lonely.close()


def test_a_late_stream_of_a_given_up_group_is_refused(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0), handshake_timeout=0.3) as listener:
        group = os.urandom(16)
        accepting = Peer(lambda: listener.accept(timeout=1.5))
        first = _raw_stream(listener.address, group, 0, 2)
        first.settimeout(LIMIT)
        assert first.recv(1) == b""  # given up
        with socket.create_connection(listener.address, timeout=LIMIT) as late:
            late.sendall(struct.pack("<4sBBHII16sHH", b"AWHI", 1, 2, 2, 20, 0, group, 1, 2))
            receive_exactly(late, 16)
            assert struct.unpack("<BBH", receive_exactly(late, 4)) == (3, 0, 8)
        with pytest.raises(TimeoutError):
            accepting.result()
        first.close()


def test_aio_a_late_stream_of_a_given_up_group_is_refused(backend: Backend) -> None:
    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0), handshake_timeout=0.3) as listener:
            group = os.urandom(16)
            first = await asyncio.to_thread(_raw_stream, listener.address, group, 0, 2)
            first.settimeout(LIMIT)
            assert await asyncio.to_thread(first.recv, 1) == b""  # given up
            with socket.create_connection(listener.address, timeout=LIMIT) as late:
                late.sendall(struct.pack("<4sBBHII16sHH", b"AWHI", 1, 2, 2, 20, 0, group, 1, 2))
                await asyncio.to_thread(receive_exactly, late, 16)
                answer = await asyncio.to_thread(receive_exactly, late, 4)
                assert struct.unpack("<BBH", answer) == (3, 0, 8)
            first.close()

    run(main())


def _raw_stream_after_accepting(listener: arraywire.Listener) -> socket.socket:
    """Stream 0 of a group of 2 whose stream 1 never comes; the Listener runs
    its opening and does not hand it to accept()."""
    result: list[socket.socket] = []
    peer = Peer(lambda: result.append(_raw_stream(listener.address, os.urandom(16), 0, 2)))
    with pytest.raises(TimeoutError):
        listener.accept(timeout=0.3)
    peer.result()
    return result[0]


def test_a_bad_group_in_a_hello_is_refused(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.address, timeout=LIMIT) as sock:
            sock.sendall(struct.pack("<4sBBHII16sHH", b"AWHI", 1, 2, 2, 20, 0, bytes(16), 2, 2))
            with pytest.raises(TimeoutError):
                listener.accept(timeout=0.5)
            assert receive_exactly(sock, 16)[:4] == b"AWHI"
            assert sock.recv(1) == b""  # index 2 of 2: closed, no answer


@pytest.mark.parametrize("streams", [0, -1, 65536, 1.5, True])
def test_bad_stream_counts_are_refused(backend: Backend, streams: Any) -> None:
    error = TypeError if not isinstance(streams, int) or isinstance(streams, bool) else ValueError
    with pytest.raises(error, match="streams must be"):
        arraywire.connect(("127.0.0.1", 9), streams=streams)
    with pytest.raises(error, match="max_streams must be"):
        arraywire.listen(("127.0.0.1", 0), max_streams=streams)


# --- with a key, with TLS ---------------------------------------------------------------


def test_streams_with_a_key(backend: Backend) -> None:
    data = np.arange(STRIPE // 2, dtype=np.int32)
    with arraywire.listen(("127.0.0.1", 0), authkey=KEY) as listener:
        peer = serve(listener, lambda channel: channel.recv())
        with arraywire.connect(listener.address, streams=3, authkey=KEY) as channel:
            channel.send(data)
            np.testing.assert_array_equal(peer.result(), data)
        refusing = Peer(lambda: listener.accept(timeout=LIMIT))
        with pytest.raises(arraywire.AuthenticationError):
            arraywire.connect(listener.address, streams=3, authkey=b"x" * 32, timeout=LIMIT)
        with pytest.raises(arraywire.AuthenticationError):
            refusing.result()


def test_streams_over_tls(backend: Backend, tls) -> None:
    server, client = tls
    data = np.random.default_rng(5).random(STRIPE // 2)
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:
        peer = serve(listener, lambda channel: channel.recv())
        with arraywire.connect(listener.address, streams=2, ssl=client) as channel:
            assert all(isinstance(sock, ssl.SSLSocket) for sock in channel.sockets)
            channel.send(data)
            np.testing.assert_array_equal(peer.result(), data)


def test_aio_streams_over_tls_are_refused_clearly(backend: Backend, tls) -> None:
    server, client = tls

    async def main() -> None:
        with pytest.raises(ValueError, match="no parallel streams over TLS"):
            await aio.connect(("127.0.0.1", 9), streams=2, ssl=client)
        async with await aio.listen(("127.0.0.1", 0), ssl=server) as listener:
            port = listener.address[1]
            with pytest.raises(ConnectionRefusedError, match="no parallel streams over TLS"):
                await asyncio.to_thread(
                    arraywire.connect, ("127.0.0.1", port), streams=2, ssl=client
                )

    run(main())
