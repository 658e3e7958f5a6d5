"""The aio Channel over TLS: an ``ssl.SSLObject`` between memory BIOs, fed by
the event loop's non-blocking socket calls, drives the bytes; the message
engine decides what they mean.

asyncio cannot hand an ``ssl.SSLSocket`` to its ``sock_*`` methods, so this
driver encrypts and decrypts in the event loop's thread and moves the
records with non-blocking ``send`` (MSG_NOSIGNAL, as the twins) and
``loop.sock_recv_into``. A send
returns once its last record is with the kernel, as the plain Channel's
does; received records are decrypted straight into the message's arrays.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

import numpy as np

from arraywire._aio.channel import Channel
from arraywire._aio.moving import ready
from arraywire._core import transport
from arraywire._core.protocol import LayoutSender
from arraywire._core.step import SEND_FLAGS, byte_view
from arraywire._drivers import refusals
from arraywire._drivers.rules import AIO, ChannelRules, end_addresses
from arraywire._wire import control, peers
from arraywire._wire.engine import (
    ReadAhead as Buffered,
    Receive,
    SendPlan,
    Transfer,
    buffered_reads,
    writable_bytes,
)
from arraywire._wire.errors import IncompleteTransferError
from arraywire._wire.limits import DIRECT_BYTES, READ_AHEAD_BYTES

# Plaintext encrypted per step of a send: the records of one step are in
# memory at once.
WRITE_BYTES = 1 << 20


class TLSSession:
    """One TLS connection on a non-blocking socket: the SSLObject, its two
    memory BIOs, and the socket calls that empty and fill them."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=server_hostname,
        )
        # Records leave in the order the SSLObject made them: one flush at a
        # time, and what a cancelled flush left unsent goes first next time.
        self._flushing = asyncio.Lock()
        self._unsent = bytearray()
        self._records = bytearray(READ_AHEAD_BYTES)

    async def handshake(self) -> None:
        """The TLS handshake; SSLError (e.g. SSLCertVerificationError) when it fails."""
        try:
            while True:
                try:
                    self.ssl_object.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._receive_records()
        finally:
            with contextlib.suppress(OSError):
                await self.flush()  # the last flight, or the alert that says why

    async def flush(self) -> None:
        """Send every record the SSLObject has made."""
        async with self._flushing:
            self._unsent += self._outgoing.read()
            while self._unsent:
                try:
                    sent = self.sock.send(self._unsent, SEND_FLAGS)
                except BlockingIOError:
                    await self._writable()
                    continue
                del self._unsent[:sent]

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        fd = self.sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_writer(fd)

    async def _receive_records(self, timeout: float | None = None) -> None:
        if self._outgoing.pending or self._unsent:  # what the session owes the peer first
            await self.flush()
        if timeout is not None:
            await ready(self.sock, False, timeout)
        view = memoryview(self._records)
        count = await self._loop.sock_recv_into(self.sock, view)
        if count:
            self._incoming.write(view[:count])
        else:
            self._incoming.write_eof()

    def encrypt(self, data: Any) -> None:
        """Make data's records; ``flush`` sends them."""
        view = memoryview(data)
        while view:
            view = view[self.ssl_object.write(view) :]

    async def write(self, data: Any) -> None:
        """Encrypt data and send it; returns once it is with the kernel."""
        self.encrypt(data)
        await self.flush()

    async def read_into(self, view: memoryview, timeout: float | None = None) -> int:
        """Decrypt into the front of view, waiting for records (each wait up
        to ``timeout``) when none is buffered; return the count, 0 at the end
        of the stream."""
        while True:
            try:
                return cast(int, self.ssl_object.read(len(view), view))  # into view: a count
            except ssl.SSLWantReadError:
                await self._receive_records(timeout)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0

    def read_now(self, view: memoryview) -> int:
        """Decrypt into the front of view what has come, never waiting:
        BlockingIOError when nothing has; 0 at the end of the stream."""
        while True:
            try:
                return cast(int, self.ssl_object.read(len(view), view))
            except ssl.SSLWantReadError:
                count = self.sock.recv_into(self._records)
                if not count:
                    return 0
                self._incoming.write(memoryview(self._records)[:count])
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0

    def close(self) -> None:
        """Say goodbye with close_notify when the socket takes it at once, and close."""
        with contextlib.suppress(ssl.SSLError, OSError):
            self.ssl_object.unwrap()
        with contextlib.suppress(OSError):
            self.sock.send(self._unsent + self._outgoing.read(), SEND_FLAGS)
        self.sock.close()


class SessionInbox:
    """A TLS session's read-ahead buffer: decrypted bytes the engine has not
    taken yet."""

    __slots__ = ("_end", "_session", "_start", "_view")

    def __init__(self, session: TLSSession) -> None:
        self._session = session
        self._view = memoryview(bytearray(READ_AHEAD_BYTES))
        self._start = 0
        self._end = 0

    @property
    def buffered(self) -> int:
        return self._end - self._start

    def take(self, obj: Any) -> int:
        """Copy buffered bytes into the front of a writable buffer; return the count."""
        view = byte_view(obj, writable=True)
        count = min(len(view), self._end - self._start)
        view[:count] = self._view[self._start : self._start + count]
        self._start += count
        return count

    def first_now(self) -> bytes:
        """Decrypt what has come into the emptied buffer, never waiting, and
        return its first 4 bytes (fewer when less has come); they stay buffered."""
        try:
            count = self._session.read_now(self._view)
        except OSError:  # nothing whole has come, or an error the next call meets
            return b""
        self._start = 0
        self._end = count
        return bytes(self._view[: min(count, 4)])

    async def fill(self, timeout: float | None = None) -> int:
        """Decrypt what has come (waiting for it, up to ``timeout`` each
        wait) into the emptied buffer; return the count (0: end of stream)."""
        count = await self._session.read_into(self._view, timeout)
        self._start = 0
        self._end = count
        return count


class TLSChannel(Channel):
    """``arraywire.aio.Channel`` over TLS, made by ``arraywire.aio.connect``
    and ``Listener.accept`` with ``ssl=``: the same methods, item types and
    errors. ``socket`` is the TCP socket under the TLS session."""

    # The plain Channel's __init__ makes the socket's own read-ahead buffer;
    # this one reads through the TLS session instead.
    def __init__(self, session: TLSSession, *, peer_reads: int = 2, capabilities: int = 0) -> None:
        self._session = session
        self._capabilities = capabilities
        self._sock = session.sock
        self._streams = (session.sock,)
        self._inbox_tls = SessionInbox(session)
        self._outbox: LayoutSender = transport.impl.Outbox(session.sock)  # packs send_many's small messages; never sends
        self._rules = ChannelRules(AIO, peer_reads=peer_reads)
        self._local, self._peer = end_addresses(session.sock)
        self._copies = None  # aio announces no same-host copies under TLS

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The TLS session: ``getpeercert()``, ``cipher()``, ``version()``."""
        return self._session.ssl_object

    def _buffered(self) -> int:
        return self._inbox_tls.buffered + self._session.ssl_object.pending()

    def __repr__(self) -> str:
        state = "broken" if self._rules.broken else "closed" if self.closed else "open"
        return f"<arraywire.aio.Channel over TLS {state} fd={self.fileno()}>"

    def _fail(self, name: str, transfer: Transfer, exc: BaseException) -> None:
        """Count exc's bytes; shut the socket down when the stream is out of step."""
        if transfer.fail(exc) and self._rules.break_(
            name, exc, transfer, cancelled=isinstance(exc, asyncio.CancelledError)
        ):
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    # The core's learned layouts need the bare socket: over TLS every message
    # goes the engine's way.
    async def _send_learned(self, array: Any) -> int | None:
        return None

    async def _take_learned(self, max_bytes: int | None, timeout: float | None) -> np.ndarray | None:
        return None

    def _write_now(self, name: str, plan: SendPlan) -> Coroutine[Any, Any, int]:
        return self._write(name, plan)  # records are encrypted and flushed from the loop

    def _record_waiting(self) -> bool:
        inbox = self._inbox_tls
        if inbox.buffered or not (
            self._session.ssl_object.pending() or refusals.readable(self._sock)
        ):
            return False
        return peers.identify(inbox.first_now()) == "control"

    async def _send_plan(self, name: str, plan: SendPlan) -> int:
        session = self._session
        try:
            for batch in plan.batches():
                for buffer in batch:
                    view = byte_view(buffer, writable=False)
                    for start in range(0, len(view), WRITE_BYTES):
                        piece = view[start : start + WRITE_BYTES]
                        session.encrypt(piece)
                        # in the TLS stream now: a flush cut short leaves the message cut
                        plan.moved(len(piece))
                        await session.flush()
                        if plan.reporter is not None:
                            plan.reporter.report(plan.offset)
        except BaseException as exc:
            self._fail(name, plan, exc)
            raise
        return plan.complete()

    async def _write_bytes(self, data: bytearray) -> int:
        transfer = Transfer(len(data))
        self._session.encrypt(data)
        transfer.moved(len(data))
        try:
            await self._session.flush()
        except BaseException as exc:
            self._fail("send_many", transfer, exc)
            raise
        return len(data)

    async def _read(self, name: str, message: Receive, timeout: float | None) -> bool:
        # aio announces no same-host copies under TLS: every read is the socket's
        inbox = self._inbox_tls
        session = self._session
        try:
            for request in buffered_reads(message, inbox, DIRECT_BYTES):
                if isinstance(request, int):
                    if not await inbox.fill(timeout):
                        raise IncompleteTransferError(0, request)
                    continue
                view = writable_bytes(request[0])
                while view:
                    count = await session.read_into(view, timeout)
                    if not count:
                        raise IncompleteTransferError(0, len(view))
                    view = view[count:]
                    message.moved(count)
                    if message.reporter is not None:
                        message.reporter.report(message.offset)
        except BaseException as exc:
            end = message.end_of_stream(exc)
            if end is not None:
                raise end from None
            record = message.refusal_record()
            if record is not None:
                await self._refuse(record)
            self._fail(name, message, exc)
            raise
        return True

    async def _refuse(self, record: bytes) -> None:
        """Tell the sender why its message was refused, then close, as the
        plain Channel does; the drain reads the encrypted bytes unread."""
        if not refusals.may_write_record(self._rules):
            return  # a send holds the session: _fail shuts the socket down
        try:
            await asyncio.wait_for(self._session.write(record), control.DRAIN_SECONDS)
            refusals.drain(self._streams)
        except (OSError, asyncio.TimeoutError):  # the sender is gone: it hears nothing
            return
        finally:
            refusals.release_record(self._rules)
        self._sock.close()

    def _last_bytes(self) -> tuple[Buffered, Callable[[memoryview], int]]:
        return self._inbox_tls, self._session.read_now

    def close(self) -> None:
        """Close the connection: close_notify when it can go at once, then the socket."""
        if self._sock.fileno() != -1:
            self._session.close()
