"""Signals during transfers (PEP 475): handlers that return leave the data
intact, exceptions they raise stop the transfer promptly with bytes_done and
release its buffers. Signal handlers run in the main thread, where pytest
runs the tests; Ctrl-C is tested on a child process's main thread."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from textwrap import dedent

import numpy as np
import pytest
from backends import Backend
from faultkit import Child, Pairs, connect_code, listener, wait_for_stall
from sockets import Peer

MB = 1 << 20
GIB = 1 << 30


@contextmanager
def signal_storm(interval: float = 0.001) -> Iterator[list[int]]:
    """SIGALRM every `interval` s, to a handler that only counts."""
    count = [0]

    def record(signum: int, frame: object) -> None:
        count[0] += 1

    previous = signal.signal(signal.SIGALRM, record)
    signal.setitimer(signal.ITIMER_REAL, interval, interval)
    try:
        yield count
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def gigabyte() -> np.ndarray:
    return np.arange(GIB // 8, dtype=np.uint64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["recv_into", "recv_into-timeout", "recvmsg_into-progress", "send_from", "sendmsg_from"]
)
def test_signal_storm_leaves_a_gigabyte_intact(
    backend: Backend, pairs: Pairs, gigabyte: np.ndarray, case: str
) -> None:
    """A handler fires every 1 ms in the thread doing the transfer: every
    interrupted call is resumed, nothing is lost, no error is raised."""
    a, b = pairs("tcp" if case in ("recv_into", "send_from") else "socketpair")
    target = np.empty_like(gigabyte)
    reports: list[int] = []
    with signal_storm() as fired:
        if case.startswith("recv"):
            peer = Peer(backend.module.send_from, gigabyte, a)
            if case == "recv_into-timeout":
                b.settimeout(30)
            if case == "recvmsg_into-progress":
                parts = [target[: len(target) // 3], target[len(target) // 3 :]]
                done = backend.module.recvmsg_into(
                    parts, b, progress=lambda d, t: reports.append(d)
                )
            else:
                done = backend.module.recv_into(target, b)
        else:
            peer = Peer(backend.module.recv_into, target, b)
            if case == "sendmsg_from":
                done = backend.module.sendmsg_from([gigabyte[:1000], gigabyte[1000:]], a)
            else:
                done = backend.module.send_from(gigabyte, a)
        assert peer.result(120) == gigabyte.nbytes
    assert done == gigabyte.nbytes
    # Handlers run at each signal check, not once per signal (signals that
    # arrive between two checks coalesce), so only their presence is certain.
    assert fired[0] > 0, "the storm did not happen"
    assert np.array_equal(target, gigabyte)
    if reports:
        assert reports[-1] == gigabyte.nbytes and reports == sorted(reports)


# --- Ctrl-C ---------------------------------------------------------------------

CTRL_C_CASES = {
    # case: (what the child does, whether the parent sends 1000 bytes first)
    "recv_into": ("arraywire.recv_into(np.empty(MB, np.uint8), sock)", True),
    "recv_into-timeout": (
        "sock.settimeout(60)\narraywire.recv_into(np.empty(MB, np.uint8), sock)",
        True,
    ),
    "recv_into-progress": (
        "arraywire.recv_into(np.empty(MB, np.uint8), sock, progress=lambda d, t: None)",
        True,
    ),
    "recvmsg_into": ("arraywire.recvmsg_into([bytearray(10), bytearray(MB)], sock)", True),
    "send_from": ("arraywire.send_from(np.zeros(64 * MB, np.uint8), sock)", False),
    "sendmsg_from": (
        "arraywire.sendmsg_from([b'x' * 100, np.zeros(64 * MB, np.uint8)], sock)",
        False,
    ),
    # data keep flowing: the interrupt comes between calls, not inside one
    "flowing": ("arraywire.recvmsg_into([np.empty(16 * MB, np.uint8)] * 256, sock)", False),
    "flowing-timeout": (
        "sock.settimeout(60)\n"
        "arraywire.recvmsg_into([np.empty(16 * MB, np.uint8)] * 256, sock)",
        False,
    ),
}


# A child started from a background job (CI steps run side by side) inherits
# SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the
# child takes Ctrl-C as a program started at a terminal does.
SIGINT_AS_AT_A_TERMINAL = "signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def _flood(sock: socket.socket) -> None:
    chunk = bytes(16 * MB)
    try:
        while True:
            sock.sendall(chunk)
    except OSError:  # the child is gone
        pass


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("case", list(CTRL_C_CASES))
def test_ctrl_c_interrupts_within_half_a_second(backend: Backend, kind: str, case: str) -> None:
    call, prime = CTRL_C_CASES[case]
    code = (
        SIGINT_AS_AT_A_TERMINAL
        + "MB = 1 << 20\n"
        + ("assert sock.recv(1000, socket.MSG_WAITALL) == b'p' * 1000\n" if prime else "")
        + "print('ready', flush=True)\n"
        + "try:\n"
        + "".join(f"    {line}\n" for line in call.splitlines())
        + "except KeyboardInterrupt as exc:\n"
        + "    print('interrupted', time.monotonic(), exc.bytes_done, flush=True)\n"
        + "else:\n"
        + "    print('finished', flush=True)\n"
    )
    flood = None
    with listener(kind) as (server, address):
        child = Child(backend.name, connect_code(kind, address) + code)
        try:
            conn, _ = server.accept()
            if prime:
                conn.sendall(b"p" * 2000)  # half is consumed before the call
            assert child.line() == "ready"
            if case.startswith("flowing"):
                flood = Peer(_flood, conn)
                time.sleep(0.3)
            elif case.startswith("send"):
                wait_for_stall(conn)
            else:
                time.sleep(0.3)  # the child is now blocked in the call
            sent_at = time.monotonic()
            child.proc.send_signal(signal.SIGINT)
            words = child.line(10).split()
            assert child.wait() == 0, child.stderr()
            if case.startswith("send"):
                conn.settimeout(10)
                received = 0
                while chunk := conn.recv(MB):
                    received += len(chunk)
        finally:
            child.kill()
            if flood is not None:
                flood.result()
            conn.close()
    assert words[0] == "interrupted"
    assert float(words[1]) - sent_at < 0.5
    if prime:
        assert int(words[2]) == 1000
    elif case.startswith("send"):
        # the child's count is what went out: a resumed send would misalign
        assert int(words[2]) == received > 0
    else:
        assert int(words[2]) > 0


# --- handlers that raise ----------------------------------------------------------


class Boom(Exception):
    pass


@contextmanager
def boom_after(delay: float) -> Iterator[None]:
    def boom(signum: int, frame: object) -> None:
        raise Boom

    previous = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, delay)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("call", ["recv_into", "recvmsg_into"])
@pytest.mark.parametrize("timeout", [None, 30.0], ids=["blocking", "timeout"])
def test_handler_exception_stops_a_receive(backend: Backend, pairs: Pairs, call: str, timeout: float | None) -> None:
    a, b = pairs()
    b.settimeout(timeout)
    sent = bytes(range(256)) * 40
    a.sendall(sent[:1000])
    if call == "recv_into":
        targets = [bytearray(len(sent))]
    else:
        targets = [bytearray(500), bytearray(len(sent) - 500)]
    started = time.monotonic()
    with boom_after(0.2), pytest.raises(Boom) as info:
        if call == "recv_into":
            backend.module.recv_into(targets[0], b)
        else:
            backend.module.recvmsg_into(targets, b)
    assert time.monotonic() - started < 2
    assert info.value.bytes_done == 1000
    # The buffers are released although the exception and its traceback live
    # on: a bytearray cannot be resized while a transfer still holds it.
    for target in targets:
        target.extend(b"!")
        del target[-1:]
    # The stream is where bytes_done says: the rest completes it.
    a.sendall(sent[1000:])
    with memoryview(targets[-1]) as last:
        rest = last[1000 - (len(sent) - len(targets[-1])) :]
        assert backend.module.recv_into(rest, b) == len(sent) - 1000
        rest.release()
    assert b"".join(targets) == sent


@pytest.mark.parametrize("call", ["send_from", "sendmsg_from"])
def test_handler_exception_stops_a_send(backend: Backend, pairs: Pairs, call: str) -> None:
    a, b = pairs()
    sources = [bytearray(b"h" * 100), bytearray(b"s" * (32 * MB))]
    with boom_after(0.2), pytest.raises(Boom) as info:
        if call == "send_from":
            backend.module.send_from(sources[1], a)
        else:
            backend.module.sendmsg_from(sources, a)
    done = info.value.bytes_done
    assert 0 < done < 32 * MB
    for source in sources:
        source.extend(b"!")
    # bytes_done is exactly what the peer gets
    a.close()
    received = bytearray()
    while chunk := b.recv(MB):
        received += chunk
    assert len(received) == done
    # the next transfer on a fresh connection is unharmed
    c, d = pairs()
    receiver = Peer(backend.module.recv_into, target := bytearray(len(sources[1])), d)
    assert backend.module.send_from(sources[1], c) == len(sources[1])
    receiver.result()
    assert target == sources[1]


def test_handler_that_records_while_a_thread_transfers(backend: Backend, pairs: Pairs) -> None:
    """Transfers off the main thread never run handlers; they just go on."""
    a, b = pairs()
    sent = np.arange(8 * MB, dtype=np.uint8)
    target = np.empty_like(sent)
    with signal_storm() as fired:
        receiver = Peer(backend.module.recv_into, target, b)
        sender = Peer(backend.module.send_from, sent, a)
        while receiver.is_alive():
            time.sleep(0.01)
        assert sender.result() == receiver.result() == sent.nbytes
    assert fired[0] > 0
    assert np.array_equal(target, sent)
    assert threading.current_thread() is threading.main_thread()


def test_ctrl_c_in_a_child_forked_from_a_thread(backend: Backend) -> None:
    """The thread that forked is the child's main thread: its transfers must
    still answer Ctrl-C, here after part of the data arrived."""
    child = Child(
        backend.name,
        SIGINT_AS_AT_A_TERMINAL
        + dedent(
            """
            import threading, warnings
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            a, b = socket.socketpair()
            forked = []

            def fork_and_receive():
                pid = os.fork()
                if pid == 0:
                    a.close()
                    try:
                        arraywire.recv_into(bytearray(1000), b)
                        os.write(1, b"finished\\n")
                    except KeyboardInterrupt as exc:
                        os.write(1, f"interrupted {time.monotonic()} {exc.bytes_done}\\n".encode())
                    os._exit(0)
                forked.append(pid)

            thread = threading.Thread(target=fork_and_receive)
            thread.start()
            thread.join()
            b.close()
            a.sendall(b"x" * 10)
            time.sleep(0.3)
            print("sent", time.monotonic(), flush=True)
            os.kill(forked[0], signal.SIGINT)
            for _ in range(30):
                if os.waitpid(forked[0], os.WNOHANG)[0]:
                    break
                time.sleep(0.1)
            else:
                os.kill(forked[0], signal.SIGKILL)
                print("stuck", flush=True)
            """
        ),
    )
    try:
        sent_at = float(child.line().split()[1])
        words = child.line(10).split()
        assert child.wait() == 0, child.stderr()
    finally:
        child.kill()
    assert words[0] == "interrupted"
    assert float(words[1]) - sent_at < 0.5
    assert int(words[2]) == 10
