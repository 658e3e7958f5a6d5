"""Channel.recv(timeout=), poll, closed and the addresses, over real sockets,
both backends, blocking and aio."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import threading
from typing import Any

import numpy as np
import pytest
from backends import Backend
from sockets import Peer, message_of

import arraywire
from arraywire import BrokenStreamError, Channel, aio

LIMIT = 30.0
SHORT = 0.05


def test_timeout_with_nothing_come_leaves_the_channel_usable(
    backend: Backend, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    sender, receiver = Channel(a), Channel(b)
    for receive in (receiver.recv, receiver.recv_arrays, receiver.recv_message):
        with pytest.raises(TimeoutError):
            receive(timeout=SHORT)
    assert not receiver.closed
    assert b.gettimeout() is None  # the socket's own timeout is back
    sender.send(np.arange(5))
    np.testing.assert_array_equal(receiver.recv(timeout=LIMIT), np.arange(5))


def test_timeout_after_part_of_a_header_breaks_the_channel(
    backend: Backend, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    receiver = Channel(b)
    a.sendall(message_of(np.arange(7.0))[:5])  # read ahead, not yet a header
    with pytest.raises(TimeoutError):
        receiver.recv(timeout=SHORT)
    assert receiver.closed
    with pytest.raises(BrokenStreamError):
        receiver.recv()


@pytest.mark.parametrize("size", [100, 1 << 20])  # in the read-ahead buffer, and past it
def test_timeout_inside_a_message_breaks_the_channel(
    backend: Backend, pair: tuple[socket.socket, socket.socket], size: int
) -> None:
    a, b = pair
    receiver = Channel(b)
    data = message_of(np.zeros(size, np.uint8))
    sending = threading.Thread(target=a.sendall, args=(data[:-10],))
    sending.start()
    with pytest.raises(TimeoutError) as caught:
        receiver.recv(timeout=0.5)
    sending.join(LIMIT)
    assert caught.value.bytes_done == len(data) - 10  # type: ignore[attr-defined]
    assert receiver.closed
    with pytest.raises(BrokenStreamError, match="TimeoutError"):
        receiver.recv()


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
def test_a_bad_receive_timeout_is_refused(pair: tuple[socket.socket, socket.socket], timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout must be above 0"):
        Channel(pair[0]).recv(timeout=timeout)
    with pytest.raises(TypeError, match="timeout must be a number"):
        Channel(pair[0]).poll("1")  # type: ignore[arg-type]


def test_poll(backend: Backend, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sender, receiver = Channel(a), Channel(b)
    assert receiver.poll() is False
    assert receiver.poll(SHORT) is False
    sender.send_many([np.arange(3), np.arange(4)])
    assert receiver.poll(None) is True
    np.testing.assert_array_equal(receiver.recv(), np.arange(3))
    assert receiver.poll() is True  # the second one is in the read-ahead buffer
    np.testing.assert_array_equal(receiver.recv(), np.arange(4))
    assert receiver.poll() is False
    sender.close()
    assert receiver.poll(LIMIT) is True  # the peer closed: recv says so
    with pytest.raises(EOFError):
        receiver.recv()
    receiver.close()
    with pytest.raises(OSError, match="closed Channel"):
        receiver.poll()


@pytest.fixture(params=["tcp4", "tcp6", "unix"])
def where(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Any:
    if request.param == "tcp6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    return {"tcp4": ("127.0.0.1", 0), "tcp6": ("::1", 0), "unix": str(tmp_path / "s")}[
        request.param
    ]


def test_addresses_survive_close(backend: Backend, where: Any) -> None:
    with arraywire.listen(where) as listener:
        accepting = Peer(lambda: listener.accept(timeout=LIMIT))
        client = arraywire.connect(listener.address, timeout=LIMIT)
        server = accepting.result()
        bound = listener.address
    assert client.peer_address == server.local_address == bound
    if isinstance(where, str):
        assert client.local_address == server.peer_address == ""  # an unnamed client
    else:
        assert client.local_address == server.peer_address
        assert client.local_address[0] == where[0] and client.local_address[1] > 0
    assert not client.closed
    client.close()
    server.close()
    assert client.closed and server.closed
    assert client.peer_address == server.local_address == bound


def test_a_socketpair_has_unnamed_addresses(pair: tuple[socket.socket, socket.socket]) -> None:
    if pair[0].family != socket.AF_UNIX:
        pytest.skip("AF_UNIX only")
    channel = Channel(pair[0])
    assert channel.local_address == "" or channel.peer_address == ""


def run_aio(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, LIMIT)

    return asyncio.run(bounded())


def test_aio_poll_and_addresses(backend: Backend, where: Any) -> None:
    async def main() -> None:
        async with await aio.listen(where) as listener:
            client, server = await asyncio.gather(
                aio.connect(listener.address, timeout=LIMIT), listener.accept()
            )
            bound = listener.address
        assert client.peer_address == server.local_address == bound
        assert await server.poll() is False
        assert await server.poll(SHORT) is False
        waiting = asyncio.ensure_future(server.poll(None))
        await asyncio.sleep(SHORT)
        assert not waiting.done()
        await client.send_many([np.arange(3), np.arange(4)])
        assert await waiting is True
        np.testing.assert_array_equal(await server.recv(), np.arange(3))
        assert await server.poll() is True
        np.testing.assert_array_equal(await server.recv(), np.arange(4))
        assert await server.poll() is False
        client.close()
        assert await server.poll(LIMIT) is True
        with pytest.raises(EOFError):
            await server.recv()
        server.close()
        assert client.closed and server.closed
        assert client.peer_address == server.local_address == bound
        with pytest.raises(OSError, match="closed Channel"):
            await server.poll()

    run_aio(main())


def test_aio_accept_timeout(backend: Backend) -> None:
    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0)) as listener:
            with pytest.raises(TimeoutError, match="no connection completed its opening"):
                await listener.accept(timeout=SHORT)
            client, server = await asyncio.gather(
                aio.connect(listener.address, timeout=LIMIT), listener.accept(timeout=LIMIT)
            )
            await client.send(np.arange(3))
            np.testing.assert_array_equal(await server.recv(), np.arange(3))
            client.close()
            server.close()

    run_aio(main())
