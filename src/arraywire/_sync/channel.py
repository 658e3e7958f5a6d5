"""Channel: one end of a connection carrying messages, the blocking driver of
the message engine with a read-ahead buffer.

A small message costs one receive: the read-ahead buffer (the transport's
``Inbox``) takes what the socket has, and a message whose header has the
layout (dtype, dimensions, order) of the last one the engine decoded is
parsed and taken whole by the core. A payload of at least ``DIRECT_BYTES``
still to come goes straight into its array. Sends of the learned layout get
their header from the core and go out in one gather call (``Outbox``); any
other message is planned by the engine.

A Channel of parallel streams sends every message on its first stream,
except the payload of one of at least ``STRIPE_BYTES``: that is cut into one
part per stream, moved at once by a thread each (``_striping``).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from arraywire._core import tls, transport
from arraywire._drivers import refusals
from arraywire._drivers.blocking import write_plan
from arraywire._drivers.rules import (
    BLOCKING,
    BLOCKING_TLS,
    ChannelItem,
    ChannelRules,
    Sockets,
    check_wait,
    coalesce,
    cut_short,
    end_addresses,
    learn_layout,
    learn_message,
    learned_limit,
    learned_send,
    readable,
    receive_wait,
)
from arraywire._drivers.samehost import peer_pid
from arraywire._drivers.sockets import receive_timeout
from arraywire._drivers.striping import move_timed_parts, receive_jobs, send_jobs, shut_down
from arraywire._sync.samehost import Copies
from arraywire._wire import hello, samehost
from arraywire._wire.engine import (
    Message,
    Receive,
    SendPlan,
    Stripes,
    Transfer,
    buffered_reads,
    plan_send,
)
from arraywire._wire.errors import IncompleteTransferError
from arraywire._wire.header import DEFAULT_MAX_BYTES, DEFAULT_MAX_METADATA, ArraySpec
from arraywire._wire.limits import DIRECT_BYTES, Progress
from arraywire._wire.samehost import SAME_HOST_BYTES


class Channel:
    """One end of a connection carrying messages in the ``send_array`` format.

    ``Channel(sock)`` wraps a connected stream socket you already have (it
    sends no hello, so the other end may use bare ``send_array`` and
    ``recv_array``); ``arraywire.connect`` and ``Listener.accept`` make
    Channels that began with a hello. The Channel owns the socket: ``close()``
    and leaving a ``with`` block close it. One thread may send while another
    receives; a second concurrent send (or receive) raises RuntimeError.

    A failure that leaves the byte stream out of step with the peer (a hostile
    header, a peer gone mid-message, a send cut short) closes the Channel;
    later calls raise BrokenStreamError saying what happened. The socket's
    timeout (``channel.socket.settimeout``) bounds each wait for bytes.

    Over an ``ssl.SSLSocket`` (what ``connect``/``listen`` with ``ssl=``
    make) every byte goes through Python's ssl module, with the same methods
    and errors, and a send and a receive take turns: OpenSSL cannot read and
    write one connection from two threads at once.

    ``peer_reads`` is the newest message version the peer reads, from its
    hello (2 for a socket without one).

    ``read_ahead`` holds bytes of the peer's stream read before the Channel
    was made (an opening's); they are received first.

    ``capabilities`` are those its opening turned on (``hello.CONTROL``:
    a refused message's reason reaches the sender as a control record);
    none for a socket without an opening.

    ``more_streams`` are further connected sockets to the same peer, which
    make this a Channel of parallel streams (``connect(streams=N)`` and the
    Listener make such Channels): each array of at least ``STRIPE_BYTES`` is
    split over ``sockets``, a thread per stream, and the peer must be a
    Channel over the same sockets in the same order. A failure on any stream
    fails the message, with ``bytes_done`` summed over the streams, and
    closes the Channel. A striped message's progress callback runs in the
    streams' threads, one call at a time.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer_reads: int = 2,
        more_streams: Sequence[socket.socket] = (),
        read_ahead: bytes = b"",
        capabilities: int = 0,
    ) -> None:
        core = transport.core_for(sock)
        if any(isinstance(other, ssl.SSLSocket) != (core is tls) for other in more_streams):
            raise ValueError("the streams of a Channel are all TLS (ssl.SSLSocket) or none is")
        self._streams = (sock, *more_streams)
        self._core = core
        self._inbox = core.Inbox(sock)
        if read_ahead:
            self._inbox.preload(read_ahead)
        self._outbox = core.Outbox(sock)
        self._sock = sock
        # OpenSSL cannot read and write one connection from two threads at
        # once: over TLS a send and a receive take turns.
        self._tls = core is tls
        self._rules = ChannelRules(
            BLOCKING_TLS if self._tls else BLOCKING, peer_reads=peer_reads, take_turns=self._tls
        )
        self._local, self._peer = end_addresses(sock)
        self._capabilities = capabilities
        self._unchecked = 0  # bytes of learned sends since the last look for a refusal
        pid = peer_pid(sock) if capabilities & hello.SAME_HOST else None
        self._copies = None if pid is None else Copies(pid, sock, core, self._rules, capabilities)

    @property
    def socket(self) -> socket.socket:
        """The connected socket this Channel uses (its first stream's)."""
        return self._sock

    @property
    def sockets(self) -> Sockets:
        """Every stream's socket, the first one first (one without parallel streams)."""
        return self._streams

    @property
    def closed(self) -> bool:
        """Whether the Channel is closed (by ``close()``, or by a failure that
        left it out of step with the peer)."""
        return self._sock.fileno() == -1

    @property
    def same_host(self) -> bool:
        """Whether same-host copies are on (docs/PROTOCOL.md, "Same host")."""
        return bool(self._capabilities & hello.SAME_HOST)

    @property
    def local_address(self) -> Any:
        """This end's address, in the form ``connect`` takes: (host, port)
        for TCP, a path for AF_UNIX ('' when unnamed); kept after close()."""
        return self._local

    @property
    def peer_address(self) -> Any:
        """The peer's address, in the same form as ``local_address``."""
        return self._peer

    def __repr__(self) -> str:
        state = "broken" if self._rules.broken else "closed" if self.closed else "open"
        streams = f" streams={len(self._streams)}" if len(self._streams) > 1 else ""
        return f"<arraywire.Channel {state} fd={self._sock.fileno()}{streams}>"

    # --- sending ------------------------------------------------------------------

    def send(
        self, array: Any, *, metadata: bytes | None = None, progress: Progress | None = None
    ) -> int:
        """Send one array as a message.

        ``metadata`` and ``progress`` are as for ``arraywire.send_array``.

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
            Another thread is in a send on this Channel (over TLS, in a send
            or a receive).
        BrokenStreamError
            An earlier transfer on this Channel stopped part-way, and closed it.
        OSError
            The socket's error (BrokenPipeError, ConnectionResetError,
            TimeoutError after the socket's timeout with no byte moved, ...),
            with ``bytes_done`` counted from the start of the message. If part
            of the message went out (over TLS, on any failed write), the
            Channel is closed. With parallel streams, any failure of a split
            payload closes it, with ``bytes_done`` summed over the streams.
        """
        # The claim is written out in the methods that small messages use.
        rules = self._rules
        lane = rules.lanes["send"]
        if not lane.acquire(False) and not self._wait_recording(lane):
            raise rules.busy_error("send")
        try:
            if rules.broken is not None:
                raise rules.broken_error("send")
            if (
                metadata is None and progress is None and learned_send(array, len(self._streams))
                and (self._copies is None or getattr(array, "nbytes", 0) < SAME_HOST_BYTES)
            ):
                sent: int | None = self._outbox.send(array)
                if sent is not None:
                    if self._capabilities:  # a look every CHECK_BYTES
                        self._unchecked += sent
                        if self._unchecked >= refusals.CHECK_BYTES:
                            self._check_refused("send", sent)
                    return sent
            plan = plan_send((array,), progress, metadata)
            self._write(plan, "send")
            if metadata is None:
                learn_layout(self._outbox, array, plan)
            return plan.complete()
        except BaseException as exc:
            self._sent_refused("send", exc)
            if cut_short(exc, self._tls):
                self._break("send", exc)
            raise
        finally:
            lane.release()

    def send_arrays(
        self,
        arrays: Iterable[Any] | Mapping[str, Any],
        *,
        metadata: bytes | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Send arrays as one message.

        ``arrays``, ``metadata`` and ``progress`` are as for
        ``arraywire.send_arrays``: a mapping of str names to arrays sends the
        names too.

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
        RuntimeError, BrokenStreamError, OSError
            As ``Channel.send`` raises them.
        """
        self._rules.claim("send", wait=self._wait_recording)
        try:
            plan = plan_send(arrays, progress, metadata)
            self._write(plan, "send_arrays")
            return plan.complete()
        except BaseException as exc:
            self._sent_refused("send_arrays", exc)
            raise
        finally:
            self._rules.release("send")

    def send_many(self, arrays: Iterable[Any]) -> int:
        """Send each array as a message of its own.

        Small messages are coalesced into as few system calls as their sizes
        allow; every byte is on the wire when this returns. The peer receives
        each message with ``recv`` or iteration.

        Returns
        -------
        int
            The bytes sent: every message's, headers included.

        Raises
        ------
        TypeError, ValueError
            An input that cannot be sent (as ``arraywire.send_array``
            refuses it), before its first byte, once the messages before it
            are sent; ``bytes_done`` counts their bytes. The Channel stays
            usable.
        RuntimeError, BrokenStreamError
            As ``Channel.send`` raises them.
        OSError
            The socket's error, with ``bytes_done`` counted from the start of
            the first message. If a message was cut short, the Channel is
            closed.
        """
        self._rules.claim("send", wait=self._wait_recording)
        sent = 0
        try:
            for piece in coalesce(arrays, self._outbox):
                if isinstance(piece, bytearray):
                    sent += self._core.send_from(piece, self._sock)
                else:
                    self._write(piece[1], "send_many")
                    sent += piece[1].total
        except BaseException as exc:
            partial = cut_short(exc, self._tls)
            exc.bytes_done = sent + (getattr(exc, "bytes_done", None) or 0)  # type: ignore[attr-defined]
            self._sent_refused("send_many", exc)
            if partial:
                self._break("send_many", exc)
            raise
        finally:
            self._rules.release("send")
        return sent

    def _write(self, plan: SendPlan, what: str) -> None:
        self._rules.check_peer_reads(plan.header[4])
        parts = plan.stripes(len(self._streams))
        self._check_refused(what, 0)
        copies = self._copies
        if copies is not None and parts is None and copies.lend(plan):  # a described message
            try:
                copies.send(plan, self._read)
            except BaseException as exc:
                plan.fail(exc)
                self._break(what, exc, plan)
                raise
            finally:
                copies.give_back()
            return
        try:
            if parts is None:
                write_plan(plan, self._sock, plan.reporter, self._core)
            else:
                jobs = send_jobs(self._core, parts, self._streams)
                plan.moved(move_timed_parts(jobs, self._streams, plan.reporter, 0))
        except BaseException as exc:
            # over TLS, any failed write (see _cut_short); striped, any failure
            # (the streams were shut down)
            if plan.fail(exc) or self._tls or parts is not None:
                self._break(what, exc, plan)
            raise
        if plan.total >= refusals.CHECK_BYTES:  # refused while it went out, most likely
            self._check_refused(what, plan.total)

    def _check_refused(self, what: str, done: int) -> None:
        """Raise a waiting refusal of an earlier message (``done``: this send's bytes out)."""
        self._unchecked = 0
        if not self._capabilities:
            return
        try:
            refusals.read_refusal(self._rules, self._sock, self._inbox, self._read, self._capabilities)
        except BaseException as exc:
            exc.bytes_done = done  # type: ignore[attr-defined]
            self._break(what, exc)
            raise

    def _sent_refused(self, what: str, exc: BaseException) -> None:
        """A send the receiver's close failed: raise its refusal, if it sent one."""
        refused = refusals.refusal_after(
            exc, self._rules, self._capabilities, self._inbox, refusals.receive_now(self._sock)
        )
        if refused is not None:
            self._break(what, refused)
            raise refused from exc

    # --- receiving ----------------------------------------------------------------

    def recv(
        self,
        *,
        out: np.ndarray | Callable[[ArraySpec], np.ndarray] | None = None,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Receive a one-array message.

        ``out``, when given, receives the payload in place: an array, or a
        callable that is given the header's ``ArraySpec`` (dtype, shape,
        order, nbytes) before any of the payload is read and returns the
        array to fill; what it raises fails the receive and closes the
        Channel, the payload unread. ``max_bytes``
        and ``progress`` are as for ``arraywire.recv_array``. ``timeout``
        (seconds, None for the socket's own) bounds each wait for bytes, as
        the socket's timeout does.

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
            ``out`` does not match the message (dtype, shape, memory order,
            read-only), or the message holds another number of arrays than
            one. The payload was read and discarded first, so the Channel
            stays usable.
        IncompleteTransferError
            The peer closed inside the message; ``bytes_done`` and
            ``bytes_expected`` count from its start. The Channel is closed.
        ProtocolError
            The header is malformed, of an unsupported version, or declares
            more than ``max_bytes`` of payload or more metadata than
            ``DEFAULT_MAX_METADATA``. The Channel is closed.
        RuntimeError
            Another thread is in a receive on this Channel (over TLS, in a
            send or a receive).
        BrokenStreamError
            An earlier transfer on this Channel stopped part-way, and closed it.
        OSError
            The socket's error (ConnectionResetError, TimeoutError after
            ``timeout`` or the socket's timeout, ...), with ``bytes_done``.
            When no byte of the message had come, the Channel stays usable
            (call again); once part of it had (read-ahead bytes included),
            the Channel is closed. With parallel
            streams, any failure of a split payload closes it, with
            ``bytes_done`` summed over the streams.
        """
        rules = self._rules
        lane = rules.lanes["receive"]
        if not lane.acquire(False) and not self._wait_lent(lane, timeout):
            raise rules.busy_error("receive")
        restore = receive_timeout(self._sock, timeout)
        try:
            if rules.broken is not None:
                raise rules.broken_error("receive")
            if self._copies is not None and self._copies.stash:
                return self._copies.take(True, out).arrays[0]  # type: ignore[index]
            if out is None and progress is None:
                array: np.ndarray | None = self._inbox.take_array(
                    learned_limit(max_bytes, len(self._streams))
                )
                if array is not None:
                    return array
            message = Receive(
                max_bytes, progress=progress, one_array=True, out=out,
                streams=len(self._streams), capabilities=self._capabilities,
            )
            self._read(message)
            return message.result()[0]
        except BaseException as exc:
            if getattr(exc, "bytes_done", None):  # a part of the message came
                self._break("receive", exc)
            raise
        finally:
            restore()
            lane.release()

    def _wait_lent(self, lane: Any, timeout: Any = None) -> bool:
        return self._copies is not None and self._copies.wait_lent(lane, receive_wait(timeout))

    def _wait_recording(self, lane: Any) -> bool:
        return self._copies is not None and self._copies.wait_recording(lane)

    def poll(self, timeout: float | None = 0) -> bool:
        """Whether a message can be received: its bytes are buffered or
        readable, or the peer closed (then a receive raises EOFError). Waits
        up to ``timeout`` seconds for that (0: not at all, None: for ever),
        as ``multiprocessing.connection.Connection.poll``.

        Raises
        ------
        TypeError, ValueError
            ``timeout`` is not a number of seconds of 0 or more, or None.
        BrokenStreamError
            An earlier transfer on this Channel stopped part-way, and closed it.
        OSError
            The Channel is closed (EBADF).
        """
        seconds = check_wait(timeout, zero=True)
        if self._rules.broken is not None:
            raise self._rules.broken_error("poll")
        pending = self._sock.pending() if isinstance(self._sock, ssl.SSLSocket) else 0
        copies = self._copies
        if copies is not None and copies.lending:  # the send's read takes what comes
            return bool(copies.stash)
        kept = 0 if copies is None else len(copies.stash)  # received during a send
        return readable(self._sock, self._inbox.buffered + pending + kept, seconds)

    def recv_arrays(
        self,
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> list[np.ndarray] | dict[str, np.ndarray]:
        """Receive one message of any number of arrays.

        ``max_bytes`` and ``progress`` are as for ``arraywire.recv_arrays``;
        ``timeout`` as for ``recv``.

        Returns
        -------
        list of numpy.ndarray, or dict of str to numpy.ndarray
            The arrays, each fresh and with memory of its own: a dict in the
            sender's order when the sender named them, else a list. The
            metadata is dropped (``recv_message`` returns it).

        Raises
        ------
        EOFError, IncompleteTransferError, ProtocolError, RuntimeError, BrokenStreamError, OSError
            As ``Channel.recv`` raises them.
        """
        return self.recv_message(max_bytes=max_bytes, progress=progress, timeout=timeout).arrays

    def recv_message(
        self,
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        max_metadata: int = DEFAULT_MAX_METADATA,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Receive one message with its metadata.

        ``max_metadata`` caps the metadata's size; ``max_bytes`` and
        ``progress`` are as for ``arraywire.recv_message``; ``timeout`` as
        for ``recv``.

        Returns
        -------
        Message
            ``Message(arrays, metadata)``: the arrays as ``recv_arrays``
            returns them, and the metadata bytes (b"" when the sender gave
            none).

        Raises
        ------
        ProtocolError
            The header is malformed, or declares more than ``max_bytes`` of
            payload or more than ``max_metadata`` bytes of metadata. The
            Channel is closed.
        EOFError, IncompleteTransferError, RuntimeError, BrokenStreamError, OSError
            As ``Channel.recv`` raises them.
        """
        self._rules.claim("receive", wait=lambda lane: self._wait_lent(lane, timeout))
        restore = receive_timeout(self._sock, timeout)
        try:
            if self._copies is not None and self._copies.stash:
                return self._copies.take()
            message = Receive(
                max_bytes, max_metadata=max_metadata, progress=progress,
                streams=len(self._streams), capabilities=self._capabilities,
            )
            self._read(message)
            return message.message()
        finally:
            restore()
            self._rules.release("receive")

    def __iter__(self) -> Iterator[ChannelItem]:
        """Receive each message in turn, until the peer closes cleanly
        between messages (the loop then ends, without EOFError).

        Yields
        ------
        ChannelItem
            For a message of one unnamed array, the array itself; else what
            ``recv_arrays`` returns. Metadata is dropped.

        Raises
        ------
        ProtocolError
            As ``Channel.recv``; a message over ``DEFAULT_MAX_BYTES`` is
            refused.
        IncompleteTransferError, RuntimeError, BrokenStreamError, OSError
            As ``Channel.recv`` raises them.
        """
        while True:
            try:
                yield self._next()
            except EOFError as exc:
                if isinstance(exc, IncompleteTransferError):
                    raise
                return

    def _next(self) -> ChannelItem:
        rules = self._rules
        lane = rules.lanes["receive"]
        if not lane.acquire(False) and not self._wait_lent(lane):
            raise rules.busy_error("receive")
        try:
            if rules.broken is not None:
                raise rules.broken_error("receive")
            if self._copies is not None and self._copies.stash:
                arrays = self._copies.take().arrays
            else:
                array: np.ndarray | None = self._inbox.take_array(
                    learned_limit(DEFAULT_MAX_BYTES, len(self._streams))
                )
                if array is not None:
                    return array
                message = Receive(
                    DEFAULT_MAX_BYTES, streams=len(self._streams), capabilities=self._capabilities
                )
                self._read(message)
                arrays = message.message().arrays
            if type(arrays) is list and len(arrays) == 1:
                return arrays[0]
            return arrays
        except BaseException as exc:
            if getattr(exc, "bytes_done", None):  # a part of the message came
                self._break("receive", exc)
            raise
        finally:
            lane.release()

    def _read(self, message: Receive) -> bool:
        """Receive one message; False when the read stopped, between
        messages, at the answer a described send of this end awaited."""
        inbox = self._inbox
        recvmsg_into = self._core.recvmsg_into
        striped = False
        try:
            for request in buffered_reads(message, inbox, DIRECT_BYTES):
                if isinstance(request, int):
                    if not inbox.fill():
                        raise IncompleteTransferError(0, request)
                elif isinstance(request, list):
                    reporter = message.reporter
                    part = None if reporter is None else reporter.part(message.offset)
                    message.moved(recvmsg_into(request, self._sock, progress=part))
                elif isinstance(request, Stripes):
                    striped = True
                    jobs = receive_jobs(self._core, request, self._streams, self._inbox)
                    reporter = None if request.parts is None else message.reporter
                    message.moved(move_timed_parts(jobs, self._streams, reporter, message.offset))
                else:
                    copies = self._copies
                    assert copies is not None  # same-host requests come only with copies on
                    if isinstance(request, samehost.Copy):
                        copies.copy(request, message)
                    elif copies.answered(request):
                        return False
        except BaseException as exc:
            out_of_step = message.fail(exc)
            end = message.end_of_stream(exc)
            if end is not None:
                raise end from None
            record = message.refusal_record()
            if record is not None:
                self._refuse(record, exc, message)
            elif out_of_step or striped:  # striped: the streams were shut down
                self._break("receive", exc, message)
            raise
        learn_message(inbox, message)
        return True

    def _refuse(self, record: bytes, exc: BaseException, message: Receive) -> None:
        """Tell the sender why its message was refused, then close: the record
        within DRAIN_SECONDS (the socket's buffer takes it at once unless the
        peer stopped reading), the drain in its own thread."""
        self._rules.break_("receive", exc, message)
        if not refusals.refuse(self._rules, self._streams, self._core, record):
            shut_down(self._streams)
        self.close()

    # --- state --------------------------------------------------------------------

    def _break(self, what: str, exc: BaseException, transfer: Transfer | None = None) -> None:
        if self._rules.break_(what, exc, transfer):
            shut_down(self._streams)
            self.close()

    def close(self) -> None:
        """Close the connection (and its sockets)."""
        for sock in self._streams:
            sock.close()

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed), for select and poll."""
        return self._sock.fileno()

    def __enter__(self) -> Channel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

