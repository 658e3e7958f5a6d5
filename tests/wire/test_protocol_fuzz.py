"""The header decoder on random and mutated input: a valid description or
ProtocolError, nothing else, and never a large allocation."""

from __future__ import annotations

import math
import socket
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from arraywire import ProtocolError, send_array
from arraywire._wire.header import (
    ARRAY_FIXED,
    MAGIC,
    MAX_DESCRIPTOR_BYTES,
    PREAMBLE,
    VERSION,
    ArraySpec,
    Preamble,
    decode_block,
    decode_preamble,
    encode_header,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

simple_dtypes = st.one_of(
    hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(), hnp.complex_number_dtypes(), hnp.datetime64_dtypes(),
    hnp.timedelta64_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes(),
)
dtypes = st.one_of(simple_dtypes, hnp.nested_dtypes(subtype_strategy=simple_dtypes, max_itemsize=64))
specs = st.builds(
    lambda dtype, shape, order: ArraySpec(
        dtype, shape, order, math.prod(int(n) for n in shape) * dtype.itemsize
    ),
    dtypes,
    hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6),
    st.sampled_from("CF"),
)


def decode(message: bytes, max_bytes: int | None = 1 << 30) -> list[ArraySpec]:
    """Decode a whole header the way a receive does, from bytes."""
    preamble = decode_preamble(message[: PREAMBLE.size])
    block = message[PREAMBLE.size : PREAMBLE.size + preamble.block_len]
    if len(block) != preamble.block_len:
        raise ProtocolError("truncated")  # a socket would raise IncompleteTransferError
    return decode_block(block, preamble, max_bytes).specs


@FUZZ
@given(st.lists(specs, max_size=4))
def test_encode_decode_round_trip(expected: list[ArraySpec]) -> None:
    got = decode(encode_header(expected))
    assert [(s.dtype, s.shape, s.order, s.nbytes) for s in got] == [
        (s.dtype, s.shape, s.order, s.nbytes) for s in expected
    ]


def _only_valid_or_protocol_error(message: bytes, max_bytes: int | None = 1 << 30) -> None:
    tracemalloc.start()
    try:
        specs = decode(message, max_bytes)
    except ProtocolError:
        specs = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 4 * len(message) + (1 << 20), f"decoder allocated {peak} bytes"
    for spec in specs or ():
        assert not spec.dtype.hasobject
        assert len(spec.shape) <= 64
        assert spec.nbytes == math.prod(int(n) for n in spec.shape) * spec.dtype.itemsize
        if max_bytes is not None:
            assert spec.nbytes <= max_bytes


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    _only_valid_or_protocol_error(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_after_a_valid_preamble(data: bytes) -> None:
    preamble = PREAMBLE.pack(MAGIC, VERSION, bytes(3), len(data), min(len(data) // 12, 3))
    _only_valid_or_protocol_error(preamble + data)


@FUZZ
@given(st.lists(specs, min_size=1, max_size=3), st.data())
def test_mutated_headers(valid: list[ArraySpec], data: st.DataObject) -> None:
    message = bytearray(encode_header(valid))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(message) - 1))
        message[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        message = message[: data.draw(st.integers(0, len(message)))]
    _only_valid_or_protocol_error(bytes(message), data.draw(st.sampled_from([None, 0, 100, 1 << 30])))


@FUZZ
@given(st.lists(st.integers(0, 2**64 - 1), max_size=70), st.sampled_from(["<f8", "V0", "S0", "|b1"]))
def test_hostile_shapes(shape: list[int], dtype: str) -> None:
    text = dtype.encode()
    nbytes = min(math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize, 2**64 - 1)
    block = ARRAY_FIXED.pack(nbytes, len(shape), b"C", len(text))
    block += struct.pack(f"<{len(shape)}Q", *shape) + text
    message = PREAMBLE.pack(MAGIC, VERSION, bytes(3), len(block), 1) + block
    _only_valid_or_protocol_error(message, None)


@FUZZ
@given(st.text(max_size=200))
def test_hostile_dtype_text(text: str) -> None:
    encoded = text.encode("utf-8", "surrogatepass")[:4000]
    block = ARRAY_FIXED.pack(0, 1, b"C", len(encoded)) + struct.pack("<Q", 0) + encoded
    message = PREAMBLE.pack(MAGIC, VERSION, bytes(3), len(block), 1) + block
    _only_valid_or_protocol_error(message)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (b"NOPE" + bytes(12), "magic"),
        (PREAMBLE.pack(MAGIC, 3, bytes(3), 0, 0), "version 3; this arraywire reads versions 1 to 2"),
        (PREAMBLE.pack(MAGIC, 1, b"\x01\x00\x00", 0, 0), "reserved"),
        (PREAMBLE.pack(MAGIC, VERSION, b"\x80\x00\x00", 0, 0), "reserved"),
        (PREAMBLE.pack(MAGIC, VERSION, bytes(3), MAX_DESCRIPTOR_BYTES + 1, 1), "exceeds"),
        (PREAMBLE.pack(MAGIC, VERSION, bytes(3), 10, 5), "cannot fit"),
        (b"AWIR\x01", "preamble is 5 bytes"),
    ],
)
def test_bad_preambles_say_what_is_wrong(message: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_preamble(message[: PREAMBLE.size])


def _one(nbytes: int, shape: tuple[int, ...], order: bytes, text: bytes) -> bytes:
    return (ARRAY_FIXED.pack(nbytes, len(shape), order, len(text))
            + struct.pack(f"<{len(shape)}Q", *shape) + text)


@pytest.mark.parametrize(
    ("block", "count", "match"),
    [
        (_one(8, (1,), b"C", b"<f8")[:10], 1, "truncated"),
        (_one(8, (1,) * 65, b"C", b"<f8"), 1, "65 dimensions"),
        (_one(8, (1,), b"X", b"<f8"), 1, "memory order"),
        (_one(16, (1,), b"C", b"<f8"), 1, "needs 8"),
        (_one(0, (2**62, 2**62, 0), b"C", b"<f8"), 1, "overflows"),
        (_one(2**40, (2**37,), b"C", b"<f8"), 1, "max_bytes=1,073,741,824; pass max_bytes=None"),
        (_one(2**63, (2**60,), b"C", b"<f8"), 1, "overflows"),
        (_one(0, (0, 2**63 - 1), b"C", b"<f8"), 1, "overflows"),
        (_one(8, (1,), b"C", b"<q9"), 1, "unusable dtype"),
        (_one(8, (1,), b"C", b"|O"), 1, "Python objects"),
        (_one(8, (1,), b"C", b"[('a', '|O')]"), 1, "Python objects"),
        (_one(8, (1,), b"C", b"[" * 2000), 1, "unusable dtype"),
        (_one(8, (1,), b"C", b"<f8") + b"junk", 1, "stray bytes"),
    ],
)
def test_bad_descriptors_say_what_is_wrong(block: bytes, count: int, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_block(block, Preamble(1, 0, len(block), count), 1 << 30)


def test_header_declaring_two_to_the_62_bytes_allocates_nothing() -> None:
    block = _one(2**62, (2**59,), b"C", b"<f8")
    message = PREAMBLE.pack(MAGIC, VERSION, bytes(3), len(block), 1) + block
    with pytest.raises(ProtocolError, match="max_bytes=1,073,741,824; pass max_bytes=None"):
        decode(message)
    with pytest.raises(ProtocolError, match="the format's limit"):
        decode(message, max_bytes=None)


def test_documented_example_bytes() -> None:
    """The worked example in docs/PROTOCOL.md, byte for byte."""
    a, b = socket.socketpair()
    with a, b:
        send_array(np.arange(3, dtype="<i2"), a)
        wire = b.recv(1000)
    assert wire == bytes.fromhex(
        "41 57 49 52 01 00 00 00 17 00 00 00 01 00 00 00"
        "06 00 00 00 00 00 00 00 01 43 03 00"
        "03 00 00 00 00 00 00 00"
        "3c 69 32"
        "00 00 01 00 02 00"
    )
