"""arraywire.aio's listen / connect / Channel over real sockets, both
backends, and against the blocking Channel."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import struct
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np
import pytest
from backends import Backend
from sockets import Peer, receive_exactly

import arraywire
from arraywire import BrokenStreamError, IncompleteTransferError, ProtocolError, aio
from arraywire._aio import transfers
from arraywire._wire.engine import plan_send

T = TypeVar("T")
LIMIT = 30.0


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, LIMIT)

    return asyncio.run(bounded())


async def echo(channel: aio.Channel) -> int:
    count = 0
    async for item in channel:
        if isinstance(item, np.ndarray):
            await channel.send(item)
        else:
            await channel.send_arrays(item)
        count += 1
    return count


@pytest.fixture(params=["tcp", "unix"])
def where(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Any:
    return ("127.0.0.1", 0) if request.param == "tcp" else str(tmp_path / "sock")


def test_round_trip_and_items(backend: Backend, where: Any) -> None:
    async def main() -> None:
        async with await aio.listen(where) as listener:

            async def server() -> int:
                async with await listener.accept() as channel:
                    return await echo(channel)

            served = asyncio.create_task(server())
            async with await aio.connect(listener.address) as channel:
                small = np.arange(10.0)
                big = np.random.default_rng(0).random(400_000)  # the threaded path
                for array in (small, big, np.asfortranarray(np.ones((3, 2)))):
                    await channel.send(array)
                    np.testing.assert_array_equal(await channel.recv(), array)
                await channel.send_arrays({"a": small, "b": small[:2]})
                assert list(await channel.recv_arrays()) == ["a", "b"]
                await channel.send_arrays([small, small])
                assert len(await channel.recv_arrays()) == 2
                arrays = [small + i for i in range(50)] + [big, small]
                sent = await channel.send_many(arrays)
                assert sent == sum(plan_send((a,)).total for a in arrays)
                for array in arrays:
                    np.testing.assert_array_equal(await channel.recv(), array)
            assert await served == 5 + len(arrays)

    run(main())


def test_aio_client_and_blocking_server_interoperate(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0)) as listener:

        def server() -> int:
            with listener.accept(timeout=LIMIT) as channel:
                count = 0
                for item in channel:
                    channel.send(item)
                    count += 1
                return count

        peer = Peer(server)

        async def client() -> None:
            async with await aio.connect(listener.address, timeout=LIMIT) as channel:
                for size in (1, 1000, 300_000):
                    await channel.send(np.arange(size))
                    np.testing.assert_array_equal(await channel.recv(), np.arange(size))

        run(client())
        assert peer.result() == 3


def test_silent_and_garbage_peers_do_not_stall_accept(backend: Backend) -> None:
    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0), handshake_timeout=2) as listener:
            loop = asyncio.get_running_loop()
            silent = socket.create_connection(listener.address)
            garbage = socket.create_connection(listener.address)
            garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")
            started = loop.time()
            async with await aio.connect(listener.address) as client:
                async with await listener.accept() as server:
                    await client.send(np.arange(3))
                    np.testing.assert_array_equal(await server.recv(), np.arange(3))
            assert loop.time() - started < 1.5  # while the silent peer still waits
            for sock in (silent, garbage):
                sock.setblocking(False)
                data = b"start"
                while data:
                    try:
                        data = await loop.sock_recv(sock, 4096)
                    except ConnectionResetError:
                        break
                sock.close()
            assert loop.time() - started < 4  # the silent one was dropped on time

    run(main())


def test_connect_refuses_a_peer_that_is_not_arraywire(backend: Backend) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(16)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        peer = Peer(answer)
        with pytest.raises(ProtocolError, match="not arraywire"):
            run(aio.connect(server.getsockname()))
        peer.result()


def test_connect_with_timeout_waits_for_the_listener(backend: Backend, tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "late")

    async def main() -> None:
        async def late_server() -> int:
            await asyncio.sleep(0.4)
            async with await aio.listen(path) as listener:
                async with await listener.accept() as channel:
                    return await echo(channel)

        served = asyncio.create_task(late_server())
        async with await aio.connect(path, timeout=LIMIT) as channel:
            await channel.send(np.arange(4))
            np.testing.assert_array_equal(await channel.recv(), np.arange(4))
        assert await served == 1
        with pytest.raises(FileNotFoundError):
            await aio.connect(path)
        with pytest.raises(TimeoutError, match="in time"):
            await aio.connect(path, timeout=0.2)

    run(main())


def test_a_second_concurrent_send_raises(backend: Backend) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(a) as left, aio.Channel(b) as right:
            stuck = asyncio.create_task(left.send(np.zeros(30_000_000, np.uint8)))
            await asyncio.sleep(0.2)
            with pytest.raises(RuntimeError, match="another task is in a send"):
                await left.send(np.zeros(1))
            assert len(await right.recv()) == 30_000_000
            await stuck

    run(main())


def test_hostile_header_breaks_the_channel(backend: Backend) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(b) as right:
            a.sendall(struct.pack("<4sB3sII", b"AWIR", 1, bytes(3), 1 << 30, 1))
            with pytest.raises(ProtocolError):
                await right.recv()
            with pytest.raises(BrokenStreamError):
                await right.recv()
        a.close()

    run(main())


def test_iteration_raises_on_a_peer_gone_mid_message(backend: Backend) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(b) as right:
            whole = plan_send((np.arange(100.0),))
            a.sendall(whole.header + bytes(300))
            a.close()
            with pytest.raises(IncompleteTransferError) as caught:
                async for _ in right:
                    pass
            assert caught.value.bytes_done == len(whole.header) + 300

    run(main())


def test_accept_on_a_closed_listener_says_so(backend: Backend) -> None:
    async def main() -> None:
        listener = await aio.listen(("127.0.0.1", 0))
        waiting = asyncio.create_task(listener.accept())
        await asyncio.sleep(0.05)
        await listener.aclose()
        with pytest.raises(OSError, match="closed Listener"):
            await waiting  # woken, not left waiting forever
        with pytest.raises(OSError, match="closed Listener"):
            await listener.accept()

    run(main())


def test_read_ahead_keeps_messages_apart(backend: Backend, where: Any) -> None:
    """Small messages that arrive together, a large one among them (received
    straight into its array), a misfit out= (drained) and metadata: each
    receive gets exactly its own message."""
    small = [np.arange(n, dtype=np.int32) for n in range(1, 40)]
    large = np.arange(3_000_000, dtype=np.float64)  # 24 MB: the direct path

    async def main() -> None:
        listener = await aio.listen(where)
        client = await aio.connect(listener.address)
        server = await listener.accept()
        for array in small[:20]:
            await client.send(array)
        sending = asyncio.ensure_future(client.send(large))
        for array in small[:20]:
            np.testing.assert_array_equal(await server.recv(), array)
        np.testing.assert_array_equal(await server.recv(), large)
        await sending
        await client.send_many(small[20:])
        await client.send(np.zeros(5))
        await client.send_arrays({"a": np.ones(3)}, metadata=b"meta")
        for array in small[20:]:
            np.testing.assert_array_equal(await server.recv(), array)
        with pytest.raises(ValueError, match=r"out is float64 \(7,\) but the message holds float64 \(5,\)"):
            await server.recv(out=np.empty(7))
        message = await server.recv_message()
        assert message.metadata == b"meta"
        np.testing.assert_array_equal(message.arrays["a"], np.ones(3))
        client.close()
        with pytest.raises(EOFError) as ended:
            await server.recv()
        assert not isinstance(ended.value, IncompleteTransferError)
        server.close()
        await listener.aclose()

    run(main())


def test_a_cancelled_receive_of_a_large_message_breaks_the_channel(backend: Backend) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(b) as right:
            whole = plan_send((np.zeros(4_000_000),))
            a.sendall(whole.header + bytes(100_000))  # fits in the socket buffer
            receiving = asyncio.ensure_future(right.recv())
            await asyncio.sleep(0.2)
            receiving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await receiving
            with pytest.raises(BrokenStreamError, match="cancelled"):
                await right.recv()
        a.close()

    run(main())


# --- the learned layouts: messages taken and sent by the core --------------------


def count_engine_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the aio Channel's planned sends and engine-decoded receives
    (what the core's learned layouts spare)."""
    counts = {"send_plan": 0, "receive_buffered": 0}
    for name in counts:
        original = getattr(transfers, name)

        async def counted(*args: Any, _original: Any = original, _name: str = name) -> Any:
            counts[_name] += 1
            return await _original(*args)

        monkeypatch.setattr(transfers, name, counted)
    return counts


def test_many_small_messages_of_one_layout_both_ways(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, where: Any
) -> None:
    counts = count_engine_calls(monkeypatch)
    # the shapes change, the layout (dtype, dimensions, order) stays
    arrays = [np.arange(i % 7 + 1, dtype=np.int32) * i for i in range(3000)]

    async def main() -> None:
        listener = await aio.listen(where)
        client = await aio.connect(listener.address)
        server = await listener.accept()

        async def one_way(sender: aio.Channel, receiver: aio.Channel, items: list[Any]) -> None:
            async def send_all() -> None:
                for array in items:
                    await sender.send(array)

            sending = asyncio.ensure_future(send_all())
            for array in items:
                got = await receiver.recv()
                assert got.dtype == array.dtype
                np.testing.assert_array_equal(got, array)
                assert got.flags.writeable and got.flags.owndata
            await sending

        await asyncio.gather(one_way(client, server, arrays), one_way(server, client, arrays[::-1]))
        for channel in (client, server):
            channel.close()
        await listener.aclose()

    run(main())
    # only what the socket could not take at once, or had not brought whole,
    # went the engine's way
    assert counts["send_plan"] < len(arrays) // 2
    assert counts["receive_buffered"] < len(arrays) // 2


def layouts() -> list[Any]:
    """Messages whose layouts change, some never learned (datetime64,
    structured), some not simple (names, metadata)."""
    rng = np.random.default_rng(3)
    items: list[Any] = []
    items += [rng.random(n) for n in (1, 5, 5, 9)]
    items += [rng.random((n, 3)) for n in (2, 2, 4)]
    items += [np.asfortranarray(rng.random((3, n))) for n in (2, 2, 5)]
    items += [np.arange(n).astype("datetime64[s]") for n in (3, 3, 4)]
    items += [rng.random(n) for n in (2, 7)]  # back to the first layout
    items += [np.zeros(n, dtype=[("x", "<i4"), ("y", "<f8")]) for n in (2, 2)]
    items += [np.int8(7).reshape(()), np.int8(-1).reshape(()), np.empty((0,)), np.empty((0,))]
    items += [{"named": np.arange(3.0)}, (np.arange(4.0), b"metadata"), rng.random(11)]
    items += [np.arange(6, dtype=np.uint16).reshape(2, 3)[:, ::2]]  # strided: packed
    return items


async def send_item(channel: aio.Channel, item: Any) -> None:
    if isinstance(item, dict):
        await channel.send_arrays(item)
    elif isinstance(item, tuple):
        await channel.send(item[0], metadata=item[1])
    else:
        await channel.send(item)


async def check_item(channel: aio.Channel, item: Any) -> None:
    if isinstance(item, dict):
        got = await channel.recv_arrays()
        assert isinstance(got, dict) and list(got) == list(item)
        np.testing.assert_array_equal(got["named"], item["named"])
        return
    if isinstance(item, tuple):
        message = await channel.recv_message()
        assert message.metadata == item[1]
        np.testing.assert_array_equal(message.arrays[0], item[0])
        return
    got = await channel.recv()
    assert got.dtype == item.dtype and got.shape == item.shape
    assert got.flags.f_contiguous == item.flags.f_contiguous or got.ndim < 2
    np.testing.assert_array_equal(got, item)


@pytest.mark.parametrize("burst", [True, False], ids=["all-buffered", "one-by-one"])
def test_changing_layouts_arrive_as_sent(backend: Backend, burst: bool) -> None:
    items = layouts()

    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(a) as left, aio.Channel(b) as right:
            for _ in range(2):  # the second time round every layout was seen
                if burst:
                    for item in items:
                        await send_item(left, item)
                    for item in items:
                        await check_item(right, item)
                else:
                    for item in items:
                        await send_item(left, item)
                        await check_item(right, item)

    run(main())


def test_iteration_takes_learned_messages(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = count_engine_calls(monkeypatch)
    arrays = [np.full(i % 5 + 1, i, np.float32) for i in range(500)]

    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(b) as right:

            async def receive_all() -> list[Any]:
                return [item async for item in right]

            receiving = asyncio.ensure_future(receive_all())
            async with aio.Channel(a) as left:
                await left.send_many(arrays[:250])
                for array in arrays[250:]:
                    await left.send(array)
            got = await receiving
        assert len(got) == len(arrays)
        for item, array in zip(got, arrays, strict=True):
            np.testing.assert_array_equal(item, array)

    run(main())
    # the first message, then each one the socket had not brought whole
    assert counts["receive_buffered"] < len(arrays) // 2


def test_out_and_max_bytes_with_a_learned_layout(backend: Backend) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(a) as left, aio.Channel(b) as right:
            await left.send(np.arange(4.0))
            np.testing.assert_array_equal(await right.recv(), np.arange(4.0))  # learned
            for n in (100, 100, 3, 100):
                await left.send(np.arange(float(n)))
            out = np.empty(100)
            assert await right.recv(out=out) is out
            np.testing.assert_array_equal(out, np.arange(100.0))
            with pytest.raises(ValueError, match=r"out is float64 \(7,\)"):
                await right.recv(out=np.empty(7))  # drained: the Channel stays usable
            np.testing.assert_array_equal(await right.recv(max_bytes=24), np.arange(3.0))
            with pytest.raises(ProtocolError, match="max_bytes"):
                await right.recv(max_bytes=799)  # 800 bytes, buffered whole
            with pytest.raises(BrokenStreamError, match="ProtocolError"):
                await right.recv()

    run(main())


def test_a_learned_message_that_comes_in_pieces(backend: Backend) -> None:
    array = np.arange(20_000, dtype=np.int64)
    plan = plan_send((array,))
    wire = bytes(plan.header) + array.tobytes()

    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(b) as right:
            a.sendall(wire)
            np.testing.assert_array_equal(await right.recv(), array)  # learned
            for cut in (10, len(plan.header), len(plan.header) + 5, len(wire) - 1):
                receiving = asyncio.ensure_future(right.recv())
                a.sendall(wire[:cut])
                await asyncio.sleep(0.05)
                assert not receiving.done()
                a.sendall(wire[cut:])
                np.testing.assert_array_equal(await receiving, array)
        a.close()

    run(main())


@pytest.mark.parametrize("buffered", [True, False], ids=["cut-buffered", "cut-later"])
def test_a_peer_gone_inside_a_learned_message(backend: Backend, buffered: bool) -> None:
    array = np.arange(1000.0)
    plan = plan_send((array,))
    wire = bytes(plan.header) + array.tobytes()

    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(b) as right:
            a.sendall(wire + wire)
            np.testing.assert_array_equal(await right.recv(), array)
            np.testing.assert_array_equal(await right.recv(), array)
            a.sendall(wire[:500])
            if buffered:
                await asyncio.sleep(0.05)
                a.close()
                receiving = asyncio.ensure_future(right.recv())
            else:
                receiving = asyncio.ensure_future(right.recv())
                await asyncio.sleep(0.05)
                a.close()
            with pytest.raises(IncompleteTransferError) as caught:
                await receiving
            assert caught.value.bytes_done == 500
            assert caught.value.bytes_expected == len(wire)
            with pytest.raises(BrokenStreamError, match="out of step"):
                await right.recv()
        with pytest.raises(OSError):
            a.send(b"x")

    run(main())


def test_a_learned_send_the_socket_takes_in_parts(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core sends what the socket takes at once; the rest follows from
    the event loop (a worker thread beyond NATIVE_BYTES), and the peer gets
    every message whole."""
    counts = count_engine_calls(monkeypatch)
    sizes = [10, 300_000, 10, 3_000_000, 200_000]  # float64: 2.4 MB and 24 MB too

    async def main() -> None:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)
        async with aio.Channel(a) as left, aio.Channel(b) as right:
            arrays = [np.random.default_rng(n).random(n) for n in sizes]

            async def send_all() -> None:
                for array in arrays:
                    await left.send(array)

            sending = asyncio.ensure_future(send_all())
            await asyncio.sleep(0.1)  # the sender waits for the socket now
            for array in arrays:
                np.testing.assert_array_equal(await right.recv(), array)
            await sending

    run(main())
    # the first message, and any the full socket took no byte of at once
    assert counts["send_plan"] < len(sizes)


def test_a_cancelled_learned_send_breaks_the_channel(backend: Backend) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(a) as left:
            small = np.arange(10.0)
            await left.send(small)  # learned
            first = len(plan_send((small,)).header) + small.nbytes
            assert len(receive_exactly(b, first)) == first
            big = np.zeros(2_000_000)
            sending = asyncio.ensure_future(left.send(big))
            await asyncio.sleep(0.2)  # nobody reads: part of it is with the kernel
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            with pytest.raises(BrokenStreamError, match="an earlier send on this Channel was cancelled"):
                await left.send(small)
            came = b""
            while chunk := b.recv(1 << 20):
                came += chunk
            assert 0 < len(came) < len(plan_send((big,)).header) + big.nbytes
        b.close()

    run(main())


def test_a_learned_send_to_a_gone_peer_raises(backend: Backend) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(a) as left:
            await left.send(np.arange(3))
            b.close()
            with pytest.raises((BrokenPipeError, ConnectionResetError)) as caught:
                await left.send(np.arange(5))
            assert caught.value.bytes_done == 0  # type: ignore[attr-defined]

    run(main())


def test_send_arrays_now_sends_what_the_socket_takes_and_leaves_the_rest(backend: Backend) -> None:
    """A message the socket takes whole is sent by the call itself; of one
    it takes part of, the rest comes from the coroutine returned, and the
    Channel's send is busy until then; one over NATIVE_BYTES is all the
    coroutine's. Every message arrives whole and in order."""

    def size(arrays: list[np.ndarray]) -> int:
        return len(plan_send(arrays).header) + sum(array.nbytes for array in arrays)

    async def main() -> None:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)
        async with aio.Channel(a) as left, aio.Channel(b) as right:
            small = [np.arange(5), np.ones(3, np.float32)]
            assert left.send_arrays_now(small) == size(small)  # no turn of the loop: all sent
            for got, sent in zip(await right.recv_arrays(), small, strict=True):
                np.testing.assert_array_equal(got, sent)
            rng = np.random.default_rng(7)
            for arrays in ([rng.random(60_000), np.arange(9)], [rng.random(aio.NATIVE_BYTES // 8 + 1)]):
                rest = left.send_arrays_now(arrays)
                assert asyncio.iscoroutine(rest)  # the socket could not take it all
                with pytest.raises(RuntimeError, match="another task is in a send"):
                    await left.send(np.zeros(1))
                sent, got = await asyncio.gather(rest, right.recv_arrays())
                assert sent == size(arrays)
                for received, array in zip(got, arrays, strict=True):
                    np.testing.assert_array_equal(received, array)
            assert left.send_arrays_now(small) == size(small)  # the send is free again
            assert len(await right.recv_arrays()) == 2

    run(main())


def test_send_arrays_now_to_a_gone_peer_raises_with_the_bytes_done(backend: Backend) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        async with aio.Channel(a) as left:
            b.close()
            with pytest.raises((BrokenPipeError, ConnectionResetError)) as caught:
                left.send_arrays_now([np.arange(5)])
            assert caught.value.bytes_done == 0  # type: ignore[attr-defined]
            with pytest.raises(TypeError):  # refused before any byte, the send free
                left.send_arrays_now([object()])

    run(main())
