"""Capability bits in the hello and control records (docs/PROTOCOL.md,
"Capabilities" and "Control records"), sans I/O, and the opening driven over
a socketpair against a peer written by hand from the document."""

from __future__ import annotations

import socket
import struct
import threading

import numpy as np
import pytest

from arraywire._sync.connection import run_opening
from arraywire._wire import control, opening, peers
from arraywire._wire.engine import Receive, plan_send
from arraywire._wire.errors import AuthenticationError, ProtocolError
from arraywire._wire.hello import CONTROL, Hello, Opening

KEY = b"k" * 32
# The hello of an end of version 1 without a key, as the document writes it.
VERSION_1_HELLO = struct.pack("<4sBBHII", b"AWHI", 1, 2, 0, 0, 0)


def run(connecting: Opening, listening: Opening) -> None:
    """Both ends to the end of their opening, each one's bytes handed over whole."""
    for _ in range(10):
        for this, other in ((connecting, listening), (listening, connecting)):
            data = this.outgoing()
            while data and other.wanted:
                piece, data = data[: other.wanted], data[other.wanted :]
                other.received(piece)
        if not connecting.wanted and not listening.wanted:
            return
    raise AssertionError("the opening did not end")


@pytest.mark.parametrize(
    ("connecting", "listening", "on"),
    [(CONTROL, CONTROL, CONTROL), (CONTROL, 0, 0), (0, CONTROL, 0), (CONTROL | 0x80, CONTROL | 0x40, CONTROL)],
)
@pytest.mark.parametrize("key", [None, KEY])
def test_a_capability_is_on_when_both_ends_announce_it(
    connecting: int, listening: int, on: int, key: bytes | None,
) -> None:
    ends = (Opening(key, connecting=True, capabilities=connecting),
            Opening(key, connecting=False, capabilities=listening))
    run(*ends)
    assert [end.capabilities for end in ends] == [on, on]
    assert ends[0].peer == Hello(2, 2, ends[0].peer.features, listening)


def test_the_capability_bits_are_the_hellos_last_field() -> None:
    end = Opening(None, connecting=True, capabilities=CONTROL)
    assert end.outgoing() == bytes.fromhex("41 57 48 49 02 02 00 00 00 00 00 00 01 00 00 00")


def test_a_version_1_peer_gets_no_capability() -> None:
    end = Opening(None, connecting=False, capabilities=CONTROL)
    end.received(VERSION_1_HELLO)
    assert end.peer == Hello(1, 2, 0, 0) and end.capabilities == 0 and end.wanted == 0


def test_capability_bits_in_a_version_1_hello_are_refused_and_say_why() -> None:
    with pytest.raises(ProtocolError, match=r"capability bits need hello version 2.*version 1.*reserved 0x1"):
        Opening(None, connecting=False, capabilities=CONTROL).received(
            struct.pack("<4sBBHII", b"AWHI", 1, 2, 0, 0, CONTROL))


def test_capability_bits_changed_on_the_way_fail_authentication() -> None:
    """The proofs cover the hellos whole: a relay cannot turn a capability on or off."""
    connecting = Opening(KEY, connecting=True, capabilities=CONTROL)
    listening = Opening(KEY, connecting=False, capabilities=CONTROL)
    mine = bytearray(connecting.outgoing())
    mine[12] = 0  # the relay strips the connecting end's capability bits
    listening.received(bytes(mine[:16]))
    listening.received(bytes(mine[16:]))
    theirs = listening.outgoing()
    connecting.received(theirs[:16])
    connecting.received(theirs[16:])
    with pytest.raises(AuthenticationError):
        listening.received(connecting.outgoing())


def test_over_a_socketpair_a_version_1_peer_written_by_hand_still_connects() -> None:
    """The driver's opening against a peer that knows only version 1 of the
    hello: the peer reads this end's version 2 hello in version 1 terms."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        result: list[object] = []
        end = opening.Opening(None, connecting=True, capabilities=CONTROL)
        driver = threading.Thread(target=lambda: result.append(run_opening(ours, end, None)))
        driver.start()
        theirs.settimeout(10)
        theirs.sendall(VERSION_1_HELLO)
        got = theirs.recv(64)
        driver.join(10)
        magic, version, reads, features, extra = struct.unpack_from("<4sBBHI", got)
        assert (len(got), magic, version, reads, features, extra) == (16, b"AWHI", 2, 2, 0, 0)
        assert result == [Hello(1, 2, 0, 0)] and end.capabilities == 0


# --- control records ----------------------------------------------------------------


def test_a_refusal_record_is_the_documented_bytes() -> None:
    record = control.encode_refusal("too big")
    assert record == b"AWCR" + bytes.fromhex("0100 0000 07000000 00000000") + b"too big"
    assert control.is_record(record) and peers.identify(record) == "control"
    kind, length = control.decode(record[: control.SIZE], CONTROL)
    assert (kind, length) == (control.REFUSAL, 7)
    assert control.refusal_reason(record[control.SIZE :]) == "too big"
    error = control.refused("too big")
    assert isinstance(error, ProtocolError)
    assert str(error) == "the receiver refused the message: too big"


def test_a_long_reason_is_cut_at_a_character_within_the_limit() -> None:
    record = control.encode_refusal("é" * 3000)  # 6,000 bytes of UTF-8
    body = record[control.SIZE :]
    assert len(body) == control.MAX_REASON == 4096
    assert control.refusal_reason(body) == "é" * 2048
    assert control.decode(record[: control.SIZE], CONTROL).length == 4096


def test_a_reason_that_is_not_utf8_is_read_with_replacements() -> None:
    assert control.refusal_reason(b"bad \xff byte") == "bad \ufffd byte"


@pytest.mark.parametrize(
    ("first", "capabilities", "says"),
    [
        (control.RECORD.pack(b"AWCR", 1, 0, 5, 0), 0, "did not turn control records on"),
        (control.RECORD.pack(b"AWCR", 7, 0, 0, 0), CONTROL, "unknown type 7: this arraywire knows types 1 \\(refusal\\), 2 \\(probe\\), 3 \\(probe answer\\), 4 \\(ranges\\), 5 \\(copied\\), 6 \\(confirm\\)$"),
        (control.RECORD.pack(b"AWCR", 2, 0, 0, 0), CONTROL, "probe record \\(type 2\\) on a connection whose opening did not turn same-host copies on"),
        (control.RECORD.pack(b"AWCR", 0xFFFF, 0, 0, 0), CONTROL, "unknown type 65535"),
        (control.RECORD.pack(b"AWCR", 1, 0, 4097, 0), CONTROL, "refusal record of 4,097 bytes; it carries at most 4,096"),
        (control.RECORD.pack(b"AWCR", 1, 0, 0xFFFFFFFF, 0), CONTROL, "of 4,294,967,295 bytes"),
        (control.RECORD.pack(b"AWCR", 1, 1, 0, 0), CONTROL, "flags 0x1 and reserved 0x0"),
        (control.RECORD.pack(b"AWCR", 1, 0, 0, 7), CONTROL, "flags 0x0 and reserved 0x7"),
        (control.RECORD.pack(b"AWIR", 1, 0, 0, 0), CONTROL, "begins with b'AWIR', expected b'AWCR'"),
    ],
)
def test_a_hostile_record_is_refused_before_its_body(first: bytes, capabilities: int, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        control.decode(first, capabilities)


def test_a_record_over_its_limit_is_not_made() -> None:
    with pytest.raises(ValueError, match="a refusal record carries at most 4,096 bytes, got 4,097"):
        control.encode(control.REFUSAL, bytes(4097))
    assert control.MAX_REASON <= control.MAX_BODY


# --- the message engine meets records ---------------------------------------------


def message_of(array: np.ndarray) -> bytes:
    """The bytes of a message of one contiguous array."""
    return plan_send((array,)).header + array.tobytes()


def feed(message: Receive, data: bytes) -> None:
    """Fill each read the engine asks for from data, in order."""
    for buffers in message.reads():
        for buffer in buffers:  # type: ignore[union-attr]
            view = memoryview(buffer).cast("B")
            view[:], data = data[: len(view)], data[len(view) :]
            message.moved(len(view))


def test_a_refusal_where_a_message_starts_is_raised_never_returned() -> None:
    message = Receive(None, capabilities=CONTROL)
    with pytest.raises(ProtocolError) as raised:
        feed(message, control.encode_refusal("over max_bytes=10"))
    assert str(raised.value) == "the receiver refused the message: over max_bytes=10"
    assert message.refusal == "" and message.refusal_record() is None  # never answered
    assert message.fail(raised.value)  # out of step: the driver closes


def test_a_record_without_the_capability_is_refused_before_its_body() -> None:
    message = Receive(None)
    with pytest.raises(ProtocolError, match="did not turn control records on"):
        feed(message, control.encode_refusal("no"))
    assert message.offset == control.SIZE


@pytest.mark.parametrize("capabilities", [CONTROL, 0])
def test_a_refused_header_gives_the_record_to_send_with_the_capability(capabilities: int) -> None:
    message = Receive(10, capabilities=capabilities)
    with pytest.raises(ProtocolError, match="over max_bytes=10") as raised:
        feed(message, message_of(np.arange(100)))
    assert message.refusal == str(raised.value)
    expected = control.encode_refusal(str(raised.value)) if capabilities else None
    assert message.refusal_record() == expected


def test_a_misfit_is_no_refusal() -> None:
    message = Receive(None, one_array=True, out=np.empty(3), capabilities=CONTROL)
    feed(message, message_of(np.arange(5.0)))
    with pytest.raises(ValueError, match="out is"):
        message.result()
    assert message.refusal_record() is None


@pytest.mark.parametrize(
    ("data", "capabilities", "refused"),
    [
        (control.encode_refusal("why") + b"more", CONTROL, "why"),
        (control.encode_refusal("why"), 0, None),  # capability off
        (control.encode_refusal("why")[:-1], CONTROL, None),  # cut short
        (control.RECORD.pack(b"AWCR", 9, 0, 0, 0), CONTROL, None),  # unknown type
        (message_of(np.arange(3)), CONTROL, None),  # a message
        (b"", CONTROL, None),
    ],
)
def test_a_failed_senders_last_word(data: bytes, capabilities: int, refused: str | None) -> None:
    error = control.last_word(data, capabilities)
    if refused is None:
        assert error is None
    else:
        assert str(error) == f"the receiver refused the message: {refused}"
