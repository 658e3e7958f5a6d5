"""Compiled transport backend: twin of ``_transport_py``, with the same signatures
(tests/test_stub.py compares them)."""

from collections.abc import Iterable
from typing import Any

import numpy as np

from arraywire._common import Progress

BACKEND: str

def send_from(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send every byte of a contiguous buffer; return the byte count."""

def recv_into(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a writable contiguous buffer completely; return the byte count."""

def sendmsg_from(buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None) -> int:
    """Send a sequence of buffers back to back with gather sendmsg calls."""

def recvmsg_into(buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a sequence of buffers in order with scatter recvmsg_into calls."""

class Inbox:
    """A connection's read-ahead buffer (twin of _transport_py.Inbox)."""

    def __init__(self, sock: Any, capacity: int = 262144) -> None: ...  # READ_AHEAD_BYTES
    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken."""
    def fill(self) -> int:
        """One receive into the free space; its count (0: the peer closed)."""
    def take(self, obj: Any) -> int:
        """Copy buffered bytes into the front of a writable buffer; return the count."""
    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None:
        """Remember a decoded one-array header, so that take_array recognises it."""
    def take_array(self, max_bytes: int | None) -> np.ndarray | None:
        """The next message as a new array when its header is the one learned
        (receiving once first when nothing is buffered), else None."""

class Outbox:
    """Sends one-array messages of the last layout learned (twin of _transport_py.Outbox)."""

    def __init__(self, sock: Any) -> None: ...
    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None:
        """Remember the header of a one-array message of this layout."""
    def send(self, array: Any) -> int | None:
        """Send array as a message when its layout is the one learned, else None."""
    def pack(self, array: Any, staging: bytearray) -> int:
        """Append the message of array to staging when its layout is the one learned."""
