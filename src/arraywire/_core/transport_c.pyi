"""Compiled transport backend: twin of ``transport_py``, with the same signatures
(tests/test_stub.py compares them)."""

from collections.abc import Iterable
from typing import Any

import numpy as np

from arraywire._core.step import PendingViews
from arraywire._wire.limits import Progress

BACKEND: str

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

def sendmsg_from(buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None) -> int:
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

def recvmsg_into(buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None) -> int:
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

class Inbox:
    """A connection's read-ahead buffer (twin of transport_py.Inbox)."""

    def __init__(self, sock: Any, capacity: int = 262144) -> None: ...  # READ_AHEAD_BYTES
    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken."""
    def fill(self) -> int:
        """One receive into the free space; its count (0: the peer closed)."""
    def preload(self, data: bytes) -> None:
        """Buffer bytes read before this Inbox existed, ahead of the next."""
    def take(self, obj: Any) -> int:
        """Copy buffered bytes into the front of a writable buffer; return the count."""
    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None:
        """Remember a decoded one-array header, so that take_array recognises it."""
    def take_array(self, max_bytes: int | None) -> np.ndarray | None:
        """The next message as a new array when its header is the one learned
        (receiving once first when nothing is buffered), else None."""

class Outbox:
    """Sends one-array messages of the last layout learned (twin of transport_py.Outbox)."""

    def __init__(self, sock: Any) -> None: ...
    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None:
        """Remember the header of a one-array message of this layout."""
    def send(self, array: Any) -> int | None:
        """Send array as a message when its layout is the one learned, else None."""
    def pack(self, array: Any, staging: bytearray) -> int:
        """Append the message of array to staging when its layout is the one learned."""

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
