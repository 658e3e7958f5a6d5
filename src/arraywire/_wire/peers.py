"""What a peer speaks, told from its first bytes: the one place that knows
every magic an arraywire end may meet (docs/PROTOCOL.md)."""

from __future__ import annotations

import struct
from typing import Literal

# A message's preamble and a connection hello begin with these.
MESSAGE_MAGIC = b"AWIR"
HELLO_MAGIC = b"AWHI"
# The command line's receiver refusing, in place of what the peer waits for:
# the magic, the reason's length, the reason in UTF-8 (at most MAX_REASON bytes).
REFUSAL_MAGIC = b"AWNO"
REFUSAL = struct.Struct("<4sI")
MAX_REASON = 4096
# A control record on a connection whose ends both announced control records.
CONTROL_MAGIC = b"AWCR"
# A TLS client's first byte: a handshake record.
TLS_HANDSHAKE = b"\x16"
# First bytes of a TLS record (handshake or alert, protocol major version 3).
TLS_RECORDS = (b"\x16\x03", b"\x15\x03")
# First bytes of an HTTP request or response.
HTTP_STARTS = (b"GET ", b"HEAD", b"POST", b"PUT ", b"HTTP", b"OPTI", b"DELE", b"PATC", b"CONN")

Speaks = Literal["message", "hello", "refusal", "control", "tls", "http", "other"]


def identify(first: bytes) -> Speaks:
    """What the peer whose stream begins with these (at least 4) bytes speaks."""
    magic = bytes(first[:4])
    if magic == MESSAGE_MAGIC:
        return "message"
    if magic == HELLO_MAGIC:
        return "hello"
    if magic == REFUSAL_MAGIC:
        return "refusal"
    if magic == CONTROL_MAGIC:
        return "control"
    if magic[:2] in TLS_RECORDS:
        return "tls"
    if magic in HTTP_STARTS:
        return "http"
    return "other"


def not_arraywire(first: bytes) -> str:
    """What to say of a peer whose stream begins with bytes no arraywire end sends first."""
    return f"not an arraywire peer ({bytes(first[:4])!r})"


def starts_tls(first: bytes) -> bool:
    """Whether a stream that begins with these bytes is a TLS client's."""
    return first[:1] == TLS_HANDSHAKE


def encode_reason(reason: str) -> bytes:
    """A refusal's reason in UTF-8, cut at a character boundary to at most
    MAX_REASON bytes."""
    return reason.encode("utf-8")[:MAX_REASON].decode("utf-8", "ignore").encode("utf-8")


def reason_bytes(refusal_start: bytes) -> int:
    """How many bytes of reason a refusal that begins with these bytes carries."""
    return min(int(REFUSAL.unpack_from(refusal_start)[1]), MAX_REASON)
