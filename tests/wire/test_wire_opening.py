"""The opening of a connection (docs/PROTOCOL.md, "Connections: the hello"),
sans I/O: two ``hello.Opening`` ends driven against each other in memory,
each one's ``outgoing()`` handed to the other's ``received`` in ``wanted``-
sized pieces, as a driver would over a socket. Also ``peers.identify``."""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

import pytest

from arraywire._wire import hello, peers
from arraywire._wire.errors import AuthenticationError, ProtocolError
from arraywire._wire.hello import (
    AUTH,
    CONTROL,
    JOINED,
    NO_STREAMS,
    NOT_JOINABLE,
    STREAMS,
    TOO_MANY_STREAMS,
    Group,
    Hello,
    Opening,
)

KEY = b"k" * 32
GROUP_ID = bytes(range(16))
# capability bit 0 (control records): what an opening announces by default
NO_KEY_HELLO = bytes.fromhex("41 57 48 49 02 02 00 00 00 00 00 00 01 00 00 00")


@dataclass
class End:
    """One end and what crossed the wire from it and to it."""

    opening: Opening
    sent: bytearray = field(default_factory=bytearray)
    inbox: bytearray = field(default_factory=bytearray)
    error: BaseException | None = None


def pump(connecting: Opening, listening: Opening, join: int | None = None,
         max_streams: int = 8) -> tuple[End, End]:
    """Run both ends until neither can go on; the listening end answers a
    group's stream with ``join`` once its opening is done."""
    ends = End(connecting), End(listening)
    answered = False
    for _ in range(50):
        moved = False
        for this, other in (ends, ends[::-1]):
            data = this.opening.outgoing()
            this.sent += data
            other.inbox += data
        for end in ends:
            wanted = end.opening.wanted
            if end.error is None and wanted and len(end.inbox) >= wanted:
                data, end.inbox[:] = bytes(end.inbox[:wanted]), end.inbox[wanted:]
                moved = True
                try:
                    end.opening.received(data)
                except (ProtocolError, AuthenticationError, ConnectionRefusedError) as exc:
                    end.error = exc
        lis = ends[1]
        if (join is not None and not answered and lis.error is None
                and lis.opening.wanted == 0 and lis.opening.group is not None):
            lis.opening.answer_join(join, max_streams)
            answered = moved = True
        if not moved and not any(end.inbox and end.error is None and end.opening.wanted
                                 for end in ends):
            break
    return ends


def opening(key: bytes | None = None, *, connecting: bool, group: Group | None = None) -> Opening:
    return Opening(key, connecting=connecting, group=group)


# --- without a key ---------------------------------------------------------------


def test_no_key_is_the_documented_sixteen_bytes_each_way() -> None:
    connecting, listening = pump(opening(connecting=True), opening(connecting=False))
    assert bytes(connecting.sent) == bytes(listening.sent) == NO_KEY_HELLO
    for end in (connecting, listening):
        assert end.error is None and end.opening.wanted == 0 and end.opening.part == "opening"
        assert end.opening.peer == Hello(2, 2, 0, CONTROL) and end.opening.group is None
        assert end.opening.outgoing() == b""


def test_the_hello_comes_out_once_and_the_first_want_is_16() -> None:
    end = opening(KEY, connecting=True)
    assert (end.wanted, end.part) == (16, "hello")
    first = end.outgoing()
    assert len(first) == 48 and first[:16] == hello.encode(AUTH, 32, CONTROL) and end.outgoing() == b""
    assert struct.unpack_from("<HI", first, 6) == (AUTH, 32)


# --- keys -------------------------------------------------------------------------


def test_the_same_key_authenticates_both_ends_with_the_documented_proofs() -> None:
    connecting, listening = pump(opening(KEY, connecting=True), opening(KEY, connecting=False))
    assert connecting.error is None and listening.error is None
    assert connecting.opening.wanted == listening.opening.wanted == 0
    h_c, h_l = bytes(connecting.sent[:48]), bytes(listening.sent[:48])
    assert h_c[:16] == h_l[:16] == hello.encode(AUTH, 32, CONTROL) and h_c[16:] != h_l[16:]
    assert bytes(connecting.sent[48:]) == hello.proof(KEY, hello.CONNECTING_LABEL, h_c, h_l)
    assert bytes(listening.sent[48:]) == b"\x01" + hello.proof(KEY, hello.LISTENING_LABEL, h_c, h_l)
    assert len(connecting.sent) == 80 and len(listening.sent) == 81


def test_different_keys_fail_both_ends_and_the_refusal_is_33_bytes() -> None:
    connecting, listening = pump(opening(KEY, connecting=True), opening(b"other", connecting=False))
    assert isinstance(listening.error, AuthenticationError)
    assert isinstance(connecting.error, AuthenticationError)
    assert "differs" in str(listening.error) and "refused" in str(connecting.error)
    assert bytes(listening.sent[48:]) == b"\x00" + bytes(32)


@pytest.mark.parametrize("keyed", ["connecting", "listening"])
def test_a_key_at_one_end_only_fails_both_after_the_hellos(keyed: str) -> None:
    connecting, listening = pump(
        opening(KEY if keyed == "connecting" else None, connecting=True),
        opening(KEY if keyed == "listening" else None, connecting=False),
    )
    keyed_end, keyless = (connecting, listening) if keyed == "connecting" else (listening, connecting)
    assert isinstance(keyed_end.error, AuthenticationError)
    assert isinstance(keyless.error, AuthenticationError)
    assert (len(keyed_end.sent), len(keyless.sent)) == (48, 16)  # the hellos, nothing more
    assert "this end has no key" in str(keyless.error)
    assert "the peer has no key" in str(keyed_end.error)


def test_a_recorded_connecting_end_is_refused_in_a_fresh_session() -> None:
    recorded, _ = pump(opening(KEY, connecting=True), opening(KEY, connecting=False))
    replayed = opening(KEY, connecting=False)  # a new connection: a fresh nonce
    replayed.outgoing()
    replayed.received(bytes(recorded.sent[:16]))
    replayed.received(bytes(recorded.sent[16:48]))
    assert replayed.wanted == 32 and replayed.part == "authentication proof"
    with pytest.raises(AuthenticationError):
        replayed.received(bytes(recorded.sent[48:80]))
    assert replayed.outgoing() == b"\x00" + bytes(32) and replayed.wanted == 0


def test_a_listening_proof_reflected_as_a_connecting_one_is_refused() -> None:
    connecting, listening = opening(KEY, connecting=True), opening(KEY, connecting=False)
    h_c, h_l = connecting.outgoing(), listening.outgoing()
    listening.received(h_c[:16])
    listening.received(h_c[16:])
    with pytest.raises(AuthenticationError):
        listening.received(hello.proof(KEY, hello.LISTENING_LABEL, h_c, h_l))


@pytest.mark.parametrize(
    ("verdict", "error", "says"),
    [
        (b"\x02" + bytes(32), ProtocolError, "neither accepted nor refused"),
        (b"\x01" + bytes(32), AuthenticationError, "proof does not match"),
    ],
)
def test_a_bad_verdict_fails_the_connecting_end(verdict: bytes, error: type, says: str) -> None:
    connecting = opening(KEY, connecting=True)
    connecting.outgoing()
    peer = hello.encode(AUTH, 32)
    connecting.received(peer)
    connecting.received(bytes(32))
    assert len(connecting.outgoing()) == 32 and connecting.wanted == 33
    with pytest.raises(error, match=says):
        connecting.received(verdict)


def test_keys_that_are_not_bytes_are_refused() -> None:
    with pytest.raises(TypeError, match="authkey must be bytes, got str"):
        opening("key", connecting=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="authkey is empty"):
        opening(b"", connecting=False)


# --- stream groups ------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY])
def test_a_stream_joins_its_group(key: bytes | None) -> None:
    group = Group(GROUP_ID, 1, 3)
    connecting, listening = pump(opening(key, connecting=True, group=group),
                                 opening(key, connecting=False), join=JOINED)
    assert connecting.error is None and listening.error is None
    assert listening.opening.group == group and connecting.opening.wanted == 0
    assert bytes(connecting.sent[:16]) == hello.encode(
        STREAMS | (AUTH if key else 0), 20 + (32 if key else 0), CONTROL)
    assert bytes(connecting.sent[16 + (32 if key else 0) :][:20]) == GROUP_ID + b"\x01\x00\x03\x00"
    assert bytes(listening.sent[-4:]) == b"\x01\x00\x08\x00"


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (TOO_MANY_STREAMS, "takes at most 2 streams per Channel and this end asked for 3"),
        (NOT_JOINABLE, "did not let stream 1 join its group of 3"),
        (NO_STREAMS, "takes no parallel streams over TLS"),
    ],
)
def test_a_refused_stream_says_why(status: int, says: str) -> None:
    connecting, listening = pump(opening(connecting=True, group=Group(GROUP_ID, 1, 3)),
                                 opening(connecting=False), join=status, max_streams=2)
    assert listening.error is None and bytes(listening.sent[-4:]) == bytes([status, 0, 2, 0])
    error = connecting.error
    assert isinstance(error, ConnectionRefusedError) and error.errno == errno.ECONNREFUSED
    assert says in str(error)


def test_join_answers_cap_max_streams_and_unknown_statuses_are_protocol_errors() -> None:
    assert hello.join_answer(JOINED, 70_000) == b"\x01\x00\xff\xff"
    connecting, _ = pump(opening(connecting=True, group=Group(GROUP_ID, 0, 2)),
                         opening(connecting=False), join=9)
    assert isinstance(connecting.error, ProtocolError)
    assert "unknown status 9" in str(connecting.error)


@pytest.mark.parametrize("group", [Group(GROUP_ID, 0, 1), Group(GROUP_ID, 2, 2)])
def test_a_bad_group_is_refused_by_the_listening_end(group: Group) -> None:
    _, listening = pump(opening(connecting=True, group=group), opening(connecting=False))
    assert isinstance(listening.error, ProtocolError)
    assert f"group of {group.size} streams with this stream at index {group.member}" in str(
        listening.error)


def test_a_listening_end_that_names_a_group_is_refused() -> None:
    connecting, _ = pump(opening(connecting=True),
                         opening(connecting=False, group=Group(GROUP_ID, 0, 2)))
    assert isinstance(connecting.error, ProtocolError)
    assert "listening peer's hello names a stream group" in str(connecting.error)


# --- peers that are not an arraywire opening ----------------------------------------


@pytest.mark.parametrize(
    ("first", "says"),
    [
        (b"AWIR\x01\x00\x00\x00" + bytes(8), "bare socket"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(5), "speaks TLS"),
        (b"GET / HTTP/1.1\r\nHo", "b'GET '"),
        (bytes(range(200, 216)), "the peer is not arraywire"),
    ],
    ids=["message", "tls", "http", "garbage"],
)
def test_a_peer_that_is_not_arraywire_is_named(first: bytes, says: str) -> None:
    for connecting in (True, False):
        end = opening(connecting=connecting)
        with pytest.raises(ProtocolError, match=says):
            end.received(first[:16])


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (hello.encode(0x0004), "features 0x0004 that this arraywire lacks"),
        (hello.encode(0x8001, 32), "features 0x8001 that this arraywire lacks"),
        (hello.encode(AUTH, 31), "carries 32 bytes of feature data"),
        (hello.encode(STREAMS, 52), "carries 20 bytes of feature data"),
        (hello.encode(0, 1), "carries 0 bytes of feature data"),
        (hello.HELLO.pack(b"AWHI", 1, 2, 0, 0, 1), "reserved 0x1"),
        (hello.HELLO.pack(b"AWHI", 0, 2, 0, 0, 0), "version 0 and message version 2"),
        (hello.HELLO.pack(b"AWHI", 1, 0, 0, 0, 0), "version 1 and message version 0"),
        (NO_KEY_HELLO[:15], "hello is 15 bytes, expected 16"),
    ],
)
def test_a_malformed_hello_is_a_protocol_error(data: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        opening(connecting=False).received(data)


def test_a_newer_hello_is_spoken_at_version_2() -> None:
    newer = hello.HELLO.pack(b"AWHI", 5, 9, 0, 0, 0xFFFF)  # its capabilities, some unknown
    assert hello.decode(newer) == Hello(2, 2, 0, 0xFFFF)
    end = opening(connecting=True)
    end.received(newer)
    assert end.peer == Hello(2, 2, 0, 0xFFFF) and end.wanted == 0 and end.capabilities == CONTROL


def test_a_hello_changed_on_the_way_is_noticed() -> None:
    """The proofs cover both hellos whole: a relay that changes one is noticed."""
    connecting, listening = opening(KEY, connecting=True), opening(KEY, connecting=False)
    h_c, h_l = connecting.outgoing(), listening.outgoing()
    connecting.received(h_l[:16])
    connecting.received(h_l[16:])
    tampered = bytearray(h_c)
    tampered[4] = 1  # a relay that makes it a version 1 hello with capability bits
    tampered[12] = 1
    with pytest.raises(ProtocolError, match="reserved 0x1"):
        opening(KEY, connecting=False).received(bytes(tampered[:16]))
    other_nonce = h_c[:16] + bytes(32)  # a relay that swaps the nonce
    listening.received(other_nonce[:16])
    listening.received(other_nonce[16:])
    with pytest.raises(AuthenticationError):
        listening.received(connecting.outgoing())


# --- peers.identify -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "speaks"),
    [
        (b"AWIR", "message"), (b"AWIR\x01\x00", "message"), (b"AWHI\x01", "hello"),
        (b"\x16\x03\x01", "tls"), (b"\x15\x03\x03\x00", "tls"), (b"\x17\x03\x03\x00", "other"),
        (b"\x16\x02\x00\x00", "other"),
        *[(start + b"/x", "http") for start in peers.HTTP_STARTS],
        (b"get /", "other"), (b"AWOK", "other"), (b"AWNO\x00", "refusal"), (b"AWI", "other"),
        (b"", "other"), (bytes(4), "other"),
    ],
)
def test_identify_each_kind_of_peer(first: bytes, speaks: str) -> None:
    assert peers.identify(first) == speaks
    assert peers.identify(bytearray(first)) == speaks
