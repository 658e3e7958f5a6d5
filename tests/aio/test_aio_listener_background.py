"""The aio Listener runs openings as connections arrive, as tasks of its
loop: connect returns before accept, a stuck peer holds up nobody and is
logged when dropped, the cap on what it holds, close() with openings in
flight; both backends, over TCP and AF_UNIX loopback."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
from backends import Backend
from listening import KEY, LIMIT, options, peer_text, warnings_of

import arraywire
from arraywire import AuthenticationError, ProtocolError, aio

T = TypeVar("T")


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
        yield os.path.join(directory, "listener")


async def raw_connect(address: Any) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    return sock


async def closes(sock: socket.socket) -> bool:
    """Whether the peer ends the connection (a reset counts)."""
    loop = asyncio.get_running_loop()
    try:
        while await loop.sock_recv(sock, 65536):
            pass
    except ConnectionResetError:
        pass
    return True


async def eventually(condition: Callable[[], bool]) -> bool:
    """Whether condition holds within LIMIT, looked at every 10 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIMIT
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.parametrize("kind", ["plain", "key", "tls"])
def test_connect_returns_before_accept_in_one_task(
    backend: Backend, address: Any, tls: Any, kind: str
) -> None:
    listen, connect = options(kind, tls)

    async def main() -> None:
        async with await aio.listen(address, **listen) as listener:
            async with await aio.connect(listener.address, timeout=LIMIT, **connect) as client, \
                    await listener.accept(timeout=LIMIT) as served:
                await client.send(np.arange(5))
                np.testing.assert_array_equal(await served.recv(), np.arange(5))
                await served.send(np.ones(3))
                np.testing.assert_array_equal(await client.recv(), np.ones(3))

    run(main())


def test_parallel_streams_are_handed_over_once_whole(backend: Backend, address: Any) -> None:
    big = np.random.default_rng(1).random(3 * arraywire.STRIPE_BYTES // 8 + 7)

    async def main() -> None:
        async with await aio.listen(address, max_streams=4) as listener:
            async with await aio.connect(listener.address, timeout=LIMIT, streams=4) as client, \
                    await listener.accept(timeout=LIMIT) as served:
                assert len(served.sockets) == 4
                _, got = await asyncio.gather(client.send(big), served.recv(max_bytes=None))
                np.testing.assert_array_equal(got, big)

    run(main())


def test_a_stuck_peer_holds_up_nobody_and_is_logged_when_dropped(
    backend: Backend, address: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="arraywire")

    async def main() -> None:
        async with await aio.listen(address, handshake_timeout=3) as listener:
            stuck = await raw_connect(listener.address)
            with stuck:
                async with await aio.connect(listener.address, timeout=LIMIT) as client, \
                        await listener.accept(timeout=LIMIT) as served:
                    assert listener.openings == 1  # the stuck one, still under way
                    await client.send(np.arange(3))
                    np.testing.assert_array_equal(await served.recv(), np.arange(3))
                assert await closes(stuck)  # dropped once its handshake_timeout passed
                [warning] = warnings_of(caplog)
                assert f"dropped {peer_text(stuck)}" in warning
                assert "did not complete the connection opening within 3 s" in warning

    run(main())


def test_each_failed_opening_logs_one_warning_with_its_reason(
    backend: Backend, tls: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server_context, client_context = tls
    caplog.set_level(logging.WARNING, logger="arraywire")

    async def main() -> None:
        # garbage
        async with await aio.listen(("127.0.0.1", 0)) as listener:
            with await raw_connect(listener.address) as peer:
                await asyncio.get_running_loop().sock_sendall(peer, b"GET / HTTP/1.1\r\n\r\n")
                assert await closes(peer)
                [warning] = warnings_of(caplog)
                assert f"dropped {peer_text(peer)}" in warning
                assert "the peer is not arraywire: its hello begins with b'GET '" in warning
        caplog.clear()
        # a wrong key: accept() raises it once it was logged
        async with await aio.listen(("127.0.0.1", 0), authkey=KEY) as listener:
            with pytest.raises(AuthenticationError):
                await aio.connect(listener.address, timeout=LIMIT, authkey=b"other key")
            with pytest.raises(AuthenticationError):
                await listener.accept(timeout=LIMIT)
            [warning] = warnings_of(caplog)
            assert "dropped 127.0.0.1:" in warning and "key" in warning
        caplog.clear()
        # a plain client of a TLS Listener
        async with await aio.listen(("127.0.0.1", 0), ssl=server_context) as listener:
            with pytest.raises((ProtocolError, ConnectionResetError)):
                await aio.connect(listener.address, timeout=LIMIT)
            assert await eventually(lambda: len(warnings_of(caplog)) == 1)
            assert "TLS" in warnings_of(caplog)[0]
            # the Listener goes on
            async with await aio.connect(listener.address, timeout=LIMIT, ssl=client_context,
                                         server_hostname="localhost"):
                (await listener.accept(timeout=LIMIT)).close()
        assert len(warnings_of(caplog)) == 1

    run(main())


def test_the_cap_bounds_the_openings_held_and_the_tasks(backend: Backend) -> None:
    async def main() -> None:
        tasks = len(asyncio.all_tasks())
        async with await aio.listen(("127.0.0.1", 0), max_openings=3) as listener:
            stuck = [await raw_connect(listener.address) for _ in range(8)]
            assert await eventually(lambda: listener.openings == 3)
            with pytest.raises(TimeoutError):
                await listener.accept(timeout=0.3)
            assert listener.openings == 3  # the others wait in the kernel's backlog
            # the acceptor, and each opening's task (with wait_for's inner one before 3.12)
            assert len(asyncio.all_tasks()) <= tasks + 1 + 2 * 3
            for sock in stuck:
                sock.close()
            # the Listener takes the next from the backlog as the first are dropped
            async with await aio.connect(listener.address, timeout=LIMIT) as client, \
                    await listener.accept(timeout=LIMIT) as served:
                await client.send(np.arange(4))
                np.testing.assert_array_equal(await served.recv(), np.arange(4))

    run(main())


def test_channels_waiting_for_accept_count_toward_the_cap(backend: Backend) -> None:
    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0), max_openings=2) as listener:
            first = await aio.connect(listener.address, timeout=LIMIT)
            second = await aio.connect(listener.address, timeout=LIMIT)
            waiting = asyncio.create_task(aio.connect(listener.address, timeout=LIMIT))
            done, _ = await asyncio.wait([waiting], timeout=0.5)
            assert not done  # its opening waits for room
            (await listener.accept(timeout=LIMIT)).close()  # room for the third
            async with await waiting, first, second:
                for _ in range(2):
                    (await listener.accept(timeout=LIMIT)).close()

    run(main())


def test_max_openings_is_checked() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="max_openings must be at least 1, got 0"):
            await aio.listen(("127.0.0.1", 0), max_openings=0)

    run(main())


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_close_with_openings_in_flight_releases_everything(
    backend: Backend, address: Any, tls: Any, kind: str
) -> None:
    listen, connect = options(kind, tls)

    async def main() -> None:
        tasks, descriptors = len(asyncio.all_tasks()), open_descriptors()
        listener = await aio.listen(address, **listen)
        stuck = [await raw_connect(listener.address) for _ in range(4)]
        unaccepted = await aio.connect(listener.address, timeout=LIMIT, **connect)
        assert await eventually(lambda: listener.openings == 4)
        await listener.aclose()
        assert listener.fileno() == -1
        for sock in stuck:
            assert await closes(sock)
        with pytest.raises((EOFError, ConnectionResetError)):
            await unaccepted.recv()  # the Channel never accepted was closed
        for sock in stuck:
            sock.close()
        unaccepted.close()
        assert len(asyncio.all_tasks()) == tasks
        assert open_descriptors() == descriptors
        if isinstance(address, str):
            assert not os.path.exists(address)
        with pytest.raises(OSError, match="closed Listener"):
            await listener.accept()

    run(main())


def test_close_wakes_an_accept_waiting_in_another_task(backend: Backend) -> None:
    async def main() -> None:
        listener = await aio.listen(("127.0.0.1", 0))
        with await raw_connect(listener.address) as stuck:
            waiting = asyncio.create_task(listener.accept(timeout=LIMIT))
            assert await eventually(lambda: listener.openings == 1)
            listener.close()
            with pytest.raises(OSError, match="closed Listener") as caught:
                await waiting
            assert caught.value.errno == errno.EBADF
            assert await closes(stuck)

    run(main())


def test_async_for_skips_failed_openings_and_ends_when_another_task_closes(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="arraywire")

    async def main() -> None:
        listener = await aio.listen(("127.0.0.1", 0), authkey=KEY)
        got: list[Any] = []

        async def serve() -> str:
            async for channel in listener:
                async with channel:
                    got.append(await channel.recv())
            return "ended"

        server = asyncio.create_task(serve())
        async with await aio.connect(listener.address, timeout=LIMIT, authkey=KEY) as client:
            await client.send(np.arange(1))
        with pytest.raises(AuthenticationError):
            await aio.connect(listener.address, timeout=LIMIT, authkey=b"other key")
        with await raw_connect(listener.address) as junk:
            await asyncio.get_running_loop().sock_sendall(junk, b"GET / HTTP/1.1\r\n\r\n")
            assert await closes(junk)
        async with await aio.connect(listener.address, timeout=LIMIT, authkey=KEY) as client:
            await client.send(np.arange(2))
        assert await eventually(lambda: len(got) == 2)
        listener.close()
        assert await server == "ended"
        assert [array.tolist() for array in got] == [[0], [0, 1]]
        assert len(warnings_of(caplog)) == 2  # the wrong key, the garbage

    run(main())


def test_async_for_over_a_closed_listener_ends_at_once(backend: Backend) -> None:
    async def main() -> None:
        listener = await aio.listen(("127.0.0.1", 0))
        await listener.aclose()
        assert [channel async for channel in listener] == []

    run(main())
