"""Pure-Python transport backend: the memoryview recipe, hardened.

Twin of ``_transport_c.pyx``: same functions, same results, same errors.
Each call goes through the socket object's own methods, so the GIL is taken
again after every partial send/recv (which is why the compiled twin exists).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from arraywire._common import (
    MAX_CHUNK,
    PROGRESS_CHUNK,
    PROGRESS_INTERVAL,
    READ_AHEAD_BYTES,
    Progress,
    check_socket,
    mark_progress,
    repeatable_dtype,
)
from arraywire._errors import IncompleteTransferError
from arraywire._step import PendingViews, byte_view

BACKEND = "python"


def send_from(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send every byte of a contiguous buffer; return the byte count."""
    check_socket(sock)
    return _transfer(sock, [byte_view(obj, writable=False)], True, progress)


def recv_into(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a writable contiguous buffer completely; return the byte count."""
    check_socket(sock)
    return _transfer(sock, [byte_view(obj, writable=True)], False, progress)


def sendmsg_from(
    buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None
) -> int:
    """Send a sequence of buffers back to back with gather sendmsg calls."""
    check_socket(sock)
    # no local holds the views: a traceback would keep the buffers exported
    return _transfer(
        sock, [byte_view(obj, writable=False) for obj in tuple(buffers)], True, progress
    )


def recvmsg_into(
    buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None
) -> int:
    """Fill a sequence of buffers in order with scatter recvmsg_into calls."""
    check_socket(sock)
    # no local holds the views: a traceback would keep the buffers exported
    return _transfer(
        sock, [byte_view(obj, writable=True) for obj in tuple(buffers)], False, progress
    )


def _transfer(
    sock: Any, views: list[memoryview], sending: bool, progress: Progress | None
) -> int:
    pending = PendingViews(views)
    total = pending.nbytes
    chunk = MAX_CHUNK if progress is None else PROGRESS_CHUNK
    next_report = time.monotonic() + PROGRESS_INTERVAL
    done = 0
    moved: list[int] = []  # filled by PendingViews.step, read before a handler can run
    try:
        while done < total:
            pending.step(sock, sending, chunk, moved)
            if moved[0] == 0 and not sending:
                raise IncompleteTransferError(done, total)
            done += moved[0]
            pending.advance(moved.pop())
            if progress is not None and done < total:
                now = time.monotonic()
                if now >= next_report:
                    progress(done, total)
                    next_report = now + PROGRESS_INTERVAL
        if progress is not None:
            progress(done, total)
    except BaseException as exc:
        mark_progress(exc, done + sum(moved))
        # The traceback keeps this frame alive: drop the views so the buffers
        # are released now, as the compiled twin releases them.
        pending.release()
        views.clear()
        raise
    return total


class Inbox:
    """A connection's read-ahead buffer: one receive can bring several small
    messages, and a message whose header repeats the last one learned is
    recognised by its bytes and taken whole, without decoding."""

    __slots__ = (
        "_buffer", "_dtype", "_end", "_header", "_nbytes", "_order", "_shape", "_sock", "_start",
        "_view",
    )

    def __init__(self, sock: Any, capacity: int = READ_AHEAD_BYTES) -> None:
        check_socket(sock)
        self._sock = sock
        self._buffer = bytearray(capacity)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self._header = b""
        self._dtype: np.dtype | None = None
        self._shape: tuple[int, ...] = ()
        self._order = "C"
        self._nbytes = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken."""
        return self._end - self._start

    def fill(self) -> int:
        """One receive into the free space, after moving what is buffered to the
        front; return its count (0: the peer closed). Blocks, times out or
        raises BlockingIOError as the socket's timeout says."""
        if self._start:
            kept = self._end - self._start
            self._view[:kept] = bytes(self._view[self._start : self._end])
            self._start = 0
            self._end = kept
        received: int = self._sock.recv_into(self._view[self._end :])
        self._end += received
        return received

    def take(self, obj: Any) -> int:
        """Copy buffered bytes into the front of a writable buffer; return the count."""
        view = byte_view(obj, writable=True)
        count = min(len(view), self._end - self._start)
        view[:count] = self._view[self._start : self._start + count]
        self._start += count
        return count

    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None:
        """Remember a decoded one-array header, so that take_array recognises it."""
        if not repeatable_dtype(dtype):
            return
        self._header = header
        self._dtype = dtype
        self._shape = shape
        self._order = order
        self._nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))

    def take_array(self, max_bytes: int | None) -> np.ndarray | None:
        """The next message as a new array, when it is buffered whole and its
        header is the one learned; else None (the engine decodes it)."""
        header = self._header
        size = len(header)
        end = self._start + size + self._nbytes
        if not size or end > self._end:
            return None
        if self._view[self._start : self._start + size] != header:
            return None
        if max_bytes is not None and self._nbytes > max_bytes:
            return None
        array: np.ndarray = np.empty(self._shape, self._dtype, order=self._order)  # type: ignore[call-overload]
        byte_view(array, writable=True)[:] = self._view[self._start + size : end]
        self._start = end
        return array


class Outbox:
    """Sends one-array messages whose layout repeats the last one learned:
    the header is reused and goes out with the payload in one gather call."""

    __slots__ = ("_dtype", "_header", "_order", "_shape", "_sock")

    def __init__(self, sock: Any) -> None:
        check_socket(sock)
        self._sock = sock
        self._header = b""
        self._dtype: np.dtype | None = None
        self._shape: tuple[int, ...] = ()
        self._order = "C"

    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None:
        """Remember the header of a one-array message of this layout."""
        if not repeatable_dtype(dtype):
            return
        self._header = header
        self._dtype = dtype
        self._shape = shape
        self._order = order

    def _payload(self, array: Any) -> memoryview | None:
        if type(array) is not np.ndarray or array.dtype is not self._dtype:
            return None
        if array.shape != self._shape:
            return None
        view = memoryview(array)  # type: ignore[arg-type]
        order = "C" if view.c_contiguous else "F" if view.f_contiguous else ""
        if order != self._order:
            return None
        return byte_view(array, writable=False)

    def send(self, array: Any) -> int | None:
        """Send array as a message when its layout is the one learned; return
        the bytes sent, or None (nothing sent) for any other input."""
        payload = self._payload(array)
        if payload is None:
            return None
        return _transfer(self._sock, [memoryview(self._header), payload], True, None)

    def pack(self, array: Any, staging: bytearray) -> int:
        """Append the message of array to staging when its layout is the one
        learned; return the bytes appended (0: none, for any other input)."""
        payload = self._payload(array)
        if payload is None:
            return 0
        staging += self._header
        staging += payload
        return len(self._header) + len(payload)
