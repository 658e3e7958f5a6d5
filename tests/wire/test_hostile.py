"""A hostile or broken peer cannot make recv_array hang, allocate much, or
return garbage: it gets ProtocolError or IncompleteTransferError at once.

The peer writes raw bytes into a real TCP connection; the receiver's socket
has a timeout only so that a regression fails instead of hanging."""

from __future__ import annotations

import asyncio
import socket
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
from backends import Backend
from faultkit import Pairs
from sockets import Peer

import arraywire
from arraywire import aio
from arraywire._wire import header

MB = 1 << 20
# nothing beyond the header (at most 1 MiB) and small bookkeeping
ALLOCATION_LIMIT = 2 * MB


def _descriptor(dtype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    text = dtype.encode()
    return (
        header.ARRAY_FIXED.pack(nbytes, len(shape), b"C", len(text))
        + b"".join(header.DIM.pack(dim) for dim in shape)
        + text
    )


def _header(*descriptors: bytes) -> bytes:
    block = b"".join(descriptors)
    return header.PREAMBLE.pack(b"AWIR", 1, bytes(3), len(block), len(descriptors)) + block


VALID = _header(_descriptor("<f8", (1000,), 8000))


def _feed(sock: socket.socket, data: bytes, close: bool) -> Peer:
    """Send data from a thread, then close sock if asked."""

    def feed() -> None:
        try:
            sock.sendall(data)
            if close:
                sock.close()
        except OSError:  # the receiver gave up first
            pass

    return Peer(feed)


def _receive(
    backend: Backend, pairs: Pairs, hostile: bytes, close: bool,
    call: Callable[[socket.socket], object] = arraywire.recv_array,
) -> tuple[BaseException, float, int]:
    """Feed `hostile` to a receiver; return its error, the time it took and
    the most memory it held at once."""
    a, b = pairs("tcp")
    b.settimeout(2)
    tracemalloc.start()
    started = time.monotonic()
    feeder = _feed(a, hostile, close)
    try:
        call(b)
    except (ValueError, OSError, EOFError) as exc:
        error: BaseException = exc
    else:
        raise AssertionError("the hostile message was accepted")
    finally:
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        b.close()
        feeder.result()
    return error, elapsed, peak


BAD_HEADERS = {
    "random-bytes": np.random.default_rng(0).integers(0, 256, MB, dtype=np.uint8).tobytes(),
    "http-request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "2^62-bytes": _header(_descriptor("<f8", (1 << 59,), 1 << 62)),
    "3x512MiB": _header(*[_descriptor("<f8", (1 << 26,), 1 << 29)] * 3),
    "object-dtype": _header(_descriptor("|O", (10,), 80)),
    "shape-overflow": _header(_descriptor("<f8", (1 << 40, 1 << 40), 0)),
}


@pytest.mark.parametrize("hostile", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_bad_header_on_an_open_connection(backend: Backend, pairs: Pairs, hostile: bytes) -> None:
    """The peer keeps the connection open: the receiver must not wait for more."""
    error, elapsed, peak = _receive(backend, pairs, hostile, close=False)
    assert isinstance(error, arraywire.ProtocolError), repr(error)
    assert elapsed < 1
    assert peak < ALLOCATION_LIMIT


@pytest.mark.parametrize("dtype", ["|S0", "<U0"])
def test_zero_itemsize_dtype_with_a_huge_shape(backend: Backend, pairs: Pairs, dtype: str) -> None:
    hostile = _header(_descriptor(dtype, (1 << 34,), 0))
    error, elapsed, peak = _receive(backend, pairs, hostile, close=False)
    assert isinstance(error, arraywire.ProtocolError), repr(error)
    assert elapsed < 1
    assert peak < ALLOCATION_LIMIT


CUT_MESSAGES = {
    "in-preamble": (VALID[:10], 10, 16),
    "in-descriptors": (VALID[:20], 20, None),
    "after-header": (VALID, len(VALID), len(VALID) + 8000),
    "in-payload": (VALID + bytes(4000), len(VALID) + 4000, len(VALID) + 8000),
}


@pytest.mark.parametrize(
    ("sent", "bytes_done", "bytes_expected"), CUT_MESSAGES.values(), ids=CUT_MESSAGES.keys()
)
def test_close_mid_message(
    backend: Backend, pairs: Pairs, sent: bytes, bytes_done: int, bytes_expected: int | None
) -> None:
    error, elapsed, peak = _receive(backend, pairs, sent, close=True)
    assert isinstance(error, arraywire.IncompleteTransferError), repr(error)
    assert error.bytes_done == bytes_done
    if bytes_expected is not None:
        assert error.bytes_expected == bytes_expected
    assert elapsed < 1
    assert peak < ALLOCATION_LIMIT


def test_close_mid_message_of_several_arrays(backend: Backend, pairs: Pairs) -> None:
    two = _header(_descriptor("<i4", (10,), 40), _descriptor("|u1", (3, 3), 9))
    error, elapsed, _ = _receive(backend, pairs, two + bytes(45), True, arraywire.recv_arrays)
    assert isinstance(error, arraywire.IncompleteTransferError), repr(error)
    assert (error.bytes_done, error.bytes_expected) == (len(two) + 45, len(two) + 49)
    assert elapsed < 1


def test_header_announcing_a_large_block_then_stalling(backend: Backend, pairs: Pairs) -> None:
    """The descriptor block may be up to 1 MiB; a peer that never sends it
    costs that much, and the socket's timeout, no more."""
    stall = header.PREAMBLE.pack(b"AWIR", 1, bytes(3), 1 << 20, 1) + bytes(100)

    def receive(sock: socket.socket) -> object:
        sock.settimeout(0.5)
        return arraywire.recv_array(sock)

    error, elapsed, peak = _receive(backend, pairs, stall, False, receive)
    assert isinstance(error, TimeoutError), repr(error)
    assert error.bytes_done == 16 + 100  # type: ignore[attr-defined]
    assert 0.5 <= elapsed < 2
    assert peak < ALLOCATION_LIMIT


def _outcome(receive: Callable[[socket.socket], object], sent: bytes, close: bool) -> tuple:
    a, b = socket.socketpair()
    feeder = _feed(a, sent, close)
    try:
        receive(b)
    except (ValueError, OSError, EOFError) as exc:
        return (type(exc), str(exc), getattr(exc, "bytes_done", None),
                getattr(exc, "bytes_expected", None))
    finally:
        b.close()
        feeder.result()
        a.close()
    raise AssertionError("the hostile message was accepted")


def _aio_receive(sock: socket.socket) -> object:
    sock.setblocking(False)
    return asyncio.run(asyncio.wait_for(aio.recv_array(sock), 10))


@pytest.mark.parametrize(
    ("sent", "close"),
    [(sent, False) for sent in BAD_HEADERS.values()]
    + [(sent, True) for sent, _, _ in CUT_MESSAGES.values()],
    ids=[*BAD_HEADERS, *CUT_MESSAGES],
)
def test_blocking_and_aio_receivers_fail_alike(backend: Backend, sent: bytes, close: bool) -> None:
    """Same error type, message and byte counts on both receive paths."""

    def blocking(sock: socket.socket) -> object:
        sock.settimeout(10)
        return arraywire.recv_array(sock)

    assert _outcome(blocking, sent, close) == _outcome(_aio_receive, sent, close)
