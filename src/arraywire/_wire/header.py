"""The arraywire message header: encoding, and a decoder that trusts nothing.

The format is specified in docs/PROTOCOL.md. Decoding allocates nothing but
the header itself, and checks every declared size before using it. Senders
check the same limits before the first byte, so a message arraywire sends
is one arraywire receives.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from arraywire._wire import dtypes, peers
from arraywire._wire.errors import ProtocolError, unexpected_peer

MAGIC = peers.MESSAGE_MAGIC
# The newest version this release reads and writes; a message without names
# or metadata is written as version 1, which every release reads.
VERSION = 2
# magic, version, flags (version 1: zero), 2 reserved zero bytes, descriptor
# block length, array count
PREAMBLE = struct.Struct("<4sB3sII")
# payload bytes, ndim, order ('C' or 'F'), length of the dtype text
ARRAY_FIXED = struct.Struct("<QBcH")
DIM = struct.Struct("<Q")
NAME_LENGTH = struct.Struct("<H")
METADATA_LENGTH = struct.Struct("<I")

HAS_NAMES = 0x01
HAS_METADATA = 0x02
KNOWN_FLAGS = HAS_NAMES | HAS_METADATA

MAX_NDIM = 32  # numpy 1.x arrays have at most 32 dimensions
MAX_DESCRIPTOR_BYTES = 1 << 20
MAX_DTYPE_TEXT = dtypes.MAX_TEXT
MAX_NAME_BYTES = 1024
# No process can allocate more: x86-64 and AArch64 Linux give user space at
# most 2^47 bytes with 4-level page tables. Refused even with max_bytes=None.
MAX_PAYLOAD = 1 << 47
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_METADATA = 64 << 10
# numpy cannot index more than this many bytes
_NUMPY_LIMIT = (1 << 63) - 1
_TRANSFERABLE_KINDS = frozenset("biufcmMSUV")


class ArraySpec(NamedTuple):
    """What a header says about one array of a message."""

    dtype: np.dtype
    shape: tuple[int, ...]
    order: str
    nbytes: int


class Preamble(NamedTuple):
    version: int
    flags: int
    block_len: int
    arrays: int


class Header(NamedTuple):
    """A decoded header: the arrays' specs, their names (None when the
    message has none), the metadata (b"" when it has none) and the payload
    bytes of all its arrays."""

    specs: tuple[ArraySpec, ...]
    names: tuple[str, ...] | None
    metadata: bytes
    payload: int


def check_transferable(dtype: np.dtype) -> None:
    """Refuse dtypes whose bytes are not the values (Python objects, pointers)."""
    if dtype.hasobject or dtype.kind not in _TRANSFERABLE_KINDS:
        raise TypeError(
            f"dtype {dtype} holds Python objects or pointers; arraywire sends raw "
            "bytes and never pickles"
        )


def dtype_text(dtype: np.dtype) -> bytes:
    """The dtype's text of the grammar in docs/PROTOCOL.md (ValueError if none)."""
    return dtypes.encode(dtype).encode("utf-8")


def encode_header(
    specs: list[ArraySpec], names: tuple[str, ...] | None = None, metadata: bytes | None = None
) -> bytes:
    """The header of a message; ValueError if a receiver would refuse it."""
    if metadata is None:
        return _encode_cached(tuple(specs), names)
    return _encode(tuple(specs), names, metadata)


# Pipelines send the same few layouts over and over.
@lru_cache(maxsize=1024)
def _encode_cached(specs: tuple[ArraySpec, ...], names: tuple[str, ...] | None) -> bytes:
    return _encode(specs, names, None)


def _encode(
    specs: tuple[ArraySpec, ...], names: tuple[str, ...] | None, metadata: bytes | None
) -> bytes:
    flags = (HAS_NAMES if names is not None else 0) | (HAS_METADATA if metadata is not None else 0)
    parts = []
    if metadata is not None:
        parts += [METADATA_LENGTH.pack(len(metadata)), metadata]
    payload = 0
    for index, spec in enumerate(specs):
        if len(spec.shape) > MAX_NDIM:
            raise ValueError(
                f"array {index} has {len(spec.shape)} dimensions; messages carry at most "
                f"{MAX_NDIM} (docs/PROTOCOL.md)"
            )
        text = dtype_text(spec.dtype)
        parts.append(
            ARRAY_FIXED.pack(spec.nbytes, len(spec.shape), spec.order.encode(), len(text))
        )
        parts.extend(DIM.pack(dim) for dim in spec.shape)
        parts.append(text)
        if names is not None:
            name = names[index].encode("utf-8")
            parts += [NAME_LENGTH.pack(len(name)), name]
        payload += spec.nbytes
    if payload > MAX_PAYLOAD:
        raise ValueError(
            f"the message's arrays hold {payload:,} bytes, over the format's limit of "
            f"{MAX_PAYLOAD:,} bytes"
        )
    block = b"".join(parts)
    if len(block) > MAX_DESCRIPTOR_BYTES:
        raise ValueError(
            f"the header of {len(specs):,} arrays is {len(block):,} bytes, over the limit "
            f"of {MAX_DESCRIPTOR_BYTES:,} bytes (docs/PROTOCOL.md); send fewer arrays, "
            "or less metadata, per message"
        )
    version = 1 if flags == 0 else VERSION
    return PREAMBLE.pack(MAGIC, version, bytes((flags, 0, 0)), len(block), len(specs)) + block


def check_name(name: object) -> str:
    """A valid array name of a message, or TypeError/ValueError saying why not."""
    if not isinstance(name, str):
        raise TypeError(f"array names must be str, got {type(name).__name__}")
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 0 < size <= MAX_NAME_BYTES:
        raise ValueError(f"array names must be 1 to {MAX_NAME_BYTES} bytes of UTF-8, got {size}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"array name {name!r} is not valid Unicode") from None
    return name


# Preambles and small headers repeat (the same layouts, message after
# message): both are cached by their bytes; errors are never cached.
@lru_cache(maxsize=1024)
def decode_preamble(data: bytes) -> Preamble:
    """Check the first 16 bytes of a message; return what they declare."""
    if len(data) != PREAMBLE.size:
        raise ProtocolError(f"preamble is {len(data):,} bytes, expected {PREAMBLE.size}")
    magic, version, flag_bytes, block_len, count = PREAMBLE.unpack(data)
    if magic != MAGIC:
        raise unexpected_peer(_not_a_message(magic), peers.identify(magic), data)
    if not 1 <= version <= VERSION:
        raise ProtocolError(
            f"message of protocol version {version}; this arraywire reads versions 1 to "
            f"{VERSION} (upgrade arraywire to read it)"
        )
    flags = flag_bytes[0]
    if flag_bytes[1:] != bytes(2) or (version == 1 and flags) or flags & ~KNOWN_FLAGS:
        raise ProtocolError(
            f"reserved preamble bits must be zero in version {version}, got {flag_bytes!r}"
        )
    if block_len > MAX_DESCRIPTOR_BYTES:
        raise ProtocolError(
            f"descriptor block of {block_len:,} bytes exceeds the limit of "
            f"{MAX_DESCRIPTOR_BYTES:,} bytes"
        )
    if count * ARRAY_FIXED.size > block_len:
        raise ProtocolError(
            f"{count:,} arrays cannot fit in a descriptor block of {block_len:,} bytes"
        )
    return Preamble(version, flags, block_len, count)


def _not_a_message(magic: bytes) -> str:
    """What a preamble's wrong magic says of the peer."""
    speaks = peers.identify(magic)
    if speaks == "hello":
        return (
            "the peer opened with a connection hello, not a message: it holds a key or "
            "connected with arraywire.connect; receive with arraywire.listen (with the "
            "same authkey=) instead"
        )
    if speaks == "tls":
        return (
            "the peer speaks TLS and this end does not: use TLS at this end too "
            "(arraywire.listen(ssl=...))"
        )
    return f"not an arraywire message: magic {magic!r}, expected {MAGIC!r}"


def decode_block(
    block: bytes,
    preamble: Preamble,
    max_bytes: int | None,
    max_metadata: int = DEFAULT_MAX_METADATA,
) -> Header:
    """Parse a descriptor block; the payloads together may not exceed max_bytes."""
    _, flags, _, count = preamble
    if len(block) <= _CACHED_BLOCK_BYTES and not flags & HAS_METADATA:
        header, stray = _decode_cached(bytes(block), count, flags)
    else:
        header, stray = _decode_all(block, count, flags)
    if len(header.metadata) > max_metadata:
        raise ProtocolError(
            f"message carries {len(header.metadata):,} bytes of metadata, over "
            f"max_metadata={max_metadata:,}"
        )
    payload = header.payload
    if payload > MAX_PAYLOAD or (max_bytes is not None and payload > max_bytes):
        limit = MAX_PAYLOAD if max_bytes is None else min(max_bytes, MAX_PAYLOAD)
        total = 0
        for spec in header.specs:
            total += spec.nbytes
            if total > limit:
                break
        lift = (
            "; pass max_bytes=None to lift the limit" if max_bytes is not None
            and max_bytes < MAX_PAYLOAD else " (the format's limit)"
        )
        raise ProtocolError(
            f"message declares at least {total:,} payload bytes, over "
            f"max_bytes={limit:,}{lift}"
        )
    if stray:  # after the max_bytes check, as the spec orders them
        raise ProtocolError(f"{stray:,} stray bytes after the last descriptor")
    return header


# Caching small headers by their bytes keeps at most 1024 x 512 bytes.
_CACHED_BLOCK_BYTES = 512


def _decode_all(block: bytes, count: int, flags: int) -> tuple[Header, int]:
    """The header, and how many bytes of the block follow its last descriptor."""
    offset = 0
    metadata = b""
    if flags & HAS_METADATA:
        if len(block) < METADATA_LENGTH.size:
            raise ProtocolError("metadata length truncated")
        (size,) = METADATA_LENGTH.unpack_from(block, 0)
        offset = METADATA_LENGTH.size + size
        if offset > len(block):
            raise ProtocolError(f"metadata of {size:,} bytes overruns the descriptor block")
        metadata = bytes(block[METADATA_LENGTH.size : offset])
    specs = []
    names: list[str] | None = [] if flags & HAS_NAMES else None
    seen: set[str] = set()  # a list would make 40,000 names cost 10^9 comparisons
    payload = 0
    for index in range(count):
        spec, offset = _decode_one(block, offset, index)
        specs.append(spec)
        payload += spec.nbytes
        if names is not None:
            name, offset = _decode_name(block, offset, index)
            if name in seen:
                raise ProtocolError(f"array {index}: name {name!r} repeated")
            seen.add(name)
            names.append(name)
    header = Header(tuple(specs), None if names is None else tuple(names), metadata, payload)
    return header, len(block) - offset


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
        raise ProtocolError(f"{where}: dtype text of {text_len:,} bytes is too long")
    end = offset + ndim * DIM.size + text_len
    if end > len(block):
        raise ProtocolError(f"{where}: descriptor truncated")
    shape = struct.unpack_from(f"<{ndim}Q", block, offset)
    offset += ndim * DIM.size
    try:
        dtype = _parse_dtype(bytes(block[offset:end]))
    except ProtocolError as exc:
        raise ProtocolError(f"{where}: {exc}") from None
    # As numpy checks before allocating: the non-zero dimensions times the
    # item size must be addressable, even when another dimension is zero.
    size = dtype.itemsize
    elements = 1
    for dim in shape:
        elements *= dim
        if dim:
            size *= dim
            if size > _NUMPY_LIMIT:
                raise ProtocolError(f"{where}: shape {shape} overflows the addressable size")
    nbytes_needed = elements * dtype.itemsize
    if nbytes_needed != nbytes:
        raise ProtocolError(
            f"{where}: declares {nbytes:,} payload bytes but shape {shape} of {dtype} "
            f"needs {nbytes_needed}"
        )
    return ArraySpec(dtype, shape, order.decode(), nbytes), end


def _decode_name(block: bytes, offset: int, index: int) -> tuple[str, int]:
    if offset + NAME_LENGTH.size > len(block):
        raise ProtocolError(f"array {index}: name truncated")
    (size,) = NAME_LENGTH.unpack_from(block, offset)
    offset += NAME_LENGTH.size
    if not 0 < size <= MAX_NAME_BYTES or offset + size > len(block):
        raise ProtocolError(f"array {index}: name of {size:,} bytes is empty, too long or truncated")
    try:
        name = bytes(block[offset : offset + size]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"array {index}: name is not UTF-8") from None
    return name, offset + size


@lru_cache(maxsize=256)
def _parse_dtype(text: bytes) -> np.dtype:
    try:
        return dtypes.parse(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError(f"dtype text {text[:80]!r} is not UTF-8") from None
    except dtypes.DtypeTextError as exc:
        raise ProtocolError(f"unusable dtype {text[:80]!r}: {exc}") from None
