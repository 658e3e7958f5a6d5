"""Same-host copies, sans I/O (docs/PROTOCOL.md, "Same host").

Between two processes of one host and one user, a large message's payload
need not cross the socket: the sender names where its bytes lie (a ranges
record, then the message's header), the receiver copies them straight from
the sender's memory (``process_vm_readv``, in the core) and says so (a
copied record), and the sender confirms it was alive throughout (a confirm
record). The opening first checks, in both directions, that the receiver
can read the sender's memory at all: each end offers a probe range and
answers the other's.

This module makes and reads the records of types 2 to 6 (framed by
``control``), turns a message's arrays into the ranges that describe their
payload, and checks a received description against the message's header.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from arraywire._wire import control
from arraywire._wire.errors import ProtocolError
from arraywire._wire.header import ArraySpec

# A sender describes a payload of at least this many bytes; smaller ones go
# on the socket. A described message costs two records' round trip more
# than its copy: at 1 MiB into a fresh array it was 0.84-0.94x the socket,
# at 2 MiB 1.03-1.06x (1.4x into out=). The sender's choice: a receiver
# takes a description of any size.
SAME_HOST_BYTES = 2 << 20
# Ranges one message may name (also what a ranges record can carry).
MAX_RANGES = control.MAX_RANGES
# An array of several runs is described only when its runs average at least
# this many bytes; shorter runs are cheaper packed.
MIN_RUN_BYTES = 4096
ADDRESS_SPACE = 1 << 64

# Probe (type 2): the address of this end's probe bytes, their length, the bytes.
PROBE_BYTES = 32
PROBE = struct.Struct(f"<QI{PROBE_BYTES}s")
# Probe answer (type 3): one status byte.
ANSWER = struct.Struct("<B")
EQUAL = 0  # read, and equal to the probe's bytes
KERNEL_REFUSED = 1  # the kernel refused the read (EPERM, ENOSYS, ...)
DIFFERENT = 2  # read, and not the probe's bytes
NOT_VOUCHED = 3  # the peer's uid differs, or the kernel names no peer
ANSWERS = (EQUAL, KERNEL_REFUSED, DIFFERENT, NOT_VOUCHED)
# Ranges (type 4): for each array a count, then that many (address, length).
COUNT = struct.Struct("<I")
RANGE = struct.Struct("<QQ")
# Copied (type 5): payload bytes copied, status, errno (0 unless status FAILED).
COPIED = struct.Struct("<QBI")
OK = 0
FAILED = 1
DISCARDED = 2  # a valid message that does not fit the receive: not copied


class Probe(NamedTuple):
    address: int
    data: bytes


class Range(NamedTuple):
    """Bytes of the sender's memory: where they start and how many."""

    address: int
    length: int


class Copied(NamedTuple):
    copied: int  # payload bytes the receiver copied
    status: int  # OK, FAILED or DISCARDED
    errno: int  # with FAILED: the kernel's error number, or 0 for a stop of the receiver's own


# One tuple of ranges per array of the message, in payload order.
Description = tuple[tuple[Range, ...], ...]


class Copy(NamedTuple):
    """What a receive of a described message asks its driver: copy each
    array's ranges from the peer into it, in order, then send the copied
    record; ``arrays`` is None when the message does not fit the receive
    (send status DISCARDED, copy nothing)."""

    description: Description
    arrays: list[np.ndarray] | None


class Answer(NamedTuple):
    """A copied record a receive read (``decode_copied`` checks its body
    against the described message it answers). ``between``: it came where a
    message starts, so a driver awaiting only it may stop reading there."""

    body: bytes
    between: bool


def new_probe() -> tuple[np.ndarray, bytes]:
    """Fresh random probe bytes in this process's memory, and the probe
    record naming them: keep the array alive and unchanged until the
    peer's answer is read."""
    memory = np.frombuffer(os.urandom(PROBE_BYTES), np.uint8).copy()
    return memory, encode_probe(memory.ctypes.data, memory.tobytes())


def encode_probe(address: int, data: bytes) -> bytes:
    """A probe record: PROBE_BYTES bytes of this end's memory at address."""
    if len(data) != PROBE_BYTES:
        raise ValueError(f"a probe names {PROBE_BYTES} bytes, got {len(data):,}")
    return control.encode(control.PROBE, PROBE.pack(address, len(data), data))


def decode_probe(body: bytes) -> Probe:
    """The range a peer's probe record names and the bytes it holds, or ProtocolError."""
    exact(control.PROBE, body, PROBE.size)
    address, length, data = PROBE.unpack(body)
    if length != PROBE_BYTES:
        raise ProtocolError(f"probe names {length:,} bytes; a probe names {PROBE_BYTES}")
    return Probe(address, data)


def probe_status(probe: Probe, read: bytes) -> int:
    """The answer to a probe whose range read these bytes: EQUAL or DIFFERENT."""
    return EQUAL if bytes(read) == probe.data else DIFFERENT


def encode_answer(status: int) -> bytes:
    """A probe answer record."""
    if status not in ANSWERS:
        raise ValueError(f"probe answer status {status} is none of {ANSWERS}")
    return control.encode(control.PROBE_ANSWER, ANSWER.pack(status))


def decode_answer(body: bytes) -> int:
    """The status of a peer's probe answer, or ProtocolError."""
    exact(control.PROBE_ANSWER, body, ANSWER.size)
    status: int = ANSWER.unpack(body)[0]
    if status not in ANSWERS:
        raise ProtocolError(
            f"probe answer of unknown status {status}; the statuses are 0 to {len(ANSWERS) - 1}"
        )
    return status


def copies_on(answered: int, answer: int) -> bool:
    """Whether a connection makes same-host copies: this end's answer to the
    peer's probe and the peer's answer to this end's are both EQUAL (so the
    two ends decide alike)."""
    return answered == EQUAL and answer == EQUAL


def encode_ranges(description: Description) -> bytes:
    """A ranges record of this description (at most MAX_RANGES ranges)."""
    if sum(map(len, description)) > MAX_RANGES:
        raise ValueError(f"a ranges record names at most {MAX_RANGES:,} ranges")
    parts = []
    for ranges in description:
        parts.append(COUNT.pack(len(ranges)))
        parts.extend(RANGE.pack(*each) for each in ranges)
    return control.encode(control.RANGES, b"".join(parts))


def decode_ranges(body: bytes) -> Description:
    """A ranges record's body as its description, or ProtocolError (a cut
    body, more than MAX_RANGES ranges) before the ranges are stored."""
    view = memoryview(body)
    size = len(view)
    offset = 0
    total = 0
    arrays: list[tuple[Range, ...]] = []
    while offset < size:
        index = len(arrays)
        if size - offset < COUNT.size:
            raise ProtocolError(
                f"ranges record ends {size - offset} bytes into the range count of "
                f"array {index}; a count is {COUNT.size} bytes"
            )
        (count,) = COUNT.unpack_from(view, offset)
        offset += COUNT.size
        total += count
        if total > MAX_RANGES:
            raise ProtocolError(
                f"ranges record names {total:,} ranges by array {index}; a message "
                f"has at most {MAX_RANGES:,}"
            )
        if count * RANGE.size > size - offset:
            raise ProtocolError(
                f"ranges record gives array {index} {count:,} ranges, "
                f"{count * RANGE.size:,} bytes, and has {size - offset:,} left"
            )
        flat = struct.unpack_from(f"<{2 * count}Q", view, offset)
        offset += count * RANGE.size
        arrays.append(tuple(Range(flat[k], flat[k + 1]) for k in range(0, 2 * count, 2)))
    return tuple(arrays)


def check_ranges(description: Description, specs: Sequence[ArraySpec]) -> Description:
    """The description, once it fits the message's header (its arrays'
    specs): one entry per array, no zero-length range, none past the
    address space, each array's lengths adding up to its bytes, at most
    MAX_RANGES ranges, no two overlapping; else ProtocolError naming the
    array and range."""
    if len(description) != len(specs):
        raise ProtocolError(
            f"ranges record describes {len(description):,} arrays; the message's "
            f"header has {len(specs):,}"
        )
    count = sum(map(len, description))
    if count > MAX_RANGES:
        raise ProtocolError(f"{count:,} ranges; a message has at most {MAX_RANGES:,}")
    for index, (ranges, spec) in enumerate(zip(description, specs, strict=True)):
        total = 0
        for number, (address, length) in enumerate(ranges):
            if not length:
                raise ProtocolError(
                    f"range {number} of array {index} is 0 bytes; a range has at least 1"
                )
            if address + length > ADDRESS_SPACE:
                raise ProtocolError(
                    f"range {number} of array {index} ({name(ranges[number])}) ends past "
                    "the 64-bit address space"
                )
            total += length
        if total != spec.nbytes:
            raise ProtocolError(
                f"the ranges of array {index} add up to {total:,} bytes; its header "
                f"declares {spec.nbytes:,}"
            )
    clash = overlap(description)
    if clash is not None:
        (a, i), (b, j) = clash
        raise ProtocolError(
            f"range {i} of array {a} ({name(description[a][i])}) overlaps range {j} of "
            f"array {b} ({name(description[b][j])}); no two ranges of a message overlap"
        )
    return description


def name(each: Range) -> str:
    return f"address {each.address:#x}, {each.length:,} bytes"


def overlap(description: Description) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The (array, range) indexes of two ranges that share a byte, or None."""
    spans = sorted(
        (each.address, each.length, array, number)
        for array, ranges in enumerate(description)
        for number, each in enumerate(ranges)
    )
    end = 0
    widest = (0, 0)
    for address, length, array, number in spans:
        if address < end:
            return widest, (array, number)
        if address + length > end:
            end = address + length
            widest = (array, number)
    return None


def encode_copied(copied: int, status: int = OK, errno: int = 0) -> bytes:
    """A copied record: the receiver's answer to a described message."""
    return control.encode(control.COPIED, COPIED.pack(copied, status, errno))


def decode_copied(body: bytes, payload: int) -> Copied:
    """A copied record's body, checked against the payload of the message
    it answers, or ProtocolError."""
    exact(control.COPIED, body, COPIED.size)
    answer = Copied(*COPIED.unpack(body))
    copied, status, errno = answer
    if status == OK:
        wrong = copied != payload or errno
    elif status == DISCARDED:
        wrong = copied or errno
    elif status == FAILED:
        wrong = copied > payload
    else:
        raise ProtocolError(f"copied record of unknown status {status}; the statuses are 0 to 2")
    if wrong:
        raise ProtocolError(
            f"copied record says status {status} with {copied:,} bytes copied and errno "
            f"{errno} for a payload of {payload:,} bytes (status 0: all of them, errno 0; "
            "1: at most all; 2: none, errno 0)"
        )
    return answer


def encode_confirm() -> bytes:
    """The sender's confirm: it was alive until the receiver had copied."""
    return control.encode(control.CONFIRM, b"")


def exact(kind: int, body: bytes, size: int) -> None:
    if len(body) != size:
        raise ProtocolError(
            f"{control.NAMES[kind]} record of {len(body):,} bytes; it is {size}"
        )


def describe_ranges(
    arrays: Sequence[np.ndarray], min_payload: int = SAME_HOST_BYTES
) -> Description | None:
    """The ranges of this process's memory holding the payload of a message
    of these arrays (``engine.as_array``'s), one range per contiguous run
    in payload order; None when the sender packs or uses the socket
    path instead: a payload under min_payload, more than MAX_RANGES
    ranges, an array of several runs averaging under MIN_RUN_BYTES, or
    two ranges that share bytes (a broadcast array, one array sent twice)."""
    if sum(array.nbytes for array in arrays) < min_payload:
        return None
    description = []
    room = MAX_RANGES
    for array in arrays:
        ranges = runs(array, room)
        if ranges is None:
            return None
        room -= len(ranges)
        description.append(ranges)
    if COUNT.size * len(arrays) + RANGE.size * (MAX_RANGES - room) > control.RANGES_LIMIT:
        return None
    if overlap(tuple(description)) is not None:
        return None
    return tuple(description)


def runs(array: np.ndarray, room: int) -> tuple[Range, ...] | None:
    """An array's payload as ranges of memory: the whole array when it is
    contiguous, else (in C order, as the socket path sends it) one range
    per run of its trailing contiguous axes; None for more than room
    ranges, or several of under MIN_RUN_BYTES."""
    nbytes = array.nbytes
    if not nbytes:
        return ()
    base = array.ctypes.data
    if array.flags.c_contiguous or array.flags.f_contiguous:
        return (Range(base, nbytes),) if room else None
    lead = array.ndim
    run = array.itemsize
    while lead > 0 and (array.strides[lead - 1] == run or array.shape[lead - 1] == 1):
        lead -= 1
        run *= array.shape[lead]
    count = nbytes // run
    if count > room or (count > 1 and run < MIN_RUN_BYTES):
        return None
    strides = array.strides[:lead]
    return tuple(
        Range(base + sum(i * s for i, s in zip(index, strides, strict=True)), run)
        for index in np.ndindex(*array.shape[:lead])
    )
