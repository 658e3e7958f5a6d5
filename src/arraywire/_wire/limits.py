"""Limits and buffer rules every layer follows (call sizes, read-ahead,
progress), with the buffer errors' messages, kept here once so the two
backends cannot drift apart."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

# progress(bytes_done, bytes_total); the return value is ignored.
Progress = Callable[[int, int], object]

# Linux moves at most 0x7ffff000 bytes per call (also the total of an iovec
# array); Windows takes an int. Cap every call well below both.
MAX_CHUNK = 1 << 30
# With a progress callback, blocking calls are kept short enough to report.
PROGRESS_CHUNK = 1 << 20
PROGRESS_INTERVAL = 0.1
# How often a transfer running in the main thread lets Python run signal
# handlers while data keep flowing (blocked calls are woken by EINTR instead).
SIGNAL_CHECK_INTERVAL = 0.05
# A connection reads ahead this much; a payload of at least DIRECT_BYTES still
# to come is received straight into its array instead.
READ_AHEAD_BYTES = 256 << 10
DIRECT_BYTES = 64 << 10
# What a receive raises (EOFError) when the peer closed between messages.
CLEAN_END = "the peer closed the connection (cleanly, between messages)"
# msg_iovlen must be 1..IOV_MAX; Linux and macOS both use 1024.
IOV_MAX = 1024


def repeatable_dtype(dtype: np.dtype) -> bool:
    """Whether messages of this dtype may reuse a learned header: its buffer
    exports (not datetime64/timedelta64) and it has no fields (a structured
    dtype's names can be reassigned in place)."""
    return dtype.names is None and dtype.kind not in "Mm"


def not_a_buffer(obj: object) -> TypeError:
    return TypeError(
        f"expected an object exporting a buffer (numpy array, bytes, bytearray, "
        f"memoryview, array.array, mmap), got {type(obj).__name__}"
    )


def read_only(obj: object) -> TypeError:
    return TypeError(f"cannot receive into a read-only buffer ({type(obj).__name__})")


def not_contiguous(obj: object) -> ValueError:
    return ValueError(
        f"{type(obj).__name__} buffer is not contiguous; pass a C- or "
        "Fortran-contiguous buffer (numpy.ascontiguousarray) or use send_array"
    )


def object_items(obj: object) -> TypeError:
    return TypeError(
        f"{type(obj).__name__} holds Python objects (dtype 'O'); their bytes are "
        "pointers and cannot be transferred"
    )


_FIELD_NAMES = re.compile(r":[^:]*:")


def format_has_objects(fmt: str | None) -> bool:
    """True when a PEP 3118 format string contains an object ('O') item."""
    if not fmt:
        return False
    return "O" in _FIELD_NAMES.sub("", fmt)


def numpy_bytes(arr: np.ndarray, writable: bool) -> np.ndarray:
    """A flat uint8 view of a contiguous array's memory, in memory order.

    numpy cannot export some dtypes (datetime64, timedelta64) through the
    buffer protocol, and Fortran-order views cannot be cast to bytes by
    memoryview; viewing the memory as bytes handles every dtype without a copy.
    """
    # the checks and their order are those of a buffer export (acquire in
    # transport_c.pyx, byte_view in step.py)
    flags = arr.flags  # a new object at each access
    if writable and not flags.writeable:
        raise read_only(arr)
    if flags.c_contiguous:
        flat = arr.reshape(-1)
    elif flags.f_contiguous:
        flat = arr.reshape(-1, order="F")
    else:
        raise not_contiguous(arr)
    if arr.dtype.hasobject:
        raise object_items(arr)
    return flat.view(np.uint8)


def mark_progress(exc: BaseException, bytes_done: int) -> None:
    """Record on an exception how many bytes moved before it."""
    if getattr(exc, "bytes_done", None) is None:
        try:
            exc.bytes_done = bytes_done  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__
            pass
