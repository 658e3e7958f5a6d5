"""One transfer step over Python's socket methods, shared by the pure backend's
loop (``transport_py``) and the event-loop path of ``arraywire.aio``, in the
manner of trio's ``_nonblocking_helper``: the caller makes the step and, on a
non-blocking socket, waits for readiness when it raises BlockingIOError.

Sends pass MSG_NOSIGNAL, as the compiled twin does: a closed peer gives
BrokenPipeError (EPIPE) even where SIGPIPE's default action, killing the
process, was restored.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

import numpy as np

from arraywire._wire.limits import (
    IOV_MAX,
    format_has_objects,
    not_a_buffer,
    not_contiguous,
    numpy_bytes,
    object_items,
    read_only,
)

SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


def byte_view(obj: Any, *, writable: bool) -> memoryview:
    """A flat byte view of a contiguous buffer, checked as the compiled twin checks."""
    if type(obj) is bytearray or type(obj) is bytes:  # already flat bytes, as headers are
        view = memoryview(obj)
        if writable and view.readonly:
            raise read_only(obj)
        return view
    if type(obj) is memoryview and obj.format == "B" and obj.ndim == 1 and obj.c_contiguous:
        # a byte view already, as the engine's reads are
        if writable and obj.readonly:
            raise read_only(obj)
        return obj
    if isinstance(obj, np.ndarray):
        return numpy_bytes(obj, writable).data
    try:
        view = memoryview(obj)
    except TypeError:
        raise not_a_buffer(obj) from None
    if writable and view.readonly:
        raise read_only(obj)
    if not view.contiguous:
        raise not_contiguous(obj)
    if format_has_objects(view.format):
        raise object_items(obj)
    if view.c_contiguous:
        try:
            return view.cast("B")
        except TypeError:  # a format memoryview cannot cast; numpy can
            pass
    return numpy_bytes(np.asarray(view), writable).data


class PendingViews:
    """Byte views still to move, in order; ``step`` moves the front of them."""

    __slots__ = ("first", "nbytes", "views")

    def __init__(self, views: Iterable[memoryview]) -> None:
        # byte views: len is nbytes
        self.views = [view for view in views if view]
        self.nbytes = len(self.views[0]) if len(self.views) == 1 else sum(map(len, self.views))
        self.first = 0

    def step(self, sock: socket.socket, sending: bool, chunk: int, counts: list[int]) -> None:
        """One send/recv/sendmsg/recvmsg_into call of at most chunk bytes.

        Its count is appended to counts by C code (list.extend over map)
        before a signal handler can run: Python runs handlers when a call
        returns, and one that raised there would lose a partial call's count.
        No local holds a view, so a traceback does not keep buffers exported.
        """
        if self.first == len(self.views) - 1:
            if sending:
                counts.extend(map(sock.send, (self.views[self.first][:chunk],), (SEND_FLAGS,)))
            else:
                counts.extend(
                    map(
                        sock.recv_into,
                        (self.views[self.first],),
                        (min(len(self.views[self.first]), chunk),),
                    )
                )
        elif sending:
            counts.extend(map(sock.sendmsg, (self.batch(chunk),), ((),), (SEND_FLAGS,)))
        else:
            counts.extend(map(itemgetter(0), map(sock.recvmsg_into, (self.batch(chunk),))))

    def batch(self, budget: int) -> list[memoryview]:
        """The views of the next gather/scatter call: at most IOV_MAX, budget bytes."""
        batch = []
        for view in self.views[self.first : self.first + IOV_MAX]:
            if len(view) >= budget:
                batch.append(view[:budget])
                break
            batch.append(view)
            budget -= len(view)
        return batch

    def advance(self, moved: int) -> None:
        """Drop the first moved bytes."""
        views = self.views
        while moved:
            size = len(views[self.first])
            if moved >= size:
                moved -= size
                self.first += 1
            else:
                views[self.first] = views[self.first][moved:]
                moved = 0

    def release(self) -> None:
        """Let go of every view, so the buffers are released now."""
        self.views.clear()
