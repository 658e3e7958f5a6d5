"""Described messages on asyncio Channels (docs/PROTOCOL.md, "A message
copied in place"), as tests/sync/test_same_host_copies.py proves them for
the blocking Channel: AF_UNIX socket pairs of one process (each receive
copies from this process's own memory), hand-made peers, and processes."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
from backends import Backend, backend_env
from copies import BOTH, Copied, base, described, ranges_of, read_record
from sockets import receive_exactly

from arraywire import BrokenStreamError, IncompleteTransferError, ProtocolError, aio
from arraywire._wire import control, samehost
from arraywire._wire.engine import plan_send

LIMIT = 30.0
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, LIMIT)

    return asyncio.run(bounded())


@pytest.fixture
def copied(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Copied:
    return Copied(monkeypatch)


def pair() -> tuple[aio.Channel, aio.Channel]:
    a, b = socket.socketpair()
    return aio.Channel(a, capabilities=BOTH), aio.Channel(b, capabilities=BOTH)


ARRAYS = {
    "contiguous": (lambda: base(1 << 18), True),
    "just below": (lambda: np.arange(samehost.SAME_HOST_BYTES - 8, dtype=np.uint8), False),
    "fortran": (lambda: np.asfortranarray(base(600 * 700).reshape(600, 700)), True),
    "row slice": (lambda: base(1000 * 1200).reshape(1000, 1200)[:, 100:900], True),
}


@pytest.mark.parametrize("kind", ARRAYS)
def test_arrays_arrive_copied_in_place(copied: Copied, kind: str) -> None:
    make, copies = ARRAYS[kind]
    array = make()

    async def main() -> np.ndarray:
        left, right = pair()
        async with left, right:
            assert left.same_host and right.same_host
            sending = asyncio.create_task(left.send(array))
            got = await right.recv()
            assert await sending == plan_send((array,)).total
            return got

    got = run(main())
    np.testing.assert_array_equal(got, array)
    assert copied.bytes == (array.nbytes if copies else 0)


def test_send_returns_once_copied_and_out(copied: Copied) -> None:
    """The sender overwrites its array once send returns; the receiver, late
    to receive, has the values sent, into out= too; a misfit is not copied."""

    async def main() -> None:
        left, right = pair()
        async with left, right:
            array = base(1 << 18)

            async def send_then_overwrite() -> None:
                for _ in range(3):
                    await left.send_arrays([array])
                array[:] = -1

            sending = asyncio.create_task(send_then_overwrite())
            await asyncio.sleep(0.2)
            assert not sending.done()  # a rendezvous: it waits for the receiver
            np.testing.assert_array_equal(await right.recv(), base(1 << 18))
            out = np.empty(1 << 18)
            assert await right.recv(out=out) is out
            np.testing.assert_array_equal(out, base(1 << 18))
            with pytest.raises(ValueError, match="out is float32"):
                await right.recv(out=np.empty(1 << 18, np.float32))
            await sending

    run(main())
    assert copied.bytes == 2 * base(1 << 18).nbytes


def test_progress_of_both_ends(backend: Backend) -> None:
    sent: list[tuple[int, int]] = []
    received: list[tuple[int, int]] = []

    async def main() -> int:
        left, right = pair()
        async with left, right:
            sending = asyncio.create_task(
                left.send(base(1 << 20), progress=lambda done, total: sent.append((done, total)))
            )
            await right.recv(progress=lambda done, total: received.append((done, total)))
            return await sending

    total = run(main())
    assert sent == [(0, total), (total, total)]
    assert received[-1] == (total, total)


def test_both_send_before_they_receive(copied: Copied) -> None:
    """Each end sends described messages and a small one before it
    receives: each answers the other's while it waits."""

    async def talk(channel: aio.Channel, offset: float) -> list[Any]:
        await channel.send(base(1 << 18) + offset)
        await channel.send(np.arange(3) + offset)
        await channel.send(base(1 << 19) + offset)
        assert await channel.poll()
        return [await channel.recv() for _ in range(3)]

    async def main() -> tuple[list[Any], list[Any]]:
        left, right = pair()
        async with left, right:
            mine, theirs = await asyncio.gather(talk(left, 0.0), talk(right, 100.0))
            return mine, theirs

    mine, theirs = run(main())
    for got, offset in ((mine, 100.0), (theirs, 0.0)):
        np.testing.assert_array_equal(got[0], base(1 << 18) + offset)
        np.testing.assert_array_equal(got[1], np.arange(3) + offset)
        np.testing.assert_array_equal(got[2], base(1 << 19) + offset)
    assert copied.bytes == 2 * (base(1 << 18).nbytes + base(1 << 19).nbytes)


def test_a_receiving_task_meanwhile(copied: Copied) -> None:
    """While a task waits in a receive, a send takes the socket path; the
    answer the receiving task gets is copied."""

    async def main() -> None:
        left, right = pair()
        async with left, right:
            receiving = asyncio.create_task(left.recv())
            await asyncio.sleep(0.1)
            answering = asyncio.create_task(right.recv())
            await left.send(base(1 << 18))
            np.testing.assert_array_equal(await answering, base(1 << 18))
            assert copied.bytes == 0
            await right.send(base(1 << 18) * 2)
            np.testing.assert_array_equal(await receiving, base(1 << 18) * 2)

    run(main())
    assert copied.bytes == base(1 << 18).nbytes


def test_iteration_and_send_many(copied: Copied) -> None:
    arrays = [np.arange(5), base(1 << 18), np.arange(7), base(1 << 18) + 1]

    async def main() -> list[Any]:
        left, right = pair()
        async with right:

            async def send() -> None:
                async with left:
                    await left.send_many(arrays)

            sending = asyncio.create_task(send())
            got = [item async for item in right]
            await sending
            return got

    got = run(main())
    for received, array in zip(got, arrays, strict=True):
        np.testing.assert_array_equal(received, array)
    assert copied.bytes == 2 * base(1 << 18).nbytes


# --- hand-made peers ------------------------------------------------------------


def with_raw(test: Any) -> Any:
    """Run test(channel, peer) with an aio Channel and a blocking raw socket."""
    a, b = socket.socketpair()
    b.settimeout(LIMIT)

    async def main() -> Any:
        with b:
            async with aio.Channel(a, capabilities=BOTH) as channel:
                return await test(channel, b)

    return run(main())


def test_the_records_and_a_missing_confirm(backend: Backend) -> None:
    array = base(1 << 18)
    total = plan_send((array,)).total

    async def test(channel: aio.Channel, peer: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        peer.sendall(described(array))
        receiving = asyncio.create_task(channel.recv())
        kind, body = await loop.run_in_executor(None, read_record, peer)
        assert kind == control.COPIED
        assert samehost.decode_copied(body, array.nbytes) == (array.nbytes, samehost.OK, 0)
        peer.sendall(samehost.encode_confirm())
        np.testing.assert_array_equal(await receiving, array)
        peer.sendall(described(array))
        receiving = asyncio.create_task(channel.recv())
        assert (await loop.run_in_executor(None, read_record, peer))[0] == control.COPIED
        peer.shutdown(socket.SHUT_WR)
        with pytest.raises(IncompleteTransferError) as caught:
            await receiving
        assert (caught.value.bytes_done, caught.value.bytes_expected) == (total, total)

    with_raw(test)


def test_an_unmapped_range(backend: Backend) -> None:
    array = base(1 << 18)
    header = len(plan_send((array,)).header)
    half = array.nbytes // 2

    async def test(channel: aio.Channel, peer: socket.socket) -> None:
        peer.sendall(described(array, ranges_of((array.ctypes.data, half), (4096, array.nbytes - half))))
        with pytest.raises(OSError) as caught:
            await channel.recv()
        assert caught.value.errno == errno.EFAULT
        assert caught.value.bytes_done == header + half  # type: ignore[attr-defined]
        kind, body = read_record(peer)
        assert kind == control.COPIED
        assert samehost.decode_copied(body, array.nbytes) == (half, samehost.FAILED, errno.EFAULT)

    with_raw(test)


@pytest.mark.parametrize(
    ("description", "words"),
    [
        (lambda a: ranges_of((a.ctypes.data, a.nbytes // 2), (a.ctypes.data + 8, a.nbytes // 2)), "overlaps"),
        (lambda a: ranges_of((a.ctypes.data, a.nbytes - 8)), "add up to"),
    ],
    ids=["overlap", "short"],
)
def test_hostile_descriptions_refused(copied: Copied, description: Any, words: str) -> None:
    array = np.zeros(1 << 17)

    async def test(channel: aio.Channel, peer: socket.socket) -> None:
        peer.sendall(described(array, description(array)))
        with pytest.raises(ProtocolError, match=words):
            await channel.recv()
        kind, reason = read_record(peer)
        assert kind == control.REFUSAL and words in reason.decode()

    with_raw(test)
    assert copied.bytes == 0


def test_a_described_sender_answered_by_hand(backend: Backend) -> None:
    array = base(1 << 18)
    plan = plan_send((array,))

    async def test(channel: aio.Channel, peer: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sending = asyncio.create_task(channel.send(array))
        kind, body = await loop.run_in_executor(None, read_record, peer)
        assert kind == control.RANGES
        assert samehost.decode_ranges(body) == ranges_of((array.ctypes.data, array.nbytes))
        assert receive_exactly(peer, len(plan.header)) == plan.header
        peer.sendall(samehost.encode_copied(array.nbytes))
        assert await sending == plan.total
        assert read_record(peer) == (control.CONFIRM, b"")
        sending = asyncio.create_task(channel.send(array))
        await loop.run_in_executor(None, read_record, peer)
        receive_exactly(peer, len(plan.header))
        peer.close()
        with pytest.raises(BrokenPipeError) as caught:
            await sending
        assert caught.value.bytes_done == len(plan.header)  # type: ignore[attr-defined]

    with_raw(test)


# --- between processes ----------------------------------------------------------

SENDER = """
import sys
import numpy as np
import arraywire
with arraywire.connect(sys.argv[1], timeout=30) as channel:
    array = np.arange(int(sys.argv[2]), dtype=np.float64)
    channel.send(array)
    array[:] = -1
    channel.recv()
"""


@pytest.fixture
def path() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        yield os.path.join(directory, "sock")


def test_from_another_process_and_killed_mid_copy(backend: Backend, path: str) -> None:
    """A blocking sender process: an asyncio receiver copies its array;
    killed during a copy, the receive fails, the arrays never returned."""

    def sender(count: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", SENDER, path, str(count)], env=backend_env(backend.name),
            text=True,
        )

    async def main() -> None:
        listener = await aio.listen(path)
        try:
            child = sender(1 << 21)
            channel = await listener.accept(timeout=LIMIT)
            async with channel:
                assert channel.same_host
                np.testing.assert_array_equal(await channel.recv(), base(1 << 21))
                await channel.send(np.zeros(1))
            child.wait(LIMIT)
            child = sender(1 << 25)
            channel = await listener.accept(timeout=LIMIT)
            async with channel:

                def kill(done: int, total: int) -> None:
                    if child.poll() is None:
                        child.kill()
                        child.wait()

                with pytest.raises(IncompleteTransferError) as caught:
                    await channel.recv(progress=kill)
                assert caught.value.bytes_done <= caught.value.bytes_expected
            child.wait(LIMIT)
        finally:
            await listener.aclose()

    run(main())


@pytest.mark.parametrize(
    ("sent", "words"),
    [
        (samehost.encode_copied(0), "no message of this end awaits"),
        (samehost.encode_confirm(), "confirm record where a message starts"),
    ],
    ids=["copied", "confirm"],
)
def test_records_out_of_place_close_the_channel(backend: Backend, sent: bytes, words: str) -> None:
    async def test(channel: aio.Channel, peer: socket.socket) -> None:
        peer.sendall(sent + plan_send((np.arange(3),)).header + np.arange(3).tobytes())
        with pytest.raises(ProtocolError, match=words):
            await channel.recv()
        with pytest.raises(BrokenStreamError):
            await channel.recv()

    with_raw(test)


def test_a_receive_s_timeout_while_a_send_waits(backend: Backend) -> None:
    array = base(1 << 18)
    plan = plan_send((array,))

    async def test(channel: aio.Channel, peer: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sending = asyncio.create_task(channel.send(array))
        await loop.run_in_executor(None, read_record, peer)
        receive_exactly(peer, len(plan.header))
        with pytest.raises(TimeoutError):
            await channel.recv(timeout=0.3)
        assert not await channel.poll()
        peer.sendall(samehost.encode_copied(array.nbytes))
        assert await sending == plan.total
        peer.sendall(plan_send((np.arange(3),)).header + np.arange(3).tobytes())
        np.testing.assert_array_equal(await channel.recv(timeout=LIMIT), np.arange(3))

    with_raw(test)


def test_sender_gone_before_the_answer(backend: Backend) -> None:
    array = base(1 << 18)
    total = plan_send((array,)).total

    async def test(channel: aio.Channel, peer: socket.socket) -> None:
        peer.sendall(described(array))
        peer.close()
        with pytest.raises(IncompleteTransferError) as caught:
            await channel.recv()
        assert (caught.value.bytes_done, caught.value.bytes_expected) == (total, total)

    with_raw(test)


def test_a_timeout_after_a_ranges_record_breaks_the_channel(backend: Backend) -> None:
    array = base(1 << 18)

    async def test(channel: aio.Channel, peer: socket.socket) -> None:
        peer.sendall(described(array)[: -len(plan_send((array,)).header)])
        with pytest.raises(TimeoutError):
            await channel.recv(timeout=0.3)
        with pytest.raises(BrokenStreamError):
            await channel.recv()

    with_raw(test)
