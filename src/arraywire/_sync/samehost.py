"""A blocking Channel's same-host copies (docs/PROTOCOL.md, "A message copied
in place"): the rendezvous of a described send, and the copy and answer of a
described receive, over the state both drivers keep (``Rendezvous``). What
the records mean is the wire layer's (``samehost``, ``Receive``).

A described send reads its answer itself, so it runs only while it can hold
the receive direction too: when a receive holds it, the message goes on the
socket path instead, and a receive that finds a send's rendezvous holding it
waits for it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from arraywire._core.protocol import Core
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


class Copies(Rendezvous):
    """Same-host copies on one blocking Channel whose peer is process ``pid``."""

    def __init__(
        self, pid: int, sock: socket.socket, core: Core, rules: ChannelRules, capabilities: int
    ) -> None:
        super().__init__(pid, capabilities)
        self._sock = sock
        self._core = core
        self._rules = rules
        self._lender: int | None = None  # the thread of the send that holds both directions
        # Guards lending and recording with the lanes they describe, so that
        # a call that finds a lane taken knows whether to wait for it.
        self._state = threading.Lock()
        self._recording = 0  # receives writing a record under the send lane

    def lend(self, plan: SendPlan) -> bool:
        """Whether the plan goes as a described message: this sender
        describes it, and its send may take the receive direction (not when
        a receive holds it); ``give_back`` returns the direction."""
        if not self.describes(plan):
            return False
        receive = self._rules.lanes["receive"]
        if receive is not self._rules.lanes["send"]:  # over TLS the send holds the one turn
            with self._state:
                if not receive.acquire(False):
                    return False
                self.lending = True
        self._lender = threading.get_ident()
        return True

    def give_back(self) -> None:
        self._lender = None
        receive = self._rules.lanes["receive"]
        if receive is not self._rules.lanes["send"]:
            with self._state:
                self.lending = False
                receive.release()

    def wait_lent(self, lane: threading.Lock, timeout: float | None) -> bool:
        """For a receive that found its direction taken: hold it once a
        send's rendezvous that holds it is done, within ``timeout`` (None:
        the socket's; TimeoutError after it); False when a receive holds it."""
        with self._state:
            if lane.acquire(False):
                return True
            if not self.lending:
                return False
        return held(lane, self._sock.gettimeout() if timeout is None else timeout)

    def wait_recording(self, lane: threading.Lock) -> bool:
        """For a send that found its direction taken: hold it once a record
        a receive writes under it is out; False when a send holds it."""
        with self._state:
            if lane.acquire(False):
                return True
            if not self._recording:
                return False
        return held(lane, self._sock.gettimeout())

    def send(self, plan: SendPlan, read: Callable[[Receive], bool]) -> None:
        """A described send, once ``lend`` said so: the ranges record and
        the header, then read (``read``: the Channel's read of one message,
        False when it stopped at this send's answer) until the answer came.
        Raises the failure with ``bytes_done`` left to ``plan.fail``."""
        record = self.first_bytes()
        try:
            self._core.send_from(record + plan.header, self._sock)
        except BaseException as exc:
            header_failed(exc, record)
            raise
        self.header_sent(plan)
        try:
            while self.awaited is not None:
                message = self.next_receive()
                if read(message):  # the peer's own message came first
                    self.keep(message)
        except BaseException as exc:
            failure = wait_failed(exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            self.awaited = None

    def answered(self, answer: samehost.Answer) -> bool:
        """A copied record the Channel read: the answer to this end's
        described send, confirmed; True when the read stops here."""
        between = self.answer(answer)
        self._core.send_from(samehost.encode_confirm(), self._sock)
        return between

    def copy(self, request: samehost.Copy, message: Receive) -> None:
        """A described receive: copy its payload (unless it does not fit the
        receive) and send the copied record, a failure's too when the
        connection takes it."""
        if request.arrays is not None:
            try:
                copy_payload(self.pid, request, message, message.reporter)
            except BaseException as exc:
                record, raised = copy_failed(exc, request, message)
                try:
                    self._write(record)
                except OSError:  # the sender is gone: it hears nothing
                    pass
                if raised is exc:
                    raise
                raise raised from exc
        try:
            self._write(copied_record(request))
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise unanswerable() from exc

    def _write(self, record: bytes) -> None:
        """A record of the receive direction: at once from a send's
        rendezvous (it holds the send direction), else once the send in
        progress, if any, is done."""
        send = self._rules.lanes["send"]
        if self._lender == threading.get_ident() or send is self._rules.lanes["receive"]:
            self._core.send_from(record, self._sock)
            return
        with self._state:
            self._recording += 1
        try:
            with send:
                self._core.send_from(record, self._sock)
        finally:
            with self._state:
                self._recording -= 1


def held(lane: threading.Lock, timeout: float | None) -> bool:
    """Take the lane within timeout seconds (None: however long), else TimeoutError."""
    if lane.acquire(timeout=-1 if timeout is None else timeout):
        return True
    error = TimeoutError("timed out")
    error.bytes_done = 0  # type: ignore[attr-defined]
    raise error
