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
from sockets import Peer

import arraywire
from arraywire import BrokenStreamError, IncompleteTransferError, ProtocolError, aio
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
