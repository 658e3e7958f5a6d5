"""Failures of the peer and the socket: each gives a precise error, never lost,
corrupted or extra data. Both backends; separate processes where the failure is
a process's death or its signal disposition."""

from __future__ import annotations

import errno
import signal
import socket
import struct
import threading
import time
from textwrap import dedent

import numpy as np
import pytest
from backends import Backend
from faultkit import (
    Child,
    Pairs,
    assert_exact_prefix,
    connect_code,
    drain,
    listener,
    payload,
    sentinel_buffer,
    wait_for_stall,
)
from sockets import Peer

import arraywire

MB = 1 << 20


def _payload_code(nbytes: int, seed: int) -> str:
    # the child builds the same bytes as faultkit.payload
    return f"np.random.default_rng({seed}).integers(0, 251, {nbytes}, dtype=np.uint8)"


# --- the sending process dies -------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_sender_killed_while_blocked_in_send(backend: Backend, kind: str) -> None:
    """SIGKILL lands inside the child's send_from (the buffers are full): the
    receiver gets every byte the kernel had, intact, then a precise error."""
    size = 64 * MB
    with listener(kind) as (server, address):
        child = Child(
            backend.name,
            connect_code(kind, address)
            + f"data = {_payload_code(size, 1)}\n"
            + "print('sending', flush=True)\n"
            + "arraywire.send_from(data, sock)\n"
            + "print('finished', flush=True)\n",
        )
        try:
            conn, _ = server.accept()
            assert child.line() == "sending"
            queued = wait_for_stall(conn)
            child.proc.send_signal(signal.SIGKILL)
            assert child.wait() == -signal.SIGKILL
        finally:
            child.kill()
        with conn:
            target = sentinel_buffer(size)
            with pytest.raises(arraywire.IncompleteTransferError) as info:
                backend.module.recv_into(target, conn)
    done = info.value.bytes_done
    assert info.value.bytes_expected == size
    assert queued <= done < size
    assert_exact_prefix(target, payload(size, 1), done)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_sender_killed_while_receiver_waits(backend: Backend, kind: str) -> None:
    """The receiver is inside recv_into, data flowing, when the sender is killed."""
    size = 64 * MB
    with listener(kind) as (server, address):
        # about 100 MB/s at most, so the kill at 0.2 s is mid-transfer
        child = Child(
            backend.name,
            connect_code(kind, address)
            + f"data = {_payload_code(size, 2)}\n"
            + "print('sending', flush=True)\n"
            + dedent(
                """
                for start in range(0, data.nbytes, 1 << 20):
                    arraywire.send_from(data[start:start + (1 << 20)], sock)
                    time.sleep(0.01)
                """
            ),
        )
        try:
            conn, _ = server.accept()
            assert child.line() == "sending"
            killer = threading.Timer(0.2, child.proc.send_signal, (signal.SIGKILL,))
            killer.start()
            target = sentinel_buffer(size)
            with conn, pytest.raises(arraywire.IncompleteTransferError) as info:
                backend.module.recv_into(target, conn)
            killer.join()
            assert child.wait() == -signal.SIGKILL
        finally:
            child.kill()
    done = info.value.bytes_done
    assert (info.value.bytes_expected, done > 0, done < size) == (size, True, True)
    assert_exact_prefix(target, payload(size, 2), done)


# --- resets and broken pipes --------------------------------------------------


def _abort(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("scatter", [False, True], ids=["recv_into", "recvmsg_into"])
def test_reset_while_receiving(backend: Backend, pairs: Pairs, scatter: bool) -> None:
    a, b = pairs("tcp")
    sent = payload(MB, 3)

    def send_then_reset() -> None:
        a.sendall(sent)
        time.sleep(0.3)  # let every byte reach b before the RST
        _abort(a)

    peer = Peer(send_then_reset)
    target = sentinel_buffer(4 * MB)
    with b, pytest.raises(ConnectionResetError) as info:
        if scatter:
            parts = [target[i : i + 300_000] for i in range(0, target.nbytes, 300_000)]
            backend.module.recvmsg_into(parts, b)
        else:
            backend.module.recv_into(target, b)
    peer.result()
    assert info.value.errno == errno.ECONNRESET
    assert info.value.bytes_done == MB
    assert_exact_prefix(target, sent, MB)


@pytest.mark.parametrize("gather", [False, True], ids=["send_from", "sendmsg_from"])
def test_reset_while_sending(backend: Backend, pairs: Pairs, gather: bool) -> None:
    a, b = pairs("tcp")
    sent = payload(64 * MB, 4)

    def read_then_reset() -> int:
        got = bytearray(MB)
        b.recv_into(got, MB, socket.MSG_WAITALL)
        _abort(b)
        return len(got)

    peer = Peer(read_then_reset)
    with a, pytest.raises(ConnectionResetError) as info:
        if gather:
            backend.module.sendmsg_from([sent[:1000], sent[1000:]], a)
        else:
            backend.module.send_from(sent, a)
    assert peer.result() == MB
    assert MB <= info.value.bytes_done < sent.nbytes


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("call", ["send_from", "sendmsg_from"])
def test_send_to_closed_peer_raises_broken_pipe_even_with_default_sigpipe(
    backend: Backend, kind: str, call: str
) -> None:
    """SIGPIPE's default action kills; a process that restored it (as CLI tools
    do) must still get BrokenPipeError, never die (MSG_NOSIGNAL)."""
    with listener(kind) as (server, address):
        child = Child(
            backend.name,
            "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
            + connect_code(kind, address)
            + dedent(
                f"""
                assert sock.recv(1) == b""  # the peer has closed
                data = bytes(8 << 20)
                buffers = data if {call!r} == "send_from" else [data[:10], data[10:]]
                try:
                    arraywire.{call}(buffers, sock)
                except OSError as exc:
                    print(type(exc).__name__, exc.bytes_done, flush=True)
                """
            ),
        )
        try:
            conn, _ = server.accept()
            conn.close()
            assert child.wait() == 0, child.stderr()
            name, done = child.line().split()
        finally:
            child.kill()
    assert name == "BrokenPipeError"
    assert 0 <= int(done) < 8 << 20


# --- timeouts -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["socketpair", "tcp"])
@pytest.mark.parametrize("gather", [False, True], ids=["send_from", "sendmsg_from"])
def test_stalled_reader_times_out_sender(backend: Backend, pairs: Pairs, kind: str, gather: bool) -> None:
    """bytes_done on a send timeout is exactly what the peer can then read."""
    a, b = pairs(kind)
    sent = payload(64 * MB, 5)
    a.settimeout(0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        if gather:
            backend.module.sendmsg_from([sent[:777], sent[777 : 3 * MB], sent[3 * MB :]], a)
        else:
            backend.module.send_from(sent, a)
    elapsed = time.monotonic() - started
    assert (str(info.value), info.value.errno) == ("timed out", None)
    assert 0.3 <= elapsed < 3
    done = info.value.bytes_done
    assert 0 < done < sent.nbytes
    a.close()  # what is still queued at a reaches b before the EOF
    b.settimeout(5)
    received = bytearray()
    while chunk := b.recv(MB):
        received += chunk
    b.close()
    assert len(received) == done
    assert received == sent[:done].tobytes()


def test_stalled_sender_times_out_scatter_receive(backend: Backend, pairs: Pairs) -> None:
    a, b = pairs("tcp")
    sent = payload(3 * MB, 6)
    a.sendall(sent[: MB + MB // 2])
    b.settimeout(0.3)
    target = sentinel_buffer(3 * MB)
    parts = [target[:MB], target[MB : 2 * MB], target[2 * MB :]]
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        backend.module.recvmsg_into(parts, b)
    assert 0.3 <= time.monotonic() - started < 3
    assert info.value.bytes_done == MB + MB // 2
    assert_exact_prefix(target, sent, MB + MB // 2)


def test_steady_reader_never_times_out_sender(backend: Backend, pairs: Pairs) -> None:
    """The reader takes 1 MB every 0.1 s; a 0.5 s timeout bounds inactivity,
    not the 1.6 s the whole send takes."""
    a, b = pairs()
    sent = payload(16 * MB, 7)
    received = bytearray(sent.nbytes)

    def steady_reader() -> None:
        view = memoryview(received)
        for start in range(0, len(received), MB):
            b.recv_into(view[start : start + MB], MB, socket.MSG_WAITALL)
            time.sleep(0.1)

    reader = Peer(steady_reader)
    a.settimeout(0.5)
    started = time.monotonic()
    assert backend.module.send_from(sent, a) == sent.nbytes
    assert time.monotonic() - started > 1.0
    reader.result()
    assert received == sent.tobytes()


def test_steady_sender_never_times_out_scatter_receive(backend: Backend, pairs: Pairs) -> None:
    a, b = pairs("tcp")
    sent = payload(10 * MB, 8)

    def steady_sender() -> None:
        for start in range(0, sent.nbytes, MB):
            a.sendall(sent[start : start + MB])
            time.sleep(0.1)

    feeder = Peer(steady_sender)
    b.settimeout(0.5)
    target = sentinel_buffer(sent.nbytes)
    parts = [target[:10], target[10 : 5 * MB], target[5 * MB :]]
    started = time.monotonic()
    assert backend.module.recvmsg_into(parts, b) == sent.nbytes
    assert time.monotonic() - started > 0.8
    feeder.result()
    assert np.array_equal(target, sent)


# --- non-blocking sockets -------------------------------------------------------


@pytest.mark.parametrize("kind", ["socketpair", "tcp"])
@pytest.mark.parametrize("gather", [False, True], ids=["send_from", "sendmsg_from"])
def test_non_blocking_send_stops_at_a_full_buffer(
    backend: Backend, pairs: Pairs, kind: str, gather: bool
) -> None:
    a, b = pairs(kind)
    sent = payload(64 * MB, 9)
    a.setblocking(False)
    started = time.monotonic()
    with pytest.raises(BlockingIOError) as info:
        if gather:
            backend.module.sendmsg_from([sent[:100], sent[100:]], a)
        else:
            backend.module.send_from(sent, a)
    assert time.monotonic() - started < 1
    assert info.value.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    done = info.value.bytes_done
    assert 0 < done < sent.nbytes
    a.close()
    b.settimeout(5)
    received = bytearray()
    while chunk := b.recv(MB):
        received += chunk
    b.close()
    assert received == sent[:done].tobytes()


def test_non_blocking_scatter_receive_reports_what_it_got(backend: Backend, pairs: Pairs) -> None:
    a, b = pairs()
    sent = payload(5000, 10)
    a.sendall(sent[:2500])
    b.setblocking(False)
    target = sentinel_buffer(5000)
    with pytest.raises(BlockingIOError) as info:
        backend.module.recvmsg_into([target[:1000], target[1000:]], b)
    assert info.value.bytes_done == 2500
    assert_exact_prefix(target, sent, 2500)
    # the transfer can be finished where it stopped
    a.sendall(sent[2500:])
    b.setblocking(True)
    assert backend.module.recv_into(target[2500:], b) == 2500
    assert np.array_equal(target, sent)


def test_non_blocking_with_nothing_ready(backend: Backend, pairs: Pairs) -> None:
    _, b = pairs()
    b.setblocking(False)
    with pytest.raises(BlockingIOError) as info:
        backend.module.recv_into(bytearray(10), b)
    assert info.value.bytes_done == 0


# --- hostile buffer sequences ---------------------------------------------------


class _LyingList(list):  # type: ignore[type-arg]
    """Claims one item and yields many."""

    def __len__(self) -> int:
        return 1


class _Growing(np.ndarray):
    """Appends to a list each time numpy makes a view of it."""

    grows: list[object] | None = None

    def __array_finalize__(self, obj: object) -> None:
        if self.grows is not None and len(self.grows) < 5000:
            self.grows.append(np.zeros(16, np.uint8))


@pytest.mark.parametrize("direction", ["send", "receive"])
def test_buffer_list_that_lies_about_its_length(backend: Backend, pairs: Pairs, direction: str) -> None:
    a, b = pairs()
    sources = [payload(10, seed) for seed in range(3000)]
    expected = np.concatenate(sources)
    if direction == "send":
        receiver = Peer(backend.module.recv_into, target := np.empty_like(expected), b)
        assert backend.module.sendmsg_from(_LyingList(sources), a) == expected.nbytes
        receiver.result()
    else:
        parts = _LyingList(np.empty(10, np.uint8) for _ in range(3000))
        sender = Peer(backend.module.send_from, expected, a)
        assert backend.module.recvmsg_into(parts, b) == expected.nbytes
        sender.result()
        target = np.concatenate(list(parts))
    assert np.array_equal(target, expected)


def test_buffer_list_growing_while_it_is_read(backend: Backend, pairs: Pairs) -> None:
    """The buffers are those in the list when the call starts."""
    a, b = pairs()
    # numpy cannot export datetime64 through the buffer protocol, so both
    # backends take its bytes through views, running __array_finalize__
    first = np.arange(8).astype("M8[s]").view(_Growing)
    buffers: list[object] = [first, np.ones(16, np.uint8)]
    _Growing.grows = buffers
    try:
        assert backend.module.sendmsg_from(buffers, a) == 80
    finally:
        _Growing.grows = None
    assert len(buffers) > 2
    got = drain(b)
    assert got == first.view(np.uint8).tobytes() + bytes([1] * 16)


# --- more than 2 GiB in one call --------------------------------------------------

HUGE = 5 << 29  # 2.5 GiB


@pytest.fixture(scope="module")
def huge() -> np.ndarray:
    # every 8-byte word differs, so a misplaced chunk cannot go unnoticed
    return np.arange(HUGE // 8, dtype=np.uint64)


@pytest.mark.slow
def test_more_than_2_gib_in_one_call(backend: Backend, pairs: Pairs, huge: np.ndarray) -> None:
    a, b = pairs()
    target = np.empty_like(huge)
    receiver = Peer(backend.module.recv_into, target, b)
    assert backend.module.send_from(huge, a) == HUGE
    assert receiver.result(300) == HUGE
    assert np.array_equal(target, huge)


@pytest.mark.slow
def test_more_than_2_gib_in_one_message(backend: Backend, pairs: Pairs, huge: np.ndarray) -> None:
    """send_array gathers header and payload in sendmsg calls whose iovec total
    must stay under Linux's silent 2 GiB cap; recv_array fills `out`."""
    a, b = pairs()
    target = np.empty_like(huge)
    receiver = Peer(lambda: arraywire.recv_array(b, out=target, max_bytes=None))
    assert arraywire.send_array(huge, a) > HUGE
    assert receiver.result(300) is target
    assert np.array_equal(target, huge)
