"""The awaitable transfers of ``arraywire.aio``: functions over a non-blocking
socket, and the moves of the aio Channel (under its rules); ``moving`` moves
their bytes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from arraywire._aio.moving import (
    NATIVE_BYTES,
    Claim,
    Forward,
    in_loop,
    in_thread,
    move,
    move_stripes,
    ready,
    steps,
)
from arraywire._aio.samehost import AioCopies
from arraywire._core import transport
from arraywire._core.protocol import LayoutSender, ReadAhead
from arraywire._core.step import PendingViews, byte_view
from arraywire._drivers import refusals
from arraywire._drivers.blocking import one_stream, write_plan
from arraywire._drivers.rules import ChannelRules
from arraywire._drivers.striping import receive_jobs, send_jobs
from arraywire._wire import control, samehost
from arraywire._wire.engine import (
    Message,
    MessageProgress,
    Receive,
    SendPlan,
    Stripes,
    Transfer,
    buffered_reads,
    plan_send,
)
from arraywire._wire.errors import IncompleteTransferError, ProtocolError
from arraywire._wire.header import DEFAULT_MAX_BYTES, DEFAULT_MAX_METADATA
from arraywire._wire.limits import DIRECT_BYTES, Progress

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


async def _raw(
    obj: Any,
    sock: Any,
    progress: Progress | None,
    *,
    sending: bool,
    name: str | None = None,
    rules: ChannelRules | None = None,
) -> int:
    view = byte_view(obj, writable=not sending)
    total = view.nbytes
    reporter = None if progress is None else MessageProgress(progress, total)
    if name is None:
        name = "send_from" if sending else "recv_into"
    async with Claim(sock, name, sending, Transfer(total), rules) as claim:
        if total <= NATIVE_BYTES:  # already a byte view: straight to the loop's calls
            part = None if reporter is None else reporter.part(0)
            claim.transfer.moved(await in_loop(sock, PendingViews((view,)), sending, part))
        else:
            await move(claim, [view], sending, reporter)
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
    sock: Any,
    name: str,
    plan: SendPlan,
    streams: Sequence[socket.socket] = (),
    rules: ChannelRules | None = None,
) -> int:
    """Write a planned message (the aio Channel's sends, over its parallel
    ``streams`` when it has them, sock first, under its ``rules``); return
    its bytes."""
    async with Claim(sock, name, True, plan, rules) as claim:
        parts = plan.stripes(len(streams))
        if parts is not None:
            await move_stripes(
                claim, streams, True,
                lambda socks: send_jobs(transport.impl, parts, socks),
                plan.reporter,
            )
        elif plan.total <= NATIVE_BYTES:
            for batch in plan.batches():
                await move(claim, batch, True, plan.reporter)
        else:
            forward = None if plan.reporter is None else Forward(plan.reporter)
            await in_thread(claim, True, lambda dup: write_plan(plan, dup, forward))
            if forward is not None:
                forward.raise_error()
        return plan.complete()


def send_now(
    sock: Any,
    name: str,
    plan: SendPlan,
    streams: Sequence[socket.socket],
    rules: ChannelRules,
) -> int | Coroutine[Any, Any, int]:
    """Send what of a planned message the socket takes at once, in the
    caller's thread (the aio Channel's send_arrays_now, under its ``rules``):
    its bytes when that was all of it, else the coroutine that sends the
    rest as ``send_plan`` would. A message over NATIVE_BYTES or striped over
    parallel streams is all left to that coroutine."""
    if plan.total > NATIVE_BYTES or plan.stripes(len(streams)) is not None:
        return send_plan(sock, name, plan, streams, rules)
    claim = Claim(sock, name, True, plan, rules)
    batches = iter(plan.batches())
    with claim:
        for batch in batches:
            pending = PendingViews([byte_view(buffer, writable=False) for buffer in batch])
            total = pending.nbytes
            done = steps(sock, pending, True, None, 0, total)
            if done < total:  # the rest counts these done bytes with its own
                return _send_rest(claim, plan, pending, done, batches)
            plan.moved(done)
    return plan.complete()


async def _send_rest(
    claim: Claim, plan: SendPlan, pending: PendingViews, done: int, batches: Iterator[list[Any]]
) -> int:
    """The rest of a send_now: the batch the socket took done bytes of, then the others."""
    async with claim:
        plan.moved(await in_loop(claim.sock, pending, True, None, claim.timeout, done))
        for batch in batches:
            await move(claim, batch, True, None)
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
    inbox: ReadAhead | None = None,
    streams: Sequence[socket.socket] = (),
    rules: ChannelRules | None = None,
    timeout: float | None = None,
    copies: AioCopies | None = None,
) -> bool:
    """Fill every read of the message, through the read-ahead buffer when
    given (and over the parallel streams when the message is striped), each
    wait for bytes up to ``timeout``; its result is then the caller's. With
    same-host ``copies``, False when the read stopped, between messages, at
    the answer a described send of this end awaited."""
    async with Claim(sock, name, False, message, rules, timeout) as claim:
        try:
            if inbox is None:
                for buffers in one_stream(message):
                    await move(claim, buffers, False, message.reporter)
                return True
            for request in buffered_reads(message, inbox, DIRECT_BYTES):
                if isinstance(request, int):
                    if not await _fill(sock, inbox, timeout):
                        raise IncompleteTransferError(0, request)
                elif isinstance(request, list):
                    await move(claim, request, False, message.reporter)
                elif isinstance(request, Stripes):
                    await _receive_stripes(claim, request, inbox, streams, message)
                else:
                    assert copies is not None  # same-host requests come only with copies on
                    if isinstance(request, samehost.Copy):
                        await copies.copy(claim, request, message)
                    elif await copies.answered(request):
                        return False
            return True
        except IncompleteTransferError as exc:
            end = message.end_of_stream(exc)
            if end is not None:
                raise end from None
            raise
        except ProtocolError:
            record = message.refusal_record()
            if record is not None and rules is not None:
                await _refuse(sock, record, streams or (sock,), rules)
            raise


async def _refuse(
    sock: socket.socket, record: bytes, streams: Sequence[socket.socket], rules: ChannelRules
) -> None:
    """Tell the sender why its message was refused, then close the
    Channel's sockets: the record within DRAIN_SECONDS, the drain in its own
    thread (``refusals.drain``). The Claim then marks the rules broken."""
    if not refusals.may_write_record(rules):
        return  # a send holds the socket: the Claim shuts it down
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_sendall(sock, record), control.DRAIN_SECONDS
        )
        refusals.drain(streams)
    except (OSError, asyncio.TimeoutError):  # the sender is gone: it hears nothing
        return
    finally:
        refusals.release_record(rules)
    for stream in streams:
        stream.close()


async def _receive_stripes(
    claim: Claim,
    stripes: Stripes,
    inbox: ReadAhead,
    streams: Sequence[socket.socket],
    message: Receive,
) -> None:
    await move_stripes(
        claim, streams, False,
        lambda socks: receive_jobs(transport.impl, stripes, socks, inbox),
        None if stripes.parts is None else message.reporter,
    )


async def receive_buffered(
    sock: Any,
    name: str,
    message: Receive,
    inbox: ReadAhead,
    streams: Sequence[socket.socket],
    rules: ChannelRules,
    timeout: float | None,
    copies: AioCopies | None = None,
) -> bool:
    """A receive through a connection's read-ahead buffer (the aio Channel's):
    a small message costs one receive, a large payload still goes straight
    into its array, over the Channel's parallel streams when it is striped,
    or is copied in place (``copies``, as ``_receive`` says). ``timeout``
    bounds each wait for bytes."""
    return await _receive(sock, name, message, inbox, streams, rules, timeout, copies)


async def send_staged(sock: Any, data: bytearray, rules: ChannelRules) -> int:
    """Send the staged small messages of the aio Channel's send_many."""
    return await _raw(data, sock, None, sending=True, name="send_many", rules=rules)


async def send_learned(
    sock: Any, outbox: LayoutSender, array: Any, rules: ChannelRules
) -> int | None:
    """Send array through the core when its layout is the one learned
    (None: it is not, or the socket took no byte and the engine's send
    waits for it). What the non-blocking socket did not take at once
    follows from the event loop, as a planned message's bytes do."""
    failed: BaseException | None = None
    try:
        return outbox.send(array)
    except BaseException as exc:  # noqa: BLE001 - raised below, counted as a transfer
        done = getattr(exc, "bytes_done", None) or 0
        if isinstance(exc, BlockingIOError):
            if not done:
                return None
        else:
            failed = exc
    plan = plan_send((array,))  # the header the core sent: the same bytes
    async with Claim(sock, "send", True, plan, rules) as claim:
        if failed is not None:
            raise failed  # the Claim breaks the rules when some bytes went
        plan.moved(done)
        header = memoryview(plan.header)
        payload = byte_view(array, writable=False)
        rest = [header[done:], payload] if done < len(header) else [payload[done - len(header) :]]
        await move(claim, rest, True, None)
    return plan.complete()


async def take_learned(
    sock: Any, inbox: ReadAhead, header: int, max_bytes: int | None, timeout: float | None
) -> np.ndarray | None:
    """The next message from the read-ahead buffer, when its header has the
    layout learned (``header`` bytes long) and the buffer holds the message
    whole; else None, with every byte left for the engine. With nothing
    buffered, waits for one receive first (up to ``timeout``).

    The payload's limit is what the buffer holds past the header, so the
    core never receives the rest of a payload itself: on a non-blocking
    socket that would fail part-way."""
    if not inbox.buffered:
        try:
            if not await _fill(sock, inbox, timeout):
                return None  # the peer closed: the engine's receive says how
        except BaseException as exc:
            Transfer().fail(exc)  # no byte of a message moved, as the engine counts
            raise
    room = inbox.buffered - header
    if room < 0:
        return None
    return inbox.take_array(room if max_bytes is None else min(max_bytes, room))


async def _fill(sock: socket.socket, inbox: ReadAhead, timeout: float | None) -> int:
    """One receive into the read-ahead buffer, once the socket has bytes
    (TimeoutError when none come within ``timeout``)."""
    while True:
        try:
            return inbox.fill()
        except BlockingIOError:
            await ready(sock, False, timeout)
