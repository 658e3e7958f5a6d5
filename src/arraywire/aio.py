"""Awaitable transfers for sockets driven by an asyncio event loop.

Same functions, header format, results and errors as the blocking API, for a
non-blocking ``socket.socket`` on a selector event loop (the default on Linux
and macOS; uvloop works too). The event loop is never blocked:

- Up to ``NATIVE_BYTES`` are moved by the loop itself with non-blocking
  ``sendmsg``/``recvmsg_into`` calls, waiting for readiness with
  ``add_writer``/``add_reader`` (the latency of ``loop.sock_sendall``).
- Larger payloads, once the socket is ready, run the blocking GIL-free loop
  in a thread of their own on ``sock.dup()``; the descriptor stays
  non-blocking, so the loop polls on EAGAIN. A thread per transfer (not a
  pool) means a send and its receive in one process can never wait on each
  other for a free worker.

Progress callbacks run in the event loop's thread, at most about every
100 ms and once at the end, and an exception from one aborts the transfer.

Cancellation and failures: a transfer that stops after moving some but not
all of its bytes (cancelled, peer gone, bad header, progress callback raised)
shuts the socket down in both directions, so the peer sees the connection end
instead of waiting for bytes that never come, and marks it broken: every later
call of this module on that socket object raises ``BrokenStreamError`` naming
the transfer and how many bytes it moved. A transfer cancelled while still
waiting for the socket, before any byte moved, leaves the stream as it was.
Cancelling a threaded transfer returns only after its thread has stopped
touching the buffer.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from arraywire import _framing, _transport
from arraywire._common import (
    MAX_CHUNK,
    PROGRESS_INTERVAL,
    Progress,
    check_socket,
    mark_progress,
)
from arraywire._errors import BrokenStreamError, IncompleteTransferError
from arraywire._framing import _mismatch, _Packed, _Throttle, new_array, plan_message, rebase
from arraywire._protocol import (
    DEFAULT_MAX_BYTES,
    PREAMBLE,
    ArraySpec,
    decode_descriptors,
    decode_preamble,
)
from arraywire._transport_py import _advance, _batch, _byte_view

__all__ = [
    "NATIVE_BYTES",
    "recv_array",
    "recv_arrays",
    "recv_into",
    "send_array",
    "send_arrays",
    "send_from",
]

# Payloads up to this size move in the event loop's thread; larger ones in a
# worker thread (`python benchmarks/run.py --only asyncio` measures both sides).
NATIVE_BYTES = 1 << 20
# The worker's socket needs a timeout to stay non-blocking; this one (23 days,
# under poll()'s INT_MAX milliseconds) only ends a peer that is silent that long.
WORKER_TIMEOUT = 2_000_000.0

T = TypeVar("T")


@dataclass
class _SocketState:
    busy: set[str] = field(default_factory=set)
    broken: str | None = None


_states: weakref.WeakKeyDictionary[socket.socket, _SocketState] = weakref.WeakKeyDictionary()


class _Transfer:
    """One awaitable transfer on one socket: readiness waits, the native and
    threaded paths, and the broken-stream bookkeeping when it stops part-way."""

    def __init__(self, sock: Any, name: str, sending: bool, total: int | None = None) -> None:
        _, timeout = check_socket(sock)
        if timeout != 0:
            raise ValueError(
                "the socket must be non-blocking (sock.setblocking(False)) to be used "
                "with asyncio"
            )
        self.sock: socket.socket = sock
        self.name = name
        self.sending = sending
        self.direction = "send" if sending else "receive"
        self.total = total
        self.done = 0  # bytes of the whole message moved so far
        self.shut = False
        self.loop = asyncio.get_running_loop()
        state = _states.get(sock)
        if state is None:
            state = _states[sock] = _SocketState()
        self.state = state

    async def __aenter__(self) -> _Transfer:
        if self.state.broken is not None:
            raise BrokenStreamError(f"cannot {self.name}: {self.state.broken}")
        if self.direction in self.state.busy:
            raise RuntimeError(
                f"another arraywire.aio {self.direction} is in progress on this socket"
            )
        self.state.busy.add(self.direction)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.state.busy.discard(self.direction)
        if exc is None:
            return
        partial = self.done > 0 and (self.total is None or self.done < self.total)
        if not (partial or self.shut):
            return
        of = "" if self.total is None else f" of {self.total:,}"
        why = "was cancelled" if isinstance(exc, asyncio.CancelledError) else (
            f"failed ({type(exc).__name__}: {exc})"
        )
        self.state.broken = (
            f"an earlier {self.name} on this socket {why} after {self.done:,}{of} bytes, "
            "so its byte stream is out of step with the peer and it was shut down; "
            "close it"
        )
        self._shutdown()

    def _shutdown(self) -> None:
        self.shut = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already disconnected or closed
            pass

    async def ready(self) -> None:
        """Wait until the socket can be written (sending) or read."""
        fd = self.sock.fileno()
        waiter = self.loop.create_future()
        if self.sending:
            self.loop.add_writer(fd, _wake, waiter)
        else:
            self.loop.add_reader(fd, _wake, waiter)
        try:
            await waiter
        finally:
            if self.sending:
                self.loop.remove_writer(fd)
            else:
                self.loop.remove_reader(fd)

    async def native(
        self, views: list[memoryview], message_total: int | None, progress: Progress | None
    ) -> None:
        """Move byte views with non-blocking calls, as _transport_py._transfer does."""
        views = [view for view in views if view.nbytes]
        part_total = sum(view.nbytes for view in views)
        throttle = None if progress is None else _Throttle(progress, part_total)
        base = self.done
        done = 0
        first = 0
        try:
            while first < len(views):
                try:
                    moved = self._call(views, first)
                except (BlockingIOError, InterruptedError):
                    await self.ready()
                    continue
                if moved == 0 and not self.sending:
                    raise IncompleteTransferError(done, part_total)
                done += moved
                self.done += moved
                first = _advance(views, first, moved)
                if throttle is not None:
                    throttle(done, part_total)
            if progress is not None and part_total == 0:
                progress(0, 0)
        except BaseException as exc:
            mark_progress(exc, done)
            rebase(exc, base, message_total)
            raise

    def _call(self, views: list[memoryview], first: int) -> int:
        sock = self.sock
        if first == len(views) - 1:
            view = views[first]
            if self.sending:
                return sock.send(view[:MAX_CHUNK])
            return sock.recv_into(view, min(len(view), MAX_CHUNK))
        batch = _batch(views, first, MAX_CHUNK)
        if self.sending:
            return sock.sendmsg(batch)
        return sock.recvmsg_into(batch)[0]

    async def threaded(
        self,
        work: Callable[[socket.socket, Progress | None], T],
        part_total: int,
        message_total: int | None,
        progress: Progress | None,
    ) -> T:
        """Run work(dup_of_sock, progress) in a thread of its own."""
        forward = None if progress is None else _Forward(self.loop, progress)
        dup = self.sock.dup()
        dup.settimeout(WORKER_TIMEOUT)
        settled = self.loop.create_future()
        loop = self.loop

        def run() -> None:
            try:
                outcome: tuple[Any, BaseException | None] = (work(dup, forward), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                outcome = (None, exc)
            finally:
                dup.close()
            try:
                loop.call_soon_threadsafe(_settle, settled, outcome)
            except RuntimeError:  # the event loop was closed meanwhile
                pass

        base = self.done
        threading.Thread(target=run, name=f"arraywire.aio {self.name}", daemon=True).start()
        try:
            await asyncio.wait((settled,))
        except asyncio.CancelledError:
            # Stop the thread (its poll() wakes up) and wait until it has let
            # go of the buffer; further cancellations cannot cut this short.
            if not settled.done():
                self._shutdown()
            while not settled.done():
                try:
                    await asyncio.wait((settled,))
                except asyncio.CancelledError:
                    pass
            result, error = settled.result()
            self.done = base + (part_total if error is None else _moved(error))
            raise
        result, error = settled.result()
        if error is None and forward is not None and forward.error is not None:
            error = forward.error
            error.bytes_done = part_total  # type: ignore[attr-defined]
        if error is not None:
            self.done = base + _moved(error)
            rebase(error, base, message_total)
            raise error
        self.done = base + part_total
        return result  # type: ignore[no-any-return]

    async def recv_header(self, max_bytes: int | None) -> tuple[list[ArraySpec], int]:
        """As _framing.recv_header, with the loop's non-blocking calls."""
        preamble = bytearray(PREAMBLE.size)
        await self.native([memoryview(preamble)], None, None)
        block_len, count = decode_preamble(bytes(preamble))
        block = bytearray(block_len)
        await self.native([memoryview(block)], None, None)
        return decode_descriptors(bytes(block), count, max_bytes), PREAMBLE.size + block_len


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _settle(settled: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]) -> None:
    settled.set_result(outcome)


def _moved(error: BaseException) -> int:
    return int(getattr(error, "bytes_done", None) or 0)


class _Forward:
    """Hands a worker thread's progress reports to the event loop's thread.

    An exception from the callback is raised in the worker at its next report,
    which aborts the transfer as it would in the blocking API.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, progress: Progress) -> None:
        self.loop = loop
        self.progress = progress
        self.error: Exception | None = None
        self.next_report = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.error is not None:
            raise self.error
        self.loop.call_soon_threadsafe(self._deliver, done, total)

    def _deliver(self, done: int, total: int) -> None:
        if self.error is not None:
            return
        # Reports queued behind a busy loop arrive together: pass on one.
        now = time.monotonic()
        if done < total and now < self.next_report:
            return
        self.next_report = now + PROGRESS_INTERVAL
        try:
            self.progress(done, total)
        except Exception as exc:  # noqa: BLE001 - re-raised by the transfer
            self.error = exc


async def send_from(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send every byte of a contiguous buffer; return the byte count."""
    return await _raw(obj, sock, progress, sending=True)


async def recv_into(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a writable contiguous buffer completely; return the byte count."""
    return await _raw(obj, sock, progress, sending=False)


async def _raw(obj: Any, sock: Any, progress: Progress | None, *, sending: bool) -> int:
    view = _byte_view(obj, writable=not sending)
    total = view.nbytes
    name = "send_from" if sending else "recv_into"
    blocking = getattr(_transport.impl, name)
    async with _Transfer(sock, name, sending, total) as transfer:
        if total <= NATIVE_BYTES:
            await transfer.native([view], total, progress)
        else:
            await transfer.ready()
            await transfer.threaded(
                lambda dup, report: blocking(obj, dup, progress=report),
                total, total, progress,
            )
    return total


async def send_arrays(
    arrays: Iterable[Any], sock: Any, *, progress: Progress | None = None
) -> int:
    """Send arrays as one self-describing message; return the bytes sent."""
    return await _send_message(arrays, sock, progress, "send_arrays")


async def send_array(array: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send one array as a self-describing message; return the bytes sent."""
    return await _send_message((array,), sock, progress, "send_array")


async def _send_message(
    items: Iterable[Any], sock: Any, progress: Progress | None, name: str
) -> int:
    arrays = [np.asarray(item) for item in items]
    header, segments, total = plan_message(arrays)
    async with _Transfer(sock, name, True, total) as transfer:
        if total <= NATIVE_BYTES:
            pieces = [
                np.ascontiguousarray(s.array) if isinstance(s, _Packed) else s
                for s in segments
            ]
            views = [memoryview(header)]
            views += (_byte_view(piece, writable=False) for piece in pieces)
            await transfer.native(views, total, progress)
        else:
            await transfer.ready()
            await transfer.threaded(
                lambda dup, report: _framing.send_arrays(arrays, dup, progress=report),
                total, total, progress,
            )
    return total


async def recv_arrays(
    sock: Any,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """Receive one message; return its arrays (each with memory of its own).

    A header declaring more than max_bytes of payload (None: no limit) raises
    ProtocolError before anything is allocated. Progress counts message bytes
    (header included), as the sender's does.
    """
    async with _Transfer(sock, "recv_arrays", False) as transfer:
        specs, header_size = await transfer.recv_header(max_bytes)
        arrays = [new_array(spec) for spec in specs]
        await _recv_payload(transfer, arrays, header_size, progress)
    return arrays


async def recv_array(
    sock: Any,
    *,
    out: np.ndarray | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> np.ndarray:
    """Receive a one-array message, into ``out`` when given.

    If ``out`` does not match the message, the payload is read and discarded
    so the connection stays usable, then ValueError is raised.
    """
    async with _Transfer(sock, "recv_array", False) as transfer:
        specs, header_size = await transfer.recv_header(max_bytes)
        problem = _mismatch(specs, out)
        if problem:
            await _drain(transfer, sum(spec.nbytes for spec in specs), header_size)
            raise ValueError(problem)
        target = new_array(specs[0]) if out is None else out
        await _recv_payload(transfer, [target], header_size, progress)
    return target


async def _recv_payload(
    transfer: _Transfer, arrays: list[np.ndarray], header_size: int, progress: Progress | None
) -> None:
    payload = sum(array.nbytes for array in arrays)
    transfer.total = header_size + payload
    progress = _framing.message_progress(progress, header_size, transfer.total)
    if payload <= NATIVE_BYTES:
        views = [_byte_view(array, writable=True) for array in arrays]
        await transfer.native(views, transfer.total, progress)
    else:
        await transfer.threaded(
            lambda dup, report: _transport.impl.recvmsg_into(arrays, dup, progress=report),
            payload, transfer.total, progress,
        )


async def _drain(transfer: _Transfer, payload: int, header_size: int) -> None:
    transfer.total = header_size + payload
    if payload > NATIVE_BYTES:
        await transfer.threaded(
            lambda dup, _report: _framing.drain(dup, payload), payload, transfer.total, None
        )
        return
    await transfer.native([memoryview(bytearray(payload))], transfer.total, None)
