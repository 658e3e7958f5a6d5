"""The transfer core over TLS: what a Channel needs of ``_transport_c`` and
``_transport_py`` (sends, receives, the read-ahead ``Inbox``, the ``Outbox``),
for an ``ssl.SSLSocket``.

Every byte goes through Python's ssl module: OpenSSL encrypts or decrypts
each record with a copy, and the module releases the GIL for each call. An
SSLSocket has no gather or scatter calls, so a gather send joins its small
buffers into one record and moves large ones one by one. The errors are the
twins': ``bytes_done`` on every failure, ``IncompleteTransferError`` when
the peer closes mid-transfer, the socket's timeout for each wait.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
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
    mark_progress,
)
from arraywire._errors import IncompleteTransferError
from arraywire._step import byte_view

BACKEND = "tls"
# Buffers smaller than this are joined with their neighbours into one send
# (a TLS record carries up to 16 KiB); JOIN_BYTES bounds one joined send.
SMALL_BYTES = 16 << 10
JOIN_BYTES = 64 << 10


def check_tls_socket(sock: Any) -> None:
    """Refuse anything but an open, connected stream SSLSocket."""
    if not isinstance(sock, ssl.SSLSocket):
        raise TypeError(f"expected an ssl.SSLSocket, got {type(sock).__name__}")
    if super(socket.socket, sock).type != socket.SOCK_STREAM:
        raise TypeError(f"arraywire needs a stream socket (SOCK_STREAM), got {sock.type!r}")
    if sock.fileno() == -1:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))


def send_from(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send every byte of a contiguous buffer; return the byte count."""
    check_tls_socket(sock)
    return transfer(sock, [byte_view(obj, writable=False)], True, progress)


def recv_into(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a writable contiguous buffer completely; return the byte count."""
    check_tls_socket(sock)
    return transfer(sock, [byte_view(obj, writable=True)], False, progress)


def sendmsg_from(buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None) -> int:
    """Send buffers back to back, small neighbours joined into one record."""
    check_tls_socket(sock)
    return transfer(sock, joined([byte_view(b, writable=False) for b in buffers]), True, progress)


def recvmsg_into(buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None) -> int:
    """Fill buffers in order."""
    check_tls_socket(sock)
    return transfer(sock, [byte_view(b, writable=True) for b in tuple(buffers)], False, progress)


def joined(views: list[memoryview]) -> list[memoryview]:
    """The views, each run of small ones copied into one buffer."""
    if len(views) < 2:
        return views
    result: list[memoryview] = []
    run = bytearray()
    for view in views:
        if len(view) < SMALL_BYTES and len(run) + len(view) <= JOIN_BYTES:
            run += view
            continue
        if run:
            result.append(memoryview(run))
            run = bytearray()
        if len(view) < SMALL_BYTES:
            run += view
        else:
            result.append(view)
    if run:
        result.append(memoryview(run))
    return result


def transfer(
    sock: ssl.SSLSocket, views: list[memoryview], sending: bool, progress: Progress | None
) -> int:
    """Move every byte of views; the loop of the twins, one buffer per call."""
    total = sum(map(len, views))
    chunk = MAX_CHUNK if progress is None else PROGRESS_CHUNK
    next_report = time.monotonic() + PROGRESS_INTERVAL
    done = 0
    # Counts land here from C code (list.extend over map) before a signal
    # handler can run, so one that raises never loses a partial call's count.
    moved: list[int] = []
    try:
        for index in range(len(views)):
            while views[index]:
                if sending:
                    moved.extend(map(sock.send, (views[index][:chunk],)))
                else:
                    size = min(len(views[index]), chunk)
                    moved.extend(map(sock.recv_into, (views[index],), (size,)))
                    if moved[0] == 0:
                        raise IncompleteTransferError(done, total)
                count = moved.pop()
                done += count
                views[index] = views[index][count:]
                if progress is not None and done < total:
                    now = time.monotonic()
                    if now >= next_report:
                        progress(done, total)
                        next_report = now + PROGRESS_INTERVAL
        if progress is not None:
            progress(done, total)
    except BaseException as exc:
        mark_progress(exc, done + sum(moved))
        views.clear()  # the traceback keeps this frame: release the buffers now
        raise
    return total


class Inbox:
    """A TLS connection's read-ahead buffer: one receive can bring several
    small messages. Headers are left to the engine: over TLS, decrypting a
    record costs more than parsing its header."""

    __slots__ = ("_end", "_sock", "_start", "_view")

    def __init__(self, sock: Any, capacity: int = READ_AHEAD_BYTES) -> None:
        check_tls_socket(sock)
        self._sock = sock
        self._view = memoryview(bytearray(capacity))
        self._start = 0
        self._end = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken."""
        return self._end - self._start

    def fill(self) -> int:
        """One receive into the free space, after moving what is buffered to
        the front; return its count (0: the peer closed)."""
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
        """Nothing to learn: every header goes to the engine."""

    def take_array(self, max_bytes: int | None) -> None:
        """Always None: the engine decodes every message over TLS."""


class Outbox:
    """Over TLS every message is planned by the engine: nothing is learned."""

    __slots__ = ()

    def __init__(self, sock: Any) -> None:
        """Nothing is sent from here, so the socket is not kept."""

    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None:
        """Nothing to learn: the engine plans every send."""

    def send(self, array: Any) -> None:
        """None: nothing sent, the engine plans it."""

    def pack(self, array: Any, staging: bytearray) -> int:
        """0: nothing packed, the engine plans it."""
        return 0
