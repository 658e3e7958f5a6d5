"""Described messages on blocking Channels (docs/PROTOCOL.md, "A message
copied in place"), over AF_UNIX socket pairs of one process: the kernel
names this process as each end's peer, so each receive copies from this
process's own memory, as it would from another's. Hand-made peers write the
records themselves to prove what the receiver checks and answers."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from backends import Backend, backend_env
from copies import BOTH, Copied, base, described, ranges_of, read_record, record
from sockets import Peer, receive_exactly

import arraywire
from arraywire import IncompleteTransferError, ProtocolError
from arraywire._wire import control, samehost
from arraywire._wire.engine import plan_send

LIMIT = 30.0
THRESHOLD = samehost.SAME_HOST_BYTES


@pytest.fixture
def copied(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Copied:
    return Copied(monkeypatch)


@pytest.fixture
def channels() -> Iterator[tuple[arraywire.Channel, arraywire.Channel]]:
    a, b = socket.socketpair()
    for sock in (a, b):
        sock.settimeout(LIMIT)
    with arraywire.Channel(a, capabilities=BOTH) as left, arraywire.Channel(
        b, capabilities=BOTH
    ) as right:
        assert left.same_host and right.same_host
        yield left, right


def payload_of(arrays: Any) -> int:
    values = arrays.values() if isinstance(arrays, dict) else arrays
    return sum(np.asarray(a).nbytes for a in values)


STRUCTURED = np.dtype([("x", "<f8"), ("n", "<i4"), ("tag", "S4")])


def structured(n: int) -> np.ndarray:
    array = np.zeros(n, STRUCTURED)
    array["x"] = np.arange(n) / 2
    array["n"] = np.arange(n)
    array["tag"] = b"ab"
    return array


ARRAYS = {
    "contiguous": lambda: base(THRESHOLD // 8 * 3),
    "at the threshold": lambda: np.arange(THRESHOLD, dtype=np.uint8),
    "just below": lambda: np.arange(THRESHOLD - 8, dtype=np.uint8),
    "fortran": lambda: np.asfortranarray(base(600 * 700).reshape(600, 700)),
    "row slice": lambda: base(1000 * 1200).reshape(1000, 1200)[:, 100:900],
    "every other row": lambda: base(800 * 1024).reshape(800, 1024)[::2],
    "short runs": lambda: base(1000 * 1200).reshape(1000, 1200)[:, ::2],
    "structured": lambda: structured(200_000),
    "0-d": lambda: np.float64(2.5),
}
# Whether the sender describes each (the socket path otherwise).
DESCRIBED = {
    "contiguous": True, "at the threshold": True, "just below": False, "fortran": True,
    "row slice": True, "every other row": True, "short runs": False, "structured": True,
    "0-d": False,
}


@pytest.mark.parametrize("kind", ARRAYS)
def test_arrays_arrive_copied_in_place(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel], kind: str
) -> None:
    """Each array arrives equal, in the sender's layout; those of a payload of
    SAME_HOST_BYTES or more and runs worth a range are copied, not sent."""
    left, right = channels
    array = ARRAYS[kind]()
    sending = Peer(left.send, array)
    got = right.recv(timeout=LIMIT)
    assert sending.result() == plan_send((array,)).total
    np.testing.assert_array_equal(got, array)
    assert got.dtype == np.asarray(array).dtype
    assert copied.bytes == (np.asarray(array).nbytes if DESCRIBED[kind] else 0)


def test_several_named_arrays_and_metadata(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    left, right = channels
    arrays = {
        "big": base(300_000), "empty": np.zeros(0), "fortran": np.asfortranarray(base(40_000).reshape(200, 200)),
        "slice": base(600_000).reshape(300, 2000)[:, :1000],
    }
    sending = Peer(lambda: left.send_arrays(arrays, metadata=b"meta"))
    message = right.recv_message(timeout=LIMIT)
    sending.result()
    assert list(message.arrays) == list(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(message.arrays[name], array)  # type: ignore[call-overload]
    assert message.metadata == b"meta"
    assert copied.bytes == payload_of(arrays)


def test_send_returns_once_copied(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    """The sender overwrites its array as soon as send returns; the receiver,
    which starts its receive late, still gets the values sent."""
    left, right = channels
    array = base(1 << 20)
    returned = threading.Event()

    def send_then_overwrite() -> None:
        left.send(array)
        returned.set()
        array[:] = -1

    sending = Peer(send_then_overwrite)
    time.sleep(0.3)
    assert not returned.is_set()  # a rendezvous: it waits for the receiver
    got = right.recv(timeout=LIMIT)
    sending.result()
    np.testing.assert_array_equal(got, base(1 << 20))
    assert copied.bytes == got.nbytes


def test_out_and_a_misfit(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    """out= takes the copy; a message that does not fit is not copied, raises
    ValueError, and the Channel goes on; the sender's sends return."""
    left, right = channels
    out = np.empty(1 << 18)
    sending = Peer(lambda: [left.send(base(1 << 18)) for _ in range(3)])
    assert right.recv(out=out, timeout=LIMIT) is out
    np.testing.assert_array_equal(out, base(1 << 18))
    with pytest.raises(ValueError, match="out is float32"):
        right.recv(out=np.empty(1 << 18, np.float32), timeout=LIMIT)
    assert right.recv(out=lambda spec: np.empty(spec.shape, spec.dtype)).sum() == base(1 << 18).sum()
    sending.result()
    assert copied.bytes == 2 * out.nbytes


def test_progress_of_both_ends(
    backend: Backend, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    left, right = channels
    array = base(1 << 20)
    sent: list[tuple[int, int]] = []
    received: list[tuple[int, int]] = []
    sending = Peer(lambda: left.send(array, progress=lambda done, total: sent.append((done, total))))
    right.recv(progress=lambda done, total: received.append((done, total)), timeout=LIMIT)
    total = sending.result()
    assert sent == [(0, total), (total, total)]
    assert received[-1] == (total, total)
    assert all(done <= total for done, _ in received)


def test_both_send_before_they_receive(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    """Two ends that each send described messages (and a small one) before
    they receive each answer the other's while they wait: neither waits for
    ever, and every message arrives in order."""
    left, right = channels

    def talk(channel: arraywire.Channel, offset: float) -> list[np.ndarray]:
        channel.send(base(1 << 18) + offset)
        channel.send(np.arange(3) + offset)
        channel.send(base(1 << 19) + offset)
        return [channel.recv(timeout=LIMIT) for _ in range(3)]

    other = Peer(talk, right, 100.0)
    mine = talk(left, 0.0)
    theirs = other.result()
    for got, offset in ((mine, 100.0), (theirs, 0.0)):
        np.testing.assert_array_equal(got[0], base(1 << 18) + offset)
        np.testing.assert_array_equal(got[1], np.arange(3) + offset)
        np.testing.assert_array_equal(got[2], base(1 << 19) + offset)
    assert copied.bytes == 2 * (base(1 << 18).nbytes + base(1 << 19).nbytes)


def test_a_message_received_while_a_send_waits(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    """The peer's message that came before the answer is kept: poll says
    so, and the next receive returns it (into out= too)."""
    left, right = channels
    right.send(np.arange(3))
    answering = Peer(lambda: right.recv(timeout=LIMIT))
    left.send(base(1 << 18))
    np.testing.assert_array_equal(answering.result(), base(1 << 18))
    assert left.poll()
    out = np.empty(3, np.int64)
    assert left.recv(out=out, timeout=LIMIT) is out
    np.testing.assert_array_equal(out, np.arange(3))
    assert not left.poll()


def test_a_receiving_thread_meanwhile(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    """While a thread waits in a receive, a send of the same Channel cannot
    read its answer, so it takes the socket path; the answer the receiving
    thread gets is copied as usual."""
    left, right = channels
    receiving = Peer(lambda: left.recv(timeout=LIMIT))
    time.sleep(0.2)  # the receive waits first
    answering = Peer(lambda: right.recv(timeout=LIMIT))
    left.send(base(1 << 18))
    np.testing.assert_array_equal(answering.result(), base(1 << 18))
    assert copied.bytes == 0
    right.send(base(1 << 18) * 2)
    np.testing.assert_array_equal(receiving.result(), base(1 << 18) * 2)
    assert copied.bytes == base(1 << 18).nbytes


def test_iteration_and_send_many(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    left, right = channels
    arrays = [np.arange(5), base(1 << 18), np.arange(7), base(1 << 18) + 1]
    sending = Peer(lambda: (left.send_many(arrays), left.close()))
    got = list(right)
    sending.result()
    assert len(got) == len(arrays)
    for received, array in zip(got, arrays, strict=True):
        np.testing.assert_array_equal(received, array)
    assert copied.bytes == 2 * base(1 << 18).nbytes


# --- hand-made senders ----------------------------------------------------------


@pytest.fixture
def raw() -> Iterator[tuple[arraywire.Channel, socket.socket]]:
    a, b = socket.socketpair()
    b.settimeout(LIMIT)
    with arraywire.Channel(a, capabilities=BOTH) as channel, b:
        a.settimeout(LIMIT)
        yield channel, b


def test_the_records_on_the_wire(backend: Backend, raw: tuple[arraywire.Channel, socket.socket]) -> None:
    """The receiver copies, answers copied (status 0, every payload byte) and
    returns the arrays only after the confirm."""
    channel, peer = raw
    array = base(1 << 18)
    peer.sendall(described(array))
    receiving = Peer(channel.recv)
    kind, body = read_record(peer)
    assert kind == control.COPIED
    assert samehost.decode_copied(body, array.nbytes) == (array.nbytes, samehost.OK, 0)
    time.sleep(0.2)
    assert receiving.is_alive()  # it waits for the confirm
    peer.sendall(samehost.encode_confirm())
    np.testing.assert_array_equal(receiving.result(), array)


def test_no_confirm_no_arrays(backend: Backend, raw: tuple[arraywire.Channel, socket.socket]) -> None:
    """A sender gone before its confirm: IncompleteTransferError, although
    every byte was copied."""
    channel, peer = raw
    array = base(1 << 18)
    total = plan_send((array,)).total
    peer.sendall(described(array))
    receiving = Peer(channel.recv)
    assert read_record(peer)[0] == control.COPIED
    peer.close()
    with pytest.raises(IncompleteTransferError) as caught:
        receiving.result()
    assert (caught.value.bytes_done, caught.value.bytes_expected) == (total, total)
    assert channel.closed


def test_sender_gone_before_the_answer(
    backend: Backend, raw: tuple[arraywire.Channel, socket.socket]
) -> None:
    """The copied record cannot go (the sender closed at once): as when no
    confirm comes, IncompleteTransferError, though every byte was copied."""
    channel, peer = raw
    array = base(1 << 18)
    total = plan_send((array,)).total
    peer.sendall(described(array))
    peer.close()
    with pytest.raises(IncompleteTransferError) as caught:
        channel.recv(timeout=LIMIT)
    assert (caught.value.bytes_done, caught.value.bytes_expected) == (total, total)
    assert channel.closed


def test_an_unmapped_range(backend: Backend, raw: tuple[arraywire.Channel, socket.socket]) -> None:
    """The kernel's EFAULT: the receiver raises it with the bytes it copied
    and answers status 1 with its errno, then closes."""
    channel, peer = raw
    array = base(1 << 18)
    header = len(plan_send((array,)).header)
    half = array.nbytes // 2
    peer.sendall(described(array, (
        (samehost.Range(array.ctypes.data, half), samehost.Range(4096, array.nbytes - half)),
    )))
    with pytest.raises(OSError) as caught:
        channel.recv(timeout=LIMIT)
    assert caught.value.errno == errno.EFAULT
    assert caught.value.bytes_done == header + half  # type: ignore[attr-defined]
    kind, body = read_record(peer)
    assert kind == control.COPIED
    assert samehost.decode_copied(body, array.nbytes) == (half, samehost.FAILED, errno.EFAULT)
    assert channel.closed


HOSTILE_ARRAY = np.zeros(1 << 17)
START = HOSTILE_ARRAY.ctypes.data
SIZE = HOSTILE_ARRAY.nbytes
HOSTILE = {
    "overlap": (ranges_of((START, SIZE // 2), (START + 8, SIZE // 2)), "overlaps range 1"),
    "short": (ranges_of((START, SIZE - 8)), "add up to"),
    "long": (ranges_of((START, SIZE), (START + SIZE, 8)), "add up to"),
    "zero length": (ranges_of((START, 0), (START, SIZE)), "0 bytes"),
    "past the address space": (ranges_of(((1 << 64) - 8, SIZE)), "address space"),
    "two arrays for one": (ranges_of((START, SIZE)) * 2, "describes 2 arrays"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_descriptions_refused(
    copied: Copied, raw: tuple[arraywire.Channel, socket.socket], case: str
) -> None:
    """A description that does not fit the header is refused before any byte
    is copied: ProtocolError here, a refusal record to the sender."""
    channel, peer = raw
    description, words = HOSTILE[case]
    peer.sendall(described(HOSTILE_ARRAY, description))
    with pytest.raises(ProtocolError, match=words):
        channel.recv(timeout=LIMIT)
    kind, reason = read_record(peer)
    assert kind == control.REFUSAL and words in reason.decode()
    assert copied.bytes == 0
    assert channel.closed


def test_too_many_ranges(copied: Copied, raw: tuple[arraywire.Channel, socket.socket]) -> None:
    channel, peer = raw
    count = samehost.MAX_RANGES + 1
    peer.sendall(record(control.RANGES, samehost.COUNT.pack(count) + bytes(control.RANGES_LIMIT - 4)))
    with pytest.raises(ProtocolError, match="4,097 ranges"):
        channel.recv(timeout=LIMIT)
    assert copied.bytes == 0


@pytest.mark.parametrize(
    ("sent", "words"),
    [
        (record(control.COPIED, samehost.COPIED.pack(0, 0, 0)), "no message of this end awaits"),
        (record(control.CONFIRM, b""), "confirm record where a message starts"),
        (record(control.RANGES, samehost.COUNT.pack(0)) + record(control.CONFIRM, b""), "after a ranges record"),
    ],
    ids=["copied", "confirm", "record after ranges"],
)
def test_records_out_of_place(
    backend: Backend, raw: tuple[arraywire.Channel, socket.socket], sent: bytes, words: str
) -> None:
    channel, peer = raw
    peer.sendall(sent)
    with pytest.raises(ProtocolError, match=words):
        channel.recv(timeout=LIMIT)
    assert channel.closed


def test_a_message_where_the_confirm_belongs(
    backend: Backend, raw: tuple[arraywire.Channel, socket.socket]
) -> None:
    channel, peer = raw
    array = base(1 << 18)
    peer.sendall(described(array))
    receiving = Peer(channel.recv)
    assert read_record(peer)[0] == control.COPIED
    peer.sendall(plan_send((np.arange(3),)).header + np.arange(3).tobytes())
    with pytest.raises(ProtocolError, match="where the confirm"):
        receiving.result()


def test_a_described_sender_answered_by_hand(
    backend: Backend, raw: tuple[arraywire.Channel, socket.socket]
) -> None:
    """The sender's side: a ranges record naming its array's memory, the
    header, then it waits; status 0 gets a confirm and send returns the
    message size; status 1 fails the send with the bytes acknowledged."""
    channel, peer = raw
    array = base(1 << 18)
    plan = plan_send((array,))
    sending = Peer(channel.send, array)
    kind, body = read_record(peer)
    assert kind == control.RANGES
    assert samehost.decode_ranges(body) == ranges_of((array.ctypes.data, array.nbytes))
    assert receive_exactly(peer, len(plan.header)) == plan.header
    time.sleep(0.2)
    assert sending.is_alive()
    peer.sendall(samehost.encode_copied(array.nbytes))
    assert read_record(peer) == (control.CONFIRM, b"")
    assert sending.result() == plan.total

    sending = Peer(channel.send, array)
    read_record(peer)
    receive_exactly(peer, len(plan.header))
    peer.sendall(samehost.encode_copied(1000, samehost.FAILED, errno.EFAULT))
    with pytest.raises(ConnectionAbortedError, match="after 1,000 of") as caught:
        sending.result()
    assert caught.value.bytes_done == len(plan.header) + 1000  # type: ignore[attr-defined]
    assert channel.closed


def test_a_described_sender_whose_receiver_closes(
    backend: Backend, raw: tuple[arraywire.Channel, socket.socket]
) -> None:
    channel, peer = raw
    array = base(1 << 18)
    header = len(plan_send((array,)).header)
    sending = Peer(channel.send, array)
    read_record(peer)
    receive_exactly(peer, header)
    peer.close()
    with pytest.raises(BrokenPipeError) as caught:
        sending.result()
    assert caught.value.bytes_done == header  # type: ignore[attr-defined]


# --- between processes ----------------------------------------------------------

SENDER = """
import os, signal, sys
import numpy as np
import arraywire
with arraywire.connect(sys.argv[1], timeout=30) as channel:
    print(channel.same_host, flush=True)
    array = np.arange(int(sys.argv[2]), dtype=np.float64)
    channel.send(array)
    array[:] = -1  # at once: the receiver's copy is done
    channel.send(np.arange(3))
    channel.recv()
"""
RECEIVER = """
import os, sys
import numpy as np
import arraywire
with arraywire.connect(sys.argv[1], timeout=30) as channel:
    print(channel.same_host, flush=True)
    channel.recv(progress=lambda done, total: os._exit(3))
"""


def child(backend: Backend, script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], env=backend_env(backend.name),
        stdout=subprocess.PIPE, text=True,
    )


@pytest.fixture
def path() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        yield os.path.join(directory, "sock")


def test_from_another_process(backend: Backend, path: str) -> None:
    """A sender process that overwrites its array as soon as send returns:
    the receiver, late to receive, has the values sent."""
    count = 1 << 21
    with arraywire.listen(path) as listener:
        sender = child(backend, SENDER, path, str(count))
        with listener.accept(timeout=LIMIT) as channel:
            assert channel.same_host
            time.sleep(0.3)
            np.testing.assert_array_equal(channel.recv(timeout=LIMIT), base(count))
            np.testing.assert_array_equal(channel.recv(timeout=LIMIT), np.arange(3))
            channel.send(np.zeros(1))
        assert sender.communicate(timeout=LIMIT)[0] == "True\n"
        assert sender.returncode == 0


def test_sender_killed_mid_copy(backend: Backend, path: str) -> None:
    """The sender dies while the receiver copies: IncompleteTransferError,
    never the arrays, with the bytes copied before."""
    count = 1 << 25  # 256 MiB
    with arraywire.listen(path) as listener:
        sender = child(backend, SENDER, path, str(count))
        with listener.accept(timeout=LIMIT) as channel:

            def kill(done: int, total: int) -> None:
                if sender.poll() is None:
                    sender.kill()
                    sender.wait()

            with pytest.raises(IncompleteTransferError) as caught:
                channel.recv(progress=kill, timeout=LIMIT)
            assert caught.value.bytes_done <= caught.value.bytes_expected
            assert caught.value.bytes_expected == plan_send((base(1),)).total - 8 + 8 * count
            assert channel.closed
        sender.communicate(timeout=LIMIT)


def test_receiver_killed_mid_copy(backend: Backend, path: str) -> None:
    """The receiver dies in its copy: the send fails as on a socket whose
    peer is gone, counting the header only."""
    array = base(1 << 25)
    header = len(plan_send((array,)).header)
    with arraywire.listen(path) as listener:
        receiver = child(backend, RECEIVER, path)
        with listener.accept(timeout=LIMIT) as channel:
            assert channel.same_host
            with pytest.raises((BrokenPipeError, ConnectionResetError)) as caught:
                channel.send(array)
            assert caught.value.bytes_done == header  # type: ignore[attr-defined]
            assert channel.closed
        receiver.communicate(timeout=LIMIT)
        assert receiver.returncode == 3


def test_a_receiving_thread_s_answers_beside_small_sends(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    """A receiving thread writes copied records while another thread of its
    Channel sends small messages: no send finds its direction taken."""
    left, right = channels
    count = 2000
    answers = Peer(lambda: [left.recv(timeout=LIMIT) for _ in range(6)])

    def sends_then_receives() -> list[int]:
        for i in range(6):  # each keeps the small messages that come while it waits
            right.send(base(1 << 18) + i)
        return [int(right.recv(timeout=LIMIT)[0]) for _ in range(count)]

    other = Peer(sends_then_receives)
    for i in range(count):
        left.send(np.array([i]))
    assert other.result() == list(range(count))
    for i, got in enumerate(answers.result()):
        np.testing.assert_array_equal(got, base(1 << 18) + i)
    assert copied.bytes == 6 * base(1 << 18).nbytes


def test_a_receive_s_timeout_while_a_send_waits(
    backend: Backend, raw: tuple[arraywire.Channel, socket.socket]
) -> None:
    """A receive that finds a described send's rendezvous holding its
    direction waits for it at most its timeout; the Channel goes on."""
    channel, peer = raw
    array = base(1 << 18)
    sending = Peer(lambda: channel.send(array))
    read_record(peer)
    receive_exactly(peer, len(plan_send((array,)).header))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        channel.recv(timeout=0.3)
    assert time.monotonic() - started < LIMIT / 2
    assert not channel.poll()
    peer.sendall(samehost.encode_copied(array.nbytes))
    assert sending.result() == plan_send((array,)).total
    peer.sendall(plan_send((np.arange(3),)).header + np.arange(3).tobytes())
    np.testing.assert_array_equal(channel.recv(timeout=LIMIT), np.arange(3))


def test_a_kept_message_that_does_not_fit(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    """A message kept while a send waited, of two arrays: recv(out=callable)
    raises the misfit's ValueError, as on the socket path."""
    left, right = channels
    right.send_arrays([np.arange(3), np.arange(4)])
    answering = Peer(lambda: right.recv(timeout=LIMIT))
    left.send(base(1 << 18))
    answering.result()
    with pytest.raises(ValueError, match="one with 2"):
        left.recv(out=lambda spec: np.empty(spec.shape, spec.dtype))


def test_send_many_describes_a_large_array_of_a_learned_layout(
    copied: Copied, channels: tuple[arraywire.Channel, arraywire.Channel]
) -> None:
    left, right = channels
    left.send(np.zeros(4))
    right.recv(timeout=LIMIT)
    sending = Peer(lambda: left.send_many([base(1 << 19), np.zeros(4)]))
    np.testing.assert_array_equal(right.recv(timeout=LIMIT), base(1 << 19))
    np.testing.assert_array_equal(right.recv(timeout=LIMIT), np.zeros(4))
    sending.result()
    assert copied.bytes == base(1 << 19).nbytes


def test_a_timeout_after_a_ranges_record_breaks_the_channel(
    backend: Backend, raw: tuple[arraywire.Channel, socket.socket]
) -> None:
    """The ranges record came, its message did not: the description is
    taken, so the stream is out of step although no message byte came."""
    channel, peer = raw
    peer.sendall(described(base(1 << 18))[: -len(plan_send((base(1 << 18),)).header)])
    with pytest.raises(TimeoutError):
        channel.recv(timeout=0.3)
    assert channel.closed
