"""What a peer speaks, told from its first bytes: the one place that knows
every magic an arraywire end may meet (docs/PROTOCOL.md)."""

from __future__ import annotations

from typing import Literal

# A message's preamble and a connection hello begin with these.
MESSAGE_MAGIC = b"AWIR"
HELLO_MAGIC = b"AWHI"
# First bytes of a TLS record (handshake or alert, protocol major version 3).
TLS_RECORDS = (b"\x16\x03", b"\x15\x03")
# First bytes of an HTTP request or response.
HTTP_STARTS = (b"GET ", b"HEAD", b"POST", b"PUT ", b"HTTP", b"OPTI", b"DELE", b"PATC", b"CONN")

Speaks = Literal["message", "hello", "tls", "http", "other"]


def identify(first: bytes) -> Speaks:
    """What the peer whose stream begins with these (at least 4) bytes speaks."""
    magic = bytes(first[:4])
    if magic == MESSAGE_MAGIC:
        return "message"
    if magic == HELLO_MAGIC:
        return "hello"
    if magic[:2] in TLS_RECORDS:
        return "tls"
    if magic in HTTP_STARTS:
        return "http"
    return "other"
