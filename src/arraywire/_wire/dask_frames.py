"""How one Dask message (its list of frames) is laid out as one arraywire
message, and back (docs/PROTOCOL.md, "Dask messages over aw://"). No sockets:
``aw://``'s comm moves the arrays.

Array 0 (the head) holds the frame table and, after it, the bytes of the
small frames that are not buffers of their own (msgpack headers, pickles),
packed. Every other array holds the frames of one buffer object: the shards
Dask cut one buffer into go back into one array, so each buffer is received
into memory of its own and its shards re-join without a copy.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from distributed.protocol.utils import merge_memoryviews
from distributed.utils import ensure_memoryview

from arraywire._wire.errors import ProtocolError

MAGIC = b"AWDF"
LAYOUT_VERSION = 1
# magic, layout version, three reserved bytes, frame count
PREFIX = struct.Struct("<4sB3xQ")
# A frame of bytes up to this size is copied into the head; larger ones, and
# every frame of a buffer object, travel as arrays of their own.
PACKED_FRAME_BYTES = 64 << 10
# Buffers beyond this many in one message are packed into the head (copied),
# keeping the descriptor block far inside its 1 MiB limit.
MAX_BUFFER_ARRAYS = 4096


def owner(frame: Any) -> Any:
    """The object whose memory a frame is: what decides, as in Dask's
    ``tcp://``, which frames may share receive memory."""
    return frame.obj if isinstance(frame, memoryview) else frame


def byte_view(frame: Any) -> memoryview:
    """A frame as a flat view of unsigned bytes. A C-contiguous one is cast,
    keeping its exporter (shards of one buffer still join); the rest as
    Dask's ``ensure_memoryview`` has them: zero-size ones of any shape empty,
    F-ordered ones cast without a copy, non-contiguous ones copied."""
    view = memoryview(frame)
    if view.nbytes and view.c_contiguous:
        return view if view.ndim == 1 and view.format == "B" else view.cast("B")
    return ensure_memoryview(view)


def to_arrays(frames: Sequence[Any]) -> list[np.ndarray]:
    """The arrays of one message that carries ``frames``."""
    if all(type(frame) is bytes and len(frame) <= PACKED_FRAME_BYTES for frame in frames):
        # all in the head, the usual small message: no views needed
        count = len(frames)
        head = b"".join((
            PREFIX.pack(MAGIC, LAYOUT_VERSION, count),
            struct.pack(f"<{count}Q", *map(len, frames)),
            bytes(4 * count),
            *frames,
        ))
        return [np.frombuffer(head, np.uint8)]
    views = [byte_view(frame) for frame in frames]
    where = [0] * len(views)  # the array each frame travels in; 0 is the head
    buffers: list[memoryview] = []
    last_owner: Any = None
    for index, (frame, view) in enumerate(zip(frames, views, strict=True)):
        source = owner(frame)
        if view.nbytes == 0 or (
            isinstance(source, bytes) and view.nbytes <= PACKED_FRAME_BYTES
        ):
            continue
        if buffers and source is last_owner and where[index - 1] == len(buffers):
            try:  # the next shard of the same buffer joins it, without a copy
                buffers[-1] = merge_memoryviews([buffers[-1], view])
                where[index] = len(buffers)
                continue
            except ValueError:
                pass
        if len(buffers) == MAX_BUFFER_ARRAYS:
            continue
        buffers.append(view)
        last_owner = source
        where[index] = len(buffers)
    count = len(views)
    packed = bytearray(PREFIX.pack(MAGIC, LAYOUT_VERSION, count))
    packed += struct.pack(f"<{count}Q{count}I", *(view.nbytes for view in views), *where)
    for view, array_index in zip(views, where, strict=True):
        if array_index == 0:
            packed += view
    return [np.frombuffer(packed, np.uint8), *(np.frombuffer(view, np.uint8) for view in buffers)]


def to_frames(arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[memoryview]:
    """The frames of a received message, as views of its arrays: frames of
    one array are adjacent slices of it, so Dask re-joins shards without a
    copy. Raises ProtocolError when the arrays are not such a message."""
    if isinstance(arrays, Mapping):
        raise ProtocolError("a Dask message over aw:// has no array names; this one has")
    if not arrays:
        raise ProtocolError("a Dask message over aw:// has at least its head array; got none")
    for array in arrays:
        if array.dtype != np.uint8 or array.ndim != 1:
            raise ProtocolError(
                "a Dask message over aw:// is made of one-dimensional uint8 arrays; got "
                f"{array.dtype} of shape {array.shape}"
            )
    head = arrays[0].data
    if head.nbytes < PREFIX.size:
        raise ProtocolError(
            f"the head array of a Dask message is {head.nbytes:,} bytes, shorter than "
            f"its {PREFIX.size}-byte prefix"
        )
    magic, version, count = PREFIX.unpack_from(head)
    if magic != MAGIC:
        raise ProtocolError(f"the head array of a Dask message starts with {magic!r}, not {MAGIC!r}")
    if version != LAYOUT_VERSION:
        raise ProtocolError(
            f"Dask message layout version {version}; this arraywire reads version {LAYOUT_VERSION}"
        )
    table_end = PREFIX.size + count * 12
    if table_end > head.nbytes:
        raise ProtocolError(
            f"the frame table of {count:,} frames needs {table_end:,} bytes; the head "
            f"array has {head.nbytes:,}"
        )
    lengths = struct.unpack_from(f"<{count}Q", head, PREFIX.size)
    if len(arrays) == 1 and head[PREFIX.size + count * 8 : table_end] == bytes(4 * count):
        body = head[table_end:]
        if sum(lengths) == body.nbytes:  # else the checks below say what is wrong
            frames = []
            start = 0
            for length in lengths:
                frames.append(body[start : start + length])
                start += length
            return frames
    where = struct.unpack_from(f"<{count}I", head, PREFIX.size + count * 8)
    views = [head[table_end:], *(array.data for array in arrays[1:])]
    offsets = [0] * len(views)
    frames = []
    for length, array_index in zip(lengths, where, strict=True):
        if array_index >= len(views):
            raise ProtocolError(
                f"a frame of a Dask message names array {array_index}; the message has "
                f"{len(views)}"
            )
        start = offsets[array_index]
        end = offsets[array_index] = start + length
        if end > views[array_index].nbytes:
            raise ProtocolError(
                f"the frames of array {array_index} of a Dask message add up to more "
                f"than its {views[array_index].nbytes:,} bytes"
            )
        frames.append(views[array_index][start:end])
    for array_index, (offset, view) in enumerate(zip(offsets, views, strict=True)):
        if offset != view.nbytes:
            raise ProtocolError(
                f"the frames of array {array_index} of a Dask message add up to "
                f"{offset:,} of its {view.nbytes:,} bytes"
            )
    return frames
