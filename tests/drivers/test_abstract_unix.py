"""Linux abstract AF_UNIX names (a str or bytes starting with NUL): listen,
connect, the Listener's address and its close, blocking and aio, both
backends."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from typing import Any

import numpy as np
import pytest
from backends import Backend
from sockets import Peer

import arraywire
from arraywire import aio

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract AF_UNIX names are Linux only")

LIMIT = 30.0


@pytest.fixture(params=["str", "bytes"])
def name(request: pytest.FixtureRequest) -> str | bytes:
    text = f"\0arraywire-test-{os.getpid()}-{request.node.name}"
    return text if request.param == "str" else text.encode()


def echo_once(listener: arraywire.Listener) -> Peer:
    def run() -> None:
        with listener.accept(timeout=LIMIT) as channel:
            channel.send(channel.recv())

    return Peer(run)


def test_blocking_listen_connect_and_close(backend: Backend, name: Any) -> None:
    sent = np.arange(100, dtype=np.int32)
    with arraywire.listen(name) as listener:
        assert listener.address == name
        assert type(listener.address) is type(name)
        peer = echo_once(listener)
        # connect takes both forms of the name
        other = name.encode() if isinstance(name, str) else name.decode()
        with arraywire.connect(other, timeout=LIMIT) as channel:
            channel.send(sent)
            np.testing.assert_array_equal(channel.recv(), sent)
        peer.result()
    # left cleanly, and the name is free again: nothing to remove
    with arraywire.listen(name) as again:
        assert again.address == name
    with pytest.raises(ConnectionRefusedError):
        arraywire.connect(name)


def test_aio_listen_connect_and_close(backend: Backend, name: Any) -> None:
    sent = np.arange(100, dtype=np.float64)

    async def main() -> None:
        async with await aio.listen(name) as listener:
            assert listener.address == name
            assert type(listener.address) is type(name)

            async def server() -> None:
                async with await listener.accept() as channel:
                    await channel.send(await channel.recv())

            served = asyncio.create_task(server())
            async with await aio.connect(listener.address, timeout=LIMIT) as channel:
                await channel.send(sent)
                np.testing.assert_array_equal(await channel.recv(), sent)
            await served
        listener = await aio.listen(name)
        listener.close()  # close() without aclose() also leaves cleanly
        await listener.aclose()

    asyncio.run(asyncio.wait_for(main(), LIMIT))


def test_blocking_client_reaches_an_aio_listener(backend: Backend, name: Any) -> None:
    sent = np.arange(10, dtype=np.uint8)

    async def main() -> None:
        async with await aio.listen(name) as listener:

            def client() -> Any:
                with arraywire.connect(name, timeout=LIMIT) as channel:
                    channel.send(sent)
                    return channel.recv()

            reply = asyncio.get_running_loop().run_in_executor(None, client)
            async with await listener.accept() as channel:
                await channel.send(await channel.recv())
            np.testing.assert_array_equal(await reply, sent)

    asyncio.run(asyncio.wait_for(main(), LIMIT))


def test_a_path_listener_still_removes_its_file(backend: Backend, tmp_path: Any) -> None:
    path = str(tmp_path / "sock")
    with arraywire.listen(path) as listener:
        assert listener.address == path
        assert os.path.exists(path)
    assert not os.path.exists(path)


@pytest.mark.parametrize("aio_side", [False, True], ids=["blocking", "aio"])
def test_a_missing_socket_file_is_named_and_host_port_text_gets_a_hint(
    backend: Backend, aio_side: bool, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)

    def attempt(address: Any) -> FileNotFoundError:
        with pytest.raises(FileNotFoundError) as caught:
            if aio_side:
                asyncio.run(asyncio.wait_for(aio.connect(address), LIMIT))
            else:
                arraywire.connect(address)
        return caught.value

    error = attempt("localhost:5555")
    assert error.filename == "localhost:5555"
    assert "'localhost:5555'" in str(error)
    assert "for TCP pass a (host, port) tuple: ('localhost', 5555)" in str(error)
    missing = str(tmp_path / "gone.sock")
    error = attempt(missing)
    assert error.filename == missing and repr(missing) in str(error)
    assert "TCP" not in str(error)


@pytest.mark.parametrize("aio_side", [False, True], ids=["blocking", "aio"])
def test_listen_over_an_existing_socket_file_names_it_and_keeps_it(
    backend: Backend, aio_side: bool, tmp_path: Any,
) -> None:
    path = str(tmp_path / "sock")

    def attempt() -> OSError:
        with pytest.raises(OSError) as caught:
            if aio_side:
                asyncio.run(asyncio.wait_for(aio.listen(path), LIMIT))
            else:
                arraywire.listen(path)
        return caught.value

    with arraywire.listen(path):
        error = attempt()
        assert error.errno == errno.EADDRINUSE and error.filename == path
        assert repr(path) in str(error) and "a server answers there" in str(error)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # a file left by a server that is gone
    stale.close()
    error = attempt()
    assert error.errno == errno.EADDRINUSE
    assert "nothing answers there" in str(error)
    assert os.path.exists(path)  # never removed
