"""Reading another process's memory (``copy_from_process``): the checks and
messages both twins share, so their results and errors cannot drift apart."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

# Addresses and lengths are a 64-bit process's; Linux's pid_t is an int.
MAX_ADDRESS = (1 << 64) - 1
MAX_PID = (1 << 31) - 1


def checked_pid(pid: Any) -> int:
    """The pid as an int, or TypeError / ValueError."""
    try:
        number = operator.index(pid)
    except TypeError:
        raise TypeError(f"pid must be an int, got {type(pid).__name__}") from None
    if not 0 < number <= MAX_PID:
        raise ValueError(f"pid must be in 1..{MAX_PID:,}, got {number:,}")
    return number


def remote_ranges(ranges: Iterable[Any], nbytes: int) -> list[tuple[int, int]]:
    """The (address, length) pairs to read, empty ones dropped; they must
    cover exactly the nbytes of the destination (ValueError), each a pair of
    non-negative ints within the address space (TypeError / ValueError)."""
    pairs = []
    covered = 0
    for index, item in enumerate(ranges):
        try:
            address, length = item
            address, length = operator.index(address), operator.index(length)
        except (TypeError, ValueError):
            raise TypeError(
                f"range {index}: expected a pair of ints (address, length), got {item!r}"
            ) from None
        if address < 0 or length < 0 or address + length > MAX_ADDRESS + 1:
            raise ValueError(
                f"range {index}: address {address:#x} and length {length:,} are not "
                "within a 64-bit address space"
            )
        if length:
            pairs.append((address, length))
            covered += length
    if covered != nbytes:
        raise ValueError(
            f"the ranges cover {covered:,} bytes and the buffer holds {nbytes:,}; "
            "they must be equal"
        )
    return pairs
