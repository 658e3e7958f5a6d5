"""The arraywire message header: encoding, and a decoder that trusts nothing.

The format is specified in docs/PROTOCOL.md. Decoding allocates nothing but
the header itself, and checks every declared size before using it.
"""

from __future__ import annotations

import ast
import struct
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.format import descr_to_dtype, dtype_to_descr

from arraywire._errors import ProtocolError

MAGIC = b"AWIR"
VERSION = 1
# magic, version, 3 reserved zero bytes, descriptor-block length, array count
PREAMBLE = struct.Struct("<4sB3sII")
# payload bytes, ndim, order ('C' or 'F'), length of the dtype text
ARRAY_FIXED = struct.Struct("<QBcH")
DIM = struct.Struct("<Q")

MAX_NDIM = 64
MAX_DESCRIPTOR_BYTES = 1 << 20
MAX_DTYPE_TEXT = 4096
DEFAULT_MAX_BYTES = 1 << 30
# numpy cannot index more than this many bytes
_NUMPY_LIMIT = (1 << 63) - 1
_TRANSFERABLE_KINDS = frozenset("biufcmMSUV")


class ArraySpec(NamedTuple):
    """What a header says about one array of a message."""

    dtype: np.dtype
    shape: tuple[int, ...]
    order: str
    nbytes: int


def check_transferable(dtype: np.dtype) -> None:
    """Refuse dtypes whose bytes are not the values (Python objects, pointers)."""
    if dtype.hasobject or dtype.kind not in _TRANSFERABLE_KINDS:
        raise TypeError(
            f"dtype {dtype} holds Python objects or pointers; arraywire sends raw "
            "bytes and never pickles"
        )


@lru_cache(maxsize=256)
def dtype_text(dtype: np.dtype) -> bytes:
    """The dtype as NPY-format 'descr' text: a typestr, or a list literal."""
    descr = dtype_to_descr(dtype)
    return (descr if isinstance(descr, str) else repr(descr)).encode("utf-8")


def encode_header(specs: list[ArraySpec]) -> bytes:
    return _encode_header(tuple(specs))


# Pipelines send the same few layouts over and over.
@lru_cache(maxsize=1024)
def _encode_header(specs: tuple[ArraySpec, ...]) -> bytes:
    parts = []
    for spec in specs:
        text = dtype_text(spec.dtype)
        parts.append(
            ARRAY_FIXED.pack(spec.nbytes, len(spec.shape), spec.order.encode(), len(text))
        )
        parts.extend(DIM.pack(dim) for dim in spec.shape)
        parts.append(text)
    block = b"".join(parts)
    return PREAMBLE.pack(MAGIC, VERSION, bytes(3), len(block), len(specs)) + block


def decode_preamble(data: bytes) -> tuple[int, int]:
    """Return (descriptor block length, array count) from the first 16 bytes."""
    if len(data) != PREAMBLE.size:
        raise ProtocolError(f"preamble is {len(data)} bytes, expected {PREAMBLE.size}")
    magic, version, reserved, block_len, count = PREAMBLE.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"not an arraywire message: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version} (this arraywire speaks {VERSION})"
        )
    if reserved != bytes(3):
        raise ProtocolError(f"reserved preamble bytes must be zero, got {reserved!r}")
    if block_len > MAX_DESCRIPTOR_BYTES:
        raise ProtocolError(
            f"descriptor block of {block_len} bytes exceeds the limit of "
            f"{MAX_DESCRIPTOR_BYTES}"
        )
    if count * ARRAY_FIXED.size > block_len:
        raise ProtocolError(
            f"{count} arrays cannot fit in a descriptor block of {block_len} bytes"
        )
    return block_len, count


def decode_descriptors(block: bytes, count: int, max_bytes: int | None) -> list[ArraySpec]:
    """Parse a descriptor block; the payloads together may not exceed max_bytes."""
    limit = _NUMPY_LIMIT if max_bytes is None else min(max_bytes, _NUMPY_LIMIT)
    if len(block) <= _CACHED_BLOCK_BYTES:
        specs = _decode_cached(bytes(block), count)
    else:
        specs = _decode_all(block, count)
    total = 0
    for spec in specs:
        total += spec.nbytes
        if total > limit:
            raise ProtocolError(
                f"message declares at least {total} payload bytes, over max_bytes={limit}"
            )
    return list(specs)


# Small headers repeat (the same layouts, message after message); caching
# them by their bytes keeps at most 1024 x 512 bytes.
_CACHED_BLOCK_BYTES = 512


def _decode_all(block: bytes, count: int) -> tuple[ArraySpec, ...]:
    specs = []
    offset = 0
    for index in range(count):
        spec, offset = _decode_one(block, offset, index)
        specs.append(spec)
    if offset != len(block):
        raise ProtocolError(f"{len(block) - offset} stray bytes after the last descriptor")
    return tuple(specs)


_decode_cached = lru_cache(maxsize=1024)(_decode_all)


def _decode_one(block: bytes, offset: int, index: int) -> tuple[ArraySpec, int]:
    where = f"array {index}"
    if offset + ARRAY_FIXED.size > len(block):
        raise ProtocolError(f"{where}: descriptor truncated")
    nbytes, ndim, order, text_len = ARRAY_FIXED.unpack_from(block, offset)
    offset += ARRAY_FIXED.size
    if ndim > MAX_NDIM:
        raise ProtocolError(f"{where}: {ndim} dimensions, at most {MAX_NDIM} allowed")
    if order not in (b"C", b"F"):
        raise ProtocolError(f"{where}: memory order {order!r} is neither b'C' nor b'F'")
    if text_len > MAX_DTYPE_TEXT:
        raise ProtocolError(f"{where}: dtype text of {text_len} bytes is too long")
    end = offset + ndim * DIM.size + text_len
    if end > len(block):
        raise ProtocolError(f"{where}: descriptor truncated")
    shape = struct.unpack_from(f"<{ndim}Q", block, offset)
    offset += ndim * DIM.size
    try:
        dtype = _parse_dtype(bytes(block[offset:end]))
    except ProtocolError as exc:
        raise ProtocolError(f"{where}: {exc}") from None
    # Python ints do not overflow, but stop as soon as the count passes numpy's
    # limit so a hostile shape costs nothing.
    elements = 1
    for dim in shape:
        elements *= dim
        if elements > _NUMPY_LIMIT or dim > _NUMPY_LIMIT:
            raise ProtocolError(f"{where}: shape {shape} overflows the addressable size")
    size = elements * dtype.itemsize
    if size != nbytes:
        raise ProtocolError(
            f"{where}: declares {nbytes} payload bytes but shape {shape} of {dtype} "
            f"needs {size}"
        )
    return ArraySpec(dtype, shape, order.decode(), nbytes), end


@lru_cache(maxsize=256)
def _parse_dtype(text: bytes) -> np.dtype:
    try:
        source = text.decode("utf-8")
        descr: Any = ast.literal_eval(source) if source.startswith("[") else source
        dtype = descr_to_dtype(descr)
    except Exception as exc:  # noqa: BLE001 - any failure means a bad header
        raise ProtocolError(f"unusable dtype {text[:80]!r} ({exc})") from None
    try:
        check_transferable(dtype)
    except TypeError as exc:
        raise ProtocolError(str(exc)) from None
    # numpy stores 'S0' and 'U0' items as 'S1' and 'U1': the sizes checked
    # against max_bytes would not be the sizes allocated.
    allocated = np.empty(0, dtype).dtype
    if allocated != dtype:
        raise ProtocolError(
            f"dtype {dtype} cannot be allocated as declared (numpy makes it {allocated})"
        )
    return dtype
