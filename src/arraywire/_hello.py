"""The hello that opens a connection made by ``listen``/``connect``: encoding
and a decoder that trusts nothing (docs/PROTOCOL.md, "Connections").

Both ends send their hello at once, then read the peer's: one round trip.
Each end then speaks the lower of the two hello versions and sends messages
of at most the version the peer reads. Feature bits request what later
hello versions add (authentication, stream groups); an end that does not
know a requested feature refuses the connection.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from arraywire._errors import ProtocolError
from arraywire._protocol import MAGIC as MESSAGE_MAGIC, VERSION as MESSAGE_VERSION

MAGIC = b"AWHI"
VERSION = 1
# magic, hello version, newest message version read, feature bits, length of
# the feature data that follows, reserved
HELLO = struct.Struct("<4sBBHII")
SIZE = HELLO.size
# Bits of the feature field; none is defined in hello version 1.
KNOWN_FEATURES = 0


class Hello(NamedTuple):
    version: int
    reads_messages: int
    features: int


def encode() -> bytes:
    """This end's hello."""
    return HELLO.pack(MAGIC, VERSION, MESSAGE_VERSION, 0, 0, 0)


def decode(data: bytes) -> Hello:
    """Check a peer's hello; return what it offers, or raise ProtocolError."""
    if len(data) != SIZE:
        raise ProtocolError(f"hello is {len(data)} bytes, expected {SIZE}")
    magic, version, reads_messages, features, extra, reserved = HELLO.unpack(data)
    if magic != MAGIC:
        if magic == MESSAGE_MAGIC:
            raise ProtocolError(
                "the peer sent a message without the hello of a connection: it uses a "
                "bare socket, so wrap that socket in arraywire.Channel(sock) at this end"
            )
        raise ProtocolError(
            f"the peer is not arraywire: its hello begins with {magic!r}, expected {MAGIC!r}"
        )
    if version == 0 or reads_messages == 0:
        raise ProtocolError(
            f"hello declares version {version} and message version {reads_messages}; "
            "both start at 1"
        )
    if features & ~KNOWN_FEATURES:
        raise ProtocolError(
            f"the peer asks for features {features:#06x} that this arraywire lacks "
            "(upgrade arraywire at this end)"
        )
    # Feature data comes only with a feature bit, and no bit is known yet;
    # the reserved field is for hello versions after 1.
    if extra or (version == VERSION and reserved):
        raise ProtocolError(
            f"hello without features carries no feature data and, in version {VERSION}, "
            f"a zero reserved field; got {extra} bytes of feature data, reserved {reserved:#x}"
        )
    return Hello(min(version, VERSION), min(reads_messages, MESSAGE_VERSION), features)
