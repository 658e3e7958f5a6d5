"""The aio Channel over TLS: asyncio's SSL transport moves the bytes and the
message engine decides what they mean.

asyncio cannot hand an ``ssl.SSLSocket`` to its ``sock_*`` methods, so this
driver reads and writes through a StreamReader/StreamWriter pair on the
loop's TLS transport (``ssl.SSLObject`` over memory BIOs, in the event
loop's thread). Sends go out in pieces of ``WRITE_BYTES``, each encrypted
when written, with the transport's flow control between pieces; receives go
through a read-ahead buffer, as the plain Channel's do, and large payloads
are copied straight from the reader into their arrays.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

from arraywire._aio_channel import Channel
from arraywire._common import DIRECT_BYTES, READ_AHEAD_BYTES
from arraywire._engine import Receive, SendPlan, Transfer, buffered_reads, writable_bytes
from arraywire._errors import BrokenStreamError, IncompleteTransferError
from arraywire._step import byte_view
from arraywire._tls import Outbox

# A send writes at most this much into the transport before it waits for
# the transport's buffer to drain.
WRITE_BYTES = 1 << 20


class StreamInbox:
    """The read-ahead buffer of a TLS stream: what the reader gave and the
    engine has not taken yet."""

    __slots__ = ("_data", "_reader", "_start")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._data = b""
        self._start = 0

    @property
    def buffered(self) -> int:
        return len(self._data) - self._start

    def take(self, obj: Any) -> int:
        """Copy buffered bytes into the front of a writable buffer; return the count."""
        view = byte_view(obj, writable=True)
        count = min(len(view), len(self._data) - self._start)
        view[:count] = memoryview(self._data)[self._start : self._start + count]
        self._start += count
        return count

    async def fill(self) -> int:
        """Take what the reader has (waiting for it); return the count (0: end of stream)."""
        self._data = await self._reader.read(READ_AHEAD_BYTES)
        self._start = 0
        return len(self._data)


class TLSChannel(Channel):
    """``arraywire.aio.Channel`` over TLS, made by ``arraywire.aio.connect``
    and ``Listener.accept`` with ``ssl=``: the same methods, item types and
    errors. ``socket`` is the TCP socket under the TLS transport."""

    # The plain Channel's __init__ wraps a socket's own read-ahead buffer;
    # this one reads through the stream pair instead.
    def __init__(
        self,
        sock: socket.socket,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer_reads: int = 2,
    ) -> None:
        self._sock = sock
        self._reader = reader
        self._writer = writer
        self._stream_inbox = StreamInbox(reader)
        self._outbox = Outbox(sock)  # nothing learned: coalesce stages small messages itself
        self._busy: set[str] = set()
        self._peer_reads = peer_reads
        self._broken: str | None = None

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The TLS session: ``getpeercert()``, ``cipher()``, ``version()``."""
        return self._writer.get_extra_info("ssl_object")  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        state = "broken" if self._broken else "closed" if self._writer.is_closing() else "open"
        return f"<arraywire.aio.Channel over TLS {state} fd={self.fileno()}>"

    def _check(self, name: str) -> None:
        if self._broken is not None:
            raise BrokenStreamError(f"cannot {name}: {self._broken}")

    def _fail(self, name: str, transfer: Transfer, exc: BaseException) -> None:
        """Count exc's bytes; close the Channel when the stream is out of step."""
        if not transfer.fail(exc) or self._broken is not None:
            return
        total = "" if transfer.total is None else f" of {transfer.total:,}"
        why = "was cancelled" if isinstance(exc, asyncio.CancelledError) else (
            f"failed ({type(exc).__name__}: {exc})"
        )
        self._broken = (
            f"an earlier {name} on this Channel {why} after "
            f"{getattr(exc, 'bytes_done', 0) or 0:,}{total} bytes, so the byte stream is "
            "out of step with the peer and the Channel was closed"
        )
        self._writer.transport.abort()

    async def _write(self, name: str, plan: SendPlan) -> int:
        self._check(name)
        writer = self._writer
        try:
            for batch in plan.batches():
                for buffer in batch:
                    view = byte_view(buffer, writable=False)
                    for start in range(0, len(view), WRITE_BYTES):
                        piece = view[start : start + WRITE_BYTES]
                        # After the handshake the transport encrypts a piece
                        # as it is written: no reference to it is kept.
                        writer.write(piece)
                        plan.moved(len(piece))
                        if plan.reporter is not None:
                            plan.reporter.report(plan.offset)
                        await writer.drain()
            await writer.drain()
        except BaseException as exc:
            self._fail(name, plan, exc)
            raise
        return plan.complete()

    async def _write_bytes(self, data: bytearray) -> int:
        self._check("send_many")
        transfer = Transfer(len(data))
        try:
            self._writer.write(data)
            transfer.moved(len(data))
            await self._writer.drain()
        except BaseException as exc:
            self._fail("send_many", transfer, exc)
            raise
        return len(data)

    async def _read(self, name: str, message: Receive) -> None:
        self._check(name)
        inbox = self._stream_inbox
        reader = self._reader
        try:
            for request in buffered_reads(message, inbox, DIRECT_BYTES):
                if isinstance(request, int):
                    if not await inbox.fill():
                        raise IncompleteTransferError(0, request)
                    continue
                view = writable_bytes(request[0])
                filled = 0
                while filled < len(view):
                    data = await reader.read(min(len(view) - filled, READ_AHEAD_BYTES))
                    if not data:
                        raise IncompleteTransferError(0, len(view) - filled)
                    view[filled : filled + len(data)] = data
                    filled += len(data)
                    message.moved(len(data))
                    if message.reporter is not None:
                        message.reporter.report(message.offset)
        except BaseException as exc:
            end = message.end_of_stream(exc)
            if end is not None:
                raise end from None
            self._fail(name, message, exc)
            raise

    def close(self) -> None:
        """Close the connection: the TLS transport and its socket."""
        self._writer.close()

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed)."""
        return -1 if self._writer.is_closing() else self._sock.fileno()
