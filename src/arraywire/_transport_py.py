"""Pure-Python transport backend: the memoryview recipe, hardened.

Twin of ``_transport_c.pyx``: same functions, same results, same errors.
Each call goes through the socket object's own methods, so the GIL is taken
again after every partial send/recv (which is why the compiled twin exists).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from arraywire._common import (
    MAX_CHUNK,
    PROGRESS_CHUNK,
    PROGRESS_INTERVAL,
    Progress,
    check_socket,
    mark_progress,
)
from arraywire._errors import IncompleteTransferError
from arraywire._step import PendingViews, byte_view

BACKEND = "python"


def send_from(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send every byte of a contiguous buffer; return the byte count."""
    check_socket(sock)
    return _transfer(sock, [byte_view(obj, writable=False)], True, progress)


def recv_into(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a writable contiguous buffer completely; return the byte count."""
    check_socket(sock)
    return _transfer(sock, [byte_view(obj, writable=True)], False, progress)


def sendmsg_from(
    buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None
) -> int:
    """Send a sequence of buffers back to back with gather sendmsg calls."""
    check_socket(sock)
    # no local holds the views: a traceback would keep the buffers exported
    return _transfer(
        sock, [byte_view(obj, writable=False) for obj in tuple(buffers)], True, progress
    )


def recvmsg_into(
    buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None
) -> int:
    """Fill a sequence of buffers in order with scatter recvmsg_into calls."""
    check_socket(sock)
    # no local holds the views: a traceback would keep the buffers exported
    return _transfer(
        sock, [byte_view(obj, writable=True) for obj in tuple(buffers)], False, progress
    )


def _transfer(
    sock: Any, views: list[memoryview], sending: bool, progress: Progress | None
) -> int:
    pending = PendingViews(views)
    total = pending.nbytes
    chunk = MAX_CHUNK if progress is None else PROGRESS_CHUNK
    next_report = time.monotonic() + PROGRESS_INTERVAL
    done = 0
    moved: list[int] = []  # filled by PendingViews.step, read before a handler can run
    try:
        while done < total:
            pending.step(sock, sending, chunk, moved)
            if moved[0] == 0 and not sending:
                raise IncompleteTransferError(done, total)
            done += moved[0]
            pending.advance(moved.pop())
            if progress is not None and done < total:
                now = time.monotonic()
                if now >= next_report:
                    progress(done, total)
                    next_report = now + PROGRESS_INTERVAL
        if progress is not None:
            progress(done, total)
    except BaseException as exc:
        mark_progress(exc, done + sum(moved))
        # The traceback keeps this frame alive: drop the views so the buffers
        # are released now, as the compiled twin releases them.
        pending.release()
        views.clear()
        raise
    return total
