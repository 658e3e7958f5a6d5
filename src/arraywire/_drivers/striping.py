"""Parallel streams: the parts of a striped message moved at once, each over
its own stream by its own thread, with the core's GIL-free loop.

Stream 0's part runs in the calling thread. A failure on any stream shuts
every stream down, so that the others stop instead of waiting for bytes that
will not come; it is raised once every thread has ended, its ``bytes_done``
the sum over the streams.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from arraywire._core.protocol import Core, ReadAhead
from arraywire._wire.engine import DRAIN_BYTES, Reporter, Stripes
from arraywire._wire.limits import Progress

# One part's work: given its progress callback (or None), move the part and
# return its byte count.
Job = Callable[[Progress | None], int]


class _SharedProgress:
    """The progress of parts moving at once, reported as one position in the
    message (the sum over the parts), one report at a time."""

    def __init__(self, reporter: Reporter, offset: int, parts: int) -> None:
        self._report = reporter.part(offset)
        self._done = [0] * parts
        self._lock = threading.Lock()

    def part(self, index: int) -> Progress:
        def report(done: int, _total: int) -> None:
            with self._lock:
                self._done[index] = done
                self._report(sum(self._done), 0)

        return report


def shut_down(socks: Sequence[socket.socket]) -> None:
    """Stop every transfer on these sockets: a blocked call returns at once.
    The plain socket's shutdown, also for an SSLSocket: its own first drops
    the TLS object, and a send by another stream's thread in that moment
    would go out unencrypted."""
    for sock in socks:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:  # closed or disconnected already
            pass


def move_parts(
    jobs: Sequence[Job], socks: Sequence[socket.socket], reporter: Reporter | None, offset: int
) -> int:
    """Run jobs[i], the part of stream socks[i], all at once (jobs[0] in this
    thread); return the bytes they moved. Raises the first failure, with
    ``bytes_done`` counting every stream's bytes, after every thread ended."""
    progress = None if reporter is None else _SharedProgress(reporter, offset, len(jobs))
    moved = [0] * len(jobs)
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            moved[index] = jobs[index](None if progress is None else progress.part(index))
        except BaseException as exc:  # noqa: BLE001 - raised by the calling thread
            moved[index] = getattr(exc, "bytes_done", None) or 0
            failures.append(exc)
            shut_down(socks)

    threads = [
        threading.Thread(target=run, args=(index,), name=f"arraywire stream {index}", daemon=True)
        for index in range(1, len(jobs))
    ]
    try:
        for thread in threads:
            thread.start()
    except BaseException as exc:  # noqa: BLE001 - no thread may be left behind
        failures.append(exc)
        shut_down(socks)
    else:
        run(0)
    for thread in threads:
        while thread.is_alive():  # False for a thread that never started
            try:
                thread.join()
            except BaseException as exc:  # noqa: BLE001 - an interrupt: stop the others
                failures.append(exc)
                shut_down(socks)
    if failures:
        error = failures[0]
        try:
            error.bytes_done = sum(moved)  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__
            pass
        raise error
    return sum(moved)


def move_timed_parts(
    jobs: Sequence[Job], socks: Sequence[socket.socket], reporter: Reporter | None, offset: int
) -> int:
    """``move_parts``, with the first stream's timeout bounding every stream."""
    timeout = socks[0].gettimeout()
    for sock in socks[1:]:
        sock.settimeout(timeout)
    return move_parts(jobs, socks, reporter, offset)


def send_jobs(core: Core, parts: Sequence[list[Any]], socks: Sequence[socket.socket]) -> list[Job]:
    """The jobs of a striped payload's send: parts[i] over socks[i]."""
    return [_part_job(core.sendmsg_from, part, sock) for part, sock in zip(parts, socks, strict=True)]


def receive_jobs(
    core: Core, stripes: Stripes, socks: Sequence[socket.socket], inbox: ReadAhead | None = None
) -> list[Job]:
    """The jobs of a striped payload's receive (or of its drain, when it does
    not fit): stream i's part from socks[i], stream 0's taking the bytes the
    read-ahead buffer inbox (if any) holds first."""
    if stripes.parts is None:
        return [
            _drain_job(core, size, sock, inbox if index == 0 else None)
            for index, (size, sock) in enumerate(zip(stripes.sizes, socks, strict=True))
        ]
    receive = core.recvmsg_into
    first, *others = zip(stripes.parts, socks, strict=True)
    return [
        _part_job(receive, *first) if inbox is None else _buffered_job(core, *first, inbox),
        *(_part_job(receive, part, sock) for part, sock in others),
    ]


def _part_job(call: Any, part: list[Any], sock: socket.socket) -> Job:
    if not part:
        return lambda progress: 0
    return lambda progress: call(part, sock, progress=progress)


def _buffered_job(core: Core, part: list[Any], sock: socket.socket, inbox: ReadAhead | None) -> Job:
    """Receive a part, its first views from the read-ahead buffer."""

    def receive(progress: Progress | None) -> int:
        rest, taken = _take_buffered(inbox, part)
        if not rest:
            return taken
        report = None if progress is None else partial(_shifted, progress, taken)
        try:
            received: int = core.recvmsg_into(rest, sock, progress=report)
        except BaseException as exc:
            exc.bytes_done = taken + (getattr(exc, "bytes_done", None) or 0)  # type: ignore[attr-defined]
            raise
        return taken + received

    return receive


def _shifted(progress: Progress, taken: int, done: int, total: int) -> None:
    progress(taken + done, total)


def _take_buffered(inbox: Any, part: list[Any]) -> tuple[list[Any], int]:
    """Fill a part's first views from a read-ahead buffer: the views still
    to receive, and the bytes taken."""
    taken = 0
    rest = list(part)
    while rest and inbox.buffered:
        view = memoryview(rest[0])
        count = inbox.take(view)
        taken += count
        if count == len(view):
            rest.pop(0)
        else:
            rest[0] = view[count:]
    return rest, taken


def _drain_job(core: Core, size: int, sock: socket.socket, inbox: ReadAhead | None) -> Job:
    """Read and discard one stream's part of a payload that does not fit
    (so the streams stay in step)."""

    def drain(_progress: Progress | None) -> int:
        scratch = memoryview(bytearray(min(size, DRAIN_BYTES)))
        done = 0
        while done < size:
            piece = scratch[: min(size - done, len(scratch))]
            if inbox is not None and inbox.buffered:
                done += inbox.take(piece)
                continue
            try:
                done += core.recv_into(piece, sock)
            except BaseException as exc:
                exc.bytes_done = done + (getattr(exc, "bytes_done", None) or 0)  # type: ignore[attr-defined]
                raise
        return done

    return drain
