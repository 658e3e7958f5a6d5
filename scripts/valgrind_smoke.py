"""Drives every path of the compiled transfer loop once, small enough to run
under valgrind: scripts/valgrind.sh runs it with memcheck."""

from __future__ import annotations

import array
import errno
import os
import signal
import socket
import threading

import numpy as np

from arraywire._core import transport_c as core
from arraywire._wire.engine import plan_send
from arraywire._wire.errors import IncompleteTransferError

MB = 1 << 20


def in_thread(fn, *args):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn(*args)))
    thread.start()
    return thread, result


def expect(error, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except error as exc:
        return exc
    raise AssertionError(f"{fn.__name__} did not raise {error.__name__}")


def round_trips() -> None:
    a, b = socket.socketpair()
    sources = [
        np.arange(300_000, dtype=np.float64),
        np.asfortranarray(np.arange(600, dtype=np.int32).reshape(20, 30)),
        bytearray(b"x" * 70_000),
        array.array("d", range(1000)),
        memoryview(bytes(range(256)) * 100),
        b"",
    ]
    for source in sources:
        target = np.empty(memoryview(source).nbytes, np.uint8)
        thread, _ = in_thread(core.send_from, source, a)
        assert core.recv_into(target, b) == target.nbytes
        thread.join()
        assert target.tobytes() == memoryview(source).tobytes(order="A")
    # gather and scatter past IOV_MAX, with a progress callback
    pieces = [np.full(37, i % 251, np.uint8) for i in range(2500)]
    targets = [np.empty(37, np.uint8) for _ in pieces]
    thread, _ = in_thread(core.sendmsg_from, pieces, a)
    core.recvmsg_into(targets, b, progress=lambda done, total: None)
    thread.join()
    assert all((t == p).all() for t, p in zip(targets, pieces, strict=True))
    # the same with a timeout set (poll path)
    a.settimeout(5)
    b.settimeout(5)
    thread, _ = in_thread(core.sendmsg_from, pieces[:50], a)
    core.recvmsg_into(targets[:50], b)
    thread.join()
    a.close()
    b.close()


def connection() -> None:
    """Inbox and Outbox: learned layouts of several shapes, read-ahead,
    a payload received in place, packing, and a cut mid-payload."""
    a, b = socket.socketpair()
    inbox, outbox = core.Inbox(b), core.Outbox(a)
    first = np.arange(10.0)
    header = plan_send((first,)).header
    outbox.learn(header, first.dtype, first.shape, "C")
    inbox.learn(header, first.dtype, first.shape, "C")
    arrays = [np.arange(n, dtype=np.float64) for n in (10, 10, 0, 3, 100_000, 7)]
    thread, _ = in_thread(lambda: [outbox.send(x) for x in arrays])
    for sent in arrays:
        received = inbox.take_array(None)
        assert received is not None and (received == sent).all()
    thread.join()
    staging = bytearray()
    assert outbox.pack(np.arange(4.0), staging) == len(staging)
    assert outbox.pack(np.arange(4), staging) == 0  # another layout
    a.sendall(staging)
    assert (inbox.take_array(None) == np.arange(4.0)).all()
    whole = plan_send((np.zeros(200_000),))
    a.sendall(whole.header[:20])
    target = bytearray(20)
    assert inbox.take(target) == 0 and inbox.fill() == 20 and inbox.take(target) == 20
    thread, _ = in_thread(lambda: (a.sendall(whole.header + bytes(500_000)), a.close()))
    exc = expect(IncompleteTransferError, inbox.take_array, 10**9)
    assert exc.bytes_done == len(whole.header) + 500_000
    thread.join()
    b.close()


def failures() -> None:
    # the peer closes early
    a, b = socket.socketpair()
    a.sendall(b"y" * 1000)
    a.close()
    exc = expect(IncompleteTransferError, core.recvmsg_into, [bytearray(600), bytearray(600)], b)
    assert exc.bytes_done == 1000
    b.close()
    # timeout, non-blocking, broken pipe, closed socket
    a, b = socket.socketpair()
    b.settimeout(0.05)
    assert expect(TimeoutError, core.recv_into, bytearray(10), b).bytes_done == 0
    a.setblocking(False)
    assert expect(BlockingIOError, core.send_from, bytes(4 * MB), a).bytes_done > 0
    b.close()
    a.setblocking(True)
    expect(BrokenPipeError, core.sendmsg_from, [b"a", b"b" * MB], a)
    a.close()
    assert expect(OSError, core.send_from, b"z", a).errno == errno.EBADF
    # bad buffers
    c, d = socket.socketpair()
    expect(TypeError, core.recv_into, b"read-only", d)
    expect(ValueError, core.send_from, np.zeros((4, 4))[:, ::2], c)
    expect(TypeError, core.sendmsg_from, [b"ok", np.zeros(3, dtype=object)], c)

    class Lying(list):
        def __len__(self) -> int:
            return 1

    thread, _ = in_thread(core.recv_into, bytearray(3000), d)
    assert core.sendmsg_from(Lying(bytes(10) for _ in range(300)), c) == 3000
    thread.join()
    c.close()
    d.close()


def signals() -> None:
    """A handler runs while the main thread is blocked, then one raises."""
    a, b = socket.socketpair()
    fired = []

    def record(signum, frame):
        fired.append(signum)
        if len(fired) == 3:
            a.sendall(b"q" * 100)

    previous = signal.signal(signal.SIGALRM, record)
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
    try:
        assert core.recv_into(bytearray(100), b) == 100
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

    class Boom(Exception):
        pass

    def boom(signum, frame):
        raise Boom

    signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        target = bytearray(100)
        assert expect(Boom, core.recv_into, target, b).bytes_done == 0
        target.extend(b"released")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    a.close()
    b.close()


def remote_copies() -> None:
    """copy_from_process on this process's own memory (a process may read
    itself): one range, more ranges than one call takes, an unmapped one."""
    source = np.arange(4096, dtype=np.int64)
    base = source.ctypes.data
    whole = np.empty_like(source)
    assert core.copy_from_process(os.getpid(), [(base, source.nbytes)], whole) == source.nbytes
    assert (whole == source).all()
    every_other = np.empty(2048, np.int64)
    core.copy_from_process(os.getpid(), [(base + 16 * i, 8) for i in range(2048)], every_other)
    assert (every_other == source[::2]).all()
    failed = expect(OSError, core.copy_from_process, os.getpid(), [(base, 8), (8, 8)], bytearray(16))
    assert failed.errno == errno.EFAULT and failed.bytes_done == 8
    expect(ValueError, core.copy_from_process, os.getpid(), [(base, 8)], bytearray(4))


if __name__ == "__main__":
    round_trips()
    connection()
    failures()
    signals()
    remote_copies()
    print("valgrind smoke: every path ran")
