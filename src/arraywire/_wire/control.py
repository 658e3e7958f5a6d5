"""Control records: what the ends of a connection say to each other between
messages, apart from the messages themselves, sans I/O (docs/PROTOCOL.md,
"Control records").

A record is sent only on a connection whose opening turned the capability
``hello.CONTROL`` on. It starts where a message would, with 16 bytes of its
own (a magic no message begins with), so the reader of a message's first 16
bytes tells the two apart. Each type belongs to a capability and has a limit
on its body; a record of a type not on, or longer than its limit, is refused
before its body is read.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from arraywire._wire import hello, peers
from arraywire._wire.errors import ProtocolError

MAGIC = peers.CONTROL_MAGIC
# magic, type, flags (0), body length, reserved (0)
RECORD = struct.Struct("<4sHHII")
SIZE = RECORD.size
# Type 1: the receiver refused the message it was reading; the body is the
# reason in UTF-8, and the receiver closes the connection after it.
REFUSAL = 1
MAX_REASON = peers.MAX_REASON
# A refusing receiver reads and discards what the sender still sends for at
# most this long before it closes, so the close does not reset the connection
# before the sender has read the reason.
DRAIN_SECONDS = 10.0
# What a sender whose send failed reads of the peer's last bytes: a refusal.
LAST_WORD_BYTES = SIZE + MAX_REASON
# Types 2 to 6: same-host copies (docs/PROTOCOL.md, "Same host"); their
# bodies are made and read by _wire/samehost.py.
PROBE = 2
PROBE_ANSWER = 3
RANGES = 4
COPIED = 5
CONFIRM = 6
# A ranges record names at most MAX_RANGES ranges; its body is a count (u32)
# for each array and 16 bytes for each range, at most RANGES_LIMIT bytes.
MAX_RANGES = 4096
RANGES_LIMIT = 20 * MAX_RANGES
# No type may carry more: a reader never holds a larger body.
MAX_BODY = RANGES_LIMIT
# Each type: the capability that turns it on and the most body it carries.
TYPES: dict[int, tuple[int, int]] = {
    REFUSAL: (hello.CONTROL, MAX_REASON),
    PROBE: (hello.SAME_HOST, 44),
    PROBE_ANSWER: (hello.SAME_HOST, 1),
    RANGES: (hello.SAME_HOST, RANGES_LIMIT),
    COPIED: (hello.SAME_HOST, 13),
    CONFIRM: (hello.SAME_HOST, 0),
}
NAMES = {
    REFUSAL: "refusal", PROBE: "probe", PROBE_ANSWER: "probe answer", RANGES: "ranges",
    COPIED: "copied", CONFIRM: "confirm",
}
CAPABILITIES = {hello.CONTROL: "control records", hello.SAME_HOST: "same-host copies"}


class Record(NamedTuple):
    kind: int
    length: int  # bytes of body that follow the 16 of the record's start


def encode(kind: int, body: bytes) -> bytes:
    """A record of this type with this body (within the type's limit)."""
    limit = TYPES[kind][1]
    if len(body) > limit:
        raise ValueError(f"a {NAMES[kind]} record carries at most {limit:,} bytes, got {len(body):,}")
    return RECORD.pack(MAGIC, kind, 0, len(body), 0) + body


def encode_refusal(reason: str) -> bytes:
    """A refusal record; a reason over MAX_REASON bytes is cut at a character."""
    return encode(REFUSAL, peers.encode_reason(reason))


def is_record(first: bytes) -> bool:
    """Whether 16 bytes read where a message starts begin a control record."""
    return bytes(first[:4]) == MAGIC


def decode(first: bytes, capabilities: int) -> Record:
    """A record's first 16 bytes on a connection with these capabilities on:
    its type and body length, or ProtocolError."""
    if not capabilities & hello.CONTROL:
        raise ProtocolError(
            "the peer sent a control record on a connection whose opening did not "
            "turn control records on"
        )
    magic, kind, flags, length, reserved = RECORD.unpack(first)
    if magic != MAGIC:
        raise ProtocolError(f"control record begins with {magic!r}, expected {MAGIC!r}")
    if flags or reserved:
        raise ProtocolError(
            f"control record of type {kind} has flags {flags:#x} and reserved "
            f"{reserved:#x}; both are 0"
        )
    needs, limit = TYPES.get(kind, (0, 0))
    if not needs:
        raise ProtocolError(
            f"control record of unknown type {kind}: this arraywire knows types "
            f"{', '.join(f'{t} ({NAMES[t]})' for t in TYPES)}"
        )
    if not needs & capabilities:
        raise ProtocolError(
            f"{NAMES[kind]} record (type {kind}) on a connection whose opening did not "
            f"turn {CAPABILITIES[needs]} on"
        )
    if length > limit:
        raise ProtocolError(
            f"{NAMES[kind]} record of {length:,} bytes; it carries at most {limit:,}"
        )
    return Record(kind, length)


def refusal_reason(body: bytes) -> str:
    """The reason a refusal record's body gives (bytes not UTF-8 replaced)."""
    return bytes(body).decode("utf-8", "replace")


def last_word(data: bytes, capabilities: int) -> ProtocolError | None:
    """What a sender whose send failed raises for the receiver's last bytes
    (at most LAST_WORD_BYTES, read where a message would start): the
    refusal they hold whole, or None (then the send's own error stands)."""
    if len(data) < SIZE or not is_record(data):
        return None
    try:
        record = decode(data[:SIZE], capabilities)
    except ProtocolError:
        return None
    body = data[SIZE : SIZE + record.length]
    if record.kind != REFUSAL or len(body) < record.length:
        return None
    return refused(refusal_reason(body))


def refused(reason: str) -> ProtocolError:
    """What a sender raises when the receiver refused its message."""
    return ProtocolError(f"the receiver refused the message: {reason}")
