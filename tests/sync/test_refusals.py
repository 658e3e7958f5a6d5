"""A receiver's refusal reaches the sender as a control record
(docs/PROTOCOL.md, "Control records"), over real connections made by
listen/connect: blocking and arraywire.aio, both backends, TCP, AF_UNIX,
TLS and parallel streams; and a peer without the capability sees only the
close."""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest
from backends import Backend
from sockets import receive_exactly

import arraywire
from arraywire import ProtocolError, aio
from arraywire._wire import control, hello

LIMIT = 30.0
MIB = 1 << 20
REFUSED = "the receiver refused the message"
OVER = "over max_bytes=1,048,576; pass max_bytes=None to lift the limit"
DRIVERS = ["blocking", "aio"]

Work = Callable[[Any], Coroutine[Any, Any, Any]]


async def call(result: Any) -> Any:
    """A Channel call's result, awaited when the Channel is arraywire.aio's."""
    return await result if inspect.isawaitable(result) else result


async def outcome(work: Work, channel: Any) -> Any:
    """What work on the channel returned, or the exception it raised."""
    try:
        return await work(channel)
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return exc


def exchange(
    driver: str, address: Any, sender: Work, receiver: Work,
    listening: dict | None = None, connecting: dict | None = None,
) -> tuple[Any, Any]:
    """Connect a sender to a receiver; run each one's work on its Channel;
    return what each returned or raised."""
    listening, connecting = listening or {}, connecting or {}
    if driver == "aio":
        async def both() -> tuple[Any, Any]:
            async with await aio.listen(address, **listening) as listener:
                accepted = asyncio.ensure_future(listener.accept())
                async with await aio.connect(listener.address, **connecting) as channel:
                    async with await accepted as other:
                        return tuple(await asyncio.gather(
                            outcome(sender, channel), outcome(receiver, other)
                        ))

        return asyncio.run(asyncio.wait_for(both(), LIMIT))
    got: dict[str, Any] = {}
    with arraywire.listen(address, **listening) as listener:
        def receive() -> None:
            with listener.accept(timeout=LIMIT) as other:
                got["receiver"] = asyncio.run(outcome(receiver, other))

        thread = threading.Thread(target=receive)
        thread.start()
        try:
            with arraywire.connect(listener.address, timeout=LIMIT, **connecting) as channel:
                channel.socket.settimeout(LIMIT)
                got["sender"] = asyncio.run(outcome(sender, channel))
        finally:
            thread.join(LIMIT)
    return got["sender"], got["receiver"]


async def send_then_receive(channel: Any, array: np.ndarray) -> Any:
    """Send; when the send went through, the next call (a receive) says why
    the receiver refused."""
    await call(channel.send(array))
    return await call(channel.recv())


def refuse_large(channel: Any) -> Coroutine[Any, Any, Any]:
    return call(channel.recv(max_bytes=MIB))


def assert_refused(sender: Any, receiver: Any, says: str = OVER) -> None:
    assert isinstance(receiver, ProtocolError) and says in str(receiver), receiver
    assert isinstance(sender, ProtocolError), repr(sender)
    assert str(sender) == f"{REFUSED}: {receiver}"


@pytest.fixture(params=["tcp", "unix"])
def address(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    return ("127.0.0.1", 0) if request.param == "tcp" else str(tmp_path / "sock")


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_large_message_refused_is_the_senders_error(
    backend: Backend, driver: str, address: Any
) -> None:
    big = np.zeros(64 * MIB, np.uint8)
    sender, receiver = exchange(
        driver, address, lambda channel: send_then_receive(channel, big), refuse_large
    )
    assert_refused(sender, receiver)


@pytest.mark.parametrize("driver", DRIVERS)
def test_over_tls(backend: Backend, driver: str, tls: Any) -> None:
    server, client = tls
    big = np.zeros(64 * MIB, np.uint8)
    sender, receiver = exchange(
        driver, ("127.0.0.1", 0), lambda channel: send_then_receive(channel, big),
        refuse_large, {"ssl": server}, {"ssl": client},
    )
    assert_refused(sender, receiver)


@pytest.mark.parametrize("driver", DRIVERS)
def test_over_parallel_streams(backend: Backend, driver: str) -> None:
    big = np.zeros(64 * MIB, np.uint8)
    sender, receiver = exchange(
        driver, ("127.0.0.1", 0), lambda channel: send_then_receive(channel, big),
        refuse_large, {"max_streams": 4}, {"streams": 4},
    )
    assert_refused(sender, receiver)


def secured(over: str, tls: Any) -> tuple[dict, dict]:
    """A Listener's and a connect's options for a plain or a TLS connection."""
    return ({"ssl": tls[0]}, {"ssl": tls[1]}) if over == "tls" else ({}, {})


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("then", ["send", "send_arrays", "recv"])
@pytest.mark.parametrize("over", ["plain", "tls"])
def test_a_small_refused_message_is_raised_by_the_next_call(
    backend: Backend, driver: str, then: str, over: str, tls: Any
) -> None:
    refused = threading.Event() if driver == "blocking" else None

    async def receiver(channel: Any) -> Any:
        try:
            return await call(channel.recv(max_bytes=10))
        finally:
            if refused is not None:
                refused.set()

    async def sender(channel: Any) -> Any:
        await call(channel.send_arrays([np.arange(100)]))  # 800 bytes: one planned send
        if refused is not None:
            refused.wait(LIMIT)
        else:
            await asyncio.sleep(0.2)  # the receiver task runs meanwhile
        if then == "recv":
            return await call(channel.recv())
        return await call(getattr(channel, then)([np.arange(3)]) if then == "send_arrays"
                          else channel.send(np.arange(3, dtype=np.int8)))

    sender_got, receiver_got = exchange(
        driver, ("127.0.0.1", 0), sender, receiver, *secured(over, tls)
    )
    assert_refused(sender_got, receiver_got, "over max_bytes=10")


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_misfit_out_is_not_a_refusal(backend: Backend, driver: str) -> None:
    async def receiver(channel: Any) -> Any:
        with pytest.raises(ValueError, match="out is"):
            await call(channel.recv(out=np.empty(3)))
        return await call(channel.recv())

    async def sender(channel: Any) -> Any:
        await call(channel.send(np.arange(5.0)))
        await call(channel.send(np.arange(4)))
        return "sent"

    sent, received = exchange(driver, ("127.0.0.1", 0), sender, receiver)
    assert sent == "sent"
    np.testing.assert_array_equal(received, np.arange(4))


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_header_over_max_metadata_is_refused(backend: Backend, driver: str) -> None:
    async def receiver(channel: Any) -> Any:
        return await call(channel.recv_message(max_metadata=4))

    async def sender(channel: Any) -> Any:
        await call(channel.send_arrays([np.arange(2)], metadata=b"x" * 64))
        return await call(channel.recv())

    sender_got, receiver_got = exchange(driver, ("127.0.0.1", 0), sender, receiver)
    assert_refused(sender_got, receiver_got, "metadata")


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_malformed_header_is_refused_with_its_reason(backend: Backend, driver: str) -> None:
    preamble = struct.pack("<4sBBHII", b"AWIR", 9, 0, 0, 0, 0)

    async def sender(channel: Any) -> Any:
        if driver == "blocking":
            channel.socket.sendall(preamble)
        else:
            await asyncio.get_running_loop().sock_sendall(channel.socket, preamble)
        return await call(channel.recv())

    async def receiver(channel: Any) -> Any:
        try:
            return await call(channel.recv())
        finally:
            assert channel.closed

    sender_got, receiver_got = exchange(driver, ("127.0.0.1", 0), sender, receiver)
    assert_refused(sender_got, receiver_got, "protocol version 9")


def old_peer(address: Any, peer_hello: bytes, told: dict[str, bytes]) -> None:
    """A peer that opens with a hand-made hello, sends a message of 100
    int64 and keeps what it reads until the close: the hello, then the rest."""
    with socket.create_connection(address, timeout=LIMIT) as peer:
        peer.sendall(peer_hello)
        told["hello"] = receive_exactly(peer, 16)
        arraywire.send_array(np.arange(100), peer)
        rest = b""
        while data := peer.recv(4096):
            rest += data
        told["rest"] = rest


@pytest.mark.parametrize("peer_hello", [
    struct.pack("<4sBBHII", b"AWHI", 1, 2, 0, 0, 0),  # version 1
    struct.pack("<4sBBHII", b"AWHI", 2, 2, 0, 0, 0),  # version 2, no capability
])
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_peer_without_the_capability_sees_only_the_close(
    backend: Backend, driver: str, peer_hello: bytes
) -> None:
    told: dict[str, bytes] = {}

    async def receive(listener: Any) -> None:
        peer = threading.Thread(target=old_peer, args=(listener.address, peer_hello, told))
        peer.start()
        try:
            channel = await call(listener.accept(timeout=LIMIT))
            try:
                with pytest.raises(ProtocolError, match="over max_bytes=10"):
                    await call(channel.recv(max_bytes=10))
            finally:
                channel.close()
        finally:
            await asyncio.get_running_loop().run_in_executor(None, peer.join, LIMIT)

    if driver == "aio":
        async def serve() -> None:
            async with await aio.listen(("127.0.0.1", 0)) as listener:
                await receive(listener)

        asyncio.run(asyncio.wait_for(serve(), LIMIT))
    else:
        with arraywire.listen(("127.0.0.1", 0)) as listener:
            asyncio.run(receive(listener))
    assert told == {"hello": hello.encode(capabilities=hello.ANNOUNCED), "rest": b""}


@pytest.mark.parametrize(("record", "says"), [
    (struct.pack("<4sHHII", b"AWCR", 7, 0, 0, 0), "unknown type 7"),
    (struct.pack("<4sHHII", b"AWCR", 1, 1, 0, 0), "flags 0x1"),
    (struct.pack("<4sHHII", b"AWCR", 1, 0, control.MAX_REASON + 1, 0), "carries at most 4,096"),
])
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_record_this_end_refuses_is_a_clear_protocol_error(
    backend: Backend, driver: str, record: bytes, says: str
) -> None:
    async def sender(channel: Any) -> Any:
        if driver == "blocking":
            channel.socket.sendall(record)
        else:
            await asyncio.get_running_loop().sock_sendall(channel.socket, record)

    async def receiver(channel: Any) -> Any:
        return await call(channel.recv())

    _, got = exchange(driver, ("127.0.0.1", 0), sender, receiver)
    assert isinstance(got, ProtocolError) and says in str(got), got
    assert REFUSED not in str(got)


def test_a_record_on_a_channel_without_an_opening_is_refused(backend: Backend) -> None:
    a, b = socket.socketpair()
    with a, arraywire.Channel(b) as channel:
        a.sendall(control.encode_refusal("no"))
        with pytest.raises(ProtocolError, match="did not turn control records on"):
            channel.recv()


def test_bare_functions_and_channels_send_no_record(backend: Backend) -> None:
    a, b = socket.socketpair()
    with a, arraywire.Channel(b) as channel:
        arraywire.send_array(np.arange(100), a)
        with pytest.raises(ProtocolError, match="over max_bytes=10"):
            channel.recv(max_bytes=10)
        a.settimeout(LIMIT)
        assert a.recv(4096) == b""


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("over", ["plain", "tls"])
def test_a_large_send_of_a_learned_layout_is_refused_too(
    backend: Backend, driver: str, over: str, tls: Any
) -> None:
    async def receiver(channel: Any) -> Any:
        await call(channel.recv())
        return await call(channel.recv(max_bytes=MIB))

    async def sender(channel: Any) -> Any:
        await call(channel.send(np.zeros(10, np.uint8)))  # the layout is learned
        # the record is out before the receiver drains the bulk: the send finds it
        return await call(channel.send(np.zeros(64 * MIB, np.uint8)))

    sender_got, receiver_got = exchange(
        driver, ("127.0.0.1", 0), sender, receiver, *secured(over, tls)
    )
    assert_refused(sender_got, receiver_got)
