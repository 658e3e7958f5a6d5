"""The dtype text of the wire format: encoder and parser of the grammar in
docs/PROTOCOL.md ("dtype text").

The text is the ``descr`` of numpy's NPY format (``dtype_to_descr``) written in
a fixed form, and read back by a parser of its own: no Python literal parser
sees a peer's text. Whatever the parser accepts, numpy allocates at exactly
the size the text declares; whatever it refuses raises ``DtypeTextError``
naming the rule.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from numpy.lib.format import descr_to_dtype, dtype_to_descr

MAX_TEXT = 4096
MAX_DEPTH = 32  # levels: the outer struct, each struct and subarray type inside
MAX_ITEMSIZE = (1 << 31) - 1  # numpy keeps an item's size in a C int
MAX_FIELD_NDIM = 32

# kind -> byte orders allowed and item sizes allowed (None: any count >= 1)
_SIMPLE: dict[str, tuple[str, frozenset[int] | None]] = {
    "b": ("|", frozenset({1})),
    "i": ("<>", frozenset({2, 4, 8})),
    "u": ("<>", frozenset({2, 4, 8})),
    "f": ("<>", frozenset({2, 4, 8})),
    "c": ("<>", frozenset({8, 16})),
    "M": ("<>", frozenset({8})),
    "m": ("<>", frozenset({8})),
    "S": ("|", None),
    "U": ("<>", None),
    "V": ("|", None),
}
_ONE_BYTE = {"i": "|i1", "u": "|u1"}
DATETIME_UNITS = ("Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as")


class DtypeTextError(ValueError):
    """A dtype text outside the grammar, or a dtype that has no text."""


def encode(dtype: np.dtype) -> str:
    """The dtype's text; DtypeTextError (or TypeError for a kind that is never
    sent) if it has none a receiver would accept as the same dtype."""
    if dtype.metadata:
        # Checked before the cache: numpy's equality (and hash) ignore metadata,
        # and the receiver would get the dtype without it.
        raise DtypeTextError(
            f"dtype {dtype} carries metadata {dict(dtype.metadata)!r}, which the wire "
            "format does not: send the array viewed as a dtype without it "
            "(array.view(numpy.dtype(array.dtype.str)) for a plain dtype)"
        )
    return _encode_cached(dtype)


@lru_cache(maxsize=256)
def _encode_cached(dtype: np.dtype) -> str:
    no_text = DtypeTextError(
        f"dtype {dtype} has no exact text in the wire format (overlapping or "
        "reordered fields, or metadata); pass a packed or aligned struct"
    )
    try:
        descr = dtype_to_descr(dtype)
    except ValueError:  # numpy has no descr for overlapping or out-of-order fields
        raise no_text from None
    text = _emit(descr, top=True)
    if len(text.encode("utf-8")) > MAX_TEXT:
        raise DtypeTextError(
            f"the dtype's text is {len(text.encode('utf-8')):,} bytes, over the limit "
            f"of {MAX_TEXT:,} bytes (docs/PROTOCOL.md); send its bytes as a '|V' array "
            "or split the record"
        )
    if parse(text) != dtype:
        raise no_text
    return text


def _emit(descr: Any, top: bool = False) -> str:
    if isinstance(descr, str):
        return descr if top else _quote(descr)
    if isinstance(descr, tuple):  # (type, shape): a subarray type
        return f"({_emit(descr[0])}, {_emit_shape(descr[1])})"
    fields = []
    for field in descr:
        name = field[0]
        if isinstance(name, tuple) and not isinstance(name[0], str):
            # numpy takes any object as a title; the wire format has text only
            raise DtypeTextError(
                f"field {name[1]!r} has the title {name[0]!r}, which is not a str; "
                "the wire format carries only str titles"
            )
        name_text = _quote(name) if isinstance(name, str) else (
            f"({_quote(name[0])}, {_quote(name[1])})"
        )
        shape = f", {_emit_shape(field[2])}" if len(field) == 3 else ""
        fields.append(f"({name_text}, {_emit(field[1])}{shape})")
    return "[" + ", ".join(fields) + "]"


def _emit_shape(shape: tuple[int, ...]) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else "(" + ", ".join(map(str, shape)) + ")"


def _quote(name: str) -> str:
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


@lru_cache(maxsize=256)
def parse(text: str) -> np.dtype:
    """The dtype a text of the grammar names; DtypeTextError otherwise."""
    if len(text.encode("utf-8")) > MAX_TEXT:
        raise DtypeTextError(f"dtype text over {MAX_TEXT:,} bytes")
    if text.startswith("["):
        reader = _Reader(text)
        descr, _ = reader.struct(0)
        reader.end()
        # numpy reads '' names as padding, as its NPY files write them
        return descr_to_dtype(descr)
    _simple_size(text)
    return np.dtype(text)


def _simple_size(text: str) -> int:
    """Check a simple type's text; return its item size."""
    if text[1:2] == "O":
        raise DtypeTextError(
            f"{text[:40]!r} holds Python objects or pointers; arraywire never sends them"
        )
    if len(text) < 3 or text[0] not in "<>|" or text[1] not in _SIMPLE:
        raise DtypeTextError(f"{text[:40]!r} is not a type of the grammar")
    order, kind = text[0], text[1]
    orders, sizes = _SIMPLE[kind]
    if kind in "Mm":
        rest, unit_text = text[2:].partition("[")[::2]
        if rest != "8" or not unit_text.endswith("]"):
            raise DtypeTextError(
                f"{text[:40]!r}: a datetime needs a unit, as in '<M8[ns]' (generic ones are refused)"
            )
        unit_text = unit_text[:-1]
        digits = len(unit_text) - len(unit_text.lstrip("0123456789"))
        if digits:
            _count(unit_text[:digits], "datetime multiplier")
        if unit_text[digits:] not in DATETIME_UNITS:
            raise DtypeTextError(f"{text[:40]!r}: unknown datetime unit")
        size = 8
    else:
        size = _count(text[2:], "item size")
        if kind in "iu" and size == 1:
            if text != _ONE_BYTE[kind]:
                raise DtypeTextError(f"{text!r}: one-byte integers are written {_ONE_BYTE[kind]!r}")
            return 1
        if sizes is not None and size not in sizes:
            raise DtypeTextError(
                f"{text!r}: item size {size} is not one of {sorted(sizes)} for kind {kind!r}"
            )
        if kind == "U":
            size *= 4
    if order not in orders:
        raise DtypeTextError(f"{text!r}: byte order {order!r} is not one of {list(orders)}")
    if size > MAX_ITEMSIZE:
        raise DtypeTextError(f"{text[:40]!r}: items of {size:,} bytes are too large")
    return size


def _count(digits: str, what: str) -> int:
    """A decimal count of the grammar: 1 to 2^31 - 1, no sign, no leading zero."""
    if not digits.isascii() or not digits.isdigit() or digits[0] == "0" or len(digits) > 10:
        raise DtypeTextError(f"{digits[:20]!r} is not a valid {what}")
    value = int(digits)
    if value > MAX_ITEMSIZE:
        raise DtypeTextError(f"{what} {value:,} is over {MAX_ITEMSIZE:,}")
    return value


class _Reader:
    """Recursive descent over a struct text; every rule returns (descr, item size)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def fail(self, expected: str) -> DtypeTextError:
        return DtypeTextError(
            f"dtype text: expected {expected} at offset {self.at}, "
            f"found {self.text[self.at : self.at + 20]!r}"
        )

    def take(self, token: str) -> None:
        if not self.text.startswith(token, self.at):
            raise self.fail(repr(token))
        self.at += len(token)

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.at)

    def end(self) -> None:
        if self.at != len(self.text):
            raise self.fail("the end of the text")

    def struct(self, depth: int) -> tuple[list[Any], int]:
        if depth >= MAX_DEPTH:
            raise DtypeTextError(f"dtype text nested deeper than {MAX_DEPTH} levels")
        self.take("[")
        fields: list[Any] = []
        labels: set[str] = set()
        size = 0
        while True:
            field, field_size = self.field(depth + 1)
            for label in _labels(field):
                if label in labels:
                    raise DtypeTextError(f"dtype text: field name or title {label!r} repeated")
                labels.add(label)
            fields.append(field)
            size += field_size
            if size > MAX_ITEMSIZE:
                raise DtypeTextError(f"struct items over {MAX_ITEMSIZE:,} bytes")
            if self.peek("]"):
                self.take("]")
                return fields, size
            self.take(", ")

    def field(self, depth: int) -> tuple[tuple[Any, ...], int]:
        self.take("(")
        if self.peek("("):
            self.take("(")
            title = self.string()
            self.take(", ")
            name: Any = (title, self.string())
            self.take(")")
            if not name[1]:
                raise DtypeTextError("dtype text: a titled field needs a name")
        else:
            name = self.string()
        self.take(", ")
        type_descr, size = self.type(depth)
        if name == "" and not (isinstance(type_descr, str) and type_descr.startswith("|V")):
            raise DtypeTextError("dtype text: a field without a name must be '|V' padding")
        if self.peek(", "):
            self.take(", ")
            shape = self.shape()
            self.take(")")
            return (name, type_descr, shape), size * _product(shape)
        self.take(")")
        return (name, type_descr), size

    def type(self, depth: int) -> tuple[Any, int]:
        # depth: the levels around this type; a simple type adds none
        if self.peek("["):
            return self.struct(depth)
        if self.peek("("):
            if depth >= MAX_DEPTH:
                raise DtypeTextError(f"dtype text nested deeper than {MAX_DEPTH} levels")
            self.take("(")
            base, size = self.type(depth + 1)
            self.take(", ")
            shape = self.shape()
            self.take(")")
            return (base, shape), size * _product(shape)
        start = self.at
        self.take("'")
        end = self.text.find("'", self.at)
        if end < 0:
            raise self.fail("a closing quote")
        simple = self.text[self.at : end]
        try:
            size = _simple_size(simple)
        except DtypeTextError as exc:
            raise DtypeTextError(f"dtype text at offset {start}: {exc}") from None
        self.at = end + 1
        return simple, size

    def shape(self) -> tuple[int, ...]:
        self.take("(")
        dims = [self.count()]
        if self.peek(",)"):
            self.take(",)")
            return (dims[0],)
        while not self.peek(")"):
            self.take(", ")
            dims.append(self.count())
            if len(dims) > MAX_FIELD_NDIM:
                raise DtypeTextError(f"a field shape of more than {MAX_FIELD_NDIM} dimensions")
        if len(dims) == 1:
            raise self.fail("',)' after a one-dimensional field shape")
        self.take(")")
        return tuple(dims)

    def count(self) -> int:
        start = self.at
        while self.at < len(self.text) and self.text[self.at] in "0123456789":
            self.at += 1
        return _count(self.text[start : self.at], "field dimension")

    def string(self) -> str:
        self.take("'")
        chars = []
        while True:
            if self.at >= len(self.text):
                raise self.fail("a closing quote")
            char = self.text[self.at]
            if char == "'":
                self.at += 1
                break
            if char == "\\":
                escaped = self.text[self.at + 1 : self.at + 2]
                if escaped not in ("\\", "'"):
                    raise self.fail("\\\\ or \\' after a backslash")
                chars.append(escaped)
                self.at += 2
                continue
            chars.append(char)
            self.at += 1
        return "".join(chars)


def _labels(field: tuple[Any, ...]) -> list[str]:
    name = field[0]
    if isinstance(name, tuple):
        return [name[0], name[1]]
    return [name] if name else []


def _product(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
        if total > MAX_ITEMSIZE:
            raise DtypeTextError(f"field shape {shape} is over {MAX_ITEMSIZE:,} items")
    return total
