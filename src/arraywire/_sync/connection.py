"""Opening connections: ``listen``, ``connect`` and the ``Listener``, with the
opening of ``hello`` (the hello, and with a key the authentication)
exchanged before the first message, over TLS when given an SSLContext.

Addresses take the forms of ``multiprocessing.connection``: a ``(host, port)``
tuple is TCP (IPv4 or IPv6 by the host; ``""`` all IPv4 interfaces, ``"::"``
all interfaces, dual-stack where the OS allows; port 0 picks a free port), a
``str`` or ``os.PathLike`` is an AF_UNIX path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from ssl import SSLContext, SSLError, SSLSocket, SSLWantReadError, SSLWantWriteError
from types import TracebackType
from typing import Any

from arraywire._core.tls import sigpipe_blocked
from arraywire._drivers.sockets import (
    DEFAULT_BACKLOG,
    DEFAULT_HANDSHAKE_TIMEOUT,
    RETRY_INTERVAL,
    Address,
    bound_address,
    check_options,
    check_streams,
    closed_in_opening,
    closed_listener,
    family_of,
    not_tls,
    remaining,
    reset_in_opening,
    server_socket,
    tune,
)
from arraywire._sync.channel import Channel
from arraywire._wire import hello
from arraywire._wire.errors import AuthenticationError, ProtocolError
from arraywire._wire.groups import DEFAULT_MAX_STREAMS, Groups


def listen(
    address: Address,
    *,
    backlog: int = DEFAULT_BACKLOG,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    authkey: bytes | None = None,
    ssl: SSLContext | None = None,
    max_streams: int = DEFAULT_MAX_STREAMS,
) -> Listener:
    """Listen for connections at address; ``accept()`` gives a Channel each.

    A peer whose opening (TLS handshake, hello, authentication) has not
    completed handshake_timeout seconds after it was accepted is dropped; it
    never holds up the others. With ``authkey`` only peers that hold the same
    key are accepted; ``accept()`` raises AuthenticationError for a peer
    whose key differs or is missing (and, without ``authkey``, for a peer
    that has one), and the Listener goes on. With ``ssl`` (a server-side
    ``ssl.SSLContext``) every connection is TLS.

    A peer that connects with ``streams=N`` gets one Channel over its N
    connections, once all have come within handshake_timeout of the first;
    one asking for more than ``max_streams`` is refused (its ``connect``
    raises ConnectionRefusedError saying so).

    Returns
    -------
    Listener
        The Listener, bound and listening; ``listener.address`` has the real
        port when port 0 was given. Close it with ``close()`` or a ``with``
        block.

    Raises
    ------
    TypeError, ValueError
        An address, ``authkey``, ``ssl`` or ``max_streams`` of the wrong kind
        or out of range (an empty key, a port outside 0..65535, ...).
    OSError
        The address cannot be bound or its host not resolved
        (``OSError`` EADDRINUSE, ``socket.gaierror``, ...).
    """
    check_options(authkey, ssl)
    groups: Groups[socket.socket] = Groups(max_streams, handshake_timeout)
    sock, path = server_socket(address, backlog)
    return Listener(sock, handshake_timeout, unlink=path, authkey=authkey, ssl=ssl, groups=groups)








def connect(
    address: Address,
    *,
    timeout: float | None = None,
    authkey: bytes | None = None,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    streams: int = 1,
) -> Channel:
    """Connect to a Listener at address; return the Channel once the opening
    is done.

    With a timeout, a refused connection (nobody listening yet) is tried
    again until the timeout passes, so start order does not matter, and the
    timeout bounds the opening too. ``authkey`` proves this end holds the
    Listener's key and checks that the Listener holds it (AuthenticationError
    otherwise); ``ssl`` (a client-side ``ssl.SSLContext``) makes the
    connection TLS, its certificate checked for ``server_hostname`` (by
    default the address's host). A peer that is not arraywire raises
    ProtocolError.

    With ``streams=N`` (N > 1) it opens N connections that the Listener joins
    into one Channel: arrays of at least ``arraywire.STRIPE_BYTES`` are split
    over them, each part moved by a thread of its own (docs/PROTOCOL.md,
    "Parallel streams"). A Listener that takes fewer streams per Channel
    (its ``max_streams``) refuses with ConnectionRefusedError saying so.

    Returns
    -------
    Channel
        The Channel, its opening done, its socket blocking with no timeout
        (``channel.socket.settimeout`` sets one). With ``streams=N``, one
        Channel over the N connections.

    Raises
    ------
    TypeError, ValueError
        Before any connection: an address, ``authkey``, ``ssl`` or
        ``streams`` of the wrong kind or out of range.
    OSError
        No connection could be made: ConnectionRefusedError (for an AF_UNIX
        path, FileNotFoundError) once the timeout passed, or at once without
        one; TimeoutError when the connection or the opening was not done
        within the timeout; ``socket.gaierror``, ... Also
        ConnectionResetError when the peer reset the connection during the
        opening.
    ConnectionRefusedError
        The Listener refused the parallel streams (more than its
        ``max_streams``, a group it no longer forms, or an ``arraywire.aio``
        Listener over TLS).
    AuthenticationError
        ``authkey`` is given at one end only, or the keys differ.
    ProtocolError
        The peer is not an arraywire Listener, or does not speak TLS when
        ``ssl`` is given.
    ssl.SSLError
        The TLS handshake failed (``ssl.SSLCertVerificationError`` for a
        certificate that does not check out, ...).

    With ``streams=N``, a failure on any connection closes those already
    made.
    """
    check_options(authkey, ssl)
    check_streams(streams)
    family, where = family_of(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    if ssl is not None and server_hostname is None and family != socket.AF_UNIX:
        server_hostname = where[0]
    if streams == 1:
        sock, peer = _open(family, where, timeout, deadline, authkey, ssl, server_hostname, None)
        return Channel(sock, peer_reads=peer.reads_messages)
    ident = os.urandom(hello.GROUP_ID_BYTES)
    options = (family, where, timeout, deadline, authkey, ssl, server_hostname)
    # The first stream alone finds out whether the Listener takes the group
    # (key, TLS, max_streams); the others then open side by side, since one
    # after another a long round trip times N could outlast the Listener's
    # wait for the whole group.
    first, peer = _open(*options, hello.Group(ident, 0, streams))
    with ThreadPoolExecutor(streams - 1, thread_name_prefix="arraywire connect") as pool:
        opening = [
            pool.submit(_open, *options, hello.Group(ident, index, streams))
            for index in range(1, streams)
        ]
        wait(opening)
    opened = [future.result()[0] for future in opening if future.exception() is None]
    failed = [future.exception() for future in opening if future.exception() is not None]
    if failed:
        for sock in (first, *opened):
            sock.close()
        raise failed[0]  # type: ignore[misc]
    return Channel(first, peer_reads=peer.reads_messages, more_streams=opened)


def _open(
    family: socket.AddressFamily,
    where: Any,
    timeout: float | None,
    deadline: float | None,
    authkey: bytes | None,
    ssl: SSLContext | None,
    server_hostname: str | None,
    group: hello.Group | None,
) -> tuple[socket.socket, hello.Hello]:
    """One connection with its opening done, and the peer's hello."""
    while True:
        try:
            sock = _connect_once(family, where, remaining(deadline))
            break
        except (ConnectionRefusedError, FileNotFoundError):
            if deadline is None or time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_INTERVAL)
    try:
        tune(sock)
        sock.settimeout(remaining(deadline))
        if ssl is not None:
            sock = secure(ssl, sock, server_hostname)
        opening = hello.Opening(authkey, connecting=True, group=group)
        peer = run_opening(sock, opening, deadline)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock, peer






def secure(context: SSLContext, sock: socket.socket, server_hostname: str | None) -> SSLSocket:
    """The TLS client handshake on a connected socket, within its timeout."""
    try:
        return context.wrap_socket(sock, server_hostname=server_hostname)
    except SSLError as exc:
        plain = not_tls(exc)
        if plain is None:
            raise
        raise plain from exc




def run_opening(sock: socket.socket, opening: hello.Opening, deadline: float | None) -> hello.Hello:
    """Drive an opening over a blocking socket (plain or TLS) to its end."""
    try:
        while True:
            data = opening.outgoing()
            if data:
                sock.settimeout(remaining(deadline))
                with sigpipe_blocked():
                    sock.sendall(data)
            if not opening.wanted:
                assert opening.peer is not None
                return opening.peer
            opening.received(_read_exactly(sock, opening.wanted, opening.part, deadline))
    except AuthenticationError:
        refusal = opening.outgoing()  # tell the peer before closing
        if refusal:
            with contextlib.suppress(OSError), sigpipe_blocked():
                sock.sendall(refusal)
        raise






def _connect_once(family: socket.AddressFamily, where: Any, timeout: float | None) -> socket.socket:
    if family != socket.AF_UNIX:
        return socket.create_connection(where, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(where)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_exactly(sock: socket.socket, size: int, part: str, deadline: float | None) -> bytes:
    data = bytearray(size)
    view = memoryview(data)
    filled = 0
    while filled < size:
        sock.settimeout(remaining(deadline))
        try:
            count = sock.recv_into(view[filled:])
        except TimeoutError:
            raise TimeoutError(
                f"the peer sent {filled} of the {size} bytes of its {part} in time"
            ) from None
        except ConnectionResetError:
            raise reset_in_opening() from None
        if not count:
            raise closed_in_opening(filled, size, part)
        filled += count
    return bytes(data)


class _Pending:
    """An accepted connection whose opening is still going on."""

    __slots__ = ("data", "deadline", "filled", "handshaking", "joined", "opening", "sock", "unsent")

    def __init__(self, sock: socket.socket, deadline: float, opening: hello.Opening) -> None:
        self.sock = sock
        self.deadline = deadline
        self.opening = opening
        self.handshaking = isinstance(sock, SSLSocket)  # the TLS handshake comes first
        self.data = bytearray(64)  # the largest part of an opening read at once is 33 bytes
        self.filled = 0
        self.unsent = b""
        # a stream of a group: its status and, if it made the group whole, the
        # group's streams, once it asked to join
        self.joined: tuple[int, list[socket.socket] | None] | None = None

    def send(self) -> None:
        """Send what the opening has to say; BlockingIOError (or SSLWantWriteError)
        keeps the rest for later."""
        self.unsent += self.opening.outgoing()
        while self.unsent:
            with sigpipe_blocked():
                self.unsent = self.unsent[self.sock.send(self.unsent) :]


class Listener:
    """Accepts connections; each becomes a Channel once its opening is done.

    Openings (TLS handshakes, hellos, authentication) go on side by side: a
    peer that connects and stays silent, or sends something else, never
    holds up ``accept()`` for others. It is dropped after
    ``handshake_timeout`` seconds, or as soon as its bytes are wrong. The
    parallel streams of one peer become one Channel once all have joined.
    """

    def __init__(
        self,
        sock: socket.socket,
        handshake_timeout: float,
        unlink: str | None = None,
        authkey: bytes | None = None,
        ssl: SSLContext | None = None,
        groups: Groups[socket.socket] | None = None,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._handshake_timeout = handshake_timeout
        self._unlink = unlink
        self._authkey = authkey
        self._ssl = ssl
        self._pending: dict[socket.socket, _Pending] = {}
        self._groups = Groups(DEFAULT_MAX_STREAMS, handshake_timeout) if groups is None else groups
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._accepting = threading.Lock()

    @property
    def address(self) -> Any:
        """The bound address: (host, port) with the real port, or the path."""
        return bound_address(self._sock)

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self._sock.fileno()

    def accept(self, *, timeout: float | None = None) -> Channel:
        """Wait for the next connection whose opening is done.

        Openings go on side by side while this waits. A peer whose opening
        fails (wrong bytes, TLS handshake failure, reset) or is not done
        within ``handshake_timeout`` is dropped without raising. The parallel
        streams of one peer become one Channel once the last has joined.

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
            The Listener is closed (EBADF), or accepting failed for another
            reason than the peer (EMFILE: out of descriptors, ...).

        A second thread calling accept() waits until the first returns.
        """
        with self._accepting:
            if self._sock.fileno() == -1:
                raise closed_listener()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                now = time.monotonic()
                self._drop_late(now)
                deadlines = [p.deadline for p in self._pending.values()]
                group_deadline = self._groups.next_deadline()
                if group_deadline is not None:
                    deadlines.append(group_deadline)
                wait = min(deadlines, default=None)
                if deadline is not None:
                    if now >= deadline:
                        raise TimeoutError("no connection completed its opening in time")
                    wait = deadline if wait is None else min(wait, deadline)
                events = self._selector.select(None if wait is None else max(wait - now, 0))
                for key, _ in events:
                    if key.fileobj is self._sock:
                        self._take_connections()
                        continue
                    channel = self._advance(self._pending[key.fileobj])  # type: ignore[index]
                    if channel is not None:
                        return channel

    def _take_connections(self) -> None:
        deadline = time.monotonic() + self._handshake_timeout
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # A connection reset before accept, or out of descriptors: the
                # listener itself is fine; EMFILE must reach the caller.
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            try:
                conn.setblocking(False)
                tune(conn)
                if self._ssl is not None:
                    conn = self._ssl.wrap_socket(
                        conn, server_side=True, do_handshake_on_connect=False
                    )
                pending = _Pending(conn, deadline, hello.Opening(self._authkey, connecting=False))
            except OSError:
                conn.close()
                continue
            self._pending[conn] = pending
            # plain: the hello goes out once the socket is writable, at once
            events = selectors.EVENT_READ if pending.handshaking else selectors.EVENT_WRITE
            self._selector.register(conn, events)

    def _advance(self, pending: _Pending) -> Channel | None:
        sock = pending.sock
        opening = pending.opening
        try:
            if pending.handshaking:
                sock.do_handshake()  # type: ignore[attr-defined]
                pending.handshaking = False
            while True:
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
                    raise ConnectionError("closed during the opening")
                pending.filled += count
                if pending.filled == wanted:
                    pending.filled = 0
                    opening.received(bytes(pending.data[:wanted]))
        except (BlockingIOError, InterruptedError, SSLWantReadError, SSLWantWriteError) as exc:
            # wait for what the step that could not go on needs
            writing = isinstance(exc, SSLWantWriteError) or (
                bool(pending.unsent) and not isinstance(exc, SSLWantReadError)
            )
            self._selector.modify(sock, selectors.EVENT_WRITE if writing else selectors.EVENT_READ)
            return None
        except AuthenticationError:
            with contextlib.suppress(OSError):
                pending.send()  # the verdict the peer waits for
            self._drop(sock)
            raise
        except (OSError, ProtocolError):
            self._drop(sock)
            return None
        self._selector.unregister(sock)
        del self._pending[sock]
        assert opening.peer is not None
        reads = opening.peer.reads_messages
        if opening.group is None:
            sock.setblocking(True)
            return Channel(sock, peer_reads=reads)
        # a stream of a group: the Channel once its last stream joined
        assert pending.joined is not None
        status, members = pending.joined
        if status != hello.JOINED:
            sock.close()  # refused: the peer has read why
        if members is None:
            return None
        for member in members:
            member.setblocking(True)
        return Channel(members[0], peer_reads=reads, more_streams=members[1:])

    def _drop_late(self, now: float) -> None:
        for sock in [s for s, h in self._pending.items() if h.deadline <= now]:
            self._drop(sock)
        for sock in self._groups.expired(now):
            sock.close()

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        del self._pending[sock]
        sock.close()

    def close(self) -> None:
        """Stop listening; drop connections whose opening was not done."""
        for sock in list(self._pending):
            self._drop(sock)
        for sock in self._groups.clear():
            sock.close()
        if self._sock.fileno() != -1:
            self._selector.close()
            self._sock.close()
            if self._unlink is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._unlink)

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
