"""Dask's comm semantics over aw://, as tcp:// has them: write queues the
message and returns, in order and bounded; close flushes, abort drops; every
frame Dask can hand over goes through; a peer that is not arraywire is a
connection failure. Real sockets, real Dask comms, both transport backends."""

from __future__ import annotations

import asyncio
import select

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
from dask_pairs import served_pair  # noqa: E402
from distributed.comm import connect  # noqa: E402
from distributed.comm.core import CommClosedError  # noqa: E402
from distributed.protocol import Serialized, to_serialize  # noqa: E402
from distributed.utils_test import gen_test  # noqa: E402

from arraywire import ProtocolError  # noqa: E402
from arraywire._wire import dask_frames  # noqa: E402
from arraywire.dask_comm import ArraywireBackend  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning",
    "ignore::PendingDeprecationWarning",
)

SHAPES = [(0,), (2, 0), (0, 3), (3, 0, 4), (3, 4), (2, 3, 4), (1, 5), (5, 1)]


def arrays_of_every_layout() -> list[np.ndarray]:
    """Zero-size, C- and F-ordered arrays of each shape, and strided views."""
    out = []
    for shape in SHAPES:
        values = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
        out += [values, np.asfortranarray(values)]
    base = np.arange(60, dtype=np.int32).reshape(6, 10)
    out += [base[::2], base[:, ::3], base.T[1:, ::2]]
    return out


@pytest.mark.parametrize("array", arrays_of_every_layout(), ids=lambda a: f"{a.shape}-{'F' if a.flags.f_contiguous and a.ndim > 1 else 'C' if a.flags.c_contiguous else 'strided'}")
def test_a_frame_of_any_shape_and_order_is_packed(array: np.ndarray) -> None:
    frames = [b"head", memoryview(array), memoryview(array.T)]
    arrays = dask_frames.to_arrays(frames)
    back = dask_frames.to_frames(arrays)
    assert [bytes(frame) for frame in back] == [b"head", array.tobytes("A"), array.T.tobytes("A")]
    if array.size and array.flags.f_contiguous and not array.flags.c_contiguous:
        # cast without a copy, as Dask's ensure_memoryview does
        assert any(np.shares_memory(sent, array) for sent in arrays[1:])


@gen_test()
async def test_zero_size_and_f_ordered_arrays_of_every_shape_round_trip(backend) -> None:
    client, server = await served_pair()
    sent = arrays_of_every_layout()
    for serializers in (None, ["pickle"]):  # pickle hands over PickleBuffers of each shape
        await client.write({"x": [to_serialize(a) for a in sent]}, serializers=serializers)
        received = (await server.read())["x"]
        assert len(received) == len(sent)
        for before, after in zip(sent, received, strict=True):
            assert after.shape == before.shape
            np.testing.assert_array_equal(after, before)
    await client.close()
    await server.close()


@gen_test()
async def test_each_end_writes_12_mb_then_reads_from_one_task(backend) -> None:
    client, server = await served_pair()
    payload = np.arange(1_500_000, dtype=np.float64)  # 12 MB: more than the socket buffers

    async def write_then_read(comm, tag):
        await comm.write({"tag": tag, "x": to_serialize(payload)})
        return await comm.read()

    to_server, to_client = await asyncio.wait_for(
        asyncio.gather(write_then_read(client, "c"), write_then_read(server, "s")), 60
    )
    assert to_server["tag"] == "s" and to_client["tag"] == "c"
    np.testing.assert_array_equal(to_server["x"], payload)
    np.testing.assert_array_equal(to_client["x"], payload)
    await client.close()
    await server.close()


@gen_test()
async def test_writes_into_a_peer_that_stops_reading_wait_past_the_bound(backend) -> None:
    message = {"x": to_serialize(np.zeros(512 * 1024))}  # 4 MiB
    with dask.config.set({"distributed.comm.aw.max-queued-bytes": "16 MiB"}):
        client, server = await served_pair()
    assert client.max_queued_bytes == 16 << 20
    accepted = 0
    waiting = None
    for _ in range(40):  # 160 MiB, unbounded, would all be accepted
        write = asyncio.ensure_future(client.write(message))
        done, _ = await asyncio.wait([write], timeout=1)
        if not done:
            waiting = write
            break
        write.result()
        accepted += 1
    assert waiting is not None, "every write returned: nothing bounds the queue"
    # the bound, plus what the socket buffers of both ends took:
    assert 3 <= accepted <= 3 + 8  # 4 MiB and a head each: three fit in 16 MiB
    server.abort()  # the peer goes away
    with pytest.raises(CommClosedError):
        await asyncio.wait_for(waiting, 10)
    assert client.closed()
    with pytest.raises(CommClosedError):
        await client.write(message)


@gen_test()
async def test_a_message_larger_than_the_bound_goes_into_an_empty_queue(backend) -> None:
    with dask.config.set({"distributed.comm.aw.max-queued-bytes": 1000}):
        client, server = await served_pair()
    payload = np.arange(100_000, dtype=np.float64)
    for _ in range(3):
        await asyncio.wait_for(client.write({"x": to_serialize(payload)}), 10)
        np.testing.assert_array_equal((await server.read())["x"], payload)
    await client.close()
    await server.close()


@gen_test()
async def test_close_sends_every_queued_message_first(backend) -> None:
    client, server = await served_pair()
    payloads = [np.full(500_000, n, dtype=np.float64) for n in range(5)]  # 20 MB in all
    for payload in payloads:
        await client.write({"x": to_serialize(payload)})
    closing = asyncio.ensure_future(client.close())
    for payload in payloads:  # in order, all of them
        np.testing.assert_array_equal((await server.read())["x"], payload)
    await asyncio.wait_for(closing, 10)
    with pytest.raises(CommClosedError):
        await server.read()
    await server.close()


@gen_test()
async def test_abort_drops_the_queued_messages(backend) -> None:
    client, server = await served_pair()
    for n in range(10):  # 40 MB: most of it still queued
        await client.write({"n": n, "x": to_serialize(np.zeros(500_000))})
    client.abort()
    received = []
    with pytest.raises(CommClosedError):
        while True:
            received.append((await server.read())["n"])
    assert received == list(range(len(received))) and len(received) < 10
    await server.close()


@gen_test()
async def test_a_small_write_into_an_idle_comm_is_sent_before_it_returns(backend) -> None:
    client, server = await served_pair()
    await client.write({"op": "ping", "data": b"p" * 64})
    # no turn of the event loop since: the bytes are with the kernel already
    assert select.select([server.socket], [], [], 5)[0]
    assert (await server.read())["op"] == "ping"
    await client.close()
    await server.close()


@gen_test()
async def test_messages_the_socket_takes_in_parts_arrive_whole_and_in_order(backend) -> None:
    """Writes under NATIVE_BYTES into a peer that does not read yet: the
    socket takes the first whole, one in part (the rest follows from the
    sender task), the others queue; close sends them all."""
    client, server = await served_pair()
    payloads = [np.full(60_000, n, dtype=np.float64) for n in range(40)]  # 480 KB each
    for n, payload in enumerate(payloads):
        await asyncio.wait_for(client.write({"n": n, "x": to_serialize(payload)}), 10)
    closing = asyncio.ensure_future(client.close())
    for n, payload in enumerate(payloads):
        message = await server.read()
        assert message["n"] == n
        np.testing.assert_array_equal(message["x"], payload)
    await asyncio.wait_for(closing, 10)
    await server.close()


@gen_test()
async def test_a_write_to_a_gone_peer_closes_the_comm(backend) -> None:
    client, server = await served_pair()
    server.abort()
    with pytest.raises(CommClosedError):
        for _ in range(100):  # the first may still go to the kernel
            await client.write({"op": "ping", "data": b"p" * 64})
            await asyncio.sleep(0.01)
    assert client.closed()
    with pytest.raises(CommClosedError):
        await client.read()


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


@gen_test()
async def test_an_error_before_the_message_is_queued_leaves_the_comm_usable(backend) -> None:
    client, server = await served_pair()
    with pytest.raises(TypeError, match="refuses to be pickled"):
        await client.write({"x": Unpicklable()}, on_error="raise")
    with pytest.raises(TypeError):  # a frame that is not a buffer
        await client.write({"x": Serialized({"serializer": "pickle"}, [object()])})
    assert not client.closed()
    await client.write({"op": "still here", "x": to_serialize(np.zeros((2, 0)))})
    reply = await server.read()
    assert reply["op"] == "still here" and reply["x"].shape == (2, 0)
    await client.close()
    await server.close()


async def start_http_server() -> asyncio.Server:
    """A minimal HTTP server: one response to any request, then close."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(respond, "127.0.0.1", 0)


@gen_test()
async def test_connecting_to_an_http_server_is_a_connection_failure(backend) -> None:
    server = await start_http_server()
    async with server:
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        with pytest.raises(ConnectionError, match="not an arraywire listener") as failed:
            await ArraywireBackend().get_connector().connect(address)
        assert isinstance(failed.value.__cause__, ProtocolError)
        assert "HTTP" in str(failed.value)
        # Dask's connect retries it as any connection failure until its timeout
        with pytest.raises(OSError, match="Timed out trying to connect"):
            await connect("aw://" + address, timeout=0.5)
