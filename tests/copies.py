"""What the same-host copy tests share: a count of the bytes this process's
receives copy in place, and the records a hand-made peer writes and reads."""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
import pytest
from sockets import receive_exactly

from arraywire._core import transport
from arraywire._wire import control, hello, samehost
from arraywire._wire.engine import plan_send

BOTH = hello.CONTROL | hello.SAME_HOST


class Copied:
    """Counts the payload bytes this process's receives copy in place."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        copy = transport.impl.copy_from_process

        def counting(pid: int, ranges: Any, out: Any, **keywords: Any) -> int:
            moved: int = copy(pid, ranges, out, **keywords)
            self.bytes += moved
            return moved

        monkeypatch.setattr(transport.impl, "copy_from_process", counting)


def base(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


def record(kind: int, body: bytes) -> bytes:
    return control.RECORD.pack(control.MAGIC, kind, 0, len(body), 0) + body


def described(array: np.ndarray, description: Any = None) -> bytes:
    """A ranges record naming array's memory (or the description given), then its header."""
    if description is None:
        description = ((samehost.Range(array.ctypes.data, array.nbytes),),)
    body = b"".join(
        samehost.COUNT.pack(len(ranges)) + b"".join(samehost.RANGE.pack(*r) for r in ranges)
        for ranges in description
    )
    return record(control.RANGES, body) + plan_send((array,)).header


def read_record(sock: socket.socket) -> tuple[int, bytes]:
    kind, length = control.decode(receive_exactly(sock, control.SIZE), BOTH)
    return kind, receive_exactly(sock, length)


def ranges_of(*pairs: tuple[int, int]) -> tuple[tuple[samehost.Range, ...], ...]:
    return (tuple(samehost.Range(*pair) for pair in pairs),)
