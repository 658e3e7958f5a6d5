"""An asyncio Channel's same-host copies (docs/PROTOCOL.md, "A message copied
in place"): the blocking Channel's (``_sync/samehost.py``) over the same
``Rendezvous``, with tasks for threads. The copy runs in a transfer worker,
the GIL released by the core; records go out from the event loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from arraywire._aio.moving import Claim, Forward, in_thread
from arraywire._drivers.rules import ChannelRules
from arraywire._drivers.samehost import (
    Rendezvous,
    copied_record,
    copy_failed,
    copy_payload,
    header_failed,
    unanswerable,
    wait_failed,
)
from arraywire._wire import samehost
from arraywire._wire.engine import Receive, SendPlan

# A record of the receive direction waits, polling at this interval, for a
# send of another task to end: the send direction has no awaitable lock.
SEND_POLL_SECONDS = 0.001


class AioCopies(Rendezvous):
    """Same-host copies on one asyncio Channel whose peer is process ``pid``."""

    def __init__(self, pid: int, sock: socket.socket, rules: ChannelRules, capabilities: int) -> None:
        super().__init__(pid, capabilities)
        self._sock = sock
        self._rules = rules
        self._lender: asyncio.Task[object] | None = None  # the send holding both directions
        self._given_back = asyncio.Event()

    def lend(self, plan: SendPlan) -> bool:
        """Whether the plan goes as a described message: this sender
        describes it, and its send may take the receive direction (not when
        a receive holds it); ``give_back`` returns the direction."""
        if not self.describes(plan) or not self._rules.lanes["receive"].acquire(False):
            return False
        self.lending = True
        self._given_back.clear()
        self._lender = asyncio.current_task()
        return True

    def give_back(self) -> None:
        self._lender = None
        self.lending = False
        self._rules.lanes["receive"].release()
        self._given_back.set()

    async def wait_lent(self, timeout: float | None) -> None:
        """For a receive: wait until no send's rendezvous holds the
        direction, up to ``timeout`` (TimeoutError after it)."""
        if not self.lending:
            return
        try:
            await asyncio.wait_for(self._returned(), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
            error = TimeoutError("timed out")
            error.bytes_done = 0  # type: ignore[attr-defined]
            raise error from None

    async def _returned(self) -> None:
        while self.lending:
            await self._given_back.wait()

    async def send(self, claim: Claim, plan: SendPlan, read: Callable[[Receive], Awaitable[bool]]) -> None:
        """A described send, once ``lend`` said so, under the send's claim:
        the ranges record and the header, then read (``read``: the Channel's
        read of one message, False when it stopped at this send's answer)
        until the answer came. A failure once the header went breaks the
        Channel, with ``bytes_done`` left to ``plan.fail``."""
        record = self.first_bytes()
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(self._sock, record + plan.header)
        except BaseException as exc:  # sock_sendall counts no byte: the stream is lost
            header_failed(exc, record)
            claim.shutdown()
            raise
        self.header_sent(plan)
        try:
            while self.awaited is not None:
                message = self.next_receive()
                if await read(message):  # the peer's own message came first
                    self.keep(message)
        except BaseException as exc:
            claim.shutdown()
            failure = wait_failed(exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            self.awaited = None

    async def answered(self, answer: samehost.Answer) -> bool:
        """A copied record the Channel read: the answer to this end's
        described send, confirmed; True when the read stops here."""
        between = self.answer(answer)
        await asyncio.get_running_loop().sock_sendall(self._sock, samehost.encode_confirm())
        return between

    async def copy(self, claim: Claim, request: samehost.Copy, message: Receive) -> None:
        """A described receive, under its claim: copy its payload in a
        transfer worker (unless it does not fit the receive) and send the
        copied record, a failure's too when the connection takes it."""
        if request.arrays is not None:
            reporter = message.reporter
            forward = None if reporter is None else Forward(reporter)
            try:
                await in_thread(
                    claim, False, lambda _: copy_payload(self.pid, request, message, forward),
                    wait=False,
                )
                if forward is not None:
                    forward.raise_error()
            except BaseException as exc:
                record, raised = copy_failed(exc, request, message)
                try:
                    await self._write(record)
                except OSError:  # the sender is gone: it hears nothing
                    pass
                if raised is exc:
                    raise
                raise raised from exc
        try:
            await self._write(copied_record(request))
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise unanswerable() from exc

    async def _write(self, record: bytes) -> None:
        """A record of the receive direction: at once from a send's
        rendezvous (it holds the send direction), else once the send in
        progress, if any, is done."""
        loop = asyncio.get_running_loop()
        if self._lender is not None and self._lender is asyncio.current_task():
            await loop.sock_sendall(self._sock, record)
            return
        send = self._rules.lanes["send"]
        while not send.acquire(False):
            await asyncio.sleep(SEND_POLL_SECONDS)
        try:  # at once when the socket takes it: a send claimed meanwhile would find it taken
            sent = self._sock.send(record)
        except BlockingIOError:
            sent = 0
        except BaseException:
            send.release()
            raise
        try:
            if sent < len(record):
                await loop.sock_sendall(self._sock, record[sent:])
        finally:
            send.release()
