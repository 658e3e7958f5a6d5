"""The blocking Listener runs openings as connections arrive, in a thread of
its own: connect() returns before accept(), a stuck peer holds up nobody and
is logged when dropped, the cap on what it holds, close() with openings in
flight; both backends, over TCP and AF_UNIX loopback."""

from __future__ import annotations

import errno
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from backends import Backend
from listening import KEY, LIMIT, options, peer_text, warnings_of
from sockets import Peer

import arraywire
from arraywire import AuthenticationError, ProtocolError


@pytest.fixture(params=["tcp", "unix"])
def address(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "tcp":
        yield ("127.0.0.1", 0)
        return
    with tempfile.TemporaryDirectory() as directory:
        yield os.path.join(directory, "listener")


def raw_connect(address: Any) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(LIMIT)
    sock.connect(address)
    return sock


def closes(sock: socket.socket) -> bool:
    """Whether the peer ends the connection within LIMIT (a reset counts)."""
    sock.settimeout(LIMIT)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def eventually(condition: Callable[[], bool]) -> bool:
    """Whether condition holds within LIMIT, looked at every 10 ms."""
    deadline = time.monotonic() + LIMIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("kind", ["plain", "key", "tls"])
def test_connect_returns_before_accept_in_one_thread(
    backend: Backend, address: Any, tls: Any, kind: str
) -> None:
    listen, connect = options(kind, tls)
    with arraywire.listen(address, **listen) as listener:
        with arraywire.connect(listener.address, timeout=LIMIT, **connect) as client:
            with listener.accept(timeout=LIMIT) as served:
                client.send(np.arange(5))
                np.testing.assert_array_equal(served.recv(), np.arange(5))
                served.send(np.ones(3))
                np.testing.assert_array_equal(client.recv(), np.ones(3))


def test_parallel_streams_are_handed_over_once_whole(backend: Backend, address: Any) -> None:
    big = np.random.default_rng(1).random(3 * arraywire.STRIPE_BYTES // 8 + 7)
    with arraywire.listen(address, max_streams=4) as listener:
        with arraywire.connect(listener.address, timeout=LIMIT, streams=4) as client:
            with listener.accept(timeout=LIMIT) as served:
                assert len(served.sockets) == 4
                sending = Peer(client.send, big)
                np.testing.assert_array_equal(served.recv(max_bytes=None), big)
                sending.result(LIMIT)


def test_accept_hands_over_in_the_order_openings_ended(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        clients = [arraywire.connect(listener.address, timeout=LIMIT) for _ in range(3)]
        served = [listener.accept(timeout=LIMIT) for _ in clients]
        for client, channel in zip(clients, served, strict=True):
            assert channel.peer_address == client.local_address
            client.close()
            channel.close()


def test_a_stuck_peer_holds_up_nobody_and_is_logged_when_dropped(
    backend: Backend, address: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="arraywire")
    with arraywire.listen(address, handshake_timeout=3) as listener:
        with raw_connect(listener.address) as stuck:
            with arraywire.connect(listener.address, timeout=LIMIT) as client, \
                    listener.accept(timeout=LIMIT) as served:
                assert listener.openings == 1  # the stuck one, still under way
                client.send(np.arange(3))
                np.testing.assert_array_equal(served.recv(), np.arange(3))
            assert closes(stuck)  # dropped once its handshake_timeout passed
            assert eventually(lambda: listener.openings == 0)
            [warning] = warnings_of(caplog)
            assert f"dropped {peer_text(stuck)}" in warning
            assert "did not complete the connection opening within 3 s" in warning


def test_each_failed_opening_logs_one_warning_with_its_reason(
    backend: Backend, tls: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server_context, client_context = tls
    caplog.set_level(logging.WARNING, logger="arraywire")
    # garbage
    with arraywire.listen(("127.0.0.1", 0)) as listener, raw_connect(listener.address) as peer:
        peer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closes(peer)
        [warning] = warnings_of(caplog)
        assert f"dropped {peer_text(peer)}" in warning
        assert "the peer is not arraywire: its hello begins with b'GET '" in warning
    caplog.clear()
    # a wrong key: accept() raises it once it was logged
    with arraywire.listen(("127.0.0.1", 0), authkey=KEY) as listener:
        with pytest.raises(AuthenticationError):
            arraywire.connect(listener.address, timeout=LIMIT, authkey=b"other key")
        with pytest.raises(AuthenticationError):
            listener.accept(timeout=LIMIT)
        [warning] = warnings_of(caplog)
        assert "dropped 127.0.0.1:" in warning and "key" in warning
    caplog.clear()
    # a plain client of a TLS Listener
    with arraywire.listen(("127.0.0.1", 0), ssl=server_context) as listener:
        with pytest.raises((ProtocolError, ConnectionResetError)):
            arraywire.connect(listener.address, timeout=LIMIT)
        assert eventually(lambda: len(warnings_of(caplog)) == 1)
        assert "does not speak TLS and this end does" in warnings_of(caplog)[0]
        # the Listener goes on
        with arraywire.connect(listener.address, timeout=LIMIT, ssl=client_context,
                               server_hostname="localhost"):
            listener.accept(timeout=LIMIT).close()
    assert len(warnings_of(caplog)) == 1


def test_the_cap_bounds_the_openings_held_and_the_threads(backend: Backend) -> None:
    threads = threading.active_count()
    with arraywire.listen(("127.0.0.1", 0), max_openings=3) as listener:
        stuck = [raw_connect(listener.address) for _ in range(8)]
        assert eventually(lambda: listener.openings == 3)
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.3)
        assert listener.openings == 3  # the others wait in the kernel's backlog
        assert threading.active_count() == threads + 1  # the Listener's one thread
        for sock in stuck:
            sock.close()
        # the Listener takes the next from the backlog as the first are dropped
        with arraywire.connect(listener.address, timeout=LIMIT) as client, \
                listener.accept(timeout=LIMIT) as served:
            client.send(np.arange(4))
            np.testing.assert_array_equal(served.recv(), np.arange(4))
        assert threading.active_count() == threads + 1


def test_channels_waiting_for_accept_count_toward_the_cap(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0), max_openings=2) as listener:
        first = arraywire.connect(listener.address, timeout=LIMIT)
        second = arraywire.connect(listener.address, timeout=LIMIT)
        waiting = Peer(lambda: arraywire.connect(listener.address, timeout=LIMIT))
        waiting.join(0.5)
        assert waiting.is_alive()  # its opening waits for room
        listener.accept(timeout=LIMIT).close()  # the first's: room for the third
        with waiting.result(LIMIT), first, second:
            for _ in range(2):
                listener.accept(timeout=LIMIT).close()


def test_max_openings_is_checked() -> None:
    with pytest.raises(ValueError, match="max_openings must be at least 1, got 0"):
        arraywire.listen(("127.0.0.1", 0), max_openings=0)
    with pytest.raises(TypeError, match="max_openings must be an int"):
        arraywire.listen(("127.0.0.1", 0), max_openings=2.0)  # type: ignore[arg-type]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_close_with_openings_in_flight_releases_everything(
    backend: Backend, address: Any, tls: Any, kind: str
) -> None:
    listen, connect = options(kind, tls)
    threads, descriptors = threading.active_count(), open_descriptors()
    listener = arraywire.listen(address, **listen)
    stuck = [raw_connect(listener.address) for _ in range(4)]
    unaccepted = arraywire.connect(listener.address, timeout=LIMIT, **connect)
    assert eventually(lambda: listener.openings == 4)
    listener.close()
    assert listener.fileno() == -1
    assert all(closes(sock) for sock in stuck)
    with pytest.raises((EOFError, ConnectionResetError)):
        unaccepted.recv()  # the Channel never accepted was closed
    for sock in (*stuck, unaccepted):
        sock.close()
    assert threading.active_count() == threads
    assert open_descriptors() == descriptors
    if isinstance(address, str):
        assert not os.path.exists(address)
    with pytest.raises(OSError, match="closed Listener"):
        listener.accept()


def test_close_wakes_an_accept_waiting_in_another_thread(backend: Backend) -> None:
    listener = arraywire.listen(("127.0.0.1", 0))
    with raw_connect(listener.address) as stuck:
        waiting = Peer(lambda: listener.accept(timeout=LIMIT))
        assert eventually(lambda: listener.openings == 1)
        listener.close()
        with pytest.raises(OSError, match="closed Listener") as caught:
            waiting.result(LIMIT)
        assert caught.value.errno == errno.EBADF
        assert closes(stuck)


def test_for_skips_failed_openings_and_ends_when_another_thread_closes(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="arraywire")
    listener = arraywire.listen(("127.0.0.1", 0), authkey=KEY)
    got: list[Any] = []

    def serve() -> str:
        for channel in listener:
            with channel:
                got.append(channel.recv())
        return "ended"

    server = Peer(serve)
    with arraywire.connect(listener.address, timeout=LIMIT, authkey=KEY) as client:
        client.send(np.arange(1))
    with pytest.raises(AuthenticationError):
        arraywire.connect(listener.address, timeout=LIMIT, authkey=b"other key")
    with raw_connect(listener.address) as junk:
        junk.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert closes(junk)
    with arraywire.connect(listener.address, timeout=LIMIT, authkey=KEY) as client:
        client.send(np.arange(2))
    assert eventually(lambda: len(got) == 2)
    listener.close()
    assert server.result(LIMIT) == "ended"
    assert [array.tolist() for array in got] == [[0], [0, 1]]
    assert len(warnings_of(caplog)) == 2  # the wrong key, the garbage


def test_for_over_a_closed_listener_ends_at_once(backend: Backend) -> None:
    listener = arraywire.listen(("127.0.0.1", 0))
    listener.close()
    assert list(listener) == []
