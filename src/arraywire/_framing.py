"""Self-describing messages: send and receive whole arrays, header included.

A message is a header (see _protocol and docs/PROTOCOL.md) followed by each
array's bytes. Contiguous arrays go out with the header in gather sendmsg
calls; receivers get fresh arrays filled in place by one scatter recvmsg.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from arraywire import _transport
from arraywire._common import PROGRESS_INTERVAL
from arraywire._errors import IncompleteTransferError
from arraywire._protocol import (
    DEFAULT_MAX_BYTES,
    PREAMBLE,
    ArraySpec,
    check_transferable,
    decode_descriptors,
    decode_preamble,
    encode_header,
)

Progress = Callable[[int, int], object]

# Strided arrays: runs at least this long go out as iovecs of their own;
# shorter ones are packed through a staging buffer of at most STAGING_BYTES.
MIN_RUN_BYTES = 64 << 10
STAGING_BYTES = 4 << 20
DRAIN_BYTES = 1 << 20


class _Packed:
    """A non-contiguous array sent by copying pieces into a staging buffer."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.nbytes = array.nbytes


Segment = Any | _Packed


def describe(array: np.ndarray) -> tuple[ArraySpec, list[Segment]]:
    """The header entry for an array and the segments carrying its bytes."""
    check_transferable(array.dtype)
    segments: list[Segment]
    if array.flags.c_contiguous:
        order, segments = "C", [array]
    elif array.flags.f_contiguous:
        order, segments = "F", [array]
    else:
        order, segments = "C", list(_strided_segments(array))
    spec = ArraySpec(array.dtype, array.shape, order, array.nbytes)
    return spec, [s for s in segments if s.nbytes]


def plan_message(arrays: Iterable[Any]) -> tuple[bytes, list[Segment], int]:
    """Header bytes, payload segments and total message size for arrays."""
    specs = []
    segments: list[Segment] = []
    for item in arrays:
        spec, parts = describe(np.asarray(item))
        specs.append(spec)
        segments.extend(parts)
    header = encode_header(specs)
    return header, segments, len(header) + sum(spec.nbytes for spec in specs)


def _strided_segments(array: np.ndarray) -> Iterator[Segment]:
    # The trailing axes that are laid out contiguously form one run each.
    lead = array.ndim
    run = array.itemsize
    while lead > 0 and (array.strides[lead - 1] == run or array.shape[lead - 1] == 1):
        lead -= 1
        run *= array.shape[lead]
    if run < MIN_RUN_BYTES or lead == array.ndim:
        yield _Packed(array)
        return
    for index in np.ndindex(*array.shape[:lead]):
        yield array[index]


def packed_pieces(array: np.ndarray, limit: int) -> Iterator[np.ndarray]:
    """Split an array, in C order, into sub-arrays of at most limit bytes."""
    if array.nbytes <= limit:
        yield array
    elif array.ndim == 1:
        step = max(1, limit // array.itemsize)
        for start in range(0, array.shape[0], step):
            yield array[start : start + step]
    elif array[0].nbytes <= limit:
        step = limit // array[0].nbytes
        for start in range(0, array.shape[0], step):
            yield array[start : start + step]
    else:
        for row in array:
            yield from packed_pieces(row, limit)


def stage(piece: np.ndarray, staging: np.ndarray) -> np.ndarray:
    """Copy a piece into the staging buffer; return the filled bytes."""
    filled = staging[: piece.nbytes]
    np.copyto(filled.view(piece.dtype).reshape(piece.shape), piece)
    return filled


class _Throttle:
    """Reports message progress at most every PROGRESS_INTERVAL, and at the end."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.base = 0
        self.next_report = 0.0

    def __call__(self, done: int, _part_total: int) -> None:
        assert self.progress is not None
        position = self.base + done
        now = time.monotonic()
        if now >= self.next_report or position == self.total:
            self.next_report = now + PROGRESS_INTERVAL
            self.progress(position, self.total)

    def part(self) -> Progress | None:
        return None if self.progress is None else self


def send_arrays(arrays: Iterable[Any], sock: Any, *, progress: Progress | None = None) -> int:
    """Send arrays as one self-describing message; return the bytes sent."""
    header, segments, total = plan_message(arrays)
    core = _transport.impl
    throttle = _Throttle(progress, total)
    pending: list[Any] = [header]
    try:
        for segment in segments:
            if isinstance(segment, _Packed):
                throttle.base += core.sendmsg_from(pending, sock, progress=throttle.part())
                pending = []
                _send_packed(segment.array, sock, throttle)
            else:
                pending.append(segment)
        throttle.base += core.sendmsg_from(pending, sock, progress=throttle.part())
    except BaseException as exc:
        rebase(exc, throttle.base, total)
        raise
    return total


def rebase(exc: BaseException, base: int, total: int | None) -> None:
    """Make a failed part's byte counts count from the start of the message."""
    exc.bytes_done = base + getattr(exc, "bytes_done", 0)  # type: ignore[attr-defined]
    if total is not None and isinstance(exc, IncompleteTransferError):
        exc.bytes_expected = total


def _send_packed(array: np.ndarray, sock: Any, throttle: _Throttle) -> None:
    core = _transport.impl
    staging = np.empty(min(array.nbytes, STAGING_BYTES), np.uint8)
    for piece in packed_pieces(array, staging.nbytes):
        throttle.base += core.send_from(stage(piece, staging), sock, progress=throttle.part())


def send_array(array: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send one array as a self-describing message; return the bytes sent."""
    return send_arrays((array,), sock, progress=progress)


def recv_header(sock: Any, max_bytes: int | None) -> tuple[list[ArraySpec], int]:
    """Receive and check a message header; return its specs and its size."""
    core = _transport.impl
    preamble = bytearray(PREAMBLE.size)
    core.recv_into(preamble, sock)
    block_len, count = decode_preamble(bytes(preamble))
    block = bytearray(block_len)
    try:
        core.recv_into(block, sock)
    except BaseException as exc:
        rebase(exc, PREAMBLE.size, None)
        raise
    return decode_descriptors(bytes(block), count, max_bytes), PREAMBLE.size + block_len


def new_array(spec: ArraySpec) -> np.ndarray:
    """A fresh, owned, aligned array for a received spec."""
    return np.empty(spec.shape, spec.dtype, order=spec.order)  # type: ignore[call-overload, no-any-return]


def recv_arrays(
    sock: Any,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """Receive one message; return its arrays (each with memory of its own).

    A header declaring more than max_bytes of payload (None: no limit) raises
    ProtocolError before anything is allocated.
    """
    specs, header_size = recv_header(sock, max_bytes)
    total = header_size + sum(spec.nbytes for spec in specs)
    arrays = [new_array(spec) for spec in specs]
    try:
        _transport.impl.recvmsg_into(
            arrays, sock, progress=message_progress(progress, header_size, total)
        )
    except BaseException as exc:
        rebase(exc, header_size, total)
        raise
    return arrays


def recv_array(
    sock: Any,
    *,
    out: np.ndarray | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> np.ndarray:
    """Receive a one-array message, into ``out`` when given.

    If ``out`` does not match the message (dtype, shape, memory order), or the
    message holds another number of arrays, the payload is read and discarded
    so the connection stays usable, then ValueError is raised.
    """
    specs, header_size = recv_header(sock, max_bytes)
    payload = sum(spec.nbytes for spec in specs)
    total = header_size + payload
    problem = _mismatch(specs, out)
    try:
        if problem:
            drain(sock, payload)
        else:
            target = new_array(specs[0]) if out is None else out
            _transport.impl.recv_into(
                target, sock, progress=message_progress(progress, header_size, total)
            )
    except BaseException as exc:
        rebase(exc, header_size, total)
        raise
    if problem:
        raise ValueError(problem)
    return target


def message_progress(
    progress: Progress | None, header_size: int, total: int
) -> Progress | None:
    """Progress of a payload reported as bytes of the whole message, as senders do."""
    if progress is None:
        return None
    throttle = _Throttle(progress, total)
    throttle.base = header_size
    return throttle

def _mismatch(specs: list[ArraySpec], out: np.ndarray | None) -> str:
    if len(specs) != 1:
        return f"expected a message with one array, got one with {len(specs)}"
    if out is None:
        return ""
    spec = specs[0]
    if not isinstance(out, np.ndarray):
        return f"out must be a numpy.ndarray, got {type(out).__name__}"
    if out.dtype != spec.dtype or out.shape != spec.shape:
        return (
            f"out is {out.dtype} {out.shape} but the message holds {spec.dtype} {spec.shape}"
        )
    if not out.flags.writeable:
        return "out is read-only"
    layout_ok = out.flags.c_contiguous if spec.order == "C" else out.flags.f_contiguous
    if not layout_ok:
        return f"out must be {spec.order}-contiguous like the message's array"
    return ""


def drain(sock: Any, nbytes: int) -> None:
    """Read and discard nbytes, through a bounded scratch buffer."""
    scratch = np.empty(min(nbytes, DRAIN_BYTES), np.uint8)
    while nbytes:
        step = min(nbytes, scratch.nbytes)
        _transport.impl.recv_into(scratch[:step], sock)
        nbytes -= step

