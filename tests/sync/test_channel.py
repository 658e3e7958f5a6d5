"""listen / connect / Channel over real sockets, both backends: addresses,
the hello, messages and iteration, send_many, the read-ahead fast path, and
what bad peers get."""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from backends import Backend
from sockets import Peer

import arraywire
from arraywire import BrokenStreamError, Channel, IncompleteTransferError, ProtocolError
from arraywire._wire.engine import plan_send

LIMIT = 30.0


def serve(listener: arraywire.Listener, handler: Callable[[Channel], Any]) -> Peer:
    """Accept one connection in a thread and run handler on its Channel."""

    def run() -> Any:
        with listener.accept(timeout=LIMIT) as channel:
            return handler(channel)

    return Peer(run)


def echo(channel: Channel) -> int:
    count = 0
    for item in channel:
        if isinstance(item, np.ndarray):
            channel.send(item)
        else:
            channel.send_arrays(item)
        count += 1
    return count


def message_bytes(array: Any) -> int:
    return plan_send((array,)).total


@pytest.fixture(params=["tcp4", "tcp-any", "tcp6", "dualstack", "unix", "unix-pathlike"])
def address(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> tuple[Any, Any]:
    """(where to listen, how to reach it once its port is known)."""
    kind = request.param
    if kind in ("tcp6", "dualstack") and not socket.has_ipv6:
        pytest.skip("no IPv6")
    return {
        "tcp4": (("127.0.0.1", 0), None),
        "tcp-any": (("", 0), "127.0.0.1"),
        "tcp6": (("::1", 0), None),
        "dualstack": (("::", 0), "127.0.0.1"),
        "unix": (str(tmp_path / "sock"), None),
        "unix-pathlike": (tmp_path / "sock", None),
    }[kind]


def reach(listener: arraywire.Listener, host: str | None) -> Any:
    where = listener.address
    return where if host is None else (host, where[1])


def test_round_trip_on_every_address_form(backend: Backend, address: tuple[Any, Any]) -> None:
    where, host = address
    with arraywire.listen(where) as listener:
        if isinstance(where, tuple):
            assert listener.address[1] > 0  # the real port, not 0
        server = serve(listener, echo)
        sent = np.arange(1000, dtype=np.float64)
        with arraywire.connect(reach(listener, host), timeout=LIMIT) as channel:
            assert channel.send(sent) == message_bytes(sent)
            np.testing.assert_array_equal(channel.recv(), sent)
        assert server.result() == 1
    if isinstance(where, (str, os.PathLike)):
        assert not os.path.exists(where)  # the Listener removed its path


def test_messages_of_every_kind(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        server = serve(listener, echo)
        with arraywire.connect(listener.address) as channel:
            small = np.arange(10, dtype=np.int32)
            fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
            strided = np.arange(100.0).reshape(10, 10)[:, ::3]
            big = np.random.default_rng(1).random(3_000_000)  # over the read-ahead
            for array in (small, small, fortran, strided, big, small[:0], np.float64(2.5)):
                channel.send(array)
                received = channel.recv()
                np.testing.assert_array_equal(received, array)
                assert received.dtype == np.asarray(array).dtype
                assert received.flags.writeable and received.flags.owndata
            channel.send(fortran)
            assert channel.recv().flags.f_contiguous
            channel.send_arrays({"a": small, "b": big})
            named = channel.recv_arrays()
            assert list(named) == ["a", "b"]
            np.testing.assert_array_equal(named["b"], big)
            channel.send_arrays([small, fortran])
            first, second = channel.recv_arrays()
            np.testing.assert_array_equal(first, small)
            np.testing.assert_array_equal(second, fortran)
            channel.send(small, metadata=b"note")
            assert channel.recv_message().metadata == b""  # the echo drops metadata
        assert server.result() == 11


def test_bare_socket_channel_talks_to_send_array(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(a) as channel, b:
        assert channel.socket is a
        sent = np.arange(5, dtype=np.uint16)
        arraywire.send_array(sent, b)
        arraywire.send_array(sent * 2, b)
        np.testing.assert_array_equal(channel.recv(), sent)
        np.testing.assert_array_equal(channel.recv(), sent * 2)
        channel.send(sent)
        channel.send(sent)  # the second goes through the learned layout
        np.testing.assert_array_equal(arraywire.recv_array(b), sent)
        np.testing.assert_array_equal(arraywire.recv_array(b), sent)
    assert a.fileno() == -1


def test_recv_into_out_and_a_mismatch_keeps_the_channel(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(a) as left, Channel(b) as right:
        sent = np.arange(6.0)
        left.send(sent)
        out = np.empty(6)
        assert right.recv(out=out) is out
        np.testing.assert_array_equal(out, sent)
        left.send(sent)
        left.send(sent + 1)
        with pytest.raises(ValueError, match=r"out is int64 \(3,\)"):
            right.recv(out=np.empty(3, np.int64))
        np.testing.assert_array_equal(right.recv(), sent + 1)


def test_iteration_items_and_clean_end(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(a) as left, Channel(b) as right:
        one = np.arange(3)
        left.send(one)
        left.send_arrays([one, one])
        left.send_arrays({"x": one})
        left.send(one)
        left.close()
        items = list(right)
    assert isinstance(items[0], np.ndarray)
    assert isinstance(items[1], list) and len(items[1]) == 2
    assert isinstance(items[2], dict) and list(items[2]) == ["x"]
    assert isinstance(items[3], np.ndarray)


def test_iteration_raises_on_a_peer_gone_mid_message(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(b) as right:
        whole = plan_send((np.arange(100.0),))
        a.sendall(whole.header + np.arange(100.0).tobytes()[:300])
        a.close()
        with pytest.raises(IncompleteTransferError) as caught:
            list(right)
        assert caught.value.bytes_done == len(whole.header) + 300
        assert caught.value.bytes_expected == whole.total
        with pytest.raises(BrokenStreamError, match="IncompleteTransferError"):
            right.recv()


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\n\r\n", b"AWIR" + bytes(12), struct.pack("<4sB3sII", b"AWIR", 1, bytes(3), 1 << 30, 1)],
    ids=["not-arraywire", "zero-header", "huge-block"],
)
def test_garbage_closes_the_channel(backend: Backend, garbage: bytes) -> None:
    a, b = socket.socketpair()
    with Channel(b) as right, a:
        a.sendall(garbage)
        with pytest.raises(ProtocolError):
            right.recv()
        assert right.fileno() == -1
        with pytest.raises(BrokenStreamError, match="ProtocolError"):
            right.recv()
        with pytest.raises(BrokenStreamError):
            right.send(np.zeros(1))


def test_learned_header_still_honours_max_bytes(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(a) as left, Channel(b) as right:
        sent = np.zeros(100)
        for _ in range(3):
            left.send(sent)
        right.recv()  # learns the header; the next two are buffered whole
        with pytest.raises(ProtocolError, match="max_bytes=799"):
            right.recv(max_bytes=799)


def test_learned_header_is_not_fooled_by_another_layout(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(a) as left, Channel(b) as right:
        arrays = [np.zeros(4), np.ones(4), np.ones((2, 2)), np.ones(4, np.float32), np.ones(4)]
        arrays.append(np.asfortranarray(np.ones((2, 3))))
        arrays.append(np.ascontiguousarray(np.ones((2, 3))))
        for array in arrays:
            left.send(array)
        for array in arrays:
            received = right.recv()
            assert received.dtype == array.dtype and received.shape == array.shape
            assert received.flags.c_contiguous == array.flags.c_contiguous
            assert received.flags.f_contiguous == array.flags.f_contiguous
            np.testing.assert_array_equal(received, array)


def test_a_learned_layout_takes_every_shape(backend: Backend) -> None:
    a, b = socket.socketpair()
    rng = np.random.default_rng(3)
    arrays = [rng.random(n) for n in (5, 5, 0, 7, 100_000, 3, 1_000_000, 2)]
    arrays += [rng.random((n, 3)) for n in (2, 4, 0)] + [np.asfortranarray(rng.random((3, 4)))] * 2
    with Channel(a) as left, Channel(b) as right:
        sender = Peer(lambda: [left.send(x) for x in arrays])
        for array in arrays:
            received = right.recv()
            np.testing.assert_array_equal(received, array)
            assert received.flags.f_contiguous == array.flags.f_contiguous
        assert sender.result() == [message_bytes(x) for x in arrays]


def test_a_header_of_the_learned_layout_is_still_checked(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(b) as right, a:
        arraywire.send_array(np.zeros(4), a)
        right.recv()  # learns <f8, one dimension, C
        header = bytearray(plan_send((np.zeros(4),)).header)
        header[16] = 40  # nbytes 40: shape (4,) of <f8 needs 32
        a.sendall(bytes(header) + bytes(40))
        with pytest.raises(ProtocolError, match="declares 40 payload bytes"):
            right.recv()
        with pytest.raises(BrokenStreamError):
            right.recv()


def test_a_learned_layout_received_in_place_counts_a_cut(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(b) as right:
        arraywire.send_array(np.zeros(4), a)
        right.recv()
        whole = plan_send((np.zeros(1_000_000),))

        def cut_short() -> None:
            a.sendall(whole.header + bytes(300_000))  # more than the read-ahead holds
            a.close()

        sender = Peer(cut_short)
        with pytest.raises(IncompleteTransferError) as caught:
            right.recv()
        sender.result()
        assert caught.value.bytes_done == len(whole.header) + 300_000
        assert caught.value.bytes_expected == whole.total
        with pytest.raises(BrokenStreamError, match="IncompleteTransferError"):
            right.recv()


def test_a_timeout_between_messages_keeps_the_channel(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(a) as left, Channel(b) as right:
        right.socket.settimeout(0.2)
        with pytest.raises(TimeoutError):
            right.recv()
        left.send(np.arange(3))
        np.testing.assert_array_equal(right.recv(), np.arange(3))
        header = plan_send((np.arange(3),)).header
        left.socket.sendall(header + bytes(8))  # a message cut short, then silence
        with pytest.raises(TimeoutError) as caught:
            right.recv()
        assert caught.value.bytes_done == len(header) + 8  # type: ignore[attr-defined]
        with pytest.raises(BrokenStreamError, match="TimeoutError"):
            right.recv()


def test_send_many_coalesces_and_counts(backend: Backend) -> None:
    a, b = socket.socketpair()
    rng = np.random.default_rng(2)
    arrays: list[Any] = [np.arange(8.0) + i for i in range(500)]
    arrays += [rng.random(200_000), np.arange(20.0).reshape(4, 5)[:, ::2], [1, 2, 3], b"bytes"]
    arrays += [np.asfortranarray(np.arange(6).reshape(2, 3)), np.zeros((0, 3)), np.arange(8.0)]
    with Channel(a) as left, Channel(b) as right:
        receiver = Peer(lambda: [right.recv() for _ in arrays])
        sent = left.send_many(iter(arrays))
        assert sent == sum(message_bytes(array) for array in arrays)
        received = receiver.result()
    for got, array in zip(received, arrays, strict=True):
        np.testing.assert_array_equal(got, np.asarray(array) if not isinstance(array, bytes) else np.frombuffer(array, np.uint8))


def test_send_many_stops_at_a_bad_item_after_sending_the_ones_before(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(a) as left, Channel(b) as right:
        good = [np.arange(4.0), np.arange(4.0), np.arange(3)]
        with pytest.raises(TypeError, match="Python objects") as caught:
            left.send_many([*good, np.array([object()]), np.arange(2)])
        assert caught.value.bytes_done == sum(message_bytes(x) for x in good)  # type: ignore[attr-defined]
        for array in good:
            np.testing.assert_array_equal(right.recv(), array)
        left.send(np.arange(2))  # the channel is still in step
        np.testing.assert_array_equal(right.recv(), np.arange(2))


def test_a_second_concurrent_send_raises(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(a) as left, Channel(b) as right:
        stuck = Peer(left.send, np.zeros(50_000_000, np.uint8))  # nobody reads yet
        time.sleep(0.3)
        with pytest.raises(RuntimeError, match="another thread is in a send"):
            left.send(np.zeros(1))
        assert len(right.recv()) == 50_000_000
        stuck.result()
        left.send(np.ones(2))  # free again
        np.testing.assert_array_equal(right.recv(), np.ones(2))


def test_a_second_concurrent_receive_raises(backend: Backend) -> None:
    a, b = socket.socketpair()
    with Channel(a) as left, Channel(b) as right:
        waiting = Peer(right.recv)
        time.sleep(0.3)  # blocked in its receive: nothing was sent
        with pytest.raises(RuntimeError, match="another thread is in a receive"):
            right.recv()
        left.send(np.arange(3))
        np.testing.assert_array_equal(waiting.result(), np.arange(3))


def test_send_cut_short_closes_the_channel(backend: Backend) -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    with Channel(a) as left:
        closer = threading.Timer(0.3, b.close)
        closer.start()
        with pytest.raises(OSError) as caught:
            left.send(np.zeros(20_000_000, np.uint8))
        assert 0 < caught.value.bytes_done < 20_000_000  # type: ignore[attr-defined]
        with pytest.raises(BrokenStreamError, match="out of step"):
            left.send(np.zeros(1))


def test_with_block_closes_on_an_exception(backend: Backend, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sock"

    def handler(channel: Channel) -> None:
        channel.send(channel.recv())
        channel.recv()  # the client's channel closes: EOFError

    with pytest.raises(KeyError):
        with arraywire.listen(path) as listener:
            server = serve(listener, handler)
            with arraywire.connect(path) as channel:
                channel.send(np.arange(2))
                channel.recv()
                raise KeyError("inside")
    assert listener.fileno() == -1 and channel.fileno() == -1
    assert not path.exists()
    with pytest.raises(EOFError):
        server.result()


def test_accept_on_a_closed_listener_says_so(backend: Backend) -> None:
    listener = arraywire.listen(("127.0.0.1", 0))
    listener.close()
    with pytest.raises(OSError, match="closed Listener") as caught:
        listener.accept(timeout=1)
    assert caught.value.errno == errno.EBADF


# --- the hello ----------------------------------------------------------------


def raw_connect(address: Any) -> socket.socket:
    return socket.create_connection(address, timeout=LIMIT)


def ends(sock: socket.socket) -> bool:
    """Whether the peer closes the connection within LIMIT (reset counts)."""
    sock.settimeout(LIMIT)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def test_silent_and_garbage_peers_do_not_stall_accept(backend: Backend) -> None:
    with (
        arraywire.listen(("127.0.0.1", 0), handshake_timeout=3) as listener,
        raw_connect(listener.address) as silent,
        raw_connect(listener.address) as garbage,
    ):
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        server = serve(listener, echo)
        with arraywire.connect(listener.address) as channel:
            channel.send(np.arange(3))
            np.testing.assert_array_equal(channel.recv(), np.arange(3))
        assert server.result() == 1
        # served while the silent peer was still waiting for its timeout
        assert silent.recv(16) == hello(version=2, capabilities=1)
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.recv(1)
        # a Listener handles hellos while someone waits in accept()
        started = time.monotonic()
        waiting = Peer(lambda: listener.accept(timeout=6))
        assert ends(garbage)  # dropped at once
        assert ends(silent)  # dropped on its deadline, while accept() waits
        assert time.monotonic() - started < 4.5
        with pytest.raises(TimeoutError):
            waiting.result()


def hello(
    version: int = 1, reads: int = 2, features: int = 0, extra: int = 0, capabilities: int = 0
) -> bytes:
    return struct.pack("<4sBBHII", b"AWHI", version, reads, features, extra, capabilities)


@pytest.mark.parametrize(
    ("peer_hello", "accepted"),
    [
        (hello(), True),
        (hello(version=7, reads=9), True),  # newer peers speak our versions
        (hello(features=1), False),
        (hello(extra=4), False),
        (hello(version=0), False),
        (b"AWIR" + bytes(12), False),
    ],
    ids=["v1", "newer", "unknown-feature", "feature-data", "version-0", "message-magic"],
)
def test_listener_checks_each_hello(
    backend: Backend, peer_hello: bytes, accepted: bool
) -> None:
    with arraywire.listen(("127.0.0.1", 0)) as listener, raw_connect(listener.address) as peer:
        peer.sendall(peer_hello)
        if accepted:
            with listener.accept(timeout=LIMIT) as channel:
                assert peer.recv(16) == hello(version=2, capabilities=1)
                arraywire.send_array(np.arange(2), peer)
                np.testing.assert_array_equal(channel.recv(), np.arange(2))
        else:
            with pytest.raises(TimeoutError):
                listener.accept(timeout=0.5)
            assert peer.recv(16) == hello(version=2, capabilities=1)
            assert ends(peer)


def test_no_names_or_metadata_for_a_peer_that_reads_version_1(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0)) as listener, raw_connect(listener.address) as peer:
        peer.sendall(hello(reads=1))
        with listener.accept(timeout=LIMIT) as channel:
            assert peer.recv(16) == hello(version=2, capabilities=1)
            with pytest.raises(ValueError, match="reads messages up to version 1"):
                channel.send_arrays({"x": np.arange(2)})
            with pytest.raises(ValueError, match="names and metadata need version 2"):
                channel.send(np.arange(2), metadata=b"m")
            channel.send_arrays([np.arange(2)])  # version 1 goes through
            np.testing.assert_array_equal(arraywire.recv_arrays(peer)[0], np.arange(2))


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n", "not arraywire"),
        (b"AWIR" + bytes(12), r"Channel\(sock\)"),
        (hello(features=4), "features 0x0004"),
        (b"AW", "after 2 of the 16 bytes"),
    ],
)
def test_connect_refuses_a_peer_that_is_not_arraywire(
    backend: Backend, reply: bytes, match: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(16)  # the client's hello: a close with it unread would reset
                conn.sendall(reply)

        peer = Peer(answer)
        with pytest.raises(ProtocolError, match=match):
            arraywire.connect(server.getsockname())
        peer.result()


def test_connect_times_out_on_a_silent_server(backend: Backend) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="0 of the 16 bytes"):
            arraywire.connect(server.getsockname(), timeout=0.3)
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_connect_with_timeout_waits_for_the_listener(
    backend: Backend, kind: str, tmp_path: pathlib.Path
) -> None:
    if kind == "tcp":
        with socket.create_server(("127.0.0.1", 0)) as probe:
            where: Any = probe.getsockname()
    else:
        where = str(tmp_path / "late")

    def late_server() -> int:
        time.sleep(0.5)
        with arraywire.listen(where) as listener:
            with listener.accept(timeout=LIMIT) as channel:
                return echo(channel)

    server = Peer(late_server)
    with arraywire.connect(where, timeout=LIMIT) as channel:
        channel.send(np.arange(4))
        np.testing.assert_array_equal(channel.recv(), np.arange(4))
    assert server.result() == 1


def test_connect_without_timeout_fails_at_once(backend: Backend, tmp_path: pathlib.Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        where = probe.getsockname()
    with pytest.raises(ConnectionRefusedError):
        arraywire.connect(where)
    with pytest.raises(FileNotFoundError):
        arraywire.connect(str(tmp_path / "nobody"))


@pytest.mark.parametrize(
    ("address", "error", "match"),
    [
        (("localhost",), TypeError, "an address is"),
        ((1, 2), TypeError, r"\(host: str, port: int\)"),
        (("127.0.0.1", 70000), ValueError, "outside 0..65535"),
        (5, TypeError, "an address is"),
    ],
)
def test_bad_addresses_say_what_is_wrong(address: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        arraywire.listen(address)
    with pytest.raises(error, match=match):
        arraywire.connect(address)


# --- churn ------------------------------------------------------------------------


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_thousand_dropped_connections_leak_nothing(backend: Backend) -> None:
    header = plan_send((np.zeros(1000),)).header

    def serve_all(listener: arraywire.Listener, stop: threading.Event) -> int:
        served = 0
        while not stop.is_set():
            try:
                channel = listener.accept(timeout=0.2)
            except TimeoutError:
                continue
            with channel:
                try:
                    for _ in channel:
                        pass
                except (IncompleteTransferError, ProtocolError, ConnectionError):
                    pass
            served += 1
        return served

    def churn(listener: arraywire.Listener, count: int) -> None:
        for index in range(count):
            way = index % 4
            if way == 0:  # drops before its hello
                raw_connect(listener.address).close()
                continue
            with arraywire.connect(listener.address, timeout=LIMIT) as channel:
                if way == 2:  # mid-message
                    channel.socket.sendall(header + bytes(100))
                elif way == 3:
                    channel.send(np.zeros(1000))

    with arraywire.listen(("127.0.0.1", 0), handshake_timeout=2) as listener:
        stop = threading.Event()
        server = Peer(serve_all, listener, stop)
        churn(listener, 100)  # warm-up: imports, caches, arenas
        time.sleep(0.5)
        descriptors, rss = open_descriptors(), rss_bytes()
        churn(listener, 1000)
        time.sleep(0.5)
        # still accepting
        with arraywire.connect(listener.address) as channel:
            channel.send(np.arange(3))
        time.sleep(0.3)
        stop.set()
        assert server.result() >= 825  # 75 + 750 + 1 connections with a hello
        assert open_descriptors() <= descriptors
        assert rss_bytes() - rss < 8 << 20
