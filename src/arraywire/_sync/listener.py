"""The blocking ``Listener``: a thread of its own takes connections as they
come and runs their openings (TLS handshake, hello, authentication, joining
a stream group); ``accept()`` hands over those that are done."""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from ssl import SSLContext, SSLWantReadError, SSLWantWriteError
from types import TracebackType
from typing import Any, TypeAlias

from arraywire._core.tls import sigpipe_blocked
from arraywire._drivers.listening import (
    ACCEPT_PAUSE,
    DEFAULT_MAX_OPENINGS,
    LOGGER,
    Handover,
    group_late,
    log_accept_failed,
    log_dropped,
    opening_late,
    peer_of,
)
from arraywire._drivers.rules import check_wait
from arraywire._drivers.samehost import announces, answer_probe
from arraywire._drivers.sockets import (
    bound_address,
    closed_listener,
    not_a_tls_client,
    remove_socket_file,
    tune,
)
from arraywire._sync.channel import Channel
from arraywire._wire import hello, peers
from arraywire._wire.errors import AuthenticationError, ProtocolError
from arraywire._wire.groups import DEFAULT_MAX_STREAMS, Groups
from arraywire._wire.opening import Opening


class _Pending:
    """A taken connection whose opening is still going on."""

    __slots__ = (
        "data", "deadline", "filled", "handshaking", "joined", "opening", "peeking", "peer",
        "sock", "unsent",
    )

    def __init__(
        self, sock: socket.socket, peer: Any, deadline: float, opening: Opening | None,
        tls: bool,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.deadline = deadline
        self.opening = opening
        self.peeking = tls  # TLS: a look at the first bytes, then the handshake
        self.handshaking = False
        self.data = bytearray(64)  # the largest part of an opening read at once is 33 bytes
        self.filled = 0
        self.unsent = b""
        # a stream of a group: its status and, if it made the group whole, the
        # group's streams, once it asked to join
        self.joined: tuple[int, list[socket.socket] | None] | None = None

    def send(self) -> None:
        """Send what the opening has to say; BlockingIOError (or SSLWantWriteError)
        keeps the rest for later."""
        if self.opening is not None:
            self.unsent += self.opening.outgoing()
        while self.unsent:
            with sigpipe_blocked():
                self.unsent = self.unsent[self.sock.send(self.unsent) :]


# What a Listener's peers open with: a hello (listen()), a hello or a bare
# message (the command line's receiver without a key), nothing (its sender).
OPENINGS = ("hello", "hello or message", "none")

# A peer dropped during its opening, told to on_drop: its address, why, and
# its socket, still open for a last word (the plain socket before TLS).
OnDrop: TypeAlias = "Callable[[Any, BaseException, socket.socket], None]"


class Listener:
    """Accepts connections; each becomes a Channel once its opening is done.

    A thread of the Listener takes connections as they come and runs their
    openings side by side, each bounded by ``handshake_timeout``: ``connect``
    returns once its opening is done, before ``accept()`` is called, and a
    peer that stays silent or sends something else never holds up the
    others. At most ``max_openings`` connections are held (openings under
    way and Channels waiting for ``accept()``); more wait in the kernel's
    backlog. The parallel streams of one peer become one Channel once all
    have joined. Each peer dropped during its opening is logged as a
    warning on ``logger``.

    One thread drives every opening with a selector: the openings are
    non-blocking state machines (``hello.Opening``, the TLS handshake with
    ``do_handshake``), so no thread per connection is needed.

    ``opening`` is one of OPENINGS; ``on_drop`` hears of every peer dropped,
    in the Listener's thread (what it raises, ``accept()`` raises).
    """

    def __init__(
        self,
        sock: socket.socket,
        handshake_timeout: float,
        unix_name: str | bytes | None = None,
        authkey: bytes | None = None,
        ssl: SSLContext | None = None,
        groups: Groups[socket.socket] | None = None,
        opening: str = "hello",
        on_drop: OnDrop | None = None,
        same_host: bool | None = None,
        max_openings: int = DEFAULT_MAX_OPENINGS,
        logger: logging.Logger = LOGGER,
    ) -> None:
        if opening not in OPENINGS:
            raise ValueError(f"opening is one of {OPENINGS}, got {opening!r}")
        if opening != "hello" and authkey is not None:
            raise ValueError("with a key every peer opens with a hello")
        self._handover: Handover[Channel] = Handover(max_openings)
        sock.setblocking(False)
        self._sock = sock
        self._handshake_timeout = handshake_timeout
        self._unix_name = unix_name
        self._authkey = authkey
        self._ssl = ssl
        self._opening = opening
        self._on_drop = on_drop
        self._same_host = same_host
        self._logger = logger
        self._where = bound_address(sock, unix_name)
        self._pending: dict[socket.socket, _Pending] = {}
        self._groups = Groups(DEFAULT_MAX_STREAMS, handshake_timeout) if groups is None else groups
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._listening = True  # whether the selector watches sock
        self._resume_at: float | None = None  # after a failed accept
        # close() and accept() wake the Listener's thread through this pair
        self._wake, self._woken = socket.socketpair()
        self._wake.setblocking(False)
        self._woken.setblocking(False)
        self._selector.register(self._woken, selectors.EVENT_READ)
        self._ready = threading.Condition()
        self._full = False  # the thread waits for accept() to make room
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="arraywire Listener", daemon=True)
        self._thread.start()

    @property
    def address(self) -> Any:
        """The bound address: (host, port) with the real port, or the AF_UNIX
        path or abstract name as given."""
        return self._where

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self._sock.fileno()

    @property
    def openings(self) -> int:
        """Connections taken whose opening is still under way."""
        return len(self._pending)

    def accept(self, *, timeout: float | None = None) -> Channel:
        """Wait up to ``timeout`` seconds (None: for ever) for the next
        connection whose opening is done; connections are handed over in the
        order their openings ended.

        A peer whose opening fails (wrong bytes, TLS handshake failure, reset)
        or is not done within ``handshake_timeout`` is dropped without raising
        (and logged). The parallel streams of one peer become one Channel once
        the last has joined. Several threads may wait at once; each Channel
        goes to one of them.

        Returns
        -------
        Channel
            The connection, its opening done, its socket blocking with no
            timeout.

        Raises
        ------
        TimeoutError
            With a ``timeout``: no opening was done within it.
        AuthenticationError
            A peer's key differs from the Listener's, or one of them has no
            key. That peer's connection is closed; the next call goes on with
            the others.
        OSError
            The Listener is closed, or was closed while this waited (EBADF);
            or accepting failed for another reason than the peer (EMFILE: out
            of descriptors, ...).
        """
        seconds = check_wait(timeout, zero=True)
        deadline = None if seconds is None else time.monotonic() + seconds
        with self._ready:
            while (item := self._handover.take()) is None:
                if self._handover.closed:
                    raise closed_listener()
                if deadline is None:
                    self._ready.wait()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no connection completed its opening in time")
                self._ready.wait(left)
            if self._full:  # room again: the thread takes connections anew
                self._full = False
                self._wake_up()
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[Channel]:
        """Each connection whose opening is done, until the Listener is
        closed (from another thread); a failed opening is skipped (it was
        logged), as is a failed accept."""
        while True:
            try:
                channel = self.accept()
            except (AuthenticationError, OSError):
                if self._handover.closed:
                    return
                continue
            yield channel

    def _wake_up(self) -> None:
        with contextlib.suppress(OSError):  # closed, or a wake-up already waits
            self._wake.send(b"\0")

    # --- the Listener's thread --------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        finally:
            self._release()

    def _step(self) -> None:
        now = time.monotonic()
        self._drop_late(now)
        if self._resume_at is not None and self._resume_at <= now:
            self._resume_at = None
        self._listen(self._resume_at is None and self._has_room())
        deadlines = [p.deadline for p in self._pending.values()]
        for deadline in (self._groups.next_deadline(), self._resume_at):
            if deadline is not None:
                deadlines.append(deadline)
        wait = min(deadlines, default=None)
        events = self._selector.select(None if wait is None else max(wait - now, 0))
        for key, _ in events:
            if self._stopping:
                return
            if key.fileobj is self._woken:
                with contextlib.suppress(BlockingIOError):
                    self._woken.recv(4096)
            elif key.fileobj is self._sock:
                self._take_connections()
            elif (pending := self._pending.get(key.fileobj)) is not None:  # type: ignore[call-overload]
                # (None: dropped by an earlier event of this round)
                channel = self._advance(pending)
                if channel is not None:
                    self._hand_over(channel)

    def _has_room(self) -> bool:
        with self._ready:
            self._full = not self._handover.room(len(self._pending))
            return not self._full

    def _listen(self, listening: bool) -> None:
        """Watch the listening socket, or leave new connections in the backlog."""
        if listening != self._listening:
            if listening:
                self._selector.register(self._sock, selectors.EVENT_READ)
            else:
                self._selector.unregister(self._sock)
            self._listening = listening

    def _hand_over(self, channel: Channel) -> None:
        with self._ready:
            taken = self._handover.put(channel)
            self._ready.notify()
        if not taken:
            channel.close()

    def _fail(self, exc: BaseException) -> None:
        with self._ready:
            self._handover.fail(exc)
            self._ready.notify()

    def _take_connections(self) -> None:
        while self._has_room():
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # A connection reset before accept, or out of descriptors: the
                # listener itself is fine; EMFILE must reach accept().
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                log_accept_failed(self._logger, self._where, exc)
                self._resume_at = time.monotonic() + ACCEPT_PAUSE
                self._fail(exc)
                return
            opening = None
            if self._opening != "none":
                bare = self._opening == "hello or message"
                announced = announces(self._same_host, conn, self._ssl is not None, False)
                opening = Opening(self._authkey, connecting=False, bare=bare, capabilities=announced)
            try:
                conn.setblocking(False)
                tune(conn)
            except OSError:
                conn.close()
                continue
            deadline = time.monotonic() + self._handshake_timeout
            pending = _Pending(conn, peer, deadline, opening, self._ssl is not None)
            self._pending[conn] = pending
            # plain: the hello goes out once the socket is writable, at once
            events = selectors.EVENT_READ if pending.peeking else selectors.EVENT_WRITE
            self._selector.register(conn, events)

    def _start_tls(self, pending: _Pending) -> None:
        """A look at the peer's first bytes, then the TLS server's socket."""
        assert self._ssl is not None
        sock = pending.sock
        first = sock.recv(hello.SIZE, socket.MSG_PEEK)
        if not first:
            raise ConnectionError("the peer closed the connection before the TLS handshake")
        if not peers.starts_tls(first):
            raise not_a_tls_client(first)
        self._selector.unregister(sock)
        del self._pending[sock]
        # the plain socket is detached into the SSLSocket
        pending.sock = self._ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self._pending[pending.sock] = pending
        self._selector.register(pending.sock, selectors.EVENT_READ)
        pending.peeking = False
        pending.handshaking = True

    def _advance(self, pending: _Pending) -> Channel | None:
        opening = pending.opening
        try:
            if pending.peeking:
                self._start_tls(pending)
            sock = pending.sock
            if pending.handshaking:
                sock.do_handshake()  # type: ignore[attr-defined]
                pending.handshaking = False
            while opening is not None:
                answer_probe(opening, sock)
                pending.send()
                wanted = opening.wanted
                if not wanted:
                    if opening.group is None or pending.joined is not None:
                        break
                    pending.joined = self._groups.join(opening.group, sock, time.monotonic())
                    opening.answer_join(pending.joined[0], self._groups.max_streams)
                    continue
                count = sock.recv_into(memoryview(pending.data)[pending.filled : wanted])
                if not count:
                    raise ConnectionError("the peer closed the connection during the opening")
                pending.filled += count
                if pending.filled == wanted:
                    pending.filled = 0
                    opening.received(bytes(pending.data[:wanted]))
        except (BlockingIOError, InterruptedError, SSLWantReadError, SSLWantWriteError) as exc:
            # wait for what the step that could not go on needs
            writing = isinstance(exc, SSLWantWriteError) or (
                bool(pending.unsent) and not isinstance(exc, SSLWantReadError)
            )
            events = selectors.EVENT_WRITE if writing else selectors.EVENT_READ
            self._selector.modify(pending.sock, events)
            return None
        except AuthenticationError as exc:
            with contextlib.suppress(OSError):
                pending.send()  # the verdict the peer waits for
            if self._drop(pending, exc):
                self._fail(exc)  # for accept() to raise
            return None
        except (OSError, ProtocolError) as exc:
            self._drop(pending, exc)
            return None
        self._selector.unregister(sock)
        del self._pending[sock]
        if opening is None:
            sock.setblocking(True)
            return Channel(sock)
        assert opening.peer is not None
        reads = opening.peer.reads_messages
        if opening.group is None:
            sock.setblocking(True)
            return Channel(sock, peer_reads=reads, read_ahead=opening.early,
                           capabilities=opening.capabilities)
        # a stream of a group: the Channel once its last stream joined
        assert pending.joined is not None
        status, members = pending.joined
        if status != hello.JOINED:
            # refused: the peer has read why
            with contextlib.closing(sock):
                refused = hello.join_refused(status, opening.group, self._groups.max_streams)
                self._dropped(pending.peer, sock, refused)
        if members is None:
            return None
        for member in members:
            member.setblocking(True)
        return Channel(members[0], peer_reads=reads, more_streams=members[1:],
                       capabilities=opening.capabilities)

    def _drop_late(self, now: float) -> None:
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            self._drop(pending, opening_late(self._handshake_timeout))
        for sock in self._groups.expired(now):
            with contextlib.closing(sock):
                self._dropped(peer_of(sock), sock, group_late(self._handshake_timeout))

    def _drop(self, pending: _Pending, why: BaseException) -> bool:
        """Drop a peer under way; False when on_drop raised (accept() raises it)."""
        self._selector.unregister(pending.sock)
        with contextlib.closing(pending.sock):
            raised = self._told(pending.peer, pending.sock, why)
        # counted in openings until on_drop has heard of it: a caller that
        # sees none under way knows every drop was told of
        del self._pending[pending.sock]
        if raised is not None:
            self._fail(raised)
        return raised is None

    def _dropped(self, peer: Any, sock: socket.socket, why: BaseException) -> None:
        """Drop a peer no longer under way (a stream of a group)."""
        raised = self._told(peer, sock, why)
        if raised is not None:
            self._fail(raised)

    def _told(self, peer: Any, sock: socket.socket, why: BaseException) -> BaseException | None:
        """Log a dropped peer and tell on_drop; what on_drop raised, if it did."""
        log_dropped(self._logger, self._where, peer, why)
        if self._on_drop is not None:
            try:
                self._on_drop(peer, why, sock)
            except BaseException as exc:  # noqa: BLE001 - accept() raises it in its thread
                return exc
        return None

    def _release(self) -> None:
        """The thread's end: close every connection not accepted, and the Listener."""
        with self._ready:
            left = self._handover.close()
            self._ready.notify_all()
        for channel in left:
            channel.close()
        for pending in self._pending.values():
            pending.sock.close()
        self._pending.clear()
        for sock in self._groups.clear():
            sock.close()
        self._selector.close()
        self._sock.close()
        self._wake.close()
        self._woken.close()
        remove_socket_file(self._unix_name)

    def close(self) -> None:
        """Stop listening and the Listener's thread; close the connections
        not yet accepted. An ``accept()`` waiting in another thread raises
        OSError (EBADF)."""
        self._stopping = True
        self._wake_up()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
