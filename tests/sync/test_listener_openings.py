"""The blocking Listener's openings as the command line uses them, over TCP
loopback on both backends: a bare message or a hello first, no opening at
all, the look at a TLS peer's first bytes, and on_drop for every dropped peer."""

from __future__ import annotations

import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from backends import Backend

import arraywire
from arraywire._drivers.sockets import server_socket
from arraywire._sync.connection import Listener, open_channel
from arraywire._wire.errors import AuthenticationError, ProtocolError

LIMIT = 10.0


class Drops:
    """What on_drop heard: (peer address, exception) in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, BaseException]] = []

    def __call__(self, peer: Any, why: BaseException, sock: socket.socket) -> None:
        assert sock.fileno() != -1  # still open for a last word
        self.seen.append((peer, why))


def listener(opening: str, drops: Drops, **options: Any) -> Listener:
    sock, _ = server_socket(("127.0.0.1", 0), 16)
    return Listener(sock, options.pop("handshake_timeout", LIMIT), opening=opening,
                    on_drop=drops, **options)


def test_a_bare_message_or_a_hello_is_taken(backend: Backend) -> None:
    drops = Drops()
    with listener("hello or message", drops) as server, ThreadPoolExecutor(2) as pool:
        # a plain send_array: its first 16 bytes end the opening, and are received first
        def plain() -> None:
            with socket.create_connection(server.address, timeout=LIMIT) as sock:
                arraywire.send_array(np.arange(1000), sock)
                assert sock.recv(4) == b"AWOK"

        sending = pool.submit(plain)
        with server.accept(timeout=LIMIT) as channel:
            np.testing.assert_array_equal(channel.recv(), np.arange(1000))
            channel.socket.sendall(b"AWOK")
        sending.result(LIMIT)
        # arraywire.connect's hello: answered, and the Channel goes on as usual
        connecting = pool.submit(arraywire.connect, server.address, timeout=LIMIT)
        with server.accept(timeout=LIMIT) as channel, connecting.result(LIMIT) as peer:
            peer.send(np.ones(3))
            np.testing.assert_array_equal(channel.recv(), np.ones(3))
    assert drops.seen == []


def test_no_opening_gives_the_channel_at_once(backend: Backend) -> None:
    drops = Drops()
    with listener("none", drops) as server, ThreadPoolExecutor(1) as pool:
        connecting = pool.submit(open_channel, server.address, timeout=LIMIT,
                                 opening="hello or message")
        with server.accept(timeout=LIMIT) as channel:
            channel.send(np.arange(7))  # the connecting end reads it in place of a hello
            with connecting.result(LIMIT) as peer:
                np.testing.assert_array_equal(peer.recv(), np.arange(7))


def test_every_dropped_peer_is_told_of(backend: Backend) -> None:
    drops = Drops()
    with listener("hello or message", drops, handshake_timeout=1.0) as server:
        host, port = server.address
        probes = [socket.create_connection((host, port), timeout=LIMIT) for _ in range(3)]
        probes[0].sendall(b"GET / HTTP/1.1\r\n\r\n")
        probes[1].sendall(b"AWIR\x07" + bytes(11))  # a message of a version unknown here
        probes[2].sendall(b"AWHI")  # a part of a hello, then silence
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            server.accept(timeout=2.5)
        assert len(drops.seen) == 3, drops.seen
        by_port = {peer[1]: why for peer, why in drops.seen}
        http, version, silent = (by_port[p.getsockname()[1]] for p in probes)
        assert isinstance(http, ProtocolError) and http.speaks == "http"
        assert isinstance(version, ProtocolError) and version.speaks == "message"
        assert "protocol version 7" in str(version)
        assert isinstance(silent, TimeoutError)
        assert "within 1 s" in str(silent)
        assert time.monotonic() - started < LIMIT
        for probe in probes:
            probe.close()


def test_on_drop_may_end_accept(backend: Backend) -> None:
    class Stop(Exception):
        pass

    def stop(peer: Any, why: BaseException, sock: socket.socket) -> None:
        raise Stop(str(why))

    sock, _ = server_socket(("127.0.0.1", 0), 16)
    with Listener(sock, LIMIT, opening="hello", on_drop=stop) as server:
        with socket.create_connection(server.address, timeout=LIMIT) as probe:
            probe.sendall(bytes(16))
            with pytest.raises(Stop, match="the peer is not arraywire"):
                server.accept(timeout=LIMIT)
        assert server.openings == 0


def test_a_wrong_key_is_told_of_and_raised(backend: Backend) -> None:
    drops = Drops()
    sock, _ = server_socket(("127.0.0.1", 0), 16)
    with Listener(sock, LIMIT, authkey=b"one", on_drop=drops) as server, \
            ThreadPoolExecutor(1) as pool:
        connecting = pool.submit(arraywire.connect, server.address, timeout=LIMIT,
                                 authkey=b"two")
        with pytest.raises(AuthenticationError):
            server.accept(timeout=LIMIT)
        with pytest.raises(AuthenticationError):
            connecting.result(LIMIT)
    assert [type(why) for _, why in drops.seen] == [AuthenticationError]


def test_a_tls_listener_looks_before_the_handshake(backend: Backend, tls: Any) -> None:
    """A plain peer is dropped on its first bytes, its socket still plain, so
    that the Listener's owner may answer it in clear."""
    server_context, client_context = tls
    heard: list[tuple[str | None, bool]] = []

    def on_drop(peer: Any, why: BaseException, sock: socket.socket) -> None:
        heard.append((getattr(why, "speaks", None), isinstance(sock, ssl.SSLSocket)))
        sock.sendall(b"in clear")

    sock, _ = server_socket(("127.0.0.1", 0), 16)
    with Listener(sock, LIMIT, ssl=server_context, opening="hello or message",
                  on_drop=on_drop) as server, ThreadPoolExecutor(1) as pool:
        with socket.create_connection(server.address, timeout=LIMIT) as plain:
            arraywire.send_array(np.arange(3), plain)
            with pytest.raises(TimeoutError):
                server.accept(timeout=0.5)
            assert plain.recv(8) == b"in clear"
        assert heard == [("message", False)]
        connecting = pool.submit(arraywire.connect, server.address, timeout=LIMIT,
                                 ssl=client_context)
        with server.accept(timeout=LIMIT) as channel, connecting.result(LIMIT) as peer:
            peer.send(np.arange(4))
            np.testing.assert_array_equal(channel.recv(), np.arange(4))


def test_recv_out_callable_gets_the_header_first(backend: Backend) -> None:
    left, right = socket.socketpair()
    with arraywire.Channel(left) as sender, arraywire.Channel(right) as receiver:
        seen = []

        def target(spec: Any) -> np.ndarray:
            seen.append((spec.dtype, spec.shape, spec.order, spec.nbytes))
            return np.empty(spec.shape, spec.dtype)

        sender.send(np.arange(12.0).reshape(3, 4))
        got = receiver.recv(out=target)
        np.testing.assert_array_equal(got, np.arange(12.0).reshape(3, 4))
        assert seen == [(np.dtype("f8"), (3, 4), "C", 96)]

        def refuse(spec: Any) -> np.ndarray:
            raise LookupError(f"no room for {spec.nbytes} bytes")

        sender.send(np.ones(5))
        with pytest.raises(LookupError, match="no room for 40 bytes"):
            receiver.recv(out=refuse)
