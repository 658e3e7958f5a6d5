"""Exceptions raised by arraywire (shared by both backends)."""

from __future__ import annotations


class IncompleteTransferError(ConnectionError, EOFError):
    """The peer closed the connection before the buffer was full.

    ``bytes_done`` bytes arrived (and are in the buffer) out of ``bytes_expected``.
    """

    def __init__(self, bytes_done: int, bytes_expected: int) -> None:
        # one argument: OSError would take two as (errno, strerror)
        super().__init__(f"{bytes_done} of {bytes_expected} bytes")
        self.bytes_done = bytes_done
        self.bytes_expected = bytes_expected

    def __str__(self) -> str:
        # from the attributes, which framing re-counts from the message start
        return (
            f"peer closed the connection after {self.bytes_done} of "
            f"{self.bytes_expected} bytes"
        )

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return type(self), (self.bytes_done, self.bytes_expected)


class ProtocolError(ValueError):
    """A received message header is malformed, unsupported or over a limit."""


class BrokenStreamError(ConnectionError):
    """An earlier transfer on this socket stopped part-way (cancelled), so the
    byte stream is out of step with the peer; close the socket."""


class AuthenticationError(Exception):
    """The peer's key differs from this end's, or one end has a key and the
    other none: the connection was refused before any message."""
