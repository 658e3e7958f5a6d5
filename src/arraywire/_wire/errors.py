"""Exceptions raised by arraywire (shared by both backends)."""

from __future__ import annotations

import errno


class IncompleteTransferError(ConnectionError, EOFError):
    """The peer closed the connection in the middle of a transfer.

    Raised by ``recv_into`` and ``recvmsg_into`` when the peer closes before
    the buffers are full, and by the message receives (``recv_array``,
    ``recv_arrays``, ``recv_message``, Channel, ``arraywire.aio``) when it
    closes inside a message; a close between two messages raises a plain
    EOFError instead, so catch this class first to tell a failure from the
    end of the stream. It is a ConnectionError and an EOFError.

    Attributes
    ----------
    bytes_done : int
        The bytes that arrived (and are in the buffers), counted from the
        start of the message for the message receives.
    bytes_expected : int
        The bytes the transfer or message was to bring.
    """

    def __init__(self, bytes_done: int, bytes_expected: int) -> None:
        # one argument: OSError would take two as (errno, strerror)
        super().__init__(f"{bytes_done:,} of {bytes_expected:,} bytes")
        self.bytes_done = bytes_done
        self.bytes_expected = bytes_expected

    def __str__(self) -> str:
        # from the attributes, which framing re-counts from the message start
        return (
            f"peer closed the connection after {self.bytes_done:,} of "
            f"{self.bytes_expected:,} bytes"
        )

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return type(self), (self.bytes_done, self.bytes_expected)


class ProtocolError(ValueError):
    """What the peer sent is not a message this end accepts.

    Raised by the receives (``recv_array``, ``recv_arrays``, ``recv_message``,
    Channel, ``arraywire.aio``) for a header that is malformed, of an
    unsupported version, or over a limit (``max_bytes``, ``max_metadata``,
    the format's), before anything is allocated; and by ``connect`` for a
    peer that is not an arraywire Listener, or does not speak TLS when
    ``ssl`` is given. The byte stream is then out of step: close the
    connection. It is a ValueError.

    Attributes
    ----------
    speaks : str or None
        When the peer's first bytes were not what this end waited for, what
        they are: ``"message"``, ``"hello"``, ``"refusal"``, ``"control"``, ``"tls"``,
        ``"http"`` or ``"other"`` (docs/PROTOCOL.md), or ``"nothing"`` when it
        closed the connection first; else None.
    first : bytes
        Those first bytes (b"" when ``speaks`` is None).
    """

    speaks: str | None = None
    first: bytes = b""


def unexpected_peer(message: str, speaks: str, first: bytes) -> ProtocolError:
    """A ProtocolError for a peer whose first bytes are not what this end
    waits for, saying what they are."""
    exc = ProtocolError(message)
    exc.speaks = speaks
    exc.first = first
    return exc


class BrokenStreamError(ConnectionError):
    """An earlier transfer stopped part-way, so the byte stream is out of step
    with the peer: close the connection.

    Raised by every later call on a Channel, an ``arraywire.aio`` Channel or
    a socket used with ``arraywire.aio``, after a transfer on it failed or was
    cancelled with some but not all of its bytes moved; the message says
    which transfer and how far it got. It is a ConnectionError.
    """


class AuthenticationError(Exception):
    """The peer's key differs from this end's, or one end has a key and the
    other none: the connection was refused before any message.

    Raised by ``connect`` and by ``Listener.accept`` (blocking and
    ``arraywire.aio``) when ``authkey`` is given at one end or both; the
    other end fails with it at the same time. A Listener goes on accepting
    other connections. ``keyless`` names the end without a key when one end
    has none: ``"this end"`` or ``"peer"`` (None when the keys differ).
    """

    def __init__(self, text: str, keyless: str | None = None) -> None:
        super().__init__(text)
        self.keyless = keyless


class StreamsRefused(ConnectionRefusedError):
    """The Listener did not let a stream join its group: ``status`` is the
    answer's (docs/PROTOCOL.md, "Parallel streams"), ``max_streams`` the
    Listener's limit, ``asked`` the group's size and ``member`` this stream's
    index. It is a ConnectionRefusedError."""

    def __init__(self, message: str, status: int, max_streams: int, asked: int, member: int) -> None:
        super().__init__(errno.ECONNREFUSED, message)
        self.status = status
        self.max_streams = max_streams
        self.asked = asked
        self.member = member
