"""aio Channel.recv(timeout=) and its siblings over real sockets, both
backends: plain, over TLS and striped, as the blocking Channel's."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import trustme
from backends import Backend

import arraywire
from arraywire import BrokenStreamError, aio

LIMIT = 30.0
SHORT = 0.05
STRIPE = 1 << 20  # a payload this large is striped over parallel streams

KINDS = ["plain", "tls", "striped"]


@pytest.fixture(scope="module")
def contexts() -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    yield server, client


def message_of(array: Any) -> bytes:
    """The bytes of one message carrying array."""
    a, b = socket.socketpair()
    with a, b:

        def send() -> None:
            arraywire.send_array(array, a)
            a.shutdown(socket.SHUT_WR)

        sending = threading.Thread(target=send)
        sending.start()
        data = b"".join(iter(lambda: b.recv(1 << 20), b""))
        sending.join(LIMIT)
        return data


@contextlib.asynccontextmanager
async def ends(
    kind: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> AsyncIterator[tuple[arraywire.Channel, aio.Channel]]:
    """A blocking sender connected to an aio receiver."""
    server_context, client_context = contexts if kind == "tls" else (None, None)
    async with await aio.listen(("127.0.0.1", 0), ssl=server_context) as listener:
        connecting = asyncio.to_thread(
            arraywire.connect,
            listener.address,
            timeout=LIMIT,
            ssl=client_context,
            streams=2 if kind == "striped" else 1,
        )
        sender, receiver = await asyncio.gather(connecting, listener.accept(timeout=LIMIT))
    try:
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, LIMIT)

    return asyncio.run(bounded())


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_with_nothing_come_leaves_the_channel_usable(
    backend: Backend, kind: str, contexts: Any
) -> None:
    array = np.arange(STRIPE // 4 + 3, dtype=np.int64)  # striped on parallel streams

    async def main() -> None:
        async with ends(kind, contexts) as (sender, receiver):
            for receive in (receiver.recv, receiver.recv_arrays, receiver.recv_message):
                with pytest.raises(TimeoutError, match=r"^timed out$") as caught:
                    await receive(timeout=SHORT)
                assert not getattr(caught.value, "bytes_done", 0)
            assert not receiver.closed
            for _ in range(2):  # the second time through the learned layout
                await asyncio.to_thread(sender.send, array)
                np.testing.assert_array_equal(await receiver.recv(timeout=LIMIT), array)
                with pytest.raises(TimeoutError, match=r"^timed out$"):
                    await receiver.recv(timeout=SHORT)
            await asyncio.to_thread(sender.send_arrays, {"a": array[:3]})
            got = await receiver.recv_arrays(timeout=LIMIT)
            np.testing.assert_array_equal(got["a"], array[:3])  # type: ignore[call-overload]

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_after_part_of_a_header_breaks_the_channel(
    backend: Backend, kind: str, contexts: Any
) -> None:
    async def main() -> None:
        async with ends(kind, contexts) as (sender, receiver):
            await asyncio.to_thread(sender.socket.sendall, message_of(np.arange(7.0))[:5])
            with pytest.raises(TimeoutError, match=r"^timed out$") as caught:
                await receiver.recv(timeout=SHORT)
            assert caught.value.bytes_done == 5  # type: ignore[attr-defined]
            with pytest.raises(BrokenStreamError, match="TimeoutError: timed out"):
                await receiver.recv()

    run(main())


# in the read-ahead buffer; past it, in the event loop; past NATIVE_BYTES, in a worker
@pytest.mark.parametrize("size", [100, 1 << 19, 3 << 20])
@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_timeout_inside_a_message_breaks_the_channel(
    backend: Backend, kind: str, size: int, contexts: Any
) -> None:
    data = message_of(np.zeros(size, np.uint8))

    async def main() -> None:
        async with ends(kind, contexts) as (sender, receiver):
            sending = asyncio.ensure_future(asyncio.to_thread(sender.socket.sendall, data[:-10]))
            with pytest.raises(TimeoutError, match=r"^timed out$") as caught:
                await receiver.recv_message(timeout=0.5)
            await sending
            assert caught.value.bytes_done == len(data) - 10  # type: ignore[attr-defined]
            with pytest.raises(BrokenStreamError, match="TimeoutError"):
                await receiver.recv()

    run(main())


def test_a_timeout_between_stripes_breaks_the_channel(backend: Backend, contexts: Any) -> None:
    array = np.zeros(STRIPE * 2, np.uint8)

    async def main() -> None:
        async with ends("striped", contexts) as (sender, receiver):
            # the header and the first stream's part, then nothing on the second
            header = message_of(array)[: -array.nbytes]
            await asyncio.to_thread(sender.socket.sendall, header)
            with pytest.raises(TimeoutError, match=r"^timed out$") as caught:
                await receiver.recv(timeout=0.5)
            assert caught.value.bytes_done >= len(header)  # type: ignore[attr-defined]
            with pytest.raises(BrokenStreamError, match="TimeoutError"):
                await receiver.recv()

    run(main())


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
def test_a_bad_aio_receive_timeout_is_refused(timeout: float, contexts: Any) -> None:
    async def main() -> None:
        async with ends("plain", contexts) as (sender, receiver):
            for receive in (receiver.recv, receiver.recv_arrays, receiver.recv_message):
                with pytest.raises(ValueError, match="timeout must be above 0"):
                    await receive(timeout=timeout)
                with pytest.raises(TypeError, match="timeout must be a number"):
                    await receive(timeout="1")
            await asyncio.to_thread(sender.send, np.arange(3))  # still usable
            np.testing.assert_array_equal(await receiver.recv(timeout=LIMIT), np.arange(3))

    run(main())
