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
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from arraywire import _transport
from arraywire._common import DIRECT_BYTES, MAX_CHUNK, Progress, check_socket, mark_progress
from arraywire._engine import (
    Message,
    MessageProgress,
    Receive,
    Reporter,
    SendPlan,
    Stripes,
    Transfer,
    buffered_reads,
    plan_send,
)
from arraywire._errors import BrokenStreamError, IncompleteTransferError
from arraywire._framing import one_stream, write_plan
from arraywire._protocol import DEFAULT_MAX_BYTES, DEFAULT_MAX_METADATA
from arraywire._step import PendingViews, byte_view
from arraywire._striping import Job, move_parts, receive_jobs, send_jobs, shut_down

if TYPE_CHECKING:  # either twin's; they have the same signatures
    from arraywire._transport_py import Inbox

__all__ = [
    "NATIVE_BYTES",
    "Channel",
    "Listener",
    "connect",
    "listen",
    "recv_array",
    "recv_arrays",
    "recv_into",
    "recv_message",
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


# --- which transfers hold a socket, and which sockets are broken ---------------


@dataclass
class _SocketState:
    busy: set[str] = field(default_factory=set)
    broken: str | None = None


_states: weakref.WeakKeyDictionary[socket.socket, _SocketState] = weakref.WeakKeyDictionary()


class _Claim:
    """One direction of a socket, held by one transfer. When the transfer stops
    with the stream out of step (the engine's ``fail`` says so), or after the
    socket was shut down to stop a worker thread, the socket is shut down and
    marked broken."""

    def __init__(self, sock: Any, name: str, sending: bool, transfer: Transfer) -> None:
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
        self.transfer = transfer
        self.shut = False
        state = _states.get(sock)
        if state is None:
            state = _states[sock] = _SocketState()
        self.state = state

    async def __aenter__(self) -> _Claim:
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
        out_of_step = self.transfer.fail(exc)
        if not (out_of_step or self.shut):
            return
        done = getattr(exc, "bytes_done", None) or self.transfer.offset
        total = self.transfer.total
        of = "" if total is None else f" of {total:,}"
        why = "was cancelled" if isinstance(exc, asyncio.CancelledError) else (
            f"failed ({type(exc).__name__}: {exc})"
        )
        self.state.broken = (
            f"an earlier {self.name} on this socket {why} after {done:,}{of} bytes, "
            "so its byte stream is out of step with the peer and it was shut down; "
            "close it"
        )
        self.shutdown()

    def shutdown(self) -> None:
        self.shut = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already disconnected or closed
            pass


# --- moving bytes: in the event loop, or in a worker thread ---------------------


async def _ready(sock: socket.socket, sending: bool) -> None:
    """Wait until the socket can be written (sending) or read."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    waiter = loop.create_future()
    if sending:
        loop.add_writer(fd, _wake, waiter)
    else:
        loop.add_reader(fd, _wake, waiter)
    try:
        await waiter
    finally:
        if sending:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _in_loop(
    sock: socket.socket, pending: PendingViews, sending: bool, progress: Progress | None
) -> int:
    """Move byte views with non-blocking calls: the pure twin's loop, awaiting
    readiness where that one would block. Returns the count, and marks an
    error with the bytes moved, as the core calls do."""
    total = pending.nbytes
    done = 0
    moved: list[int] = []  # filled by PendingViews.step
    try:
        # not `while done < total`: Python 3.13 lets an interrupt raised while
        # evaluating a loop's condition escape the try (CPython issue 130279)
        while True:
            if done >= total:
                break
            try:
                pending.step(sock, sending, MAX_CHUNK, moved)
            except (BlockingIOError, InterruptedError):
                await _ready(sock, sending)
                continue
            if moved[0] == 0 and not sending:
                raise IncompleteTransferError(done, total)
            done += moved[0]
            pending.advance(moved.pop())
            if progress is not None:
                progress(done, total)
    except BaseException as exc:
        mark_progress(exc, done + sum(moved))
        pending.release()
        raise
    return total


async def _in_thread(
    claim: _Claim,
    sending: bool,
    work: Callable[[socket.socket], T],
    *,
    wait: bool = True,
    also: Sequence[socket.socket] = (),
) -> T:
    """Run work(dup_of_sock) in a thread of its own once the socket is ready
    (at once without ``wait``); a cancellation shuts down the sockets
    ``also`` (which the work uses too) with the claim's.

    The work records what it moved in the engine itself; an error it raises
    carries the bytes of its unfinished call, as the core calls' errors do.
    """
    if wait:
        await _ready(claim.sock, sending)
    loop = asyncio.get_running_loop()
    dup = claim.sock.dup()
    dup.settimeout(WORKER_TIMEOUT)
    settled = loop.create_future()

    def run() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (work(dup), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (None, exc)
        finally:
            dup.close()
        try:
            loop.call_soon_threadsafe(_settle, settled, outcome)
        except RuntimeError:  # the event loop was closed meanwhile
            pass

    threading.Thread(target=run, name=f"arraywire.aio {claim.name}", daemon=True).start()
    try:
        await asyncio.wait((settled,))
    except asyncio.CancelledError as cancelled:
        # Stop the thread (its poll() wakes up) and wait until it has let
        # go of the buffer; further cancellations cannot cut this short.
        if not settled.done():
            claim.shutdown()
            shut_down(also)
        while not settled.done():
            try:
                await asyncio.wait((settled,))
            except asyncio.CancelledError:
                pass
        _, error = settled.result()
        mark_progress(cancelled, 0 if error is None else _moved(error))
        raise
    result, error = settled.result()
    if error is not None:
        raise error
    return result  # type: ignore[no-any-return]


def _settle(settled: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]) -> None:
    settled.set_result(outcome)


def _moved(error: BaseException) -> int:
    return int(getattr(error, "bytes_done", None) or 0)


class _Forward:
    """Hands a worker thread's progress reports to the event loop's thread,
    where the message's reporter (its one throttle) runs the callback.

    An exception from the callback is raised in the worker at its next report,
    which aborts the transfer as it would in the blocking API, or after the
    work by ``raise_error``.
    """

    def __init__(self, reporter: Reporter) -> None:
        self.loop = asyncio.get_running_loop()
        self.reporter = reporter
        self.error: Exception | None = None

    def part(self, offset: int) -> Progress:
        report = self.reporter.part(offset)

        def forward(done: int, total: int) -> None:
            if self.error is not None:
                raise self.error
            self.loop.call_soon_threadsafe(self._deliver, report, done, total)

        return forward

    def _deliver(self, report: Progress, done: int, total: int) -> None:
        if self.error is not None:
            return
        try:
            report(done, total)
        except Exception as exc:  # noqa: BLE001 - re-raised by the transfer
            self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


async def _move(
    claim: _Claim, buffers: list[Any], sending: bool, reporter: Reporter | None
) -> None:
    """Move one batch (sending) or read (receiving) of the transfer: in the
    event loop up to NATIVE_BYTES, else by the GIL-free core in a thread."""
    transfer = claim.transfer
    offset = transfer.offset
    pending = PendingViews([byte_view(buffer, writable=not sending) for buffer in buffers])
    if pending.nbytes <= NATIVE_BYTES:
        progress = None if reporter is None else reporter.part(offset)
        transfer.moved(await _in_loop(claim.sock, pending, sending, progress))
        return
    pending.release()
    core = _transport.impl
    call = core.sendmsg_from if sending else core.recvmsg_into
    forward = None if reporter is None else _Forward(reporter)
    await _in_thread(
        claim,
        sending,
        lambda dup: transfer.moved(
            call(buffers, dup, progress=None if forward is None else forward.part(offset))
        ),
    )
    if forward is not None:
        forward.raise_error()


async def _move_stripes(
    claim: _Claim,
    streams: Sequence[socket.socket],
    sending: bool,
    jobs: Callable[[list[socket.socket]], list[Job]],
    reporter: Reporter | None,
) -> None:
    """Move a striped payload's parts at once (``_striping``), in worker
    threads on duplicates of the streams' sockets, and count them in the
    claim's transfer; cancelled as ``_in_thread``. Any failure leaves the
    streams shut down, and the socket marked broken."""
    forward = None if reporter is None else _Forward(reporter)
    offset = claim.transfer.offset

    def work(first: socket.socket) -> int:
        others = [sock.dup() for sock in streams[1:]]
        try:
            for sock in others:
                sock.settimeout(WORKER_TIMEOUT)
            duplicates = [first, *others]
            return move_parts(jobs(duplicates), duplicates, forward, offset)
        finally:
            for sock in others:
                sock.close()

    try:
        # a receive does not wait for the first stream: its part may be read
        # ahead already, and the others' bytes come anyway
        claim.transfer.moved(await _in_thread(claim, sending, work, wait=sending, also=streams[1:]))
    except BaseException:
        claim.shutdown()
        shut_down(streams[1:])
        raise
    if forward is not None:
        forward.raise_error()


# --- the public functions -------------------------------------------------------


async def send_from(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send every byte of a contiguous buffer over a non-blocking stream socket.

    As ``arraywire.send_from``, awaited: no header goes out, so the receiver
    must know the size. ``progress`` is called in the event loop's thread.

    Returns
    -------
    int
        The bytes sent: all of the buffer's.

    Raises
    ------
    TypeError
        Before any byte: obj exports no buffer or holds Python objects, or
        sock is not a stream ``socket.socket`` (an ``ssl.SSLSocket``
        included).
    ValueError
        Before any byte: the buffer is not contiguous, or the socket is not
        non-blocking (call ``sock.setblocking(False)`` first).
    RuntimeError
        Another ``arraywire.aio`` send is in progress on this socket.
    BrokenStreamError
        An earlier ``arraywire.aio`` transfer on this socket stopped
        part-way.
    OSError
        The socket's error (BrokenPipeError, ConnectionResetError, EBADF for
        a closed socket, ...), with ``bytes_done``. If some but not all of
        the bytes went out, the socket is shut down and marked broken.
    asyncio.CancelledError
        The task was cancelled. Cancelled while still waiting for the socket,
        before any byte moved, the stream is left as it was; else the socket
        is shut down and marked broken. A transfer in a worker thread
        re-raises only once its thread has let go of the buffer.
    """
    return await _raw(obj, sock, progress, sending=True)


async def recv_into(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a writable contiguous buffer completely from a non-blocking stream socket.

    As ``arraywire.recv_into``, awaited; ``progress`` is called in the event
    loop's thread.

    Returns
    -------
    int
        The bytes received: the buffer's size.

    Raises
    ------
    IncompleteTransferError
        The peer closed the connection before the buffer was full; its
        ``bytes_done`` bytes are in the buffer. If some came, the socket is
        shut down and marked broken.
    TypeError
        Before any byte: as for ``send_from``, or the buffer is read-only.
    ValueError
        Before any byte: the buffer is not contiguous, or the socket is not
        non-blocking.
    RuntimeError
        Another ``arraywire.aio`` receive is in progress on this socket.
    BrokenStreamError
        An earlier ``arraywire.aio`` transfer on this socket stopped
        part-way.
    OSError
        The socket's error, with ``bytes_done``; as for ``send_from``.
    asyncio.CancelledError
        The task was cancelled. Cancelled while still waiting for the socket,
        before any byte moved, the stream is left as it was; else the socket
        is shut down and marked broken. A transfer in a worker thread
        re-raises only once its thread has let go of the buffer.
    """
    return await _raw(obj, sock, progress, sending=False)


async def _raw(obj: Any, sock: Any, progress: Progress | None, *, sending: bool) -> int:
    view = byte_view(obj, writable=not sending)
    total = view.nbytes
    reporter = None if progress is None else MessageProgress(progress, total)
    name = "send_from" if sending else "recv_into"
    async with _Claim(sock, name, sending, Transfer(total)) as claim:
        if total <= NATIVE_BYTES:  # already a byte view: straight to the loop's calls
            part = None if reporter is None else reporter.part(0)
            claim.transfer.moved(await _in_loop(sock, PendingViews((view,)), sending, part))
        else:
            await _move(claim, [view], sending, reporter)
        if reporter is not None:
            reporter.finish()
    return total


async def send_arrays(
    arrays: Iterable[Any] | Mapping[str, Any],
    sock: Any,
    *,
    metadata: bytes | None = None,
    progress: Progress | None = None,
) -> int:
    """Send arrays as one self-describing message over a non-blocking stream socket.

    ``arrays``, ``metadata`` and ``progress`` are as for
    ``arraywire.send_arrays`` (a mapping sends the names too); ``progress``
    is called in the event loop's thread.

    Returns
    -------
    int
        The bytes sent: the header's and every array's.

    Raises
    ------
    TypeError, ValueError
        Before the first byte: what ``arraywire.send_arrays`` refuses, or
        (ValueError) a socket that is not non-blocking.
    RuntimeError
        Another ``arraywire.aio`` send is in progress on this socket.
    BrokenStreamError
        An earlier ``arraywire.aio`` transfer on this socket stopped
        part-way.
    OSError
        The socket's error, with ``bytes_done`` counted from the start of the
        message. If part of the message went out, the socket is shut down
        and marked broken.
    asyncio.CancelledError
        The task was cancelled. Cancelled while still waiting for the socket,
        before any byte moved, the stream is left as it was; else the socket
        is shut down and marked broken. A transfer in a worker thread
        re-raises only once its thread has let go of the buffer.
    """
    return await _send_message(arrays, sock, metadata, progress, "send_arrays")


async def send_array(
    array: Any, sock: Any, *, metadata: bytes | None = None, progress: Progress | None = None
) -> int:
    """Send one array as a self-describing message over a non-blocking stream socket.

    The message is that of ``send_arrays((array,), sock)``; ``metadata`` and
    ``progress`` are as there.

    Returns
    -------
    int
        The bytes sent: the header's and the array's.

    Raises
    ------
    TypeError, ValueError, RuntimeError, BrokenStreamError, OSError, asyncio.CancelledError
        As ``send_arrays`` raises them (TypeError and ValueError before the
        first byte).
    """
    return await _send_message((array,), sock, metadata, progress, "send_array")


async def _send_message(
    items: Iterable[Any] | Mapping[str, Any],
    sock: Any,
    metadata: bytes | None,
    progress: Progress | None,
    name: str,
) -> int:
    return await send_plan(sock, name, plan_send(items, progress, metadata))


async def send_plan(
    sock: Any, name: str, plan: SendPlan, streams: Sequence[socket.socket] = ()
) -> int:
    """Write a planned message (the aio Channel's sends, over its parallel
    ``streams`` when it has them, sock first); return its bytes."""
    async with _Claim(sock, name, True, plan) as claim:
        parts = plan.stripes(len(streams))
        if parts is not None:
            await _move_stripes(
                claim, streams, True,
                lambda socks: send_jobs(_transport.impl, parts, socks),
                plan.reporter,
            )
        elif plan.total <= NATIVE_BYTES:
            for batch in plan.batches():
                await _move(claim, batch, True, plan.reporter)
        else:
            forward = None if plan.reporter is None else _Forward(plan.reporter)
            await _in_thread(claim, True, lambda dup: write_plan(plan, dup, forward))
            if forward is not None:
                forward.raise_error()
        return plan.complete()


async def recv_arrays(
    sock: Any,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Receive one message of any number of arrays from a non-blocking stream socket.

    As ``arraywire.recv_arrays``, awaited. A header declaring more than
    max_bytes of payload (None: only the format's limit) raises ProtocolError
    before anything is allocated. Progress counts message bytes (header
    included), as the sender's does, and is called in the event loop's
    thread.

    Returns
    -------
    list of numpy.ndarray, or dict of str to numpy.ndarray
        The arrays, each fresh, writable and with memory of its own: a dict in
        the sender's order when the sender named them, else a list. The
        metadata is dropped (``recv_message`` returns it).

    Raises
    ------
    EOFError
        The peer closed the connection cleanly, before the message's first
        byte.
    IncompleteTransferError
        The peer closed inside the message; ``bytes_done`` and
        ``bytes_expected`` count from its start.
    ProtocolError
        The header is malformed, of an unsupported version, or declares more
        than ``max_bytes`` of payload or more metadata than
        ``DEFAULT_MAX_METADATA``.
    TypeError
        The socket is not a stream ``socket.socket``.
    ValueError
        The socket is not non-blocking (call ``sock.setblocking(False)``
        first).
    RuntimeError
        Another ``arraywire.aio`` receive is in progress on this socket.
    BrokenStreamError
        An earlier ``arraywire.aio`` transfer on this socket stopped
        part-way.
    OSError
        The socket's error (ConnectionResetError, ...), with ``bytes_done``.
    asyncio.CancelledError
        The task was cancelled. Cancelled while still waiting for the socket,
        before any byte moved, the stream is left as it was; else the socket
        is shut down and marked broken. A transfer in a worker thread
        re-raises only once its thread has let go of the buffer.

    After IncompleteTransferError, ProtocolError, or another failure once
    part of the message came, the socket is shut down and marked broken.
    """
    message = Receive(max_bytes, progress=progress)
    await _receive(sock, "recv_arrays", message)
    return message.message().arrays


async def recv_message(
    sock: Any,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_metadata: int = DEFAULT_MAX_METADATA,
    progress: Progress | None = None,
) -> Message:
    """Receive one message with its metadata from a non-blocking stream socket.

    As ``arraywire.recv_message``, awaited; ``max_metadata`` caps the
    metadata's size, the rest is as for ``recv_arrays``.

    Returns
    -------
    Message
        ``Message(arrays, metadata)``: the arrays as ``recv_arrays`` returns
        them, and the metadata bytes (b"" when the sender gave none).

    Raises
    ------
    ProtocolError
        The header is malformed, or declares more than ``max_bytes`` of
        payload or more than ``max_metadata`` bytes of metadata. The socket
        is shut down and marked broken.
    EOFError, IncompleteTransferError, TypeError, ValueError, RuntimeError, BrokenStreamError
        As ``recv_arrays`` raises them.
    OSError, asyncio.CancelledError
        As ``recv_arrays`` raises them.
    """
    message = Receive(max_bytes, max_metadata=max_metadata, progress=progress)
    await _receive(sock, "recv_message", message)
    return message.message()


async def recv_array(
    sock: Any,
    *,
    out: np.ndarray | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> np.ndarray:
    """Receive a one-array message from a non-blocking stream socket.

    As ``arraywire.recv_array``, awaited: ``out``, when given, receives the
    payload in place; ``max_bytes`` and ``progress`` are as for
    ``recv_arrays``.

    Returns
    -------
    numpy.ndarray
        ``out`` when given, else a fresh, writable array with memory of its
        own, of the sender's dtype, shape and memory order.

    Raises
    ------
    ValueError
        ``out`` does not match the message (dtype, shape, memory order,
        read-only), or the message holds another number of arrays than one:
        the payload was read and discarded first, so the connection stays
        usable. Also, before any byte, a socket that is not non-blocking.
    EOFError, IncompleteTransferError, ProtocolError, TypeError, RuntimeError
        As ``recv_arrays`` raises them.
    BrokenStreamError, OSError, asyncio.CancelledError
        As ``recv_arrays`` raises them.
    """
    message = Receive(max_bytes, progress=progress, one_array=True, out=out)
    await _receive(sock, "recv_array", message)
    return message.result()[0]


async def _receive(
    sock: Any,
    name: str,
    message: Receive,
    inbox: Inbox | None = None,
    streams: Sequence[socket.socket] = (),
) -> None:
    """Fill every read of the message, through the read-ahead buffer when
    given (and over the parallel streams when the message is striped); its
    result is then the caller's."""
    async with _Claim(sock, name, False, message) as claim:
        try:
            if inbox is None:
                for buffers in one_stream(message):
                    await _move(claim, buffers, False, message.reporter)
                return
            for request in buffered_reads(message, inbox, DIRECT_BYTES):
                if isinstance(request, int):
                    if not await _fill(sock, inbox):
                        raise IncompleteTransferError(0, request)
                elif isinstance(request, Stripes):
                    await _receive_stripes(claim, request, inbox, streams, message)
                else:
                    await _move(claim, request, False, message.reporter)
        except IncompleteTransferError as exc:
            end = message.end_of_stream(exc)
            if end is not None:
                raise end from None
            raise


async def _receive_stripes(
    claim: _Claim,
    stripes: Stripes,
    inbox: Inbox,
    streams: Sequence[socket.socket],
    message: Receive,
) -> None:
    await _move_stripes(
        claim, streams, False,
        lambda socks: receive_jobs(_transport.impl, stripes, socks, inbox),
        None if stripes.parts is None else message.reporter,
    )


async def receive_buffered(
    sock: Any, name: str, message: Receive, inbox: Inbox, streams: Sequence[socket.socket] = ()
) -> None:
    """A receive through a connection's read-ahead buffer (the aio Channel's):
    a small message costs one receive, a large payload still goes straight
    into its array, over the Channel's parallel streams when it is striped."""
    await _receive(sock, name, message, inbox, streams)


async def _fill(sock: socket.socket, inbox: Inbox) -> int:
    """One receive into the read-ahead buffer, once the socket has bytes."""
    while True:
        try:
            return inbox.fill()
        except BlockingIOError:
            await _ready(sock, False)


# The connection objects are built on the functions above.
from arraywire._aio_channel import Channel, Listener, connect, listen  # noqa: E402
