"""A blocking Channel's same-host copies (docs/PROTOCOL.md, "A message copied
in place"): the rendezvous of a described send, the copy and answer of a
described receive, and the peer's messages read while a send waited for its
answer. What the records mean is the wire layer's (``samehost``, ``Receive``).

A described send reads its answer itself, so it runs only while it can hold
the receive direction too: when a receive holds it, the message goes on the
socket path instead, and a receive that finds a send's rendezvous holding it
waits for it. The peer's messages that came first (it sent before it read)
are received whole during the rendezvous and kept for the next receives.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections import deque
from collections.abc import Callable

import numpy as np

from arraywire._core.protocol import Core
from arraywire._drivers.rules import ChannelRules
from arraywire._drivers.samehost import copy_failed, copy_payload, refused_copy
from arraywire._wire import samehost
from arraywire._wire.engine import Message, Receive, SendPlan, mismatch
from arraywire._wire.errors import ProtocolError
from arraywire._wire.header import DEFAULT_MAX_BYTES, ArraySpec


class Copies:
    """Same-host copies on one blocking Channel whose peer is process ``pid``."""

    def __init__(
        self, pid: int, sock: socket.socket, core: Core, rules: ChannelRules, capabilities: int
    ) -> None:
        self._pid = pid
        self._sock = sock
        self._core = core
        self._rules = rules
        self._capabilities = capabilities
        # The peer's messages received during a rendezvous, for the next receives.
        self.stash: deque[Receive] = deque()
        self.lending = False  # a send is taking, or holds, the receive direction
        self._lender: int | None = None  # the thread of the send that holds it
        self._awaited: SendPlan | None = None
        self._description: samehost.Description | None = None  # of the send lend() took

    def lend(self, plan: SendPlan) -> bool:
        """Whether the plan goes as a described message: this sender
        describes it, and its send may take the receive direction (not when
        a receive holds it); ``give_back`` returns the direction."""
        if plan.total - len(plan.header) < samehost.SAME_HOST_BYTES:
            return False
        self._description = samehost.describe_ranges(plan.arrays)
        if self._description is None:
            return False
        receive = self._rules.lanes["receive"]
        if receive is not self._rules.lanes["send"]:  # over TLS the send holds the one turn
            self.lending = True
            if not receive.acquire(False):
                self.lending = False
                return False
        self._lender = threading.get_ident()
        return True

    def give_back(self) -> None:
        self._lender = None
        receive = self._rules.lanes["receive"]
        if receive is not self._rules.lanes["send"]:
            self.lending = False
            receive.release()

    def wait_lent(self, lane: threading.Lock) -> bool:
        """For a receive that found its direction taken: wait while a send's
        rendezvous holds it, then hold it; False when a receive holds it."""
        return self.lending and lane.acquire()

    def send(self, plan: SendPlan, read: Callable[[Receive], bool]) -> None:
        """A described send, once ``lend`` said so: the ranges record and the header, then read
        (``read``: the Channel's read of one message, False when it stopped
        at this send's answer) until the answer came. Raises the failure
        with ``bytes_done`` left to ``plan.fail``: the header and the
        payload bytes the receiver acknowledged."""
        assert self._description is not None
        record = samehost.encode_ranges(self._description)
        try:
            self._core.send_from(record + plan.header, self._sock)
        except BaseException as exc:  # its bytes_done counts the record's
            done = getattr(exc, "bytes_done", None) or 0
            exc.bytes_done = max(0, done - len(record))  # type: ignore[attr-defined]
            raise
        plan.moved(len(plan.header))
        if plan.reporter is not None:
            plan.reporter.report(0)
        self._awaited = plan
        try:
            while self._awaited is not None:
                message = Receive(DEFAULT_MAX_BYTES, capabilities=self._capabilities)
                if read(message):  # the peer's own message came first
                    self.stash.append(message)
        except EOFError as exc:  # as a socket's send to a peer that closed
            raise gone_before_answer() from exc
        except BaseException as exc:
            exc.bytes_done = 0  # type: ignore[attr-defined]  # plan.fail counts this send's
            raise
        finally:
            self._awaited = None

    def answered(self, answer: samehost.Answer) -> bool:
        """A copied record the Channel read: take it as the answer to this
        end's described send, and confirm; True when the read stops here."""
        plan = self._awaited
        if plan is None:
            raise ProtocolError(
                "the peer sent a copied record, and no message of this end awaits one"
            )
        payload = plan.total - len(plan.header)
        copied = samehost.decode_copied(answer.body, payload)
        self._awaited = None
        if copied.status == samehost.FAILED:
            plan.moved(copied.copied)
            raise refused_copy(copied, payload)
        self._core.send_from(samehost.encode_confirm(), self._sock)
        plan.moved(payload)
        return answer.between

    def copy(self, request: samehost.Copy, message: Receive) -> None:
        """A described receive: copy its payload and send the copied record
        (a failure's too, when the connection takes it), or send that it was
        not copied (a message that does not fit the receive)."""
        if request.arrays is None:
            self._write(samehost.encode_copied(0, samehost.DISCARDED))
            return
        try:
            copy_payload(self._pid, request, message)
        except BaseException as exc:
            record, raised = copy_failed(exc, request, message)
            try:
                self._write(record)
            except OSError:  # the sender is gone: it hears nothing
                pass
            if raised is exc:
                raise
            raise raised from exc
        self._write(samehost.encode_copied(sum(a.nbytes for a in request.arrays)))

    def _write(self, record: bytes) -> None:
        """A record of the receive direction: at once from a send's
        rendezvous (it holds the send direction), else once the send in
        progress, if any, is done."""
        send = self._rules.lanes["send"]
        if self._lender == threading.get_ident() or send is self._rules.lanes["receive"]:
            self._core.send_from(record, self._sock)
            return
        with send:
            self._core.send_from(record, self._sock)

    def take(
        self, one_array: bool = False, out: np.ndarray | Callable[[ArraySpec], np.ndarray] | None = None
    ) -> Message:
        """The first kept message, as a receive asking for it takes it
        (``one_array`` and ``out`` as ``Receive``'s): a misfit raises
        ValueError, as on the socket path."""
        message = self.stash.popleft()
        if not one_array:
            return message.message()
        arrays = message.result()
        target = out(message.specs[0]) if callable(out) and len(arrays) == 1 else out
        assert not callable(target)
        problem = mismatch(message.specs, target)
        if problem:
            raise ValueError(problem)
        if target is not None:
            np.copyto(target, arrays[0])
            arrays = [target]
        return Message(arrays, message.metadata)


def gone_before_answer() -> BrokenPipeError:
    """What a described send raises when the receiver closed before its answer."""
    error = BrokenPipeError(
        errno.EPIPE, "the receiver closed the connection before it answered the described message"
    )
    error.bytes_done = 0  # type: ignore[attr-defined]
    return error
