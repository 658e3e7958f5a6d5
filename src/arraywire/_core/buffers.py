"""The read-ahead buffer (``Inbox``) and the sender of learned layouts
(``Outbox``) in Python, over the calls of a core that subclasses them: the
pure twin and the TLS core each name their socket check and transfer loop.
The compiled twin has its own, in C, with the same behaviour."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from arraywire._core.step import byte_view
from arraywire._wire.errors import IncompleteTransferError
from arraywire._wire.header import MAX_PAYLOAD
from arraywire._wire.limits import CLEAN_END, READ_AHEAD_BYTES, Progress, repeatable_dtype

# transfer(sock, views, sending, progress) -> bytes moved
Move = Callable[[Any, list[memoryview], bool, "Progress | None"], int]

# where the parts of a one-array version 1 header are (docs/PROTOCOL.md)
PREAMBLE_BYTES = 16
NBYTES_AT = 16
FORM_AT = 24  # ndim, order, dtype text length
DIMS_AT = 28
NUMPY_LIMIT = (1 << 63) - 1
U64 = struct.Struct("<Q")


class Layout:
    """The parts of a learned one-array header that stay the same while the
    shape changes: preamble, ndim, order and dtype text."""

    __slots__ = ("dims", "dtype", "itemsize", "length", "ndim", "order", "template", "text_at")

    def __init__(self, header: bytes, dtype: np.dtype, order: str) -> None:
        self.template = header
        self.dtype = dtype
        self.order = order
        self.ndim = header[FORM_AT]
        self.itemsize = dtype.itemsize
        self.length = len(header)
        self.text_at = DIMS_AT + 8 * self.ndim
        self.dims = struct.Struct(f"<{self.ndim}Q")

    def matches(self, data: memoryview) -> bool:
        """Whether a header (length bytes) has the learned preamble, ndim,
        order and dtype text."""
        template = self.template
        return (
            data[:PREAMBLE_BYTES] == template[:PREAMBLE_BYTES]
            and data[FORM_AT:DIMS_AT] == template[FORM_AT:DIMS_AT]
            and data[self.text_at :] == template[self.text_at :]
        )

    def header(self, shape: tuple[int, ...], nbytes: int) -> bytes:
        """The learned header with this shape and payload size."""
        header = bytearray(self.template)
        U64.pack_into(header, NBYTES_AT, nbytes)
        self.dims.pack_into(header, DIMS_AT, *shape)
        return bytes(header)


class Inbox:
    """A connection's read-ahead buffer: one receive can bring several small
    messages, and a message whose header has the layout learned last (dtype,
    dimensions, order) is parsed here and taken whole, without the engine."""

    __slots__ = ("_buffer", "_end", "_last_dims", "_last_shape", "_layout", "_sock", "_start", "_view")
    # The socket rule and the loop that receives a payload in place: each
    # core's subclass names its own.
    _check: Callable[[Any], object]
    _move: Move

    def __init__(self, sock: Any, capacity: int = READ_AHEAD_BYTES) -> None:
        self._check(sock)
        self._sock = sock
        self._buffer = bytearray(capacity)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self._layout: Layout | None = None
        self._last_dims = b""
        self._last_shape: tuple[int, ...] | None = None

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

    def preload(self, data: bytes) -> None:
        """Buffer bytes read from the socket before this Inbox existed (an
        opening's), ahead of what it receives next."""
        if self._end != self._start or len(data) > len(self._buffer):
            raise ValueError("preload takes an empty Inbox and at most its capacity")
        self._view[: len(data)] = data
        self._start = 0
        self._end = len(data)

    def take(self, obj: Any) -> int:
        """Copy buffered bytes into the front of a writable buffer; return the count."""
        view = byte_view(obj, writable=True)
        count = min(len(view), self._end - self._start)
        view[:count] = self._view[self._start : self._start + count]
        self._start += count
        return count

    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None:
        """Remember a decoded one-array header, so that take_array recognises
        headers of the same dtype, dimensions and order."""
        if not repeatable_dtype(dtype):
            return
        self._layout = Layout(header, dtype, order)
        self._last_shape = None

    def take_array(self, max_bytes: int | None) -> np.ndarray | None:
        """The next message as a new array, when its header has the learned
        layout; else None (the engine decodes it). With nothing buffered,
        receives once first: EOFError if the peer closed. A payload not yet
        buffered whole is received straight into the array."""
        if self._start == self._end and not self.fill():
            raise EOFError(CLEAN_END)
        layout = self._layout
        if layout is None or self._end - self._start < layout.length:
            return None
        data = self._view[self._start : self._start + layout.length]
        if not layout.matches(data):
            return None
        # the checks of _protocol._decode_one, in the same order
        nbytes = U64.unpack_from(data, NBYTES_AT)[0]
        dims = data[DIMS_AT : layout.text_at]
        size = layout.itemsize
        empty = False
        for dim in layout.dims.unpack(dims):
            if dim == 0:
                empty = True
            elif size > NUMPY_LIMIT // dim:
                return None
            else:
                size *= dim
        if (0 if empty else size) != nbytes or nbytes > MAX_PAYLOAD:
            return None
        if max_bytes is not None and nbytes > max_bytes:
            return None
        if self._last_shape is None or dims != self._last_dims:
            self._last_shape = layout.dims.unpack(dims)
            self._last_dims = bytes(dims)
        array: np.ndarray = np.empty(self._last_shape, layout.dtype, layout.order)  # type: ignore[call-overload]
        target = byte_view(array, writable=True)
        self._start += layout.length
        available = self._end - self._start
        if available >= nbytes:
            target[:] = self._view[self._start : self._start + nbytes]
            self._start += nbytes
            return array
        self._receive_rest(target, available, layout.length)
        return array

    def _receive_rest(self, target: memoryview, available: int, header: int) -> None:
        """Copy the buffered start of the payload, receive the rest into place."""
        target[:available] = self._view[self._start : self._end]
        self._start = self._end = 0
        try:
            self._move(self._sock, [target[available:]], False, None)
        except BaseException as exc:
            # counted from the message start, as the engine counts
            exc.bytes_done = header + available + (getattr(exc, "bytes_done", None) or 0)  # type: ignore[attr-defined]
            if isinstance(exc, IncompleteTransferError):
                exc.bytes_expected = header + len(target)
            raise


class Outbox:
    """Sends one-array messages of the learned dtype, dimensions and order,
    writing each header from the learned one: one gather call, no planning."""

    __slots__ = ("_header", "_last_shape", "_layout", "_sock")
    # The socket rule and the send loop: each core's subclass names its own.
    _check: Callable[[Any], object]
    _move: Move

    def __init__(self, sock: Any) -> None:
        self._check(sock)
        self._sock = sock
        self._layout: Layout | None = None
        self._last_shape: tuple[int, ...] | None = None
        self._header = b""

    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None:
        """Remember the header of a one-array message of this layout."""
        if not repeatable_dtype(dtype):
            return
        self._layout = Layout(header, dtype, order)
        self._last_shape = shape
        self._header = header

    def _payload(self, array: Any) -> memoryview | None:
        """Array's bytes when its layout is the one learned (the header for
        its shape is then set)."""
        layout = self._layout
        if layout is None or type(array) is not np.ndarray or array.dtype is not layout.dtype:
            return None
        shape = array.shape
        if len(shape) != layout.ndim:
            return None
        view = memoryview(array)  # type: ignore[arg-type]
        order = "C" if view.c_contiguous else "F" if view.f_contiguous else ""
        if order != layout.order:
            return None
        if shape != self._last_shape:
            self._header = layout.header(shape, view.nbytes)
            self._last_shape = shape
        return byte_view(array, writable=False)

    def send(self, array: Any) -> int | None:
        """Send array as a message when its layout is the one learned; return
        the bytes sent, or None (nothing sent) for any other input."""
        payload = self._payload(array)
        if payload is None:
            return None
        return self._move(self._sock, [memoryview(self._header), payload], True, None)

    def pack(self, array: Any, staging: bytearray) -> int:
        """Append the message of array to staging when its layout is the one
        learned; return the bytes appended (0: none, for any other input)."""
        payload = self._payload(array)
        if payload is None:
            return 0
        staging += self._header
        staging += payload
        return len(self._header) + len(payload)
