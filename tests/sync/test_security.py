"""Authenticated and TLS connections: ``authkey=`` and ``ssl=`` on listen and
connect, blocking and aio, both backends, over real loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from backends import Backend, backend_env
from hypothesis import given, settings, strategies as st
from sockets import Peer, receive_exactly

import arraywire
from arraywire import AuthenticationError, IncompleteTransferError, ProtocolError, aio
from arraywire._wire import hello as opening_wire
from arraywire._wire.engine import plan_send

LIMIT = 30.0
KEY = hashlib.sha256(b"arraywire test key").digest()
OTHER_KEY = hashlib.sha256(b"another key").digest()
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, LIMIT)

    return asyncio.run(bounded())


def serve(listener: arraywire.Listener, handler: Callable[[arraywire.Channel], Any]) -> Peer:
    def accept_and_handle() -> Any:
        with listener.accept(timeout=LIMIT) as channel:
            return handler(channel)

    return Peer(accept_and_handle)


def echo_all(channel: arraywire.Channel) -> int:
    count = 0
    for item in channel:
        channel.send_arrays(item if isinstance(item, (list, dict)) else [item])
        count += 1
    return count


SECURITY = ["key", "tls", "tls+key"]


def options(kind: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> tuple[dict, dict]:
    """listen() and connect() keywords of a kind of security."""
    server, client = tls
    listen: dict[str, Any] = {}
    connect: dict[str, Any] = {}
    if "key" in kind:
        listen["authkey"] = connect["authkey"] = KEY
    if "tls" in kind:
        listen["ssl"] = server
        connect["ssl"] = client
    return listen, connect


# --- messages over secured connections ------------------------------------------------


@pytest.mark.parametrize("kind", SECURITY)
def test_every_kind_of_message_round_trips(backend: Backend, tls, kind: str) -> None:
    listen, connect = options(kind, tls)
    with arraywire.listen(("127.0.0.1", 0), **listen) as listener:
        peer = serve(listener, echo_all)
        with arraywire.connect(listener.address, timeout=LIMIT, **connect) as channel:
            assert isinstance(channel.socket, ssl.SSLSocket) == ("tls" in kind)
            big = np.random.default_rng(1).integers(0, 255, 24_000_000, dtype=np.uint8)
            strided = np.arange(4000.0).reshape(40, 100)[:, ::3]
            channel.send(np.arange(10))
            np.testing.assert_array_equal(channel.recv_arrays()[0], np.arange(10))
            sent: list[tuple[int, int]] = []
            received: list[tuple[int, int]] = []
            total = channel.send(big, progress=lambda done, of: sent.append((done, of)))
            echoed = channel.recv(max_bytes=None, progress=lambda d, of: received.append((d, of)))
            np.testing.assert_array_equal(echoed, big)
            assert sent[-1] == received[-1] == (total, total)
            assert all(a[0] <= b[0] for a, b in itertools.pairwise(received))
            channel.send(strided)
            np.testing.assert_array_equal(channel.recv(), strided)
            channel.send_arrays({"a": np.arange(3), "b": np.ones((2, 2), ">f4")})
            named = channel.recv_arrays()
            assert list(named) == ["a", "b"] and named["b"].dtype == np.dtype(">f4")
            sent = channel.send_many([np.arange(i) for i in range(1, 50)])
            assert sent == sum(len(plan_send((np.arange(i),)).header) + 8 * i for i in range(1, 50))
            for i in range(1, 50):
                np.testing.assert_array_equal(channel.recv(), np.arange(i))
        assert peer.result() == 53


@pytest.mark.parametrize("kind", SECURITY)
def test_aio_every_kind_of_message_round_trips(backend: Backend, tls, kind: str) -> None:
    listen, connect = options(kind, tls)

    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0), **listen) as listener:

            async def echo() -> int:
                count = 0
                async with await listener.accept() as channel:
                    async for item in channel:
                        await channel.send_arrays(
                            item if isinstance(item, (list, dict)) else [item]
                        )
                        count += 1
                return count

            server = asyncio.create_task(echo())
            async with await aio.connect(listener.address, timeout=LIMIT, **connect) as channel:
                big = np.random.default_rng(2).random(3_000_000)
                reports: list[tuple[int, int]] = []
                await channel.send(big, progress=lambda d, t: reports.append((d, t)))
                assert reports[-1] == (reports[-1][1], reports[-1][1])
                np.testing.assert_array_equal(await channel.recv(max_bytes=None), big)
                await channel.send_arrays([np.arange(3)], metadata=b"meta")
                message = await channel.recv_message()
                np.testing.assert_array_equal(message.arrays[0], np.arange(3))
                await channel.send_many([np.full(i, i) for i in range(1, 30)])
                for i in range(1, 30):
                    np.testing.assert_array_equal(await channel.recv(), np.full(i, i))
                out = np.empty(5)
                await channel.send(np.arange(4.0))
                with pytest.raises(ValueError, match="out is float64"):
                    await channel.recv(out=out)
                await channel.send(np.arange(5.0))
                assert await channel.recv(out=out) is out
            assert await server == 33

    run(main())


def test_a_timeout_between_tls_messages_keeps_the_channel(backend: Backend, tls) -> None:
    server, client = tls
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:
        release = threading.Event()

        def late(channel: arraywire.Channel) -> None:
            release.wait(LIMIT)
            channel.send(np.arange(3))
            channel.recv()

        peer = serve(listener, late)
        with arraywire.connect(listener.address, ssl=client, timeout=LIMIT) as channel:
            channel.socket.settimeout(0.2)
            with pytest.raises(TimeoutError):
                channel.recv()
            release.set()
            channel.socket.settimeout(LIMIT)
            np.testing.assert_array_equal(channel.recv(), np.arange(3))
            channel.send(np.arange(1))
        peer.result()


# --- cut connections over TLS -------------------------------------------------------


@pytest.mark.parametrize("learned", [False, True], ids=["first message", "learned layout"])
def test_a_tls_connection_cut_mid_message_counts_the_bytes(
    backend: Backend, tls, learned: bool
) -> None:
    server, client = tls
    array = np.arange(1_000_000, dtype=np.uint8)
    plan = plan_send((array,))
    wire = bytes(plan.header) + array.tobytes()
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:

        def cut(channel: arraywire.Channel) -> None:
            if learned:  # the receiver learns the layout, then parses the cut one itself
                channel.send(array[::-1].copy())
            channel.socket.sendall(wire[:300_000])  # the TLS socket itself: no Channel rule

        peer = serve(listener, cut)
        with arraywire.connect(listener.address, ssl=client, timeout=LIMIT) as channel:
            if learned:
                np.testing.assert_array_equal(channel.recv(), array[::-1])
            with pytest.raises(IncompleteTransferError) as caught:
                channel.recv()
            assert caught.value.bytes_done == 300_000
            assert caught.value.bytes_expected == len(wire)
            with pytest.raises(arraywire.BrokenStreamError):
                channel.recv()
        peer.result()


def test_aio_tls_connection_cut_mid_message_counts_the_bytes(backend: Backend, tls) -> None:
    server, client = tls
    array = np.arange(3_000_000, dtype=np.uint8)
    wire = bytes(plan_send((array,)).header) + array.tobytes()

    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0), ssl=server) as listener:
            loop = asyncio.get_running_loop()

            def cut() -> None:
                with arraywire.connect(listener.address, ssl=client, timeout=LIMIT) as channel:
                    channel.socket.sendall(wire[:2_100_000])

            sender = loop.run_in_executor(None, cut)
            async with await listener.accept() as channel:
                with pytest.raises(IncompleteTransferError) as caught:
                    await channel.recv()
                assert caught.value.bytes_done == 2_100_000
                assert caught.value.bytes_expected == len(wire)
                with pytest.raises(arraywire.BrokenStreamError, match="out of step"):
                    await channel.recv()
            await sender

    run(main())


def test_a_tls_send_that_times_out_closes_the_channel(backend: Backend, tls) -> None:
    """A TLS write cut short may leave part of a record with the peer: the
    Channel is closed, whatever the count says."""
    server, client = tls
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:
        release = threading.Event()
        peer = serve(listener, lambda channel: release.wait(LIMIT))
        with arraywire.connect(listener.address, ssl=client, timeout=LIMIT) as channel:
            channel.socket.settimeout(0.3)
            with pytest.raises(TimeoutError) as caught:
                channel.send(np.zeros(64_000_000, np.uint8))  # nobody reads
            assert 0 < caught.value.bytes_done < 64_000_000
            with pytest.raises(arraywire.BrokenStreamError, match="TimeoutError"):
                channel.send(np.arange(1))
            release.set()
        peer.result()


def test_aio_a_cancelled_tls_send_breaks_the_channel(backend: Backend, tls) -> None:
    server, client = tls

    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0), ssl=server) as listener:
            connecting = asyncio.ensure_future(
                aio.connect(listener.address, ssl=client, timeout=LIMIT)
            )
            async with await listener.accept() as idle, await connecting as channel:
                sending = asyncio.ensure_future(channel.send(np.zeros(64_000_000, np.uint8)))
                await asyncio.sleep(0.3)  # the peer reads nothing: the send waits
                sending.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await sending
                with pytest.raises(arraywire.BrokenStreamError, match="cancelled"):
                    await channel.send(np.arange(1))
                with pytest.raises(IncompleteTransferError):
                    await idle.recv(max_bytes=None)  # the peer sees the message cut

    run(main())


def test_a_peer_gone_before_a_tls_message_is_a_clean_end(backend: Backend, tls) -> None:
    server, client = tls
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:
        peer = serve(listener, lambda channel: channel.send(np.arange(2)))
        with arraywire.connect(listener.address, ssl=client, timeout=LIMIT) as channel:
            assert [item.tolist() for item in channel] == [[0, 1]]
        peer.result()


def test_over_tls_a_send_and_a_receive_take_turns(backend: Backend, tls) -> None:
    """OpenSSL cannot read and write one connection from two threads: the
    second transfer is refused, not run into a crash."""
    server, client = tls
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:
        release = threading.Event()

        def later(channel: arraywire.Channel) -> None:
            release.wait(LIMIT)
            channel.send(np.arange(2))
            np.testing.assert_array_equal(channel.recv(), np.arange(3))

        peer = serve(listener, later)
        with arraywire.connect(listener.address, ssl=client, timeout=LIMIT) as channel:
            receiving = Peer(channel.recv)
            time.sleep(0.2)  # the receive is waiting for the peer
            with pytest.raises(RuntimeError, match="over TLS they take turns"):
                channel.send(np.arange(3))
            release.set()
            np.testing.assert_array_equal(receiving.result(), np.arange(2))
            channel.send(np.arange(3))
        peer.result()


def test_send_from_refuses_a_bare_ssl_socket(backend: Backend, tls) -> None:
    server, client = tls
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:
        peer = serve(listener, lambda channel: channel.recv())
        with arraywire.connect(listener.address, ssl=client, timeout=LIMIT) as channel:
            with pytest.raises(TypeError, match=r"connect\(\.\.\., ssl=context\)"):
                arraywire.send_from(b"abc", channel.socket)
            with pytest.raises(TypeError, match=r"ssl\.SSLSocket"):
                arraywire.send_array(np.arange(3), channel.socket)
            channel.send(np.arange(3))
        peer.result()


# --- authentication -----------------------------------------------------------------


def _failures_of(listen: dict, connect: dict) -> tuple[BaseException, BaseException, float]:
    """What accept() and connect() raise, and how long connect() took."""
    with arraywire.listen(("127.0.0.1", 0), **listen) as listener:
        peer = Peer(listener.accept)
        started = time.monotonic()
        with pytest.raises(Exception) as at_connect:
            arraywire.connect(listener.address, timeout=LIMIT, **connect)
        took = time.monotonic() - started
        with pytest.raises(Exception) as at_accept:
            peer.result()
    return at_accept.value, at_connect.value, took


@pytest.mark.parametrize(
    ("listen", "connect", "listener_says", "connector_says"),
    [
        ({"authkey": KEY}, {"authkey": OTHER_KEY}, "key differs", "refused this end's key"),
        ({"authkey": KEY}, {}, "peer has no key", "this end has no key"),
        ({}, {"authkey": KEY}, "this end has no key", "peer has no key"),
    ],
    ids=["wrong key", "key at the listener only", "key at the connector only"],
)
def test_a_key_mismatch_fails_both_ends_at_once(
    backend: Backend, listen, connect, listener_says: str, connector_says: str
) -> None:
    at_accept, at_connect, took = _failures_of(listen, connect)
    assert isinstance(at_accept, AuthenticationError) and listener_says in str(at_accept)
    assert isinstance(at_connect, AuthenticationError) and connector_says in str(at_connect)
    assert took < 1.0


def test_aio_a_key_mismatch_fails_both_ends_at_once(backend: Backend) -> None:
    async def main() -> None:
        for listen, connect in [
            ({"authkey": KEY}, {"authkey": OTHER_KEY}),
            ({"authkey": KEY}, {}),
            ({}, {"authkey": KEY}),
        ]:
            async with await aio.listen(("127.0.0.1", 0), **listen) as listener:
                started = time.monotonic()
                with pytest.raises(AuthenticationError):
                    await aio.connect(listener.address, timeout=LIMIT, **connect)
                with pytest.raises(AuthenticationError):
                    await listener.accept()
                assert time.monotonic() - started < 1.0
                # the Listener goes on: a good client still gets in
                async def good() -> aio.Channel:
                    return await aio.connect(listener.address, timeout=LIMIT, **listen)

                if listen:
                    client = asyncio.create_task(good())
                    async with await listener.accept() as channel:
                        async with await client as other:
                            await other.send(np.arange(2))
                            np.testing.assert_array_equal(await channel.recv(), np.arange(2))

    run(main())


def test_the_listener_goes_on_after_a_wrong_key(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0), authkey=KEY) as listener:
        peer = Peer(lambda: arraywire.connect(listener.address, timeout=LIMIT, authkey=OTHER_KEY))
        with pytest.raises(AuthenticationError):
            listener.accept(timeout=LIMIT)
        with pytest.raises(AuthenticationError):
            peer.result()
        good = Peer(lambda: arraywire.connect(listener.address, timeout=LIMIT, authkey=KEY))
        with listener.accept(timeout=LIMIT) as channel, good.result() as other:
            other.send(np.arange(4))
            np.testing.assert_array_equal(channel.recv(), np.arange(4))


def _authenticate_by_hand(address: Any, key: bytes) -> tuple[bytes, bytes]:
    """A connecting end written out: what it sent, and the verdict it got."""
    with socket.create_connection(address, timeout=LIMIT) as sock:
        opening = opening_wire.Opening(key, connecting=True)
        sent = opening.outgoing()
        sock.sendall(sent)
        for _ in range(2):  # the Listener's hello, then its nonce
            opening.received(receive_exactly(sock, opening.wanted))
        proof = opening.outgoing()
        sock.sendall(proof)
        return sent + proof, receive_exactly(sock, opening_wire.VERDICT_BYTES)


def test_a_peer_written_from_the_protocol_document_authenticates(backend: Backend) -> None:
    """docs/PROTOCOL.md's exchange, written out with struct and hmac."""
    hello = struct.pack("<4sBBHII", b"AWHI", 1, 2, 0x0001, 32, 0)

    def client() -> None:
        with socket.create_connection(listener.address, timeout=LIMIT) as sock:
            mine = hello + os.urandom(32)
            sock.sendall(mine)
            theirs = receive_exactly(sock, 16 + 32)
            # a newer hello, understood in version 1's terms: its last field is ignored
            assert theirs[:12] == b"AWHI\x02" + hello[5:12]
            both = mine + theirs
            proof = hmac.new(KEY, b"arraywire auth v1: connecting end" + both, "sha256")
            sock.sendall(proof.digest())
            expected = hmac.new(KEY, b"arraywire auth v1: listening end" + both, "sha256")
            assert receive_exactly(sock, 33) == b"\x01" + expected.digest()
            arraywire.send_array(np.arange(3), sock)

    with arraywire.listen(("127.0.0.1", 0), authkey=KEY) as listener:
        peer = Peer(client)
        with listener.accept(timeout=LIMIT) as channel:
            np.testing.assert_array_equal(channel.recv(), np.arange(3))
        peer.result()


def test_a_replayed_opening_is_refused(backend: Backend) -> None:
    with arraywire.listen(("127.0.0.1", 0), authkey=KEY) as listener:
        recorder = Peer(_authenticate_by_hand, listener.address, KEY)
        listener.accept(timeout=LIMIT).close()
        recorded, verdict = recorder.result()
        assert verdict[:1] == opening_wire.ACCEPTED

        def replay() -> bytes:
            with socket.create_connection(listener.address, timeout=LIMIT) as sock:
                sock.sendall(recorded)  # the old nonce and proof, byte for byte
                receive_exactly(sock, opening_wire.SIZE + opening_wire.NONCE_BYTES)
                return receive_exactly(sock, opening_wire.VERDICT_BYTES)

        replayer = Peer(replay)
        with pytest.raises(AuthenticationError, match="key differs"):
            listener.accept(timeout=LIMIT)
        assert replayer.result() == opening_wire.REFUSED + bytes(opening_wire.PROOF_BYTES)


def test_a_listener_that_fakes_its_proof_is_refused(backend: Backend) -> None:
    """The connecting end checks the Listener's proof: accepting blindly is not enough."""
    with socket.create_server(("127.0.0.1", 0)) as server:

        def impostor() -> None:
            conn, _ = server.accept()
            with conn:
                opening = opening_wire.Opening(OTHER_KEY, connecting=False)
                conn.sendall(opening.outgoing())
                receive_exactly(conn, opening_wire.SIZE + opening_wire.NONCE_BYTES + opening_wire.PROOF_BYTES)
                conn.sendall(opening_wire.ACCEPTED + bytes(opening_wire.PROOF_BYTES))
                conn.recv(1)

        peer = Peer(impostor)
        with pytest.raises(AuthenticationError, match="proof does not match"):
            arraywire.connect(server.getsockname(), timeout=LIMIT, authkey=KEY)
        peer.result()


@pytest.mark.parametrize("kind", SECURITY)
def test_garbage_and_silence_do_not_hold_up_a_good_client(backend: Backend, tls, kind) -> None:
    listen, connect = options(kind, tls)
    with arraywire.listen(("127.0.0.1", 0), handshake_timeout=2.0, **listen) as listener:
        silent = socket.create_connection(listener.address)
        garbage = socket.create_connection(listener.address)
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        started = time.monotonic()
        good = Peer(lambda: arraywire.connect(listener.address, timeout=LIMIT, **connect))
        with listener.accept(timeout=LIMIT) as channel, good.result() as other:
            assert time.monotonic() - started < 1.5  # well before the silent one's timeout
            other.send(np.arange(3))
            np.testing.assert_array_equal(channel.recv(), np.arange(3))
        garbage.settimeout(LIMIT)
        assert _drain(garbage) is not None  # dropped: the read ends
        with pytest.raises(TimeoutError):
            listener.accept(timeout=3.0)  # runs the Listener past the silent one's deadline
        silent.settimeout(LIMIT)
        assert _drain(silent) is not None  # dropped after handshake_timeout
        assert time.monotonic() - started < 2.0 + 3.0 + 1.0
        silent.close()
        garbage.close()


def _drain(sock: socket.socket) -> bytes | None:
    """Everything until the peer closes (or resets) the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


@pytest.mark.parametrize("kind", SECURITY)
def test_aio_garbage_and_silence_do_not_hold_up_a_good_client(backend: Backend, tls, kind) -> None:
    listen, connect = options(kind, tls)

    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0), handshake_timeout=2.0, **listen) as listener:
            loop = asyncio.get_running_loop()
            silent = socket.create_connection(listener.address)
            garbage = socket.create_connection(listener.address)
            garbage.sendall(b"\x00" * 100)
            started = time.monotonic()
            client = asyncio.create_task(aio.connect(listener.address, timeout=LIMIT, **connect))
            async with await listener.accept() as channel, await client as other:
                assert time.monotonic() - started < 1.5
                await other.send(np.arange(3))
                np.testing.assert_array_equal(await channel.recv(), np.arange(3))
            garbage.settimeout(LIMIT)
            silent.settimeout(LIMIT)
            await loop.run_in_executor(None, _drain, garbage)
            await loop.run_in_executor(None, _drain, silent)
            assert 1.5 < time.monotonic() - started < 2.0 + 2.0
            silent.close()
            garbage.close()

    run(main())


# --- TLS against plain, and certificates ---------------------------------------------


def test_a_plain_client_of_a_tls_listener_gets_a_clear_error(backend: Backend, tls) -> None:
    server, _ = tls
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:
        accepting = Peer(lambda: listener.accept(timeout=3.0))
        started = time.monotonic()
        with pytest.raises((ProtocolError, ConnectionResetError), match="TLS"):
            arraywire.connect(listener.address, timeout=LIMIT)
        assert time.monotonic() - started < 2.0
        with pytest.raises(TimeoutError):
            accepting.result()  # the plain client was dropped, not delivered


def test_a_tls_client_of_a_plain_listener_gets_a_clear_error(backend: Backend, tls) -> None:
    _, client = tls
    with arraywire.listen(("127.0.0.1", 0)) as listener:
        accepting = Peer(lambda: listener.accept(timeout=3.0))
        started = time.monotonic()
        with pytest.raises(ProtocolError, match="does not speak TLS"):
            arraywire.connect(listener.address, timeout=LIMIT, ssl=client)
        assert time.monotonic() - started < 2.0
        with pytest.raises(TimeoutError):
            accepting.result()


def test_aio_tls_against_plain_gets_a_clear_error(backend: Backend, tls) -> None:
    server, client = tls

    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0), ssl=server) as listener:
            with pytest.raises((ProtocolError, ConnectionResetError), match="TLS"):
                await aio.connect(listener.address, timeout=LIMIT)
        async with await aio.listen(("127.0.0.1", 0)) as listener:
            with pytest.raises(ProtocolError, match="does not speak TLS"):
                await aio.connect(listener.address, timeout=LIMIT, ssl=client)

    run(main())


def test_an_unverifiable_certificate_is_refused(backend: Backend, tls) -> None:
    server, _ = tls
    stranger = ssl.create_default_context()  # trusts the system's CAs, not the test CA
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:
        accepting = Peer(lambda: listener.accept(timeout=3.0))
        with pytest.raises(ssl.SSLCertVerificationError):
            arraywire.connect(listener.address, timeout=LIMIT, ssl=stranger)
        with pytest.raises(TimeoutError):
            accepting.result()

    async def main() -> None:
        async with await aio.listen(("127.0.0.1", 0), ssl=server) as listener:
            with pytest.raises(ssl.SSLCertVerificationError):
                await aio.connect(listener.address, timeout=LIMIT, ssl=stranger)

    run(main())


def test_a_certificate_for_another_host_is_refused(backend: Backend, tls) -> None:
    server, client = tls
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:
        accepting = Peer(lambda: listener.accept(timeout=3.0))
        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            arraywire.connect(
                listener.address, timeout=LIMIT, ssl=client, server_hostname="example.org"
            )
        with pytest.raises(TimeoutError):
            accepting.result()
        peer = serve(listener, lambda channel: channel.recv())
        with arraywire.connect(
            listener.address, timeout=LIMIT, ssl=client, server_hostname="localhost"
        ) as channel:
            channel.send(np.arange(2))
        peer.result()


def test_bad_options_are_refused_before_connecting(backend: Backend, tls) -> None:
    with pytest.raises(TypeError, match="authkey must be bytes"):
        arraywire.listen(("127.0.0.1", 0), authkey="secret")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="authkey is empty"):
        arraywire.connect(("127.0.0.1", 9), authkey=b"")
    with pytest.raises(TypeError, match=r"ssl must be an ssl\.SSLContext"):
        arraywire.connect(("127.0.0.1", 9), ssl=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="authkey must be bytes"):
        run(aio.connect(("127.0.0.1", 9), authkey=bytearray(b"k")))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    hello=st.one_of(
        st.binary(min_size=16, max_size=16),
        st.builds(
            lambda features, extra, nonce: opening_wire.encode(features, extra) + nonce,
            st.integers(0, 0xFFFF), st.integers(0, 64), st.binary(min_size=32, max_size=32),
        ),
    ),
    rest=st.binary(max_size=80),
    connecting=st.booleans(),
)
def test_any_bytes_in_an_opening_end_in_a_named_error_or_a_peer(
    hello: bytes, rest: bytes, connecting: bool
) -> None:
    """Hostile openings: ProtocolError or AuthenticationError, never anything else,
    and never a finished opening without the key's proof."""
    opening = opening_wire.Opening(KEY, connecting=connecting)
    data = hello + rest
    try:
        while opening.wanted and len(data) >= opening.wanted:
            part, data = data[: opening.wanted], data[opening.wanted :]
            opening.received(part)
    except (ProtocolError, AuthenticationError):
        return
    assert opening.wanted, "an opening finished without a valid proof"


SIGPIPE_AT_DEFAULT = """
import asyncio, signal, ssl, threading, time
import numpy as np, trustme
import arraywire
from arraywire import aio

signal.signal(signal.SIGPIPE, signal.SIG_DFL)
ca = trustme.CA()
server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ca.issue_cert("127.0.0.1").configure_cert(server)
client = ssl.create_default_context()
ca.configure_trust(client)

def report(exc):
    print(type(exc).__name__, exc.bytes_done > 0)

if "{driver}" == "blocking":
    with arraywire.listen(("127.0.0.1", 0), ssl=server) as listener:
        closer = threading.Thread(target=lambda: listener.accept().close())
        closer.start()
        channel = arraywire.connect(listener.address, ssl=client)
        closer.join()
        time.sleep(0.2)
        try:
            for _ in range(20):
                channel.send(np.zeros(100_000))
                time.sleep(0.05)
        except OSError as exc:
            report(exc)
else:
    async def main():
        async with await aio.listen(("127.0.0.1", 0), ssl=server) as listener:
            connecting = asyncio.ensure_future(aio.connect(listener.address, ssl=client))
            (await listener.accept()).close()
            channel = await connecting
            await asyncio.sleep(0.2)
            try:
                for _ in range(20):
                    await channel.send(np.zeros(100_000))
                    await asyncio.sleep(0.05)
            except OSError as exc:
                report(exc)
    asyncio.run(main())
"""


@pytest.mark.parametrize("driver", ["blocking", "aio"])
def test_a_tls_send_to_a_closed_peer_raises_where_sigpipe_would_kill(
    backend: Backend, driver: str
) -> None:
    """OpenSSL writes with write(): the TLS core keeps SIGPIPE from killing a
    process that restored its default action, as MSG_NOSIGNAL does in the twins."""
    child = subprocess.run(
        [sys.executable, "-c", SIGPIPE_AT_DEFAULT.replace("{driver}", driver)],
        env=backend_env(backend.name), capture_output=True, text=True, timeout=LIMIT,
    )
    assert child.returncode == 0, (child.returncode, child.stderr)
    assert child.stdout.split() == ["BrokenPipeError", "True"]
