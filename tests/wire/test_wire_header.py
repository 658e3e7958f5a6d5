"""The message header of docs/PROTOCOL.md, sans I/O: the functions of
``_wire/header.py`` fed bytes and specs directly, with no socket. Exact
bytes against the document's layout, every field's limit with the error it
gives, caps refused before anything is allocated, and round trips."""

from __future__ import annotations

import struct
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from arraywire._wire import dtypes, peers
from arraywire._wire.engine import plan_send
from arraywire._wire.errors import ProtocolError
from arraywire._wire.header import (
    MAX_DESCRIPTOR_BYTES,
    MAX_PAYLOAD,
    PREAMBLE,
    ArraySpec,
    Preamble,
    check_name,
    check_transferable,
    decode_block,
    decode_preamble,
    dtype_text,
    encode_header,
)

# --- helpers: headers built by hand from the document's tables -----------------


def preamble(version: int = 1, flags: bytes = bytes(3), block_len: int = 0, count: int = 0,
             magic: bytes = b"AWIR") -> bytes:
    return magic + bytes([version]) + flags + struct.pack("<II", block_len, count)


def descriptor(text: bytes, shape: tuple[int, ...], nbytes: int, order: bytes = b"C",
               ndim: int | None = None, text_len: int | None = None) -> bytes:
    return (
        struct.pack("<QBcH", nbytes, len(shape) if ndim is None else ndim, order,
                    len(text) if text_len is None else text_len)
        + b"".join(struct.pack("<Q", dim) for dim in shape)
        + text
    )


def name(text: bytes) -> bytes:
    return struct.pack("<H", len(text)) + text


def decode(data: bytes, max_bytes: int | None = 1 << 30, max_metadata: int = 65536):
    declared = decode_preamble(data[:16])
    return decode_block(data[16:], declared, max_bytes, max_metadata)


def spec(dtype: str | np.dtype, shape: tuple[int, ...], order: str = "C") -> ArraySpec:
    dtype = np.dtype(dtype)
    return ArraySpec(dtype, shape, order, int(np.prod(shape, dtype=object)) * dtype.itemsize)


# --- exact bytes ---------------------------------------------------------------


def test_the_documented_example_header_byte_for_byte() -> None:
    """docs/PROTOCOL.md, "Example": arange(3, dtype='<i2'), without its payload."""
    expected = bytes.fromhex(
        "41 57 49 52 01 00 00 00 17 00 00 00 01 00 00 00"
        "06 00 00 00 00 00 00 00 01 43 03 00"
        "03 00 00 00 00 00 00 00"
        "3c 69 32"
    )
    assert encode_header([spec("<i2", (3,))]) == expected
    assert plan_send([np.arange(3, dtype="<i2")]).header == expected


def test_a_named_fortran_array_with_metadata_is_version_2_byte_for_byte() -> None:
    array = np.asfortranarray(np.zeros((2, 3), ">f4"))
    expected = bytes.fromhex(
        "41 57 49 52 02 03 00 00"  # magic, version 2, flags names|metadata, reserved
        "29 00 00 00 01 00 00 00"  # L = 41, N = 1
        "02 00 00 00 6d 31"  # M = 2, b"m1"
        "18 00 00 00 00 00 00 00 02 46 03 00"  # nbytes 24, ndim 2, 'F', T = 3
        "02 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00"  # shape (2, 3)
        "3e 66 34"  # ">f4"
        "02 00 c3 a9"  # K = 2, "é" in UTF-8
    )
    assert plan_send({"é": array}, metadata=b"m1").header == expected
    header = decode(expected)
    assert header.names == ("é",) and header.metadata == b"m1" and header.payload == 24
    assert header.specs == (ArraySpec(np.dtype(">f4"), (2, 3), "F", 24),)


def test_no_arrays_and_empty_metadata() -> None:
    assert encode_header([]) == bytes.fromhex("41 57 49 52 01 00 00 00 00000000 00000000")
    assert encode_header([], metadata=b"") == bytes.fromhex(
        "41 57 49 52 02 02 00 00 04000000 00000000 00000000"
    )
    assert decode(encode_header([], metadata=b"")).metadata == b""


def test_a_zero_dimensional_array_has_no_shape_words() -> None:
    assert encode_header([spec("<f8", ())])[16:] == bytes.fromhex(
        "08 00 00 00 00 00 00 00 00 43 03 00 3c 66 38"
    )


# --- the preamble: each field's error -------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (preamble()[:15], "preamble is 15 bytes, expected 16"),
        (preamble(version=0), "message of protocol version 0; this arraywire reads versions 1 "
         "to 2 (upgrade arraywire to read it)"),
        (preamble(version=3), "message of protocol version 3; this arraywire reads versions 1 "
         "to 2 (upgrade arraywire to read it)"),
        (preamble(1, b"\x01\x00\x00"), "reserved preamble bits must be zero in version 1, "
         "got b'\\x01\\x00\\x00'"),
        (preamble(2, b"\x04\x00\x00"), "reserved preamble bits must be zero in version 2, "
         "got b'\\x04\\x00\\x00'"),
        (preamble(2, b"\x00\x00\x01"), "reserved preamble bits must be zero in version 2, "
         "got b'\\x00\\x00\\x01'"),
        (preamble(block_len=MAX_DESCRIPTOR_BYTES + 1),
         "descriptor block of 1,048,577 bytes exceeds the limit of 1,048,576 bytes"),
        (preamble(block_len=23, count=2), "2 arrays cannot fit in a descriptor block of 23 bytes"),
    ],
)
def test_a_bad_preamble_names_its_field(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_preamble(data)
    assert str(info.value) == message


def test_the_preamble_limits_themselves_are_accepted() -> None:
    assert decode_preamble(preamble(2, b"\x03\x00\x00", MAX_DESCRIPTOR_BYTES, 1 << 16)) == (
        Preamble(2, 3, MAX_DESCRIPTOR_BYTES, 1 << 16)
    )
    assert decode_preamble(preamble(block_len=24, count=2)) == Preamble(1, 0, 24, 2)


@pytest.mark.parametrize(
    ("first", "speaks", "says"),
    [
        (b"AWHI", "hello", "the peer opened with a connection hello, not a message"),
        (b"\x16\x03\x01\x02", "tls", "the peer speaks TLS and this end does not"),
        (b"\x15\x03\x03\x00", "tls", "the peer speaks TLS and this end does not"),
        (b"GET ", "http", "not an arraywire message: magic b'GET ', expected b'AWIR'"),
        (b"\x00\x01\x02\x03", "other", "not an arraywire message: magic b'\\x00\\x01\\x02\\x03', "
         "expected b'AWIR'"),
    ],
)
def test_a_wrong_magic_says_what_the_peer_speaks(first: bytes, speaks: str, says: str) -> None:
    data = first + preamble()[4:]
    assert peers.identify(data) == speaks
    with pytest.raises(ProtocolError) as info:
        decode_preamble(data)
    assert str(info.value).startswith(says)


# --- the descriptor block: each field's error ------------------------------------


def block_error(block: bytes, count: int = 1, flags: int = 0, **caps: int | None) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_block(block, Preamble(1 if not flags else 2, flags, len(block), count),
                     caps.pop("max_bytes", 1 << 30), **caps)
    return str(info.value)


def test_dimensions_up_to_32_and_not_33() -> None:
    ok = descriptor(b"|u1", (1,) * 32, 1)
    assert decode_block(ok, Preamble(1, 0, len(ok), 1), None).specs[0].shape == (1,) * 32
    assert block_error(descriptor(b"|u1", (1,) * 33, 1)) == (
        "array 0: 33 dimensions, at most 32 allowed"
    )
    assert block_error(descriptor(b"|u1", (), 1, ndim=255)) == (
        "array 0: 255 dimensions, at most 32 allowed"
    )


@pytest.mark.parametrize(
    ("block", "count", "message"),
    [
        (descriptor(b"<f8", (1,), 8)[:11], 1, "array 0: descriptor truncated"),
        (descriptor(b"<f8", (1,), 8)[:-1], 1, "array 0: descriptor truncated"),
        (descriptor(b"<f8", (1,), 8) + descriptor(b"<f8", (1,), 8)[:-8], 2,
         "array 1: descriptor truncated"),
        (descriptor(b"<f8", (1,), 8, order=b"c"), 1,
         "array 0: memory order b'c' is neither b'C' nor b'F'"),
        (descriptor(b"", (1,), 8, text_len=4097), 1, "array 0: dtype text of 4,097 bytes is too long"),
        (descriptor(b"<f8", (3,), 8), 1,
         "array 0: declares 8 payload bytes but shape (3,) of float64 needs 24"),
        (descriptor(b"<f8", (0, 2**63 - 1), 0), 1,
         "array 0: shape (0, 9223372036854775807) overflows the addressable size"),
        (descriptor(b"<f8", (1,), 8) + b"xyz", 1, "3 stray bytes after the last descriptor"),
        (descriptor(b"\xff", (1,), 1), 1, "array 0: dtype text b'\\xff' is not UTF-8"),
    ],
)
def test_a_bad_descriptor_names_its_array_and_field(block: bytes, count: int, message: str) -> None:
    assert block_error(block, count) == message


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("<f16", "item size 16 is not one of [2, 4, 8] for kind 'f'"),
        ("|i4", "byte order '|' is not one of ['<', '>']"),
        ("<u1", "one-byte integers are written '|u1'"),
        ("<M8", "a datetime needs a unit"),
        ("<M8[xs]", "unknown datetime unit"),
        ("|O", "holds Python objects or pointers"),
        ("=f8", "is not a type of the grammar"),
        ("float64", "is not a type of the grammar"),
        ("|S0", "'0' is not a valid item size"),
        ("|S2147483648", "item size 2,147,483,648 is over 2,147,483,647"),
        ("<U536870912", "items of 2,147,483,648 bytes are too large"),
        ("[]", "expected '(' at offset 1"),
        ("[('a', '<i4'), ('a', '<f8')]", "field name or title 'a' repeated"),
        ("[('', '<i4')]", "a field without a name must be '|V' padding"),
        ("[('a', '<i4')] ", "expected the end of the text at offset 14"),
        ("[('a', '<i4', (2))]", "',)' after a one-dimensional field shape"),
    ],
)
def test_a_dtype_text_outside_the_grammar_names_the_rule(text: str, rule: str) -> None:
    message = block_error(descriptor(text.encode(), (1,), 8))
    assert message.startswith(f"array 0: unusable dtype {text.encode()!r}: ")
    assert rule in message


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (name(b""), "array 0: name of 0 bytes is empty, too long or truncated"),
        (name(b"x" * 1025), "array 0: name of 1,025 bytes is empty, too long or truncated"),
        (name(b"abc")[:-1], "array 0: name of 3 bytes is empty, too long or truncated"),
        (b"\x01", "array 0: name truncated"),
        (name(b"\xc3"), "array 0: name is not UTF-8"),
    ],
)
def test_a_bad_name_is_refused(names: bytes, message: str) -> None:
    assert block_error(descriptor(b"|u1", (1,), 1) + names, flags=0x01) == message


def test_names_of_1024_bytes_pass_and_repeats_are_refused() -> None:
    one = descriptor(b"|u1", (1,), 1)
    long = one + name("é".encode() * 512)
    assert decode_block(long, Preamble(2, 1, len(long), 1), 10).names == ("é" * 512,)
    assert block_error(one + name(b"a") + one + name(b"a"), 2, 0x01) == (
        "array 1: name 'a' repeated"
    )


def test_metadata_inside_the_block_or_refused() -> None:
    assert block_error(b"\x01\x00", 0, 0x02) == "metadata length truncated"
    assert block_error(struct.pack("<I", 5) + b"abcd", 0, 0x02) == (
        "metadata of 5 bytes overruns the descriptor block"
    )


# --- caps: refused from the header alone ------------------------------------------


def test_max_metadata_is_a_cap_with_its_number() -> None:
    block = struct.pack("<I", 11) + bytes(11)
    assert decode_block(block, Preamble(2, 2, len(block), 0), 0, 11).metadata == bytes(11)
    assert block_error(block, 0, 0x02, max_metadata=10) == (
        "message carries 11 bytes of metadata, over max_metadata=10"
    )


def test_max_bytes_counts_the_running_sum_and_says_how_to_lift_it() -> None:
    block = descriptor(b"<f8", (75,), 600) * 3
    header = decode_block(block, Preamble(1, 0, len(block), 3), 1800)
    assert header.payload == 1800
    assert block_error(block, 3, max_bytes=1000) == (
        "message declares at least 1,200 payload bytes, over max_bytes=1,000; "
        "pass max_bytes=None to lift the limit"
    )
    assert block_error(block, 3, max_bytes=0) == (
        "message declares at least 600 payload bytes, over max_bytes=0; "
        "pass max_bytes=None to lift the limit"
    )


def test_no_max_bytes_still_refuses_the_formats_limit() -> None:
    at_limit = descriptor(b"|u1", (MAX_PAYLOAD,), MAX_PAYLOAD)
    assert decode_block(at_limit, Preamble(1, 0, len(at_limit), 1), None).payload == MAX_PAYLOAD
    over = descriptor(b"|u1", (MAX_PAYLOAD + 1,), MAX_PAYLOAD + 1)
    assert block_error(over, max_bytes=None) == (
        "message declares at least 140,737,488,355,329 payload bytes, over "
        "max_bytes=140,737,488,355,328 (the format's limit)"
    )
    assert block_error(over, max_bytes=1 << 60).endswith("(the format's limit)")


def test_huge_declarations_allocate_nothing() -> None:
    hostile = [
        (descriptor(b"<f8", (1 << 59,), 1 << 62), 1, 0),
        (descriptor(b"<f8", (1 << 26,), 1 << 29) * 3, 3, 0),
        (struct.pack("<I", MAX_DESCRIPTOR_BYTES - 4) + bytes(MAX_DESCRIPTOR_BYTES - 4), 0, 0x02),
    ]
    for block, count, flags in hostile:
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError, match=r"max_bytes=1,000|max_metadata=65,536"):
                decode_block(block, Preamble(2 if flags else 1, flags, len(block), count), 1000)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 2 * len(block) + (64 << 10), peak


# --- what senders refuse before the first byte ------------------------------------


def test_encode_refuses_what_a_receiver_would() -> None:
    with pytest.raises(ValueError, match=r"^array 1 has 33 dimensions; messages carry at most 32"):
        encode_header([spec("|u1", (1,)), spec("|u1", (1,) * 33)])
    with pytest.raises(ValueError, match=r"^the message's arrays hold 140,737,488,355,329 bytes, "
                       r"over the format's limit of 140,737,488,355,328 bytes$"):
        encode_header([spec("|u1", (MAX_PAYLOAD,)), spec("|u1", (1,))])
    with pytest.raises(ValueError, match=r"^the header of 0 arrays is 1,048,581 bytes, over the "
                       r"limit of 1,048,576 bytes"):
        encode_header([], metadata=bytes(MAX_DESCRIPTOR_BYTES + 1))
    with pytest.raises(ValueError, match="over the limit of 4,096 bytes"):
        dtype_text(np.dtype([(f"field{i}", "<f4") for i in range(400)]))


def test_names_and_dtypes_a_sender_refuses() -> None:
    assert check_name("x" * 1024) == "x" * 1024
    with pytest.raises(TypeError, match=r"^array names must be str, got bytes$"):
        check_name(b"x")
    with pytest.raises(ValueError, match=r"^array names must be 1 to 1024 bytes of UTF-8, got 0$"):
        check_name("")
    with pytest.raises(ValueError, match=r"got 1026$"):
        check_name("é" * 513)
    with pytest.raises(ValueError, match="is not valid Unicode"):
        check_name("\udc80")
    with pytest.raises(TypeError, match="holds Python objects or pointers"):
        check_transferable(np.dtype(object))
    with pytest.raises(TypeError, match="holds Python objects or pointers"):
        check_transferable(np.dtype([("a", "<i4"), ("b", object)]))
    check_transferable(np.dtype("<M8[ns]"))


def test_a_dtype_with_metadata_has_no_exact_text() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(dtypes.DtypeTextError, match="metadata"):
            dtypes.encode(np.dtype("<f8", metadata={"unit": "m"}))


def test_an_error_is_not_cached_as_a_result() -> None:
    bad = preamble(version=9)
    for _ in range(2):
        with pytest.raises(ProtocolError, match="version 9"):
            decode_preamble(bad)


# --- round trips ------------------------------------------------------------------

ROUND = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
simple_dtypes = st.one_of(
    hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(), hnp.complex_number_dtypes(), hnp.datetime64_dtypes(),
    hnp.timedelta64_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes(),
)
any_dtypes = st.one_of(
    simple_dtypes, hnp.nested_dtypes(subtype_strategy=simple_dtypes, max_itemsize=64)
)
shapes = hnp.array_shapes(min_dims=0, max_dims=6, min_side=0, max_side=5)


@ROUND
@given(
    st.lists(st.tuples(any_dtypes, shapes, st.sampled_from("CF")), max_size=4),
    st.booleans(),
    st.none() | st.binary(max_size=40),
)
def test_headers_round_trip_with_names_and_metadata(items, named, metadata) -> None:
    specs = [spec(dtype, shape, order) for dtype, shape, order in items]
    names = tuple(f"a{i}" for i in range(len(specs))) if named else None
    data = encode_header(specs, names, metadata)
    assert data[4] == (2 if named or metadata is not None else 1)
    assert data[5] == (1 if named else 0) | (0 if metadata is None else 2)
    assert struct.unpack_from("<II", data, 8) == (len(data) - 16, len(specs))
    header = decode(data, max_bytes=None)
    assert list(header.specs) == specs
    assert header.names == names
    assert header.metadata == (metadata or b"")
    assert header.payload == sum(s.nbytes for s in specs)


@ROUND
@given(any_dtypes)
def test_every_dtype_text_parses_back_to_the_dtype(dtype: np.dtype) -> None:
    text = dtypes.encode(dtype)
    assert dtypes.parse(text) == dtype
    assert dtype_text(dtype) == text.encode()


@ROUND
@given(hnp.arrays(simple_dtypes, shapes), st.booleans())
def test_a_planned_array_decodes_to_its_own_spec(array: np.ndarray, fortran: bool) -> None:
    if fortran:
        array = np.asfortranarray(array)
    header = decode(plan_send([array]).header)
    (got,) = header.specs
    order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
    assert got == ArraySpec(array.dtype, array.shape, order, array.nbytes)
    assert PREAMBLE.size == 16
