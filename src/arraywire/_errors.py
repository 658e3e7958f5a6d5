"""Exceptions raised by arraywire (shared by both backends)."""

from __future__ import annotations


class IncompleteTransferError(ConnectionError, EOFError):
    """The peer closed the connection before the buffer was full.

    ``bytes_done`` bytes arrived (and are in the buffer) out of ``bytes_expected``.
    """

    def __init__(self, bytes_done: int, bytes_expected: int) -> None:
        super().__init__(
            f"peer closed the connection after {bytes_done} of {bytes_expected} bytes"
        )
        self.bytes_done = bytes_done
        self.bytes_expected = bytes_expected

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return type(self), (self.bytes_done, self.bytes_expected)


class ProtocolError(ValueError):
    """A received message header is malformed, unsupported or over a limit."""


class BrokenStreamError(ConnectionError):
    """An earlier transfer on this socket stopped part-way (cancelled), so the
    byte stream is out of step with the peer; close the socket."""
