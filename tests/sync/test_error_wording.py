"""What the API's errors say of a failed opening, over real sockets, both
backends, blocking and aio: a reset blamed only on what this end uses, and
the library's own words (no command-line flags)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from backends import Backend
from sockets import Peer

import arraywire
from arraywire import AuthenticationError, ProtocolError, aio

LIMIT = 30.0
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


@pytest.fixture(scope="module")
def client_context() -> Iterator[ssl.SSLContext]:
    context = ssl.create_default_context()
    trustme.CA().configure_trust(context)
    yield context


def resetting_server() -> tuple[socket.socket, threading.Thread]:
    """A plain TCP server that takes one connection, reads its first bytes
    and resets it."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(LIMIT)
            conn.recv(1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)

    serving = threading.Thread(target=serve)
    serving.start()
    return server, serving


def reset_text(tls: ssl.SSLContext | None, use_aio: bool) -> str:
    server, serving = resetting_server()
    with server:
        address = server.getsockname()
        with pytest.raises(ConnectionResetError) as caught:
            if use_aio:
                asyncio.run(asyncio.wait_for(aio.connect(address, ssl=tls), LIMIT))
            else:
                arraywire.connect(address, timeout=LIMIT, ssl=tls)
        serving.join(LIMIT)
    return str(caught.value)


@pytest.mark.parametrize("use_aio", [False, True], ids=["blocking", "aio"])
def test_a_reset_without_tls_is_not_blamed_on_tls_only(backend: Backend, use_aio: bool) -> None:
    text = reset_text(None, use_aio)
    assert "the peer reset the connection during the opening" in text
    assert "the peer is not an arraywire Listener, or one that uses TLS" in text
    assert "pass ssl= at this end too" in text


@pytest.mark.parametrize("use_aio", [False, True], ids=["blocking", "aio"])
def test_a_reset_of_a_tls_handshake_names_a_listener_without_tls(
    backend: Backend, use_aio: bool, client_context: ssl.SSLContext
) -> None:
    text = reset_text(client_context, use_aio)
    assert "the peer is not an arraywire Listener, or one without TLS" in text
    assert "connect without ssl=" in text
    assert "pass ssl= at this end too" not in text


def one_sided_key(listening_key: bytes | None, connecting_key: bytes | None) -> tuple[Any, Any]:
    """The errors of both ends when one of them has a key."""
    with arraywire.listen(("127.0.0.1", 0), authkey=listening_key) as listener:

        def accept() -> BaseException:
            with pytest.raises(AuthenticationError) as caught:
                listener.accept(timeout=LIMIT)
            return caught.value

        accepting = Peer(accept)
        with pytest.raises(AuthenticationError) as caught:
            arraywire.connect(listener.address, timeout=LIMIT, authkey=connecting_key)
        return caught.value, accepting.result()


@pytest.mark.parametrize("keyed", ["listening", "connecting"])
def test_a_key_at_one_end_is_told_in_the_api_s_words(backend: Backend, keyed: str) -> None:
    key = b"s3cret"
    if keyed == "listening":
        connecting, listening = one_sided_key(key, None)
        keyless, keyed_end = connecting, listening
    else:
        connecting, listening = one_sided_key(None, key)
        keyless, keyed_end = listening, connecting
    assert keyless.keyless == "this end" and keyed_end.keyless == "peer"
    assert str(keyless).endswith("pass the peer's key as authkey=")
    assert str(keyed_end).endswith("give it the same authkey=")
    for error in (connecting, listening):
        assert "command line" not in str(error) and "--" not in str(error)


def test_a_bare_receive_of_a_hello_speaks_of_the_api(
    backend: Backend, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    with socket.create_server(("127.0.0.1", 0)) as server:

        def connect() -> None:
            with pytest.raises((ProtocolError, OSError)):  # no Listener answers
                arraywire.connect(server.getsockname(), timeout=LIMIT)

        connecting = Peer(connect)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(LIMIT)
            first = conn.recv(64)  # the connecting end's hello
        connecting.result()
    a.sendall(first)
    with pytest.raises(ProtocolError) as caught:
        arraywire.recv_array(b)
    text = str(caught.value)
    assert "receive with arraywire.listen (with the same authkey=) instead" in text
    assert "command line" not in text and "--key-file" not in text
