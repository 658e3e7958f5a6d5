"""The transfer core over TLS: what a Channel needs of ``transport_c`` and
``transport_py`` (sends, receives, the read-ahead ``Inbox``, the ``Outbox``,
the last two ``buffers``' with this module's loop), for an
``ssl.SSLSocket``.

Every byte goes through Python's ssl module: OpenSSL encrypts or decrypts
each record with a copy, and the module releases the GIL for each call. An
SSLSocket has no gather or scatter calls, so a gather send joins its small
buffers into one record and moves large ones one by one. The errors are the
twins': ``bytes_done`` on every failure, ``IncompleteTransferError`` when
the peer closes mid-transfer, the socket's timeout for each wait.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from typing import Any

from arraywire._core import buffers
from arraywire._core.step import byte_view
from arraywire._wire.errors import IncompleteTransferError
from arraywire._wire.limits import (
    MAX_CHUNK,
    PROGRESS_CHUNK,
    PROGRESS_INTERVAL,
    Progress,
    mark_progress,
)

BACKEND = "tls"
# Buffers smaller than this are joined with their neighbours into one send
# (a TLS record carries up to 16 KiB); JOIN_BYTES bounds one joined send.
SMALL_BYTES = 16 << 10
JOIN_BYTES = 64 << 10
SEND_BYTES = 1 << 20


def check_tls_socket(sock: Any) -> tuple[int, float | None]:
    """Return (fd, timeout) of an open stream SSLSocket, or raise."""
    if not isinstance(sock, ssl.SSLSocket):
        raise TypeError(f"expected an ssl.SSLSocket, got {type(sock).__name__}")
    if super(socket.socket, sock).type != socket.SOCK_STREAM:
        raise TypeError(f"arraywire needs a stream socket (SOCK_STREAM), got {sock.type!r}")
    fd: int = sock.fileno()
    if fd == -1:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    return fd, sock.gettimeout()


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


@contextlib.contextmanager
def sigpipe_blocked() -> Iterator[None]:
    """OpenSSL writes with write(), which cannot pass MSG_NOSIGNAL: where
    SIGPIPE's default action (death) was restored, block it for the send so
    that a closed peer gives BrokenPipeError as in the twins, and discard the
    signal the send raised."""
    if signal.getsignal(signal.SIGPIPE) is not signal.SIG_DFL:
        yield  # ignored (Python's default) or handled: nothing to guard
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
    try:
        yield
    finally:
        if signal.SIGPIPE not in before:
            signal.sigtimedwait({signal.SIGPIPE}, 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


def transfer(
    sock: ssl.SSLSocket, views: list[memoryview], sending: bool, progress: Progress | None
) -> int:
    """Move every byte of views; the loop of the twins, one buffer per call."""
    if not sending:
        return _move(sock, views, sending, progress)
    with sigpipe_blocked():
        try:
            return _move(sock, views, sending, progress)
        except ssl.SSLEOFError as exc:
            # OpenSSL's word for EPIPE on a write: the twins' error, with the count
            closed = BrokenPipeError(errno.EPIPE, "the peer closed the connection")
            closed.bytes_done = exc.bytes_done  # type: ignore[attr-defined]
            raise closed from exc


def _move(
    sock: ssl.SSLSocket, views: list[memoryview], sending: bool, progress: Progress | None
) -> int:
    total = sum(map(len, views))
    # The ssl module bounds a whole write by the socket's timeout, and a write
    # cut short counts none of its bytes: a send call takes one step at most.
    chunk = SEND_BYTES if sending else MAX_CHUNK if progress is None else PROGRESS_CHUNK
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


def send_joined(
    sock: ssl.SSLSocket, views: list[memoryview], sending: bool, progress: Progress | None
) -> int:
    """transfer, small neighbours joined first when sending."""
    return transfer(sock, joined(views) if sending else views, sending, progress)


class Inbox(buffers.Inbox):
    """The read-ahead buffer, over TLS: a message of the learned
    layout is still parsed and taken whole without the engine."""

    __slots__ = ()
    _check = staticmethod(check_tls_socket)
    _move = staticmethod(transfer)


class Outbox(buffers.Outbox):
    """The sender of learned layouts, over TLS: header and
    payload of a small message go out as one record."""

    __slots__ = ()
    _check = staticmethod(check_tls_socket)
    _move = staticmethod(send_joined)
