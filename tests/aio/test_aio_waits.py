"""aio Channel.recv(timeout=) and its siblings over real sockets, both
backends: plain, over TLS and striped, as the blocking Channel's."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from backends import Backend
from sockets import message_of

import arraywire
from arraywire import BrokenStreamError, aio

LIMIT = 30.0
SHORT = 0.05
STRIPE = 1 << 20  # a payload this large is striped over parallel streams

KINDS = ["plain", "tls", "striped"]


@contextlib.asynccontextmanager
async def ends(
    kind: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> AsyncIterator[tuple[arraywire.Channel, aio.Channel]]:
    """A blocking sender connected to an aio receiver."""
    server_context, client_context = tls if kind == "tls" else (None, None)
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
    backend: Backend, kind: str, tls: Any
) -> None:
    array = np.arange(STRIPE // 4 + 3, dtype=np.int64)  # striped on parallel streams

    async def main() -> None:
        async with ends(kind, tls) as (sender, receiver):
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
    backend: Backend, kind: str, tls: Any
) -> None:
    async def main() -> None:
        async with ends(kind, tls) as (sender, receiver):
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
    backend: Backend, kind: str, size: int, tls: Any
) -> None:
    data = message_of(np.zeros(size, np.uint8))

    async def main() -> None:
        async with ends(kind, tls) as (sender, receiver):
            sending = asyncio.ensure_future(asyncio.to_thread(sender.socket.sendall, data[:-10]))
            with pytest.raises(TimeoutError, match=r"^timed out$") as caught:
                await receiver.recv_message(timeout=0.5)
            await sending
            assert caught.value.bytes_done == len(data) - 10  # type: ignore[attr-defined]
            with pytest.raises(BrokenStreamError, match="TimeoutError"):
                await receiver.recv()

    run(main())


def test_a_timeout_between_stripes_breaks_the_channel(backend: Backend, tls: Any) -> None:
    array = np.zeros(STRIPE * 2, np.uint8)

    async def main() -> None:
        async with ends("striped", tls) as (sender, receiver):
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
def test_a_bad_aio_receive_timeout_is_refused(timeout: float, tls: Any) -> None:
    async def main() -> None:
        async with ends("plain", tls) as (sender, receiver):
            for receive in (receiver.recv, receiver.recv_arrays, receiver.recv_message):
                with pytest.raises(ValueError, match="timeout must be above 0"):
                    await receive(timeout=timeout)
                with pytest.raises(TypeError, match="timeout must be a number"):
                    await receive(timeout="1")
            await asyncio.to_thread(sender.send, np.arange(3))  # still usable
            np.testing.assert_array_equal(await receiver.recv(timeout=LIMIT), np.arange(3))

    run(main())
