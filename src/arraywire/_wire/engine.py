"""The message engine: what a message's bytes mean, with no socket inside.

Drivers (the blocking functions in ``_framing``, ``arraywire.aio``) only move
bytes; this module decides everything else, in the sans-I/O manner of h11 and
asyncio's BufferedProtocol:

- Sending: ``plan_send`` turns arrays into a ``SendPlan``. Its ``batches()``
  are lists of buffers for gather calls (header, whole arrays, contiguous
  runs, pieces packed into a staging buffer); the driver writes each batch
  whole, calls ``moved(n)`` with what it wrote, then asks for the next.
- Receiving: a ``Receive`` names the buffers to fill next through
  ``reads()`` (the fixed preamble, the descriptor block, then the message's
  own arrays, or a bounded scratch buffer when the payload must be drained);
  the driver fills each, calls ``moved(n)``, and finally takes ``result()``.
- Parallel streams: on a connection of N streams, a message whose payload
  is at least ``STRIPE_BYTES`` is striped. Its send plan's ``stripes(N)``
  and its receive's ``Stripes`` read cut the payload into N consecutive
  parts, one per stream, for the driver to move at once.
- Both count the bytes of the whole message: ``fail(exc)`` makes an error's
  ``bytes_done`` (the bytes of the failing call not yet reported with
  ``moved``) count from the message start, and says whether the byte stream
  is now out of step with the peer. Progress is one ``MessageProgress`` per
  message: offset, throttle and the final report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np

from arraywire._wire import control, hello, samehost
from arraywire._wire.errors import IncompleteTransferError, ProtocolError
from arraywire._wire.header import (
    DEFAULT_MAX_METADATA,
    PREAMBLE,
    ArraySpec,
    Preamble,
    check_name,
    check_transferable,
    decode_block,
    decode_preamble,
    encode_header,
)
from arraywire._wire.limits import CLEAN_END, PROGRESS_INTERVAL, Progress, numpy_bytes

# Strided arrays: runs at least this long go out as buffers of their own;
# shorter ones are packed through a staging buffer of at most STAGING_BYTES.
MIN_RUN_BYTES = 64 << 10
STAGING_BYTES = 4 << 20
# A payload that does not fit `out` is read and discarded in steps this large.
DRAIN_BYTES = 1 << 20
# Headers of one array up to this size may be learned by a connection's core.
SIMPLE_BLOCK = 512
# On N parallel streams a payload of at least this many bytes is cut into N
# parts of a multiple of STRIPE_ALIGN bytes (the last one shorter).
STRIPE_BYTES = 1 << 20
STRIPE_ALIGN = 4096


def stripe_sizes(payload: int, streams: int) -> list[int]:
    """The bytes of a striped payload each stream carries, in stream order
    (docs/PROTOCOL.md, "Parallel streams")."""
    part = -(-payload // streams)
    part = -(-part // STRIPE_ALIGN) * STRIPE_ALIGN
    return [max(0, min(part, payload - index * part)) for index in range(streams)]


def split_bytes(buffers: Iterable[np.ndarray], sizes: list[int]) -> list[list[np.ndarray]]:
    """Cut the bytes of flat uint8 buffers, back to back, into consecutive
    parts of the given sizes (views, no copies)."""
    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    index = 0
    room = sizes[0]
    for buffer in buffers:
        while buffer.nbytes:
            while not room:
                index += 1
                room = sizes[index]
            piece = buffer[:room]
            parts[index].append(piece)
            room -= piece.nbytes
            buffer = buffer[piece.nbytes :]
    return parts


def payload_bytes(segment: Any) -> np.ndarray:
    """A send segment's bytes as one flat uint8 buffer: a packed array's are
    copied once, since its parts go out from several threads at once."""
    if isinstance(segment, Packed):
        return np.ascontiguousarray(segment.array).reshape(-1).view(np.uint8)
    return numpy_bytes(segment, False)


class Stripes(NamedTuple):
    """A striped payload to receive: each stream's byte count and the views
    of the arrays it fills (``parts`` is None when the payload is drained)."""

    sizes: list[int]
    parts: list[list[np.ndarray]] | None


class Reporter(Protocol):
    """What a driver hands a core transfer as its progress callback."""

    def part(self, offset: int) -> Progress: ...


class MessageProgress:
    """A message's progress in message bytes: at most every PROGRESS_INTERVAL,
    and exactly once at the end."""

    __slots__ = ("_next_report", "_progress", "_reported_end", "total")

    def __init__(self, progress: Progress, total: int) -> None:
        self._progress = progress
        self.total = total
        self._next_report = 0.0
        self._reported_end = False

    def report(self, position: int) -> None:
        if position >= self.total:
            if not self._reported_end:
                self._reported_end = True
                self._progress(self.total, self.total)
            return
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + PROGRESS_INTERVAL
            self._progress(position, self.total)

    def part(self, offset: int) -> Progress:
        """The progress callback of a core call that moves bytes from offset on."""
        report = self.report
        return lambda done, _part_total: report(offset + done)

    def finish(self) -> None:
        self.report(self.total)


class Transfer:
    """The bytes of one transfer moved so far and, once known, its size."""

    __slots__ = ("offset", "total")

    def __init__(self, total: int | None = None) -> None:
        self.offset = 0
        self.total = total

    def moved(self, nbytes: int) -> None:
        """The driver moved nbytes more of the transfer."""
        self.offset += nbytes

    def fail(self, exc: BaseException) -> bool:
        """Count exc's bytes from the start of the transfer; return True when
        some but not all of its bytes moved (the stream is out of step)."""
        done = self.offset + (getattr(exc, "bytes_done", None) or 0)
        if self.total is not None:  # a record read after the message is no message byte
            done = min(done, self.total)
        try:
            exc.bytes_done = done  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__
            pass
        if isinstance(exc, IncompleteTransferError):
            exc.bytes_expected = (
                self.offset + exc.bytes_expected if self.total is None else self.total
            )
        return done > 0 and (self.total is None or done < self.total)


class Packed:
    """A non-contiguous array whose bytes go out through a staging buffer."""

    __slots__ = ("array", "nbytes")

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.nbytes = array.nbytes


Segment = Any | Packed


class SendPlan(Transfer):
    """A message to send: its header and the segments carrying its payload."""

    __slots__ = ("arrays", "header", "reporter", "segments")
    total: int  # known from the start

    def __init__(
        self,
        header: bytes,
        segments: list[Segment],
        total: int,
        progress: Progress | None,
        arrays: list[np.ndarray],
    ) -> None:
        # the fields of Transfer, set here: small messages pay for a super() call
        self.offset = 0
        self.total = total
        self.header = header
        self.segments = segments
        self.arrays = arrays
        self.reporter = None if progress is None else MessageProgress(progress, total)

    def batches(self) -> Iterable[list[Any]]:
        """Buffers for gather calls, in order. Send each batch whole before
        asking for the next: packed pieces share one staging buffer."""
        for segment in self.segments:
            if type(segment) is Packed:
                return self._staged_batches()
        return ([self.header, *self.segments],)

    def _staged_batches(self) -> Iterator[list[Any]]:
        pending: list[Any] = [self.header]
        for segment in self.segments:
            if not isinstance(segment, Packed):
                pending.append(segment)
                continue
            staging = np.empty(min(segment.nbytes, STAGING_BYTES), np.uint8)
            for piece in packed_pieces(segment.array, staging.nbytes):
                pending.append(stage(piece, staging))
                yield pending
                pending = []
        if pending:
            yield pending

    def stripes(self, streams: int) -> list[list[Any]] | None:
        """The buffers each of ``streams`` parallel streams sends, the header
        first on stream 0, when the payload is striped; else None."""
        payload = self.total - len(self.header)
        if streams < 2 or payload < STRIPE_BYTES:
            return None
        sizes = stripe_sizes(payload, streams)
        parts: list[list[Any]] = split_bytes(map(payload_bytes, self.segments), sizes)
        parts[0].insert(0, self.header)
        return parts

    def complete(self) -> int:
        """Every byte was sent: give the final report; return the message size."""
        if self.reporter is not None:
            self.reporter.finish()
        return self.total


def plan_send(
    arrays: Iterable[Any] | Mapping[str, Any],
    progress: Progress | None = None,
    metadata: bytes | None = None,
) -> SendPlan:
    """Plan one message carrying arrays (see ``as_array``), named when they
    come as a mapping of str to array, with optional metadata bytes. Raises
    what a receiver would refuse, before anything is sent: TypeError for an
    input that is not an array of a transferable dtype, ValueError for a
    limit of docs/PROTOCOL.md."""
    names = None
    items: Iterable[Any] = arrays
    # a tuple or list is never a mapping: spare the ABC check on the hot path
    if not isinstance(arrays, (tuple, list)) and isinstance(arrays, Mapping):
        names = tuple(check_name(name) for name in arrays)
        items = arrays.values()
    specs = []
    segments: list[Segment] = []
    payload = 0
    arrays = []
    for item in items:
        array = as_array(item)
        arrays.append(array)
        spec, parts = describe(array)
        specs.append(spec)
        segments.extend(parts)
        payload += spec.nbytes
    if metadata is not None:
        metadata = bytes(memoryview(metadata))
    header = encode_header(specs, names, metadata)
    return SendPlan(header, segments, len(header) + payload, progress, arrays)


def as_array(item: Any) -> np.ndarray:
    """The array a message carries for item: an ndarray as it is, any other
    object exporting a buffer as that buffer describes it (bytes become 1-D
    uint8), anything else as numpy.asarray makes it (lists, tuples, numbers).
    Inputs numpy would convert by losing or inventing information raise
    TypeError saying what to pass instead."""
    if type(item) is np.ndarray:  # the common case, first
        return item
    if isinstance(item, np.ma.MaskedArray):
        raise TypeError(
            "a masked array would arrive without its mask; send item.filled(value), or "
            "the data and the mask as two arrays (numpy.ma.getmaskarray)"
        )
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, (str, Mapping)):
        raise TypeError(
            f"cannot send a {type(item).__name__} as an array; pass a numpy array "
            "(numpy.asarray(...) with the dtype you mean), or a mapping of names to "
            "arrays as the whole message to send_arrays"
        )
    dtype = getattr(item, "dtype", None)
    if dtype is not None and not isinstance(dtype, np.dtype):
        raise TypeError(
            f"{type(item).__name__} has dtype {dtype}, which numpy cannot hold without "
            "losing or inventing values (a pandas extension array?); pass "
            "item.to_numpy(dtype=..., na_value=...)"
        )
    try:
        view = memoryview(item)
    except TypeError:
        return np.asarray(item)
    return np.asarray(view)


def describe(array: np.ndarray) -> tuple[ArraySpec, list[Segment]]:
    """The header entry for an array and the segments carrying its bytes."""
    dtype = array.dtype
    check_transferable(dtype)
    nbytes = array.nbytes
    flags = array.flags
    segments: list[Segment]
    if flags.c_contiguous:
        order, segments = "C", [array] if nbytes else []
    elif flags.f_contiguous:
        order, segments = "F", [array] if nbytes else []
    else:
        order, segments = "C", [s for s in _strided_segments(array) if s.nbytes]
    return ArraySpec(dtype, array.shape, order, nbytes), segments


def _strided_segments(array: np.ndarray) -> Iterator[Segment]:
    # The trailing axes that are laid out contiguously form one run each.
    lead = array.ndim
    run = array.itemsize
    while lead > 0 and (array.strides[lead - 1] == run or array.shape[lead - 1] == 1):
        lead -= 1
        run *= array.shape[lead]
    if run < MIN_RUN_BYTES or lead == array.ndim:
        yield Packed(array)
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


class Message(NamedTuple):
    """A received message: its arrays (a dict in the sender's order when the
    message names them, else a list) and its metadata (b"" when none)."""

    arrays: list[np.ndarray] | dict[str, np.ndarray]
    metadata: bytes


class Receive(Transfer):
    """One message coming in: the buffers to fill, in order, and what they mean.

    ``one_array`` asks for a one-array message, received into ``out`` when
    given: an array, or a callable that gets the message's ``ArraySpec``
    once the header is in and returns the array to fill (raising refuses the
    message, with the payload not read); a message that does not fit is drained so the stream stays in step,
    and ``result()`` raises ValueError saying why. On a connection of
    ``streams`` parallel streams a striped payload comes as one ``Stripes``.

    ``capabilities`` are those on for the connection (``hello.CONTROL``):
    a control record where the message starts is read and raises what it
    says (a refusal: ``control.refused``), never returned as a message.
    A header this end refuses raises ProtocolError with its text in
    ``refusal``, the reason a driver sends the peer.
    """

    __slots__ = (
        "_capabilities", "_max_metadata", "_one_array", "_out", "_progress", "_streams",
        "arrays", "max_bytes", "metadata", "names", "problem", "records", "refusal",
        "reporter", "simple_header", "specs",
    )

    def __init__(
        self,
        max_bytes: int | None,
        # not keyword-only: keywords cost a class call a dict (small messages pay)
        max_metadata: int = DEFAULT_MAX_METADATA,
        progress: Progress | None = None,
        one_array: bool = False,
        out: np.ndarray | Callable[[ArraySpec], np.ndarray] | None = None,
        streams: int = 1,
        capabilities: int = 0,
    ) -> None:
        # the fields of Transfer, set here: small messages pay for a super() call
        self.offset = 0
        self.total = None
        self._streams = streams
        self._capabilities = capabilities
        self.refusal = ""
        self.max_bytes = max_bytes
        self._max_metadata = max_metadata
        self._progress = progress
        self._one_array = one_array
        self._out = out
        self.specs: tuple[ArraySpec, ...] = ()
        self.names: tuple[str, ...] | None = None
        self.metadata = b""
        self.arrays: list[np.ndarray] = []
        self.problem = ""
        # set once the payload is known to go into arrays (not drained)
        self.reporter: MessageProgress | None = None
        # The header's bytes when it describes one unnamed array and nothing
        # else: a driver's core may learn its layout and parse later headers
        # of that layout itself.
        self.simple_header: bytes | None = None
        # A record was taken for this receive (its bytes no message's): any
        # failure from here leaves the stream out of step with the peer.
        self.records = False

    def reads(self) -> Iterator[list[Any] | Stripes | samehost.Copy | samehost.Answer]:
        """The preamble, the descriptor block, then the message's arrays, or
        scratch space while a payload that does not fit is drained (or, when
        the payload is striped, one ``Stripes``)."""
        # One generator, not a header's then a payload's: small
        # messages pay for every hop.
        preamble = bytearray(PREAMBLE.size)
        yield [preamble]
        preamble_bytes = bytes(preamble)
        description = None
        try:
            declared = decode_preamble(preamble_bytes)
        except ProtocolError as exc:
            if not control.is_record(preamble_bytes):
                self.refusal = str(exc)
                raise
            preamble_bytes, description = yield from self._records(preamble)
            try:
                declared = decode_preamble(preamble_bytes)
            except ProtocolError as malformed:
                self.refusal = str(malformed)
                raise
        version, _, block_len, count = declared
        block = bytearray(block_len)
        yield [block]
        block_bytes = bytes(block)
        try:
            total = self._decode(block_bytes, declared)
            if description is not None:  # before anything is allocated or copied
                samehost.check_ranges(description, self.specs)
        except ProtocolError as exc:
            self.refusal = str(exc)
            raise
        specs = self.specs
        if version == 1 and count == 1 and block_len <= SIMPLE_BLOCK:
            self.simple_header = preamble_bytes + block_bytes
        wanted = self._out
        out: np.ndarray | None
        if callable(wanted):
            out = wanted(specs[0]) if count == 1 else None
        else:
            out = wanted
        if self._one_array and (count != 1 or out is not None):
            self.problem = mismatch(specs, out)
        payload = total - self.offset
        sizes = None
        if self._streams > 1 and payload >= STRIPE_BYTES:
            sizes = stripe_sizes(payload, self._streams)
        if self.problem:
            if description is not None:
                yield from self._copied(description, None)
                return
            if sizes is not None:
                yield Stripes(sizes, None)
                return
            scratch = np.empty(min(payload, DRAIN_BYTES), np.uint8)
            while self.offset < total:
                yield [scratch[: min(total - self.offset, scratch.nbytes)]]
            return
        if out is not None:
            self.arrays = [out]
        else:
            self.arrays = [
                np.empty(spec.shape, spec.dtype, spec.order)  # type: ignore[call-overload]
                for spec in specs
            ]
        if self._progress is not None:
            self.reporter = MessageProgress(self._progress, total)
        if description is not None:
            yield from self._copied(description, self.arrays)
        elif sizes is not None:
            yield Stripes(sizes, split_bytes((numpy_bytes(a, True) for a in self.arrays), sizes))
        elif payload:
            yield self.arrays

    def _records(
        self, preamble: bytearray
    ) -> Generator[list[Any] | samehost.Answer, None, tuple[bytes, samehost.Description | None]]:
        """Control records where the message starts, each read and acted on:
        a refusal raises what it says (``control.refused``), a ranges record
        describes the message that follows, a copied record goes to the
        driver as an ``Answer``; anything else is a ProtocolError. Returns
        the message's preamble bytes and its description, if any."""
        description = None
        first = bytes(preamble)
        while control.is_record(first):
            record = control.decode(first, self._capabilities)
            kind = record.kind
            if description is not None:
                raise ProtocolError(
                    f"the peer sent a {control.NAMES[kind]} record after a ranges record; "
                    "the message's preamble follows a ranges record"
                )
            if kind not in (control.REFUSAL, control.RANGES, control.COPIED):
                raise ProtocolError(
                    f"the peer sent a {control.NAMES[kind]} record where a message "
                    "starts; this end takes a refusal, ranges or copied record there"
                )
            body = bytearray(record.length)
            if body:
                yield [body]
            if kind == control.REFUSAL:
                raise control.refused(control.refusal_reason(bytes(body)))
            self.offset = 0  # records are no message bytes
            self.records = True
            if kind == control.RANGES:
                description = samehost.decode_ranges(bytes(body))
            else:
                yield samehost.Answer(bytes(body), True)
            yield [preamble]
            first = bytes(preamble)
        return first, description

    def _copied(
        self, description: samehost.Description, arrays: list[np.ndarray] | None
    ) -> Iterator[list[Any] | samehost.Copy | samehost.Answer]:
        """A described payload: one ``Copy`` for the driver to make and
        answer (``arrays`` None when the message does not fit the receive),
        then the sender's confirm, taking the peer's answers to this end's
        own described message first."""
        self.records = True  # the copy and its records are out of step once begun
        yield samehost.Copy(description, arrays)
        first = bytearray(control.SIZE)
        while True:
            start = self.offset
            yield [first]
            if not control.is_record(bytes(first)):
                raise ProtocolError(
                    "the peer sent a message where the confirm of its copied message belongs"
                )
            record = control.decode(bytes(first), self._capabilities)
            body = bytearray(record.length)
            if body:
                yield [body]
            self.offset = start
            if record.kind == control.CONFIRM:
                return
            if record.kind != control.COPIED:
                raise ProtocolError(
                    f"the peer sent a {control.NAMES[record.kind]} record where the confirm "
                    "of its copied message belongs"
                )
            yield samehost.Answer(bytes(body), False)

    def fail(self, exc: BaseException) -> bool:
        return Transfer.fail(self, exc) or self.records

    def refusal_record(self) -> bytes | None:
        """The refusal record a driver sends the peer before it closes, when
        this end refused the message's header on a connection with control
        records on; else None (the peer sees only the close)."""
        if not self.refusal or not self._capabilities & hello.CONTROL:
            return None
        return control.encode_refusal(self.refusal)

    def _decode(self, block: bytes, declared: Preamble) -> int:
        header = decode_block(block, declared, self.max_bytes, self._max_metadata)
        self.specs = header.specs
        self.names = header.names
        self.metadata = header.metadata
        total = self.offset + header.payload
        self.total = total
        return total

    def end_of_stream(self, exc: BaseException) -> EOFError | None:
        """The EOFError to raise instead of exc when the peer closed the
        connection cleanly, before the first byte of this message."""
        if isinstance(exc, IncompleteTransferError) and not self.offset and not exc.bytes_done:
            return clean_end()
        return None

    def result(self) -> list[np.ndarray]:
        """The received arrays, once every read was filled."""
        if self.problem:
            raise ValueError(self.problem)
        if self.reporter is not None:
            self.reporter.finish()
        return self.arrays

    def message(self) -> Message:
        """The received arrays, named when the message names them, and metadata."""
        arrays = self.result()
        if self.names is None:
            return Message(arrays, self.metadata)
        return Message(dict(zip(self.names, arrays, strict=True)), self.metadata)


class ReadAhead(Protocol):
    """A connection's read-ahead buffer, as ``buffered_reads`` uses it."""

    @property
    def buffered(self) -> int: ...

    def take(self, obj: Any) -> int: ...


def buffered_reads(
    message: Receive, inbox: ReadAhead, direct_bytes: int
) -> Iterator[int | list[Any] | Stripes | samehost.Copy | samehost.Answer]:
    """Serve a message's reads from a read-ahead buffer first.

    Yields an int n when the buffer is empty and the current read still
    wants n bytes: the driver makes one receive into the buffer (fill), and
    raises IncompleteTransferError(0, n) if the peer closed. Yields a list of
    buffers when at least direct_bytes remain of a read: the driver fills
    them straight from the socket, so large payloads are never copied, and
    calls ``message.moved`` with the count. A ``Stripes`` read is yielded
    as it is: stream 0's part takes what the buffer holds first.
    """
    for buffers in message.reads():
        if type(buffers) is not list:  # Stripes, or a same-host Copy or Answer
            yield buffers
            continue
        for buffer in buffers:
            view = writable_bytes(buffer)
            size = len(view)
            filled = 0
            while filled < size:
                if inbox.buffered:
                    count = inbox.take(view[filled:] if filled else view)
                    filled += count
                    message.moved(count)
                elif size - filled >= direct_bytes:
                    yield [view[filled:]]
                    filled = size
                else:
                    yield size - filled


def writable_bytes(buffer: Any) -> memoryview:
    """A flat byte view of one of the buffers ``Receive.reads`` names."""
    if isinstance(buffer, np.ndarray):
        return numpy_bytes(buffer, True).data
    return memoryview(buffer)


def clean_end() -> EOFError:
    """What a receive raises when the peer closed between messages."""
    return EOFError(CLEAN_END)


def mismatch(specs: tuple[ArraySpec, ...], out: object) -> str:
    """Why a message cannot be received as one array into out ("" if it can)."""
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
