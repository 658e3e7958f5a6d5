"""The asyncio twins of Channel, Listener, listen and connect (exported by
``arraywire.aio``): the same hello, messages, errors and item types, over the
awaitable transfers of ``arraywire.aio``.

As in the blocking Channel, a message of the layout learned last is taken
whole by the core from the read-ahead buffer, and a send of the learned
layout goes out in one core call. Here the core does only what needs no
waiting: a message not yet buffered whole, and what part of a send the
socket did not take at once, go the engine's way."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from functools import partial
from types import TracebackType
from typing import Any

import numpy as np

from arraywire._aio import transfers
from arraywire._aio.moving import Claim
from arraywire._aio.samehost import AioCopies
from arraywire._core import transport
from arraywire._core.protocol import LayoutSender, ReadAhead
from arraywire._drivers import refusals
from arraywire._drivers.rules import (
    AIO,
    ChannelItem,
    ChannelRules,
    Sockets,
    check_wait,
    coalesce,
    end_addresses,
    learn_layout,
    learn_message,
    learned_limit,
    learned_send,
    readable,
    receive_wait,
)
from arraywire._drivers.samehost import peer_pid
from arraywire._wire import hello
from arraywire._wire.engine import (
    Message,
    ReadAhead as Buffered,
    Receive,
    SendPlan,
    plan_send,
)
from arraywire._wire.errors import IncompleteTransferError
from arraywire._wire.header import DEFAULT_MAX_BYTES, DEFAULT_MAX_METADATA
from arraywire._wire.limits import Progress
from arraywire._wire.samehost import SAME_HOST_BYTES


class Channel:
    """``arraywire.Channel`` for asyncio: the same methods, awaited, and
    ``async for``. ``Channel(sock)`` makes the socket non-blocking and owns it;
    ``more_streams`` (sockets too) make it a Channel of parallel streams, as
    ``arraywire.Channel``'s do; ``capabilities`` are those its opening
    turned on, as for ``arraywire.Channel``."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer_reads: int = 2,
        more_streams: Sequence[socket.socket] = (),
        capabilities: int = 0,
    ) -> None:
        self._outbox: LayoutSender = transport.impl.Outbox(sock)  # packs send_many's small messages
        self._inbox: ReadAhead = transport.impl.Inbox(sock)  # read-ahead: a small message, one receive
        self._streams = (sock, *more_streams)
        for stream in self._streams:
            stream.setblocking(False)
        self._sock = sock
        self._rules = ChannelRules(AIO, peer_reads=peer_reads)
        self._learned = 0  # the length of the header the Inbox learned (0: none)
        self._local, self._peer = end_addresses(sock)
        self._capabilities = capabilities
        self._unchecked = 0  # bytes of learned sends since the last look for a refusal
        pid = peer_pid(sock) if capabilities & hello.SAME_HOST else None
        self._copies = None if pid is None else AioCopies(pid, sock, self._rules, capabilities)

    @property
    def socket(self) -> socket.socket:
        """The connected socket this Channel uses (its first stream's)."""
        return self._sock

    @property
    def sockets(self) -> Sockets:
        """Every stream's socket, the first one first."""
        return self._streams

    @property
    def closed(self) -> bool:
        """Whether the Channel is closed."""
        return self._sock.fileno() == -1

    @property
    def same_host(self) -> bool:
        """Whether same-host copies are on: never yet on an asyncio Channel."""
        return bool(self._capabilities & hello.SAME_HOST)

    @property
    def local_address(self) -> Any:
        """This end's address, as ``arraywire.Channel.local_address``."""
        return self._local

    @property
    def peer_address(self) -> Any:
        """The peer's address, as ``arraywire.Channel.peer_address``."""
        return self._peer

    async def poll(self, timeout: float | None = 0) -> bool:
        """Whether a message can be received, waiting up to ``timeout``
        seconds (0: not at all, None: for ever), as
        ``arraywire.Channel.poll``.

        Raises
        ------
        TypeError, ValueError
            ``timeout`` is not a number of seconds of 0 or more, or None.
        RuntimeError
            Another task is in a receive on this Channel.
        BrokenStreamError
            An earlier transfer on this Channel stopped part-way.
        OSError
            The Channel is closed (EBADF).
        """
        seconds = check_wait(timeout, zero=True)
        copies = self._copies
        if copies is not None and copies.lending:  # the send's read takes what comes
            return bool(copies.stash)
        self._rules.claim("receive", "poll")
        try:
            kept = 0 if copies is None else len(copies.stash)  # received during a send
            now = readable(self._sock, self._buffered() + kept, 0)
            if now or seconds == 0:
                return now
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()
            fd = self._sock.fileno()

            def wake() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_reader(fd, wake)
            try:
                await asyncio.wait_for(ready, seconds)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
                return False
            finally:
                loop.remove_reader(fd)
            return True
        finally:
            self._rules.release("receive")

    def _buffered(self) -> int:
        """Bytes of the peer's stream received and not yet taken."""
        return self._inbox.buffered

    async def send(
        self, array: Any, *, metadata: bytes | None = None, progress: Progress | None = None
    ) -> int:
        """Send one array as a message (as ``arraywire.Channel.send``).

        Returns
        -------
        int
            The bytes sent: the header's and the array's.

        Raises
        ------
        TypeError, ValueError
            Before the first byte: what ``arraywire.send_array`` refuses, or
            (ValueError) metadata when the peer's hello says it reads only
            messages of version 1. The Channel stays usable.
        RuntimeError
            Another task is in a send on this Channel.
        BrokenStreamError
            An earlier transfer on this Channel stopped part-way.
        OSError
            The socket's error (BrokenPipeError, ConnectionResetError,
            ``ssl.SSLError`` over TLS, ...), with ``bytes_done`` counted from
            the start of the message. If part of the message went out, the
            Channel's socket is shut down and later calls raise
            BrokenStreamError: close the Channel. With parallel streams, any
            failure of a split payload does so, with ``bytes_done`` summed
            over the streams.
        asyncio.CancelledError
            The task was cancelled. Cancelled while still waiting for the
            socket, before any byte of the message moved, the Channel stays
            usable; else it is broken as for OSError.
        """
        rules = self._rules
        if metadata is not None:
            rules.check_peer_reads(2)
        rules.claim("send")
        try:
            if (
                metadata is None and progress is None and learned_send(array, len(self._streams))
                and (self._copies is None or getattr(array, "nbytes", 0) < SAME_HOST_BYTES)
            ):
                sent = await self._send_learned(array)
                if sent is not None:
                    if self._capabilities:  # a look every CHECK_BYTES
                        self._unchecked += sent
                        if self._unchecked >= refusals.CHECK_BYTES:
                            await self._check_refused("send", sent)
                    return sent
            plan = plan_send((array,), progress, metadata)
            sent = await self._write("send", plan)
            if metadata is None:
                learn_layout(self._outbox, array, plan)
            return sent
        except BaseException as exc:
            self._sent_refused("send", exc)
            raise
        finally:
            rules.release("send")

    async def send_arrays(
        self,
        arrays: Iterable[Any] | Mapping[str, Any],
        *,
        metadata: bytes | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Send arrays as one message (as ``arraywire.Channel.send_arrays``).

        Returns
        -------
        int
            The bytes sent: the header's and every array's.

        Raises
        ------
        TypeError, ValueError
            Before the first byte: what ``arraywire.send_arrays`` refuses, or
            (ValueError) names or metadata when the peer's hello says it reads
            only messages of version 1. The Channel stays usable.
        RuntimeError, BrokenStreamError, OSError, asyncio.CancelledError
            As ``send`` raises them.
        """
        if metadata is not None or isinstance(arrays, Mapping):
            self._rules.check_peer_reads(2)
        plan = plan_send(arrays, progress, metadata)
        self._rules.claim("send", "send_arrays")
        try:
            return await self._write("send_arrays", plan)
        except BaseException as exc:
            self._sent_refused("send_arrays", exc)
            raise
        finally:
            self._rules.release("send")

    def send_arrays_now(
        self, arrays: Iterable[Any] | Mapping[str, Any], *, metadata: bytes | None = None
    ) -> int | Coroutine[Any, Any, int]:
        """Start sending arrays as one message without waiting: the calls
        the socket answers at once run here, in the caller's task, so a
        small message usually costs no turn of the event loop.

        Returns
        -------
        int or coroutine
            The bytes sent when the socket took the whole message; else a
            coroutine that sends the rest, from the event loop, and returns
            them. Await it (in a task of its own, say): the Channel's send
            is in progress until it returns, as in ``send_arrays``.

        Raises
        ------
        TypeError, ValueError, RuntimeError, BrokenStreamError, OSError
            As ``send_arrays`` raises them, here or from the coroutine.
        """
        if metadata is not None or isinstance(arrays, Mapping):
            self._rules.check_peer_reads(2)
        plan = plan_send(arrays, None, metadata)
        self._rules.claim("send", "send_arrays")
        try:
            sent = self._write_now("send_arrays", plan)
        except BaseException:
            self._rules.release("send")
            raise
        if isinstance(sent, int):
            self._rules.release("send")
            return sent
        return self._finish_send(sent)

    async def _finish_send(self, rest: Awaitable[int]) -> int:
        try:
            return await rest
        finally:
            self._rules.release("send")

    async def send_many(self, arrays: Iterable[Any]) -> int:
        """Send each array as a message of its own, small ones coalesced (as
        ``arraywire.Channel.send_many``).

        Returns
        -------
        int
            The bytes sent: every message's, headers included.

        Raises
        ------
        TypeError, ValueError
            An input that cannot be sent, before its first byte, once the
            messages before it are sent. The Channel stays usable.
        RuntimeError, BrokenStreamError, OSError, asyncio.CancelledError
            As ``send`` raises them.

        Every exception carries ``bytes_done``, counted from the start of
        the first message.
        """
        self._rules.claim("send", "send_many")
        sent = 0
        try:
            for piece in coalesce(arrays, self._outbox):
                if isinstance(piece, bytearray):
                    sent += await self._write_bytes(piece)
                else:
                    sent += await self._write("send_many", piece[1])
        except BaseException as exc:
            exc.bytes_done = sent + (getattr(exc, "bytes_done", None) or 0)  # type: ignore[attr-defined]
            self._sent_refused("send_many", exc)
            raise
        finally:
            self._rules.release("send")
        return sent

    async def recv(
        self,
        *,
        out: np.ndarray | None = None,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Receive a one-array message, into ``out`` when given (as
        ``arraywire.Channel.recv``). ``timeout`` (seconds, None for none)
        bounds each wait for bytes.

        Returns
        -------
        numpy.ndarray
            ``out`` when given, else a fresh, writable array with memory of
            its own, of the sender's dtype, shape and memory order.

        Raises
        ------
        EOFError
            The peer closed the connection cleanly, before the message's
            first byte.
        ValueError
            ``out`` does not match the message, or the message holds another
            number of arrays than one. The payload was read and discarded
            first, so the Channel stays usable.
        IncompleteTransferError
            The peer closed inside the message; ``bytes_done`` and
            ``bytes_expected`` count from its start.
        ProtocolError
            The header is malformed, of an unsupported version, or declares
            more than ``max_bytes`` of payload or more metadata than
            ``DEFAULT_MAX_METADATA``.
        RuntimeError
            Another task is in a receive on this Channel.
        BrokenStreamError
            An earlier transfer on this Channel stopped part-way.
        OSError
            The socket's error (ConnectionResetError, ``ssl.SSLError`` over
            TLS, ...), or TimeoutError when no byte came within ``timeout``,
            with ``bytes_done``. When no byte of the message had come, the
            Channel stays usable (call again).
        asyncio.CancelledError
            The task was cancelled. Cancelled while still waiting for the
            socket, before any byte of the message moved, the Channel stays
            usable; else it is broken as below.

        After IncompleteTransferError, ProtocolError, or another failure
        once part of the message came, the Channel's socket is shut down and
        later calls raise BrokenStreamError: close the Channel. With parallel
        streams, any failure of a split payload does so, with ``bytes_done``
        summed over the streams.
        """
        seconds = receive_wait(timeout)
        copies = self._copies
        if copies is not None:
            await copies.wait_lent(seconds)
        self._rules.claim("receive", "recv")
        try:
            if copies is not None and copies.stash:
                return copies.take(True, out).arrays[0]  # type: ignore[index]
            if out is None and progress is None:
                limit = learned_limit(max_bytes, len(self._streams))
                array = await self._take_learned(limit, seconds)
                if array is not None:
                    return array
            message = Receive(
                max_bytes, progress=progress, one_array=True, out=out,
                streams=len(self._streams), capabilities=self._capabilities,
            )
            await self._read("recv", message, seconds)
        finally:
            self._rules.release("receive")
        return message.result()[0]

    async def recv_arrays(
        self,
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> list[np.ndarray] | dict[str, np.ndarray]:
        """Receive one message of any number of arrays (as
        ``arraywire.Channel.recv_arrays``); ``timeout`` as for ``recv``.

        Returns
        -------
        list of numpy.ndarray, or dict of str to numpy.ndarray
            The arrays: a dict in the sender's order when the sender named
            them, else a list. The metadata is dropped.

        Raises
        ------
        EOFError, IncompleteTransferError, ProtocolError, RuntimeError
            As ``recv`` raises them.
        BrokenStreamError, OSError, asyncio.CancelledError
            As ``recv`` raises them.
        """
        message = await self.recv_message(max_bytes=max_bytes, progress=progress, timeout=timeout)
        return message.arrays

    async def recv_message(
        self,
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        max_metadata: int = DEFAULT_MAX_METADATA,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Receive one message with its metadata (as
        ``arraywire.Channel.recv_message``); ``timeout`` as for ``recv``.

        Returns
        -------
        Message
            ``Message(arrays, metadata)``: the arrays as ``recv_arrays``
            returns them, and the metadata bytes (b"" when the sender gave
            none).

        Raises
        ------
        ProtocolError
            As ``recv``, or more than ``max_metadata`` bytes of metadata.
        EOFError, IncompleteTransferError, RuntimeError, BrokenStreamError
            As ``recv`` raises them.
        OSError, asyncio.CancelledError
            As ``recv`` raises them.
        """
        seconds = receive_wait(timeout)
        message = Receive(
            max_bytes, max_metadata=max_metadata, progress=progress,
            streams=len(self._streams), capabilities=self._capabilities,
        )
        copies = self._copies
        if copies is not None:
            await copies.wait_lent(seconds)
        self._rules.claim("receive", "recv_message")
        try:
            if copies is not None and copies.stash:
                return copies.take()
            await self._read("recv_message", message, seconds)
        finally:
            self._rules.release("receive")
        return message.message()

    # The driver: these move the bytes (over TLS, TLSChannel's do).

    async def _write(self, name: str, plan: SendPlan) -> int:
        await self._check_refused(name, 0)
        copies = self._copies
        if copies is not None and len(self._streams) == 1 and copies.lend(plan):
            try:
                async with Claim(self._sock, name, True, plan, self._rules) as claim:
                    await copies.send(claim, plan, partial(self._read, name, timeout=None))
            finally:
                copies.give_back()
            return plan.complete()
        sent = await self._send_plan(name, plan)
        if sent >= refusals.CHECK_BYTES:  # refused while it went out, most likely
            await self._check_refused(name, sent)
        return sent

    async def _send_plan(self, name: str, plan: SendPlan) -> int:
        return await transfers.send_plan(self._sock, name, plan, self._streams, self._rules)

    def _record_waiting(self) -> bool:
        return refusals.readable_record(self._sock, self._inbox)

    async def _check_refused(self, name: str, done: int) -> None:
        """Raise the receiver's refusal of an earlier message when it is
        waiting, as the blocking Channel's sends do (``done``: this send's bytes out)."""
        self._unchecked = 0
        if not self._capabilities:
            return
        receive = self._rules.lanes["receive"]
        if not receive.acquire(False):  # the receive in progress reads it
            return
        try:
            if self._record_waiting():
                await self._read(name, Receive(None, capabilities=self._capabilities), None)
        except BaseException as exc:
            exc.bytes_done = done  # type: ignore[attr-defined]
            raise
        finally:
            receive.release()

    def _sent_refused(self, name: str, exc: BaseException) -> None:
        """A send the receiver's close failed: raise its refusal, if it sent one."""
        refused = refusals.refusal_after(
            exc, self._rules, self._capabilities, *self._last_bytes()
        )
        if refused is not None:
            self._rules.break_(name, refused)
            self.close()
            raise refused from exc

    def _last_bytes(self) -> tuple[Buffered, Callable[[memoryview], int]]:
        """Where a failed send reads the receiver's last word."""
        return self._inbox, refusals.receive_now(self._sock)

    def _write_now(self, name: str, plan: SendPlan) -> int | Coroutine[Any, Any, int]:
        if self._copies is not None and plan.total - len(plan.header) >= SAME_HOST_BYTES:
            return self._write(name, plan)  # perhaps described: a rendezvous, never at once
        return transfers.send_now(self._sock, name, plan, self._streams, self._rules)

    async def _write_bytes(self, data: bytearray) -> int:
        return await transfers.send_staged(self._sock, data, self._rules)

    async def _send_learned(self, array: Any) -> int | None:
        return await transfers.send_learned(self._sock, self._outbox, array, self._rules)

    async def _read(self, name: str, message: Receive, timeout: float | None) -> bool:
        whole = await transfers.receive_buffered(
            self._sock, name, message, self._inbox, self._streams, self._rules, timeout,
            self._copies,
        )
        self._learned = learn_message(self._inbox, message) or self._learned
        return whole

    async def _take_learned(self, max_bytes: int | None, timeout: float | None) -> np.ndarray | None:
        if not self._learned:
            return None
        return await transfers.take_learned(
            self._sock, self._inbox, self._learned, max_bytes, timeout
        )

    def __aiter__(self) -> AsyncIterator[ChannelItem]:
        """Receive each message in turn with ``async for``, until the peer
        closes cleanly between messages (the loop then ends).

        Yields
        ------
        ChannelItem
            For a message of one unnamed array, the array itself; else what
            ``recv_arrays`` returns. Metadata is dropped.

        Raises
        ------
        IncompleteTransferError, ProtocolError, RuntimeError
            As ``recv`` raises them.
        BrokenStreamError, OSError, asyncio.CancelledError
            As ``recv`` raises them.
        """
        return self._messages()

    async def _messages(self) -> AsyncIterator[ChannelItem]:
        while True:
            try:
                item = await self._next()
            except EOFError as exc:
                if isinstance(exc, IncompleteTransferError):
                    raise
                return
            yield item

    async def _next(self) -> ChannelItem:
        copies = self._copies
        if copies is not None:
            await copies.wait_lent(None)
        self._rules.claim("receive", "recv_message")
        try:
            if copies is not None and copies.stash:
                kept = copies.take().arrays
                return kept[0] if type(kept) is list and len(kept) == 1 else kept
            limit = learned_limit(DEFAULT_MAX_BYTES, len(self._streams))
            array = await self._take_learned(limit, None)
            if array is not None:
                return array
            message = Receive(
                DEFAULT_MAX_BYTES, streams=len(self._streams), capabilities=self._capabilities
            )
            await self._read("recv_message", message, None)
        finally:
            self._rules.release("receive")
        arrays = message.message().arrays
        if type(arrays) is list and len(arrays) == 1:
            return arrays[0]
        return arrays

    def close(self) -> None:
        """Close the connection (and its sockets)."""
        for stream in self._streams:
            stream.close()

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed)."""
        return self._sock.fileno()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
