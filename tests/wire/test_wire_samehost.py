"""Same-host copies' wire layer (docs/PROTOCOL.md, "Same host"), sans I/O:
the records of types 2 to 6, hostile descriptions, and the ranges a sender
describes, checked against the bytes the socket path sends for the same
arrays; then those ranges read back with the core's copy_from_process on
both backends, and a probe offered by a child process."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from backends import Backend
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from arraywire._wire import control, samehost
from arraywire._wire.engine import Receive, as_array, plan_send
from arraywire._wire.errors import ProtocolError
from arraywire._wire.header import ArraySpec, decode_block, decode_preamble
from arraywire._wire.hello import CONTROL, SAME_HOST, Hello, shared_capabilities
from arraywire._wire.limits import numpy_bytes
from arraywire._wire.samehost import MAX_RANGES, MIN_RUN_BYTES, SAME_HOST_BYTES, Range

ON = CONTROL | SAME_HOST
SOME = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
U64 = st.integers(0, 2**64 - 1)


def body_of(record: bytes, capabilities: int = ON) -> tuple[int, bytes]:
    """A record's type and body, its 16-byte start read as a receiver does."""
    kind, length = control.decode(record[: control.SIZE], capabilities)
    body = record[control.SIZE :]
    assert len(body) == length
    return kind, body


def socket_payload(arrays: list[Any]) -> tuple[bytes, tuple[ArraySpec, ...]]:
    """The payload bytes the socket path sends for these arrays, and the
    specs its header declares (decoded from the header's bytes)."""
    plan = plan_send(arrays)
    sent = bytearray()
    for batch in plan.batches():  # copied at once: packed pieces share a buffer
        for buffer in batch:
            sent += buffer if isinstance(buffer, bytes) else numpy_bytes(buffer, False).tobytes()
    header = plan.header
    preamble = decode_preamble(header[:16])
    specs = decode_block(header[16:], preamble, None).specs
    return bytes(sent[len(header) :]), specs


def described_bytes(description: samehost.Description) -> bytes:
    """The bytes at the described addresses of this process, in order."""
    return b"".join(ctypes.string_at(r.address, r.length) for ranges in description for r in ranges)


def assert_described_like_the_socket(arrays: list[Any], min_payload: int = 0) -> samehost.Description:
    description = samehost.describe_ranges([as_array(a) for a in arrays], min_payload)
    assert description is not None
    payload, specs = socket_payload(arrays)
    assert described_bytes(description) == payload
    assert samehost.check_ranges(description, specs) == description
    record = samehost.encode_ranges(description)
    assert samehost.decode_ranges(body_of(record)[1]) == description
    return description


# --- records ---------------------------------------------------------------------


def test_each_type_has_the_documented_number_limit_and_capability() -> None:
    assert SAME_HOST == 0x00000002
    assert {kind: control.TYPES[kind] for kind in range(2, 7)} == {
        2: (SAME_HOST, samehost.PROBE.size), 3: (SAME_HOST, samehost.ANSWER.size),
        4: (SAME_HOST, 81_920), 5: (SAME_HOST, samehost.COPIED.size), 6: (SAME_HOST, 0),
    }
    assert (samehost.PROBE.size, samehost.ANSWER.size, samehost.COPIED.size) == (44, 1, 13)
    assert control.MAX_BODY == 81_920 == 20 * MAX_RANGES
    assert (SAME_HOST_BYTES, MAX_RANGES, MIN_RUN_BYTES) == (2 << 20, 4096, 4096)


@pytest.mark.parametrize("kind", [2, 3, 4, 5, 6])
def test_a_same_host_record_without_the_capability_is_refused_before_its_body(kind: int) -> None:
    first = control.RECORD.pack(b"AWCR", kind, 0, 0, 0)
    with pytest.raises(ProtocolError, match=rf"^{control.NAMES[kind]} record \(type {kind}\) on a "
                       "connection whose opening did not turn same-host copies on$"):
        control.decode(first, CONTROL)
    with pytest.raises(ProtocolError, match="did not turn control records on"):
        control.decode(first, SAME_HOST)
    assert control.decode(first, ON) == (kind, 0)


@pytest.mark.parametrize(("kind", "limit"), [(2, 44), (3, 1), (4, 81_920), (5, 13), (6, 0)])
def test_a_same_host_record_over_its_limit_is_refused_before_its_body(kind: int, limit: int) -> None:
    with pytest.raises(ProtocolError, match=f"carries at most {limit:,}$"):
        control.decode(control.RECORD.pack(b"AWCR", kind, 0, limit + 1, 0), ON)


def test_bit_1_is_on_only_with_bit_0() -> None:
    assert shared_capabilities(ON, Hello(2, 2, 0, ON)) == ON
    assert shared_capabilities(ON, Hello(2, 2, 0, SAME_HOST)) == 0
    assert shared_capabilities(SAME_HOST, Hello(2, 2, 0, ON)) == 0
    assert shared_capabilities(ON, Hello(1, 2, 0, 0)) == 0


def test_a_probe_is_the_documented_bytes_and_names_this_process_s_memory() -> None:
    record = samehost.encode_probe(0x1122334455667788, bytes(range(32)))
    assert record == (b"AWCR" + bytes.fromhex("0200 0000 2c000000 00000000")
                      + bytes.fromhex("8877665544332211 20000000") + bytes(range(32)))
    memory, record = samehost.new_probe()
    probe = samehost.decode_probe(body_of(record)[1])
    assert probe.address == memory.ctypes.data and probe.data == memory.tobytes()
    assert ctypes.string_at(probe.address, 32) == probe.data
    assert samehost.probe_status(probe, memory.tobytes()) == samehost.EQUAL
    assert samehost.probe_status(probe, bytes(32)) == samehost.DIFFERENT
    assert samehost.new_probe()[0].tobytes() != memory.tobytes()  # fresh bytes each time


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (bytes(43), "probe record of 43 bytes; it is 44"),
        (bytes(45), "probe record of 45 bytes; it is 44"),
        (struct.pack("<QI32s", 1, 31, bytes(32)), "probe names 31 bytes; a probe names 32"),
        (struct.pack("<QI32s", 1, 2**32 - 1, bytes(32)), "probe names 4,294,967,295 bytes"),
    ],
)
def test_a_malformed_probe_is_refused(body: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        samehost.decode_probe(body)


def test_a_probe_of_other_than_32_bytes_is_not_made() -> None:
    with pytest.raises(ValueError, match="a probe names 32 bytes, got 31"):
        samehost.encode_probe(1, bytes(31))


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_every_probe_answer_round_trips(status: int) -> None:
    record = samehost.encode_answer(status)
    assert record == b"AWCR" + bytes.fromhex("0300 0000 01000000 00000000") + bytes([status])
    assert samehost.decode_answer(body_of(record)[1]) == status


def test_a_malformed_probe_answer_is_refused() -> None:
    with pytest.raises(ProtocolError, match="probe answer of unknown status 4; the statuses are 0 to 3"):
        samehost.decode_answer(b"\x04")
    with pytest.raises(ProtocolError, match="probe answer record of 0 bytes; it is 1"):
        samehost.decode_answer(b"")
    with pytest.raises(ValueError, match="status 4 is none of"):
        samehost.encode_answer(4)


@pytest.mark.parametrize(
    ("answered", "answer", "on"),
    [(0, 0, True), (0, 1, False), (1, 0, False), (2, 0, False), (0, 3, False), (3, 3, False)],
)
def test_copies_are_on_only_when_both_answers_are_0(answered: int, answer: int, on: bool) -> None:
    assert samehost.copies_on(answered, answer) is on
    assert samehost.copies_on(answer, answered) is on  # the peer decides alike


@pytest.mark.parametrize(
    ("copied", "status", "errno"), [(5000, 0, 0), (0, 2, 0), (1234, 1, 14), (0, 1, 0), (5000, 1, 3)]
)
def test_every_copied_answer_round_trips(copied: int, status: int, errno: int) -> None:
    record = samehost.encode_copied(copied, status, errno)
    assert record[:16] == b"AWCR" + bytes.fromhex("0500 0000 0d000000 00000000")
    assert record[16:] == struct.pack("<QBI", copied, status, errno)
    assert samehost.decode_copied(body_of(record)[1], 5000) == (copied, status, errno)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (struct.pack("<QBI", 4999, 0, 0), "status 0 with 4,999 bytes copied and errno 0 for a payload of 5,000"),
        (struct.pack("<QBI", 5000, 0, 14), "status 0 with 5,000 bytes copied and errno 14"),
        (struct.pack("<QBI", 1, 2, 0), "status 2 with 1 bytes copied"),
        (struct.pack("<QBI", 0, 2, 1), "status 2 with 0 bytes copied and errno 1"),
        (struct.pack("<QBI", 5001, 1, 14), "status 1 with 5,001 bytes copied"),
        (struct.pack("<QBI", 0, 3, 0), "copied record of unknown status 3; the statuses are 0 to 2"),
        (bytes(12), "copied record of 12 bytes; it is 13"),
    ],
)
def test_a_copied_answer_that_does_not_fit_the_message_is_refused(body: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        samehost.decode_copied(body, 5000)


def test_a_confirm_is_an_empty_record() -> None:
    record = samehost.encode_confirm()
    assert record == b"AWCR" + bytes.fromhex("0600 0000 00000000 00000000")
    assert body_of(record) == (control.CONFIRM, b"")


def test_a_ranges_record_is_the_documented_bytes() -> None:
    description = ((Range(0x1000, 8), Range(0x3000, 16)), (), (Range(0x9000, 1),))
    record = samehost.encode_ranges(description)
    assert record[:16] == b"AWCR" + bytes.fromhex("0400 0000 3c000000 00000000")
    assert record[16:] == (struct.pack("<IQQQQ", 2, 0x1000, 8, 0x3000, 16) + struct.pack("<I", 0)
                           + struct.pack("<IQQ", 1, 0x9000, 1))
    assert samehost.decode_ranges(record[16:]) == description


@pytest.mark.parametrize("kind", [control.PROBE, control.PROBE_ANSWER, control.CONFIRM])
def test_records_a_message_start_does_not_take(kind: int) -> None:
    """Where a message starts the engine takes a refusal, a ranges record
    (a described message follows) or a copied record (the driver's); any
    other record is refused from its first 16 bytes."""
    message = Receive(None, capabilities=ON)
    reads = message.reads()
    preamble = next(reads)[0]
    preamble[:] = control.RECORD.pack(control.MAGIC, kind, 0, control.TYPES[kind][1], 0)
    with pytest.raises(ProtocolError, match=f"a {control.NAMES[kind]} record where a message starts"):
        next(reads)


def test_a_described_message_read_by_the_engine() -> None:
    """A copied record the driver gets as an Answer, a ranges record, then
    the header; a Copy of the described arrays, then the confirm: the
    message's bytes count the header and the payload, never a record's."""
    array = np.arange(1000, dtype=np.float64)
    header = plan_send((array,)).header
    message = Receive(None, capabilities=ON)
    reads = message.reads()
    description = ((samehost.Range(0x10000, array.nbytes),),)
    ranges = samehost.encode_ranges(description)
    copied = samehost.encode_copied(8)
    request = next(reads)
    for data in (copied[:16], copied[16:]):
        request[0][:] = data
        request = next(reads)
    assert request == samehost.Answer(copied[16:], True)
    request = next(reads)
    for data in (ranges[:16], ranges[16:]):
        request[0][:] = data
        request = next(reads)
    request[0][:] = header[:16]
    request = next(reads)
    request[0][:] = header[16:]
    message.moved(len(header))
    copy = next(reads)
    assert isinstance(copy, samehost.Copy) and copy.description == description
    assert copy.arrays is not None and copy.arrays[0].shape == (1000,)
    message.moved(array.nbytes)
    request = next(reads)
    request[0][:] = samehost.encode_confirm()
    with pytest.raises(StopIteration):
        next(reads)
    assert message.offset == message.total == len(header) + array.nbytes


def test_a_sender_s_last_word_is_a_refusal_only() -> None:
    assert control.last_word(samehost.encode_copied(0, 2), ON) is None
    refused = control.last_word(control.encode_refusal("no"), ON)
    assert str(refused) == "the receiver refused the message: no"


# --- hostile descriptions ------------------------------------------------------------


def ranges_body(*arrays: list[tuple[int, int]]) -> bytes:
    return b"".join(
        struct.pack(f"<I{2 * len(r)}Q", len(r), *(n for pair in r for n in pair)) for r in arrays
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\x01\x00", "ranges record ends 2 bytes into the range count of array 0; a count is 4 bytes"),
        (ranges_body([(1, 1)]) + b"\x00", "ends 1 bytes into the range count of array 1"),
        (struct.pack("<IQ", 1, 5), "gives array 0 1 ranges, 16 bytes, and has 8 left"),
        (struct.pack("<I", 0xFFFFFFFF), "names 4,294,967,295 ranges by array 0; a message has at most 4,096"),
        (struct.pack("<I", 4097), "names 4,097 ranges by array 0"),
        (struct.pack("<I", 4096) + bytes(16), "gives array 0 4,096 ranges, 65,536 bytes, and has 16 left"),
        (ranges_body([(1, 1)] * 2048) + struct.pack("<I", 2049), "names 4,097 ranges by array 1"),
    ],
)
def test_a_cut_or_overfull_description_is_refused_before_any_range_is_stored(body: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        samehost.decode_ranges(body)


def test_a_description_of_max_ranges_is_taken() -> None:
    ranges = [(4096 * k, 4096) for k in range(1, MAX_RANGES + 1)]
    body = ranges_body(ranges[:100], [], ranges[100:])
    assert len(body) <= control.RANGES_LIMIT
    description = samehost.decode_ranges(body)
    assert [len(r) for r in description] == [100, 0, MAX_RANGES - 100]
    specs = [spec(100 * 4096), spec(0), spec((MAX_RANGES - 100) * 4096)]
    assert samehost.check_ranges(description, specs) == description
    with pytest.raises(ValueError, match="a ranges record names at most 4,096 ranges"):
        samehost.encode_ranges((*description, (Range(1, 1),)))


def spec(nbytes: int) -> ArraySpec:
    return ArraySpec(np.dtype("|u1"), (nbytes,), "C", nbytes)


@pytest.mark.parametrize(
    ("description", "nbytes", "says"),
    [
        (((Range(0x1000, 10),),), [10, 5], "ranges record describes 1 arrays; the message's header has 2"),
        (((Range(0x1000, 10),), ()), [10], "describes 2 arrays; the message's header has 1"),
        (((Range(0x1000, 10), Range(0x2000, 0)),), [10], "range 1 of array 0 is 0 bytes; a range has at least 1"),
        (((Range(0x1000, 4),), (Range(0x2000, 4), Range(0x3000, 5))), [4, 10],
         "the ranges of array 1 add up to 9 bytes; its header declares 10"),
        (((Range(0x1000, 11),),), [10], "the ranges of array 0 add up to 11 bytes; its header declares 10"),
        (((), (Range(0x1000, 1),)), [0, 0], "the ranges of array 1 add up to 1 bytes; its header declares 0"),
        (((Range(2**64 - 4, 8),),), [8], r"range 0 of array 0 \(address 0xfffffffffffffffc, 8 bytes\) ends past the 64-bit"),
        (((Range(0x1000, 16), Range(0x100F, 4)),), [20],
         r"range 0 of array 0 \(address 0x1000, 16 bytes\) overlaps range 1 of array 0 \(address 0x100f, 4 bytes\)"),
        (((Range(0x5000, 4),), (Range(0x1000, 0x10000),)), [4, 0x10000],
         r"range 0 of array 1 \(address 0x1000, 65,536 bytes\) overlaps range 0 of array 0 \(address 0x5000"),
        (((Range(0x1000, 8),), (Range(0x1000, 8),)), [8, 8], "overlaps.*no two ranges of a message overlap"),
        (((Range(k, 1) for k in range(4097)),), [4097], "4,097 ranges; a message has at most 4,096"),
    ],
)
def test_a_description_that_does_not_fit_the_header_is_refused_saying_where(
    description: Any, nbytes: list[int], says: str
) -> None:
    description = tuple(tuple(ranges) for ranges in description)
    with pytest.raises(ProtocolError, match=says):
        samehost.check_ranges(description, [spec(n) for n in nbytes])


def test_adjacent_ranges_do_not_overlap() -> None:
    description = ((Range(0x2000, 0x1000), Range(0x1000, 0x1000)), (Range(0x3000, 1),))
    assert samehost.check_ranges(description, [spec(0x2000), spec(1)]) == description
    assert samehost.check_ranges(((Range(2**64 - 8, 8),),), [spec(8)])  # the last byte is fine


# --- what a sender describes ---------------------------------------------------------

BIG = SAME_HOST_BYTES  # a payload at the threshold


def test_a_contiguous_array_at_the_threshold_is_one_range_and_under_it_none() -> None:
    array = np.arange(BIG // 8, dtype=np.float64)
    description = samehost.describe_ranges([array])
    assert description == ((Range(array.ctypes.data, BIG),),)
    assert samehost.describe_ranges([array[1:]]) is None  # 8 bytes short
    assert_described_like_the_socket([array], SAME_HOST_BYTES)


def test_a_transposed_array_is_its_memory_in_f_order() -> None:
    array = np.arange(300 * 500, dtype=">i4").reshape(300, 500).T
    assert not array.flags.c_contiguous and array.flags.f_contiguous
    assert assert_described_like_the_socket([array]) == ((Range(array.ctypes.data, array.nbytes),),)


def test_a_slice_of_rows_is_one_range_per_row_in_c_order() -> None:
    base = np.arange(64 * 2048, dtype=np.float64).reshape(64, 2048)
    array = base[3:40:2, 512:1536]  # rows of 8,192 bytes, every other row
    description = assert_described_like_the_socket([array])
    assert [len(r) for r in description] == [19]
    assert {r.length for r in description[0]} == {8192}
    assert description[0][1].address - description[0][0].address == 2 * base.strides[0]


def test_reversed_rows_are_described_in_payload_order() -> None:
    array = np.arange(16 * 1024, dtype=np.float64).reshape(16, 1024)[::-1]
    description = assert_described_like_the_socket([array])
    assert [r.address for r in description[0]] == sorted((r.address for r in description[0]), reverse=True)


def test_a_3d_slice_runs_over_its_trailing_contiguous_axes() -> None:
    base = np.arange(6 * 8 * 4 * 512, dtype=np.uint16).reshape(6, 8, 4, 512)
    array = base[::2, ::2]  # trailing (4, 512) blocks of 4,096 bytes
    description = assert_described_like_the_socket([array])
    assert len(description[0]) == 3 * 4 and {r.length for r in description[0]} == {4096}
    rows = assert_described_like_the_socket([base[::2, 1:7]])  # axes 1 to 3 contiguous
    assert [r.length for r in rows[0]] == [6 * 4096] * 3


def test_structured_0d_and_empty_arrays_with_the_rest_of_a_message() -> None:
    fields = np.dtype([("a", "<i4"), ("", "|V4"), ("b", ">f8", (2,)), ("c", "|S5")])
    records = np.zeros(5000, fields)
    records["a"] = np.arange(5000)
    records["c"] = b"hello"
    every_other_row = records.copy().reshape(25, 200)[::2]  # rows of 5,800 bytes
    arrays = [records, np.float64(2.5), np.array(7, ">i2"), np.empty((0, 3)), every_other_row, b"raw bytes"]
    description = assert_described_like_the_socket(arrays)
    assert [len(r) for r in description] == [1, 1, 1, 0, 13, 1]
    assert description[2] == ((Range(description[2][0].address, 2),))


def test_runs_under_min_run_bytes_or_over_max_ranges_are_not_described() -> None:
    rows = np.zeros((600, 1024), np.float64)
    assert samehost.describe_ranges([rows[:, :512]]) is not None  # runs of 4,096 bytes
    assert samehost.describe_ranges([rows[:, :511]], 0) is None  # 4,088 bytes each
    assert samehost.describe_ranges([rows[:, ::2]], 0) is None  # 8-byte runs
    many = np.zeros((MAX_RANGES + 1, 2 * 4096), np.uint8)  # zeros: pages untouched
    assert samehost.describe_ranges([many[:-1, :4096]]) is not None
    assert samehost.describe_ranges([many[:, :4096]]) is None
    half = many[: MAX_RANGES // 2 + 1, :4096]  # the count is the message's
    assert samehost.describe_ranges([half, many[-MAX_RANGES // 2 :, :4096]]) is None


def test_ranges_that_share_bytes_are_not_described() -> None:
    broadcast = np.broadcast_to(np.arange(1024.0), (300, 1024))  # stride 0
    assert samehost.describe_ranges([broadcast]) is None
    array = np.arange(BIG // 8, dtype=np.float64)
    assert samehost.describe_ranges([array, array]) is None
    assert samehost.describe_ranges([array[: BIG // 16], array[BIG // 16 - 1 :]]) is None
    assert samehost.describe_ranges([array[: BIG // 16], array[BIG // 16 :]]) is not None


def test_a_description_past_the_record_s_limit_is_not_described() -> None:
    big = np.zeros(BIG, np.uint8)
    empty = np.empty(0)
    fits = (control.RANGES_LIMIT - 16) // 4 - 1  # empty arrays beside one range
    assert samehost.describe_ranges([big] + [empty] * fits) is not None
    assert samehost.describe_ranges([big] + [empty] * (fits + 1)) is None


SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
DTYPES = st.sampled_from(["|u1", "<i2", ">f8", "<c16", "|V4096", "|S3000", "<U1100", "<M8[us]"])


@st.composite
def views(draw: st.DrawFn) -> np.ndarray:
    """An array of random bytes, then a view of it: sliced, stepped,
    reversed or transposed."""
    dtype = np.dtype(draw(DTYPES))
    shape = draw(SHAPES)
    size = dtype.itemsize * int(np.prod(shape, dtype=object))
    array = np.frombuffer(os.urandom(size), np.uint8).view(dtype).reshape(shape)
    index = tuple(
        slice(draw(st.integers(0, 2)), None, draw(st.sampled_from([1, 2, -1]))) for _ in shape
    )
    view = array[index] if shape else array  # () of a 0-d array is a scalar
    return view.T if draw(st.booleans()) else view


@SOME
@given(st.lists(views(), min_size=1, max_size=4))
def test_every_described_message_is_the_socket_path_s_payload(arrays: list[np.ndarray]) -> None:
    description = samehost.describe_ranges(arrays, 0)
    if description is None:  # too many or too small runs, or shared bytes
        return
    payload, specs = socket_payload(arrays)
    assert described_bytes(description) == payload
    assert samehost.check_ranges(description, specs) == description


DESCRIPTIONS = st.lists(
    st.lists(st.builds(Range, U64, U64), max_size=20).map(tuple), max_size=8
).map(tuple)


@SOME
@given(DESCRIPTIONS)
def test_ranges_round_trip(description: samehost.Description) -> None:
    kind, body = body_of(samehost.encode_ranges(description))
    assert kind == control.RANGES and samehost.decode_ranges(body) == description


@SOME
@given(U64, st.binary(min_size=32, max_size=32), st.integers(0, 3))
def test_probes_and_answers_round_trip(address: int, data: bytes, status: int) -> None:
    kind, body = body_of(samehost.encode_probe(address, data))
    assert kind == control.PROBE and samehost.decode_probe(body) == (address, data)
    kind, body = body_of(samehost.encode_answer(status))
    assert kind == control.PROBE_ANSWER and samehost.decode_answer(body) == status


COPIED_ANSWERS = st.one_of(
    U64.map(lambda n: (samehost.Copied(n, samehost.OK, 0), n)),
    st.tuples(U64, U64, st.integers(0, 2**32 - 1)).map(
        lambda t: (samehost.Copied(min(t[:2]), samehost.FAILED, t[2]), max(t[:2]))
    ),
    U64.map(lambda n: (samehost.Copied(0, samehost.DISCARDED, 0), n)),
)


@SOME
@given(COPIED_ANSWERS)
def test_copied_answers_round_trip(answer_payload: tuple[samehost.Copied, int]) -> None:
    answer, payload = answer_payload
    kind, body = body_of(samehost.encode_copied(*answer))
    assert kind == control.COPIED and samehost.decode_copied(body, payload) == answer


@SOME
@given(st.binary(max_size=200))
def test_any_ranges_body_is_a_description_or_a_protocol_error(body: bytes) -> None:
    try:
        description = samehost.decode_ranges(body)
    except ProtocolError:
        return
    assert samehost.encode_ranges(description)[16:] == body


# --- the described ranges, read as a receiver does --------------------------------

linux = pytest.mark.skipif(sys.platform != "linux", reason="process_vm_readv is Linux's")


@linux
def test_the_described_ranges_copied_from_the_process_are_the_arrays(backend: Backend) -> None:
    """The receiver's copy, on both backends, in one process: each array's
    ranges fill an array of its header's spec."""
    base = np.arange(160 * 4096, dtype=np.int32).reshape(160, 4096)
    arrays = [base[::3, 1024:3072], base.copy().T, np.array(3.5), np.empty(0, np.int8)]
    description = samehost.describe_ranges(arrays)
    assert description is not None
    _, specs = socket_payload(arrays)
    checked = samehost.check_ranges(description, specs)
    for array, declared, ranges in zip(arrays, specs, checked, strict=True):
        got = np.empty(declared.shape, declared.dtype, order=declared.order)  # type: ignore[call-overload]
        copied = backend.module.copy_from_process(os.getpid(), ranges, numpy_bytes(got, True))
        assert copied == declared.nbytes
        np.testing.assert_array_equal(got, array)


# The child offers a probe and keeps its memory until stdin closes.
PROBER = """
import sys
from arraywire._wire import samehost
memory, record = samehost.new_probe()
print(record.hex(), flush=True)
sys.stdin.read()
"""


@linux
def test_a_child_s_probe_read_from_its_pid_is_equal(backend: Backend) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", PROBER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        kind, body = body_of(bytes.fromhex(child.stdout.readline()))
        probe = samehost.decode_probe(body)
        read = bytearray(samehost.PROBE_BYTES)
        ranges = [(probe.address, samehost.PROBE_BYTES)]
        try:
            backend.module.copy_from_process(child.pid, ranges, read)
        except PermissionError:
            pytest.skip("the kernel refuses to read a child here (a seccomp profile?)")
        assert kind == control.PROBE and samehost.probe_status(probe, bytes(read)) == samehost.EQUAL
    finally:
        child.stdin.close()
        child.wait(timeout=30)
        child.stdout.close()
