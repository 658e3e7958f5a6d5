"""A Dask message's frames as arrays and back (``_wire/dask_frames.py``,
docs/PROTOCOL.md "Dask messages over aw://"), sans I/O: what
tests/dask/test_dask.py's frame tests leave out, the head's exact bytes, the
sender's choices and the refusals of a table that does not add up."""

from __future__ import annotations

import struct

import numpy as np
import pytest

pytest.importorskip("distributed")

from arraywire._wire import dask_frames
from arraywire._wire.errors import ProtocolError


def head(lengths: list[int], where: list[int], body: bytes = b"") -> np.ndarray:
    count = len(lengths)
    data = b"AWDF\x01\x00\x00\x00" + struct.pack(f"<Q{count}Q{count}I", count, *lengths, *where)
    return np.frombuffer(data + body, np.uint8)


def test_small_frames_go_in_the_head_byte_for_byte() -> None:
    (only,) = dask_frames.to_arrays([b"ab", b"", b"c"])
    assert only.tobytes() == bytes.fromhex(
        "41 57 44 46 01 00 00 00"  # AWDF, layout 1, reserved
        "03 00 00 00 00 00 00 00"  # F = 3
        "02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00"
        "00 00 00 00 00 00 00 00 00 00 00 00"  # each in array 0, the head
        "61 62 63"  # the frames' bytes
    )
    assert [bytes(f) for f in dask_frames.to_frames([only])] == [b"ab", b"", b"c"]


def test_buffers_and_large_bytes_get_arrays_of_their_own() -> None:
    buffer = bytearray(b"payload")
    large = b"L" * (dask_frames.PACKED_FRAME_BYTES + 1)
    arrays = dask_frames.to_arrays([b"hd", buffer, b"", large, b"tail"])
    assert len(arrays) == 3
    assert arrays[0].tobytes() == head([2, 7, 0, len(large), 4], [0, 1, 0, 2, 0]).tobytes() + b"hdtail"
    assert np.shares_memory(arrays[1], np.frombuffer(buffer, np.uint8))
    assert arrays[2].nbytes == len(large)
    frames = dask_frames.to_frames(arrays)
    assert [bytes(f) for f in frames] == [b"hd", b"payload", b"", large, b"tail"]


def test_a_frame_of_exactly_64_kib_of_bytes_stays_in_the_head() -> None:
    frame = b"x" * dask_frames.PACKED_FRAME_BYTES
    (only,) = dask_frames.to_arrays([frame])
    assert only.nbytes == 16 + 12 + len(frame)


def test_non_contiguous_frames_are_copied_flat() -> None:
    strided = memoryview(np.arange(20, dtype=np.uint8))[::2]
    arrays = dask_frames.to_arrays([strided])
    assert len(arrays) == 2 and arrays[1].tobytes() == bytes(range(0, 20, 2))


def test_buffers_beyond_the_limit_are_packed_into_the_head() -> None:
    buffers = [bytearray([n % 256]) * 2 for n in range(dask_frames.MAX_BUFFER_ARRAYS + 3)]
    arrays = dask_frames.to_arrays(buffers)
    assert len(arrays) == 1 + dask_frames.MAX_BUFFER_ARRAYS
    count = len(buffers)
    where = struct.unpack_from(f"<{count}I", arrays[0], 16 + 8 * count)
    assert list(where[-4:]) == [dask_frames.MAX_BUFFER_ARRAYS, 0, 0, 0]
    assert [bytes(f) for f in dask_frames.to_frames(arrays)] == [bytes(b) for b in buffers]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ([head([3], [2]), np.zeros(3, np.uint8)],
         "a frame of a Dask message names array 2; the message has 2"),
        ([head([4], [1]), np.zeros(3, np.uint8)],
         "the frames of array 1 of a Dask message add up to more than its 3 bytes"),
        ([head([2], [1]), np.zeros(3, np.uint8)],
         "the frames of array 1 of a Dask message add up to 2 of its 3 bytes"),
        ([head([1], [0], b"ab")], "the frames of array 0 of a Dask message add up to 1 of its 2 bytes"),
        ([np.frombuffer(b"AWDX\x01" + bytes(11), np.uint8)],
         "the head array of a Dask message starts with b'AWDX', not b'AWDF'"),
    ],
)
def test_a_table_that_does_not_add_up_is_refused(arrays: list[np.ndarray], message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        dask_frames.to_frames(arrays)
    assert str(info.value) == message


def test_the_reserved_bytes_are_ignored_when_read() -> None:
    data = bytearray(dask_frames.to_arrays([b"ab"])[0].tobytes())
    data[5:8] = b"\xff\xff\xff"
    assert [bytes(f) for f in dask_frames.to_frames([np.frombuffer(bytes(data), np.uint8)])] == [b"ab"]
