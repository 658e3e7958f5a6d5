"""Pure-Python transport backend: the memoryview recipe, hardened.

Twin of ``transport_c.pyx``: same functions, same results, same errors.
Each call goes through the socket object's own methods, so the GIL is taken
again after every partial send/recv (which is why the compiled twin exists).
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Iterable
from typing import Any

from arraywire._core import buffers
from arraywire._core.remote import checked_pid, remote_ranges
from arraywire._core.sockets import check_socket
from arraywire._core.step import PendingViews, byte_view
from arraywire._wire.errors import IncompleteTransferError
from arraywire._wire.limits import (
    IOV_MAX,
    MAX_CHUNK,
    PROGRESS_CHUNK,
    PROGRESS_INTERVAL,
    Progress,
    mark_progress,
)

BACKEND = "python"


def send_from(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send every byte of a contiguous buffer over a connected stream socket.

    ``obj`` is anything exporting a C- or Fortran-contiguous buffer (numpy
    arrays of any non-object dtype, bytes, bytearray, memoryview, array.array,
    mmap). Its bytes go out in memory order with no header: the receiver must
    know the size (``send_array`` sends a self-describing message instead).
    The socket's timeout is an inactivity limit: TimeoutError only when no byte
    moved for that long. ``progress(bytes_done, bytes_total)`` is called about
    every 0.1 s and once at the end.

    Returns
    -------
    int
        The bytes sent: all of the buffer's.

    Raises
    ------
    TypeError
        Before any byte: sock is not a stream ``socket.socket`` (an
        ``ssl.SSLSocket`` included), or obj exports no buffer or holds Python
        objects.
    ValueError
        Before any byte: the buffer is not contiguous.
    OSError
        The socket's error (BrokenPipeError, ConnectionResetError, TimeoutError,
        BlockingIOError on a non-blocking socket, EBADF for a closed one), with
        ``bytes_done``: the bytes sent before it. An exception raised by
        progress or by a signal handler carries ``bytes_done`` too.
    """
    check_socket(sock)
    return _transfer(sock, [byte_view(obj, writable=False)], True, progress)


def recv_into(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a writable contiguous buffer completely from a connected stream socket.

    ``obj`` is as for send_from, and writable; exactly its size in bytes is
    received, in memory order. The socket's timeout and ``progress`` are as for
    send_from.

    Returns
    -------
    int
        The bytes received: the buffer's size.

    Raises
    ------
    IncompleteTransferError
        The peer closed the connection before the buffer was full; its
        ``bytes_done`` bytes are in the buffer.
    TypeError
        Before any byte: as for send_from, or the buffer is read-only.
    ValueError
        Before any byte: the buffer is not contiguous.
    OSError
        As for send_from, ``bytes_done`` counting the bytes received.
    """
    check_socket(sock)
    return _transfer(sock, [byte_view(obj, writable=True)], False, progress)


def sendmsg_from(
    buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None
) -> int:
    """Send several contiguous buffers back to back with gather sendmsg calls.

    ``buffers`` is an iterable of what send_from takes; their bytes go out in
    order as one stream, up to IOV_MAX buffers a call, empty ones skipped. The
    socket's timeout and ``progress`` are as for send_from, over all the bytes.

    Returns
    -------
    int
        The bytes sent: the sum of the buffers' sizes.

    Raises
    ------
    TypeError, ValueError
        Before any byte, for the socket or any one buffer, as for send_from.
    OSError
        As for send_from, ``bytes_done`` counting over all the buffers.
    """
    check_socket(sock)
    # no local holds the views: a traceback would keep the buffers exported
    return _transfer(
        sock, [byte_view(obj, writable=False) for obj in tuple(buffers)], True, progress
    )


def recvmsg_into(
    buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None
) -> int:
    """Fill several writable contiguous buffers in order with scatter recvmsg calls.

    ``buffers`` is an iterable of what recv_into takes; the stream's bytes fill
    the first completely, then the next, up to IOV_MAX buffers a call, empty
    ones skipped. The socket's timeout and ``progress`` are as for send_from.

    Returns
    -------
    int
        The bytes received: the sum of the buffers' sizes.

    Raises
    ------
    IncompleteTransferError
        The peer closed the connection before every buffer was full;
        ``bytes_done`` counts over all the buffers.
    TypeError, ValueError
        Before any byte, for the socket or any one buffer, as for recv_into.
    OSError
        As for send_from, ``bytes_done`` counting over all the buffers.
    """
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
        # not `while done < total`: Python 3.13 lets an interrupt raised while
        # evaluating a loop's condition escape the try (CPython issue 130279)
        while True:
            if done >= total:
                break
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


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


# The C library's process_vm_readv (Linux); None elsewhere: ENOSYS.
_process_vm_readv = getattr(ctypes.CDLL(None, use_errno=True), "process_vm_readv", None)
if _process_vm_readv is not None:
    _process_vm_readv.restype = ctypes.c_ssize_t
    _process_vm_readv.argtypes = [
        ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_ulong,
        ctypes.POINTER(_IOVec), ctypes.c_ulong, ctypes.c_ulong,
    ]


def copy_from_process(
    pid: Any, ranges: Iterable[Any], obj: Any, *, progress: Progress | None = None
) -> int:
    """Fill a writable contiguous buffer with the bytes of another process's
    memory, read in one copy (Linux's ``process_vm_readv``).

    ``ranges`` is an iterable of ``(address, length)`` pairs in the process
    ``pid``; their bytes fill ``obj`` in order, and their lengths must add up
    to its size. The kernel allows it where ptrace would be: the same user
    and, under Yama's ``ptrace_scope``, a descendant process.
    ``progress(bytes_done, bytes_total)`` is called about every 0.1 s and
    once at the end.

    Returns
    -------
    int
        The bytes copied: the buffer's size.

    Raises
    ------
    TypeError
        Before any byte: obj exports no buffer, is read-only or holds Python
        objects; pid is not an int; a range is not a pair of ints.
    ValueError
        Before any byte: the buffer is not contiguous, pid is not positive, a
        range lies outside a 64-bit address space, or the ranges' lengths do
        not add up to the buffer's size.
    OSError
        The kernel's error (PermissionError: not allowed to read that process;
        ProcessLookupError: no such process; EFAULT: a range is not mapped
        there; ENOSYS: not Linux), with ``bytes_done``: the bytes copied
        before it. An exception raised by progress or by a signal handler
        carries ``bytes_done`` too.
    """
    view = byte_view(obj, writable=True)
    number = checked_pid(pid)
    remote = remote_ranges(ranges, len(view))
    total = len(view)
    done = 0
    try:
        if total:
            dest = ctypes.addressof((ctypes.c_char * total).from_buffer(view))
            done = _copy_ranges(number, remote, dest, total, progress)
        if progress is not None:
            progress(done, total)
    except BaseException as exc:
        mark_progress(exc, done)
        raise
    finally:
        view.release()
    return total


def _copy_ranges(
    pid: int, remote: list[tuple[int, int]], dest: int, total: int, progress: Progress | None
) -> int:
    """The compiled twin's loop: calls of at most IOV_MAX ranges and chunk
    bytes, until every range is read; an error is marked with the bytes done."""
    chunk = MAX_CHUNK if progress is None else PROGRESS_CHUNK
    next_report = time.monotonic() + PROGRESS_INTERVAL
    first = 0
    done = 0
    local = _IOVec()
    try:
        if _process_vm_readv is None:
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
        while done < total:
            batch = []
            budget = chunk
            for address, length in remote[first : first + IOV_MAX]:
                batch.append(_IOVec(address, min(length, budget)))
                budget -= batch[-1].len
                if not budget:
                    break
            ranges = (_IOVec * len(batch))(*batch)
            local.base, local.len = dest + done, chunk - budget
            moved = _process_vm_readv(pid, local, 1, ranges, len(batch), 0)
            if moved < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                raise OSError(code, os.strerror(code))
            if moved == 0:  # the next range is not readable as a whole
                raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
            done += moved
            while moved:
                address, length = remote[first]
                if moved >= length:
                    moved -= length
                    first += 1
                else:
                    remote[first] = (address + moved, length - moved)
                    moved = 0
            if progress is not None and done < total:
                now = time.monotonic()
                if now >= next_report:
                    progress(done, total)
                    next_report = now + PROGRESS_INTERVAL
    except BaseException as exc:
        mark_progress(exc, done)
        raise
    return done


def step_now(
    pending: PendingViews, sock: Any, sending: bool, chunk: int, counts: list[int]
) -> None:
    """One call of ``PendingViews.step`` (its views, its batching, its count
    appended to counts) on a socket that never waits, made without releasing
    the GIL: an event loop's non-blocking moves would otherwise wait up to the
    5 ms switch interval to take it back whenever another thread wants it.

    Raises
    ------
    OSError
        The socket's error, as the socket's own methods raise it
        (BlockingIOError when it would wait).
    """
    # the socket's methods release the GIL: the same call, at their cost
    pending.step(sock, sending, chunk, counts)


class Inbox(buffers.Inbox):
    """A connection's read-ahead buffer: one receive can bring several small
    messages, and a message whose header has the layout learned last (dtype,
    dimensions, order) is parsed here and taken whole, without the engine."""

    __slots__ = ()
    _check = staticmethod(check_socket)
    _move = staticmethod(_transfer)


class Outbox(buffers.Outbox):
    """Sends one-array messages of the learned dtype, dimensions and order,
    writing each header from the learned one: one gather call, no planning."""

    __slots__ = ()
    _check = staticmethod(check_socket)
    _move = staticmethod(_transfer)
