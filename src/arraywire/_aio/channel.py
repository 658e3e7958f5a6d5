"""The asyncio twins of Channel, Listener, listen and connect (exported by
``arraywire.aio``): the same hello, messages, errors and item types, over the
awaitable transfers of ``arraywire.aio``."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from arraywire._aio import transfers
from arraywire._core import transport
from arraywire._core.protocol import LayoutSender, ReadAhead
from arraywire._drivers.rules import ChannelItem, Sockets, check_peer_reads, coalesce
from arraywire._wire.engine import Message, Receive, SendPlan, plan_send
from arraywire._wire.errors import IncompleteTransferError
from arraywire._wire.header import DEFAULT_MAX_BYTES, DEFAULT_MAX_METADATA
from arraywire._wire.limits import Progress


class Channel:
    """``arraywire.Channel`` for asyncio: the same methods, awaited, and
    ``async for``. ``Channel(sock)`` makes the socket non-blocking and owns it;
    ``more_streams`` (sockets too) make it a Channel of parallel streams, as
    ``arraywire.Channel``'s do."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer_reads: int = 2,
        more_streams: Sequence[socket.socket] = (),
    ) -> None:
        self._outbox: LayoutSender = transport.impl.Outbox(sock)  # packs send_many's small messages
        self._inbox: ReadAhead = transport.impl.Inbox(sock)  # read-ahead: a small message, one receive
        self._streams = (sock, *more_streams)
        for stream in self._streams:
            stream.setblocking(False)
        self._sock = sock
        self._busy: set[str] = set()
        self._peer_reads = peer_reads

    @property
    def socket(self) -> socket.socket:
        """The connected socket this Channel uses (its first stream's)."""
        return self._sock

    @property
    def sockets(self) -> Sockets:
        """Every stream's socket, the first one first."""
        return self._streams

    def _claim(self, direction: str) -> None:
        if direction in self._busy:
            raise RuntimeError(f"another task is in a {direction} on this Channel")
        self._busy.add(direction)

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
        if metadata is not None:
            check_peer_reads(2, self._peer_reads)
        return await self._send("send", plan_send((array,), progress, metadata))

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
            check_peer_reads(2, self._peer_reads)
        return await self._send("send_arrays", plan_send(arrays, progress, metadata))

    async def _send(self, name: str, plan: SendPlan) -> int:
        self._claim("send")
        try:
            return await self._write(name, plan)
        finally:
            self._busy.discard("send")

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
        self._claim("send")
        sent = 0
        try:
            for piece in coalesce(arrays, self._outbox, len(self._streams)):
                if isinstance(piece, bytearray):
                    sent += await self._write_bytes(piece)
                else:
                    sent += await self._write("send_many", piece[1])
        except BaseException as exc:
            exc.bytes_done = sent + (getattr(exc, "bytes_done", None) or 0)  # type: ignore[attr-defined]
            raise
        finally:
            self._busy.discard("send")
        return sent

    async def recv(
        self,
        *,
        out: np.ndarray | None = None,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Receive a one-array message, into ``out`` when given (as
        ``arraywire.Channel.recv``).

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
            TLS, ...), with ``bytes_done``.
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
        message = Receive(
            max_bytes, progress=progress, one_array=True, out=out, streams=len(self._streams)
        )
        await self._receive("recv", message)
        return message.result()[0]

    async def recv_arrays(
        self, *, max_bytes: int | None = DEFAULT_MAX_BYTES, progress: Progress | None = None
    ) -> list[np.ndarray] | dict[str, np.ndarray]:
        """Receive one message of any number of arrays (as
        ``arraywire.Channel.recv_arrays``).

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
        return (await self.recv_message(max_bytes=max_bytes, progress=progress)).arrays

    async def recv_message(
        self,
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        max_metadata: int = DEFAULT_MAX_METADATA,
        progress: Progress | None = None,
    ) -> Message:
        """Receive one message with its metadata (as
        ``arraywire.Channel.recv_message``).

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
        message = Receive(
            max_bytes, max_metadata=max_metadata, progress=progress, streams=len(self._streams)
        )
        await self._receive("recv_message", message)
        return message.message()

    async def _receive(self, name: str, message: Receive) -> None:
        self._claim("receive")
        try:
            await self._read(name, message)
        finally:
            self._busy.discard("receive")

    # The driver: these move the bytes (over TLS, TLSChannel's do).

    async def _write(self, name: str, plan: SendPlan) -> int:
        return await transfers.send_plan(self._sock, name, plan, self._streams)

    async def _write_bytes(self, data: bytearray) -> int:
        return await transfers.send_from(data, self._sock)

    async def _read(self, name: str, message: Receive) -> None:
        await transfers.receive_buffered(self._sock, name, message, self._inbox, self._streams)

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
                arrays = (await self.recv_message()).arrays
            except EOFError as exc:
                if isinstance(exc, IncompleteTransferError):
                    raise
                return
            if type(arrays) is list and len(arrays) == 1:
                yield arrays[0]
            else:
                yield arrays

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
