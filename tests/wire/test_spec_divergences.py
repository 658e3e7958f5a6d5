"""Where docs/PROTOCOL.md and the code once parted: nesting depth, the order
of the receiver's checks 6 and 7, and field titles that are not text. Over
real sockets, blocking and aio, both backends."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import numpy as np
import pytest
from backends import Backend
from sockets import Peer

import arraywire
from arraywire import ProtocolError, aio
from arraywire._wire import dtypes, header

LIMIT = 30.0


def nested_structs(levels: int) -> np.dtype:
    """levels structs one inside the other, the outer one included."""
    dtype = np.dtype("<i4")
    for _ in range(levels):
        dtype = np.dtype([("a", dtype)])
    return dtype


def nested_shaped_structs(levels: int) -> np.dtype:
    """levels structs one inside the other, each a shaped field of the next:
    the field shapes add no level."""
    dtype = np.dtype([("b", "<i2", (2,))])
    for _ in range(levels - 1):
        dtype = np.dtype([("b", dtype, (1,))])
    return dtype


def exchange(array: np.ndarray, aio_side: bool) -> np.ndarray:
    a, b = socket.socketpair()
    with a, b:
        sender = Peer(lambda: arraywire.send_array(array, a))
        if aio_side:
            b.setblocking(False)
            got = asyncio.run(asyncio.wait_for(aio.recv_array(b), LIMIT))
        else:
            b.settimeout(LIMIT)
            got = arraywire.recv_array(b)
        sender.result()
    assert isinstance(got, np.ndarray)
    return got


@pytest.mark.parametrize("aio_side", [False, True], ids=["blocking", "aio"])
@pytest.mark.parametrize("make", [nested_structs, nested_shaped_structs])
def test_32_levels_pass_and_33_are_refused_at_both_ends(
    backend: Backend, aio_side: bool, make: Any,
) -> None:
    deepest = make(dtypes.MAX_DEPTH)
    sent = np.zeros(3, deepest)
    got = exchange(sent, aio_side)
    assert got.dtype == deepest
    assert got.tobytes() == sent.tobytes()
    too_deep = make(dtypes.MAX_DEPTH + 1)
    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError, match="nested deeper than 32 levels"):
        arraywire.send_array(np.zeros(3, too_deep), a)


def nested_text(levels: int) -> str:
    return "[('a', " * (levels - 1) + "[('a', '<i4')]" + ")]" * (levels - 1)


def test_the_nesting_text_counts_the_outer_struct() -> None:
    assert dtypes.parse(nested_text(32)) == nested_structs(32)
    with pytest.raises(ValueError, match="nested deeper than 32 levels"):
        dtypes.parse(nested_text(33))
    # a field's shape is not a level of its own
    shaped = "[('a', " * 31 + "[('a', '<i4', (2,))]" + ")]" * 31
    expected = np.dtype([("a", "<i4", (2,))])
    for _ in range(31):
        expected = np.dtype([("a", expected)])
    assert dtypes.parse(shaped) == expected
    # a subarray type is: 31 structs around one is 32 levels, 32 around one 33
    subarray = "('<i4', (2,))"
    assert dtypes.parse("[('a', " * 30 + "[('a', " + subarray + ")]" + ")]" * 30)
    with pytest.raises(ValueError, match="nested deeper than 32 levels"):
        dtypes.parse("[('a', " * 31 + "[('a', " + subarray + ")]" + ")]" * 31)


def _block(nbytes_shape: int, stray: int) -> bytes:
    text = b"|u1"
    block = (header.ARRAY_FIXED.pack(nbytes_shape, 1, b"C", len(text))
             + header.DIM.pack(nbytes_shape) + text + bytes(stray))
    return header.PREAMBLE.pack(b"AWIR", 1, bytes(3), len(block), 1) + block


@pytest.mark.parametrize("aio_side", [False, True], ids=["blocking", "aio"])
def test_max_bytes_is_checked_before_stray_bytes(backend: Backend, aio_side: bool) -> None:
    over = _block((1 << 30) + 1, stray=1)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(over)
        if aio_side:
            b.setblocking(False)
            receive = aio.recv_array(b)
            with pytest.raises(ProtocolError, match="over max_bytes=1,073,741,824"):
                asyncio.run(asyncio.wait_for(receive, LIMIT))
        else:
            b.settimeout(LIMIT)
            with pytest.raises(ProtocolError, match="over max_bytes=1,073,741,824"):
                arraywire.recv_array(b)
    # within the limit, the stray byte is what is wrong
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_block(16, stray=1))
        b.settimeout(LIMIT)
        with pytest.raises(ProtocolError, match="1 stray bytes after the last descriptor"):
            arraywire.recv_array(b)


@pytest.mark.parametrize("title", [1, 2.5, b"t"])
def test_a_title_that_is_not_text_is_refused_clearly(backend: Backend, title: Any) -> None:
    try:
        dtype = np.dtype({"names": ["a"], "formats": ["<i4"], "titles": [title]})
    except (TypeError, ValueError):
        pytest.skip(f"numpy refuses the title {title!r} itself")
    if dtype.names is None or not dtype.fields["a"][2:]:
        pytest.skip(f"numpy keeps no title for {title!r}")
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ValueError, match="not a str"):
            arraywire.send_array(np.zeros(2, dtype), a)
        with pytest.raises(ValueError, match="not a str"):
            asyncio.run(_aio_send(np.zeros(2, dtype), a))
        a.sendall(b"")  # nothing went out: the receiver sees no bytes
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)


async def _aio_send(array: np.ndarray, sock: socket.socket) -> None:
    sock.setblocking(False)
    await aio.send_array(array, sock)
