"""Pure-Python transport backend: the memoryview recipe, hardened.

Twin of ``_transport_c.pyx``: same functions, same results, same errors.
Each call goes through the socket object's own methods, so the GIL is taken
again after every partial send/recv (which is why the compiled twin exists).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

import numpy as np

from arraywire._common import (
    IOV_MAX,
    MAX_CHUNK,
    PROGRESS_CHUNK,
    PROGRESS_INTERVAL,
    Progress,
    check_socket,
    format_has_objects,
    mark_progress,
    not_a_buffer,
    not_contiguous,
    numpy_bytes,
    object_items,
    read_only,
)
from arraywire._errors import IncompleteTransferError

BACKEND = "python"

# Like the compiled twin: a closed peer gives EPIPE even where SIGPIPE's
# default action (killing the process) was restored.
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


def send_from(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send every byte of a contiguous buffer; return the byte count."""
    check_socket(sock)
    return _transfer(sock, [_byte_view(obj, writable=False)], True, progress)


def recv_into(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a writable contiguous buffer completely; return the byte count."""
    check_socket(sock)
    return _transfer(sock, [_byte_view(obj, writable=True)], False, progress)


def sendmsg_from(
    buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None
) -> int:
    """Send a sequence of buffers back to back with gather sendmsg calls."""
    check_socket(sock)
    # no local holds the views: a traceback would keep the buffers exported
    return _transfer(
        sock, [_byte_view(obj, writable=False) for obj in tuple(buffers)], True, progress
    )


def recvmsg_into(
    buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None
) -> int:
    """Fill a sequence of buffers in order with scatter recvmsg_into calls."""
    check_socket(sock)
    # no local holds the views: a traceback would keep the buffers exported
    return _transfer(
        sock, [_byte_view(obj, writable=True) for obj in tuple(buffers)], False, progress
    )


def _byte_view(obj: Any, *, writable: bool) -> memoryview:
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


def _transfer(
    sock: Any, views: list[memoryview], sending: bool, progress: Progress | None
) -> int:
    views = [view for view in views if view.nbytes]
    total = sum(view.nbytes for view in views)
    chunk = MAX_CHUNK if progress is None else PROGRESS_CHUNK
    next_report = time.monotonic() + PROGRESS_INTERVAL
    done = 0
    first = 0
    # Each call's count is stored by C code (list.extend over map) before a
    # signal handler can run: Python runs handlers when a call returns, and one
    # that raised there would lose the count of a partial send or receive.
    moved: list[int] = []
    try:
        while done < total:
            if first == len(views) - 1:
                if sending:
                    moved.extend(map(sock.send, (views[first][:chunk],), (_SEND_FLAGS,)))
                else:
                    size = min(len(views[first]), chunk)
                    moved.extend(map(sock.recv_into, (views[first],), (size,)))
            elif sending:
                batch = _batch(views, first, chunk)
                moved.extend(map(sock.sendmsg, (batch,), ((),), (_SEND_FLAGS,)))
            else:
                batch = _batch(views, first, chunk)
                moved.extend(map(itemgetter(0), map(sock.recvmsg_into, (batch,))))
            if moved[0] == 0 and not sending:
                raise IncompleteTransferError(done, total)
            done += moved[0]
            first = _advance(views, first, moved.pop())
            if progress is not None and done < total:
                now = time.monotonic()
                if now >= next_report:
                    progress(done, total)
                    next_report = now + PROGRESS_INTERVAL
        if progress is not None:
            progress(done, total)
    except BaseException as exc:
        mark_progress(exc, done + sum(moved))
        # The traceback keeps this frame alive: drop its views so the buffers
        # are released now, as the compiled twin releases them.
        views.clear()
        batch = []
        raise
    return total


def _batch(views: list[memoryview], first: int, budget: int) -> list[memoryview]:
    batch = []
    for view in views[first : first + IOV_MAX]:
        if len(view) >= budget:
            batch.append(view[:budget])
            break
        batch.append(view)
        budget -= len(view)
    return batch


def _advance(views: list[memoryview], first: int, moved: int) -> int:
    while moved:
        size = len(views[first])
        if moved >= size:
            moved -= size
            first += 1
        else:
            views[first] = views[first][moved:]
            moved = 0
    return first
