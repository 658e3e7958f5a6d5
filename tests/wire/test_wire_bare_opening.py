"""The opening's bare mode and a refusal in place of a hello, sans I/O: the
command line's receiver without a key takes a message or a hello first."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from arraywire._wire import hello, peers
from arraywire._wire.engine import plan_send
from arraywire._wire.errors import AuthenticationError, ProtocolError


def pump(sender: hello.Opening, receiver: hello.Opening) -> None:
    """Hand what sender has to say to receiver, in the pieces it wants."""
    data = sender.outgoing()
    while data and receiver.wanted:
        piece, data = data[: receiver.wanted], data[receiver.wanted :]
        receiver.received(piece)
    assert not data, "bytes left over"


def test_a_bare_end_takes_a_message_in_place_of_the_hello() -> None:
    receiver = hello.Opening(None, connecting=False, bare=True)
    assert receiver.outgoing() == b""  # it speaks only when spoken to
    header = plan_send([np.arange(5)]).header
    receiver.received(header[: hello.SIZE])
    assert receiver.wanted == 0
    assert receiver.early == header[: hello.SIZE]
    assert receiver.peer == hello.BARE_PEER
    assert receiver.outgoing() == b""


def test_a_bare_end_answers_a_hello_and_goes_on() -> None:
    receiver = hello.Opening(None, connecting=False, bare=True)
    group = hello.Group(b"g" * 16, 1, 3)
    sender = hello.Opening(None, connecting=True, group=group)
    pump(sender, receiver)
    assert receiver.wanted == 0 and receiver.group == group and receiver.early == b""
    receiver.answer_join(hello.JOINED, 8)
    pump(receiver, sender)  # its hello, then the answer
    assert sender.wanted == 0 and sender.peer is not None


def test_a_bare_end_meets_a_keyed_peer_with_a_hello_that_says_so() -> None:
    receiver = hello.Opening(None, connecting=False, bare=True)
    sender = hello.Opening(b"key", connecting=True)
    with pytest.raises(AuthenticationError, match="the peer requires authentication and this end has no key"):
        pump(sender, receiver)
    with pytest.raises(AuthenticationError, match="this end requires authentication and the peer has no key"):
        pump(receiver, sender)  # the bare end's hello went out before it refused


def test_a_bare_end_refuses_a_preamble_it_cannot_read() -> None:
    receiver = hello.Opening(None, connecting=False, bare=True)
    with pytest.raises(ProtocolError, match="protocol version 9") as raised:
        receiver.received(b"AWIR\x09" + bytes(11))
    assert raised.value.speaks == "message"


@pytest.mark.parametrize(
    ("first", "speaks"),
    [(b"GET / HTTP/1.1\r\n", "http"), (b"\x16\x03\x01" + bytes(13), "tls"), (b"\x00" * 16, "other")],
)
def test_a_bare_end_names_what_else_came(first: bytes, speaks: str) -> None:
    receiver = hello.Opening(None, connecting=False, bare=True)
    with pytest.raises(ProtocolError) as raised:
        receiver.received(first)
    assert (raised.value.speaks, raised.value.first) == (speaks, first)


@pytest.mark.parametrize("reason", ["", "short", "a reason longer than the hello's sixteen bytes"])
def test_a_refusal_in_place_of_a_hello_is_read_whole(reason: str) -> None:
    opening = hello.Opening(b"key", connecting=True)
    text = reason.encode()
    refusal = peers.REFUSAL.pack(peers.REFUSAL_MAGIC, len(text)) + text
    refusal += bytes(max(0, hello.SIZE - len(refusal)))  # at least a hello's worth comes
    with pytest.raises(ProtocolError, match=f"^the peer refused: {reason}$") as raised:
        fed = 0
        while opening.wanted:
            size = opening.wanted
            opening.received(refusal[fed : fed + size])
            fed += size
    assert raised.value.speaks == "refusal"


def test_bare_needs_no_key_and_no_group() -> None:
    with pytest.raises(ValueError, match="no key and no stream group"):
        hello.Opening(b"key", connecting=False, bare=True)
    with pytest.raises(ValueError, match="no key and no stream group"):
        hello.Opening(None, connecting=True, group=hello.Group(bytes(16), 0, 2), bare=True)


def test_a_join_refusal_names_the_limit() -> None:
    refused = hello.join_refused(hello.TOO_MANY_STREAMS, hello.Group(bytes(16), 2, 9), 4)
    assert (refused.status, refused.asked, refused.max_streams, refused.member) == (2, 9, 4, 2)
    assert "asked for 9 streams and this end takes at most 4" in str(refused)
    assert isinstance(refused, ConnectionRefusedError)


def test_the_refusal_layout_is_the_protocols() -> None:
    assert peers.REFUSAL.size == struct.calcsize("<4sI") == 8
    assert peers.identify(b"AWNO\x00\x00\x00\x00") == "refusal"
