"""Opening connections: ``listen``, ``connect`` and the ``Listener``, with the
opening of ``hello`` (the hello, and with a key the authentication)
exchanged before the first message, over TLS when given an SSLContext.

Addresses take the forms of ``multiprocessing.connection``: a ``(host, port)``
tuple is TCP (IPv4 or IPv6 by the host; ``""`` all IPv4 interfaces, ``"::"``
all interfaces, dual-stack where the OS allows; port 0 picks a free port), a
``str`` or ``os.PathLike`` is an AF_UNIX path; a ``str`` or ``bytes`` starting
with NUL is an abstract AF_UNIX name (Linux).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from ssl import SSLContext, SSLError, SSLSocket, SSLWantReadError, SSLWantWriteError
from types import TracebackType
from typing import Any, TypeAlias

from arraywire._core.tls import sigpipe_blocked
from arraywire._drivers.samehost import announces, answer_probe
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
    no_socket_file,
    not_a_tls_client,
    not_tls,
    remaining,
    remove_socket_file,
    reset_in_opening,
    server_socket,
    tune,
)
from arraywire._sync.channel import Channel
from arraywire._wire import hello, peers
from arraywire._wire.errors import AuthenticationError, ProtocolError
from arraywire._wire.groups import DEFAULT_MAX_STREAMS, Groups
from arraywire._wire.opening import Opening, check_same_host


def listen(
    address: Address,
    *,
    backlog: int = DEFAULT_BACKLOG,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    authkey: bytes | None = None,
    ssl: SSLContext | None = None,
    max_streams: int = DEFAULT_MAX_STREAMS,
    same_host: bool | None = None,
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

    ``same_host`` allows same-host copies, as for ``connect``.

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
    check_same_host(same_host)
    groups: Groups[socket.socket] = Groups(max_streams, handshake_timeout)
    sock, path = server_socket(address, backlog)
    return Listener(sock, handshake_timeout, unix_name=path, authkey=authkey, ssl=ssl,
                    groups=groups, same_host=same_host)


def connect(
    address: Address,
    *,
    timeout: float | None = None,
    authkey: bytes | None = None,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    streams: int = 1,
    same_host: bool | None = None,
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

    ``same_host`` allows same-host copies on AF_UNIX (None: unless under TLS; False: never).

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
    return open_channel(
        address, timeout=timeout, authkey=authkey, ssl=ssl, server_hostname=server_hostname,
        streams=streams, same_host=same_host,
    )


def open_channel(
    address: Address,
    *,
    timeout: float | None = None,
    authkey: bytes | None = None,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    streams: int = 1,
    opening: str = "hello",
    wait_for_listener: bool = False,
    on_refused: Callable[[], None] | None = None,
    handshake_timeout: float | None = None,
    same_host: bool | None = None,
) -> Channel:
    """``connect``, and what the command line adds: ``opening`` is one of
    OPENINGS, as for a Listener: a ``"hello or message"`` end speaks only when
    spoken to, a ``"none"`` end sends a bare message (no key, one stream);
    ``wait_for_listener`` tries a refused first connection again even
    without a timeout; ``on_refused`` is called once when a refused
    connection is to be tried again; ``handshake_timeout`` bounds each
    connection's TLS handshake and opening from when it is connected."""
    check_options(authkey, ssl)
    check_streams(streams)
    check_same_host(same_host)
    if opening not in OPENINGS:
        raise ValueError(f"opening is one of {OPENINGS}, got {opening!r}")
    if opening != "hello" and (authkey is not None or streams > 1):
        raise ValueError("a connection without a hello has no key and one stream")
    family, where = family_of(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    if ssl is not None and server_hostname is None and family != socket.AF_UNIX:
        server_hostname = where[0]
    refusals = _Refusals(wait_for_listener, on_refused)
    if streams == 1:
        sock, peer, capabilities, early = _open(
            family, where, deadline, handshake_timeout, authkey, ssl, server_hostname, None,
            opening, refusals, same_host,
        )
        return Channel(sock, peer_reads=peer.reads_messages, read_ahead=early,
                       capabilities=capabilities)
    ident = os.urandom(hello.GROUP_ID_BYTES)
    options = (family, where, deadline, handshake_timeout, authkey, ssl, server_hostname)
    # The first stream alone finds out whether the Listener takes the group
    # (key, TLS, max_streams); the others then open side by side, since one
    # after another a long round trip times N could outlast the Listener's
    # wait for the whole group.
    first, peer, capabilities, _ = _open(*options, hello.Group(ident, 0, streams), "hello", refusals)
    # the Listener took stream 0: later refusals are not waited out
    with ThreadPoolExecutor(streams - 1, thread_name_prefix="arraywire connect") as pool:
        others = [
            pool.submit(_open, *options, hello.Group(ident, index, streams), "hello",
                        _Refusals(False, None))
            for index in range(1, streams)
        ]
        wait(others)
    opened = [future.result()[0] for future in others if future.exception() is None]
    failed = [future.exception() for future in others if future.exception() is not None]
    if failed:
        for sock in (first, *opened):
            sock.close()
        raise failed[0]  # type: ignore[misc]
    return Channel(first, peer_reads=peer.reads_messages, more_streams=opened,
                   capabilities=capabilities)


class _Refusals:
    """How a refused connection is met: tried again until the deadline (with
    none, only when ``forever``); ``told`` hears of the first refusal."""

    def __init__(self, forever: bool, told: Callable[[], None] | None) -> None:
        self.forever = forever
        self.told = told

    def again(self, deadline: float | None) -> bool:
        if deadline is None and not self.forever:
            return False
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if self.told is not None:
            told, self.told = self.told, None
            told()
        return True


def _open(
    family: socket.AddressFamily,
    where: Any,
    deadline: float | None,
    handshake_timeout: float | None,
    authkey: bytes | None,
    ssl: SSLContext | None,
    server_hostname: str | None,
    group: hello.Group | None,
    opening: str,
    refusals: _Refusals,
    same_host: bool | None = False,
) -> tuple[socket.socket, hello.Hello, int, bytes]:
    """One connection with its opening done, the peer's hello (a bare one's:
    what a Channel assumes of a peer without one), the capabilities on and
    the first bytes of a message that came in its place."""
    while True:
        try:
            sock = _connect_once(family, where, remaining(deadline))
            break
        except (ConnectionRefusedError, FileNotFoundError):
            if not refusals.again(deadline):
                raise
            time.sleep(RETRY_INTERVAL)
    if handshake_timeout is not None:
        opened_by = time.monotonic() + handshake_timeout
        deadline = opened_by if deadline is None else min(deadline, opened_by)
    try:
        tune(sock)
        sock.settimeout(remaining(deadline))
        if ssl is not None:
            sock = secure(ssl, sock, server_hostname)
        early = b""
        capabilities = 0
        if opening == "none":
            peer = hello.BARE_PEER
        else:
            bare = opening == "hello or message"
            steps = Opening(authkey, connecting=True, group=group, bare=bare,
                            capabilities=announces(same_host, sock, ssl is not None, bool(group)))
            peer = run_opening(sock, steps, deadline)
            early, capabilities = steps.early, steps.capabilities
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock, peer, capabilities, early


def secure(context: SSLContext, sock: socket.socket, server_hostname: str | None) -> SSLSocket:
    """The TLS client handshake on a connected socket, within its timeout."""
    try:
        return context.wrap_socket(sock, server_hostname=server_hostname)
    except SSLError as exc:
        plain = not_tls(exc)
        if plain is None:
            raise
        raise plain from exc
    except ConnectionResetError:
        raise reset_in_opening(tls=True) from None


def run_opening(sock: socket.socket, opening: Opening, deadline: float | None) -> hello.Hello:
    """Drive an opening over a blocking socket (plain or TLS) to its end."""
    try:
        while True:
            answer_probe(opening, sock)
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
    except FileNotFoundError:
        sock.close()
        raise no_socket_file(where) from None
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
                f"the peer sent {filled:,} of the {size:,} bytes of its {part} in time"
            ) from None
        except ConnectionResetError:
            raise reset_in_opening(isinstance(sock, SSLSocket)) from None
        if not count:
            raise closed_in_opening(filled, size, part)
        filled += count
    return bytes(data)


class _Pending:
    """An accepted connection whose opening is still going on."""

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

    Openings (TLS handshakes, hellos, authentication) go on side by side: a
    peer that connects and stays silent, or sends something else, never
    holds up ``accept()`` for others. It is dropped after
    ``handshake_timeout`` seconds, or as soon as its bytes are wrong. The
    parallel streams of one peer become one Channel once all have joined.

    ``opening`` is one of OPENINGS; ``on_drop`` hears of every peer dropped
    (and may raise, ending ``accept()``).
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
    ) -> None:
        if opening not in OPENINGS:
            raise ValueError(f"opening is one of {OPENINGS}, got {opening!r}")
        if opening != "hello" and authkey is not None:
            raise ValueError("with a key every peer opens with a hello")
        sock.setblocking(False)
        self._sock = sock
        self._handshake_timeout = handshake_timeout
        self._unix_name = unix_name
        self._authkey = authkey
        self._ssl = ssl
        self._opening = opening
        self._on_drop = on_drop
        self._same_host = same_host
        self._pending: dict[socket.socket, _Pending] = {}
        self._groups = Groups(DEFAULT_MAX_STREAMS, handshake_timeout) if groups is None else groups
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._accepting = threading.Lock()

    @property
    def address(self) -> Any:
        """The bound address: (host, port) with the real port, or the AF_UNIX
        path or abstract name as given."""
        return bound_address(self._sock, self._unix_name)

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self._sock.fileno()

    @property
    def openings(self) -> int:
        """Connections taken whose opening is still under way."""
        return len(self._pending)

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
                    pending = self._pending.get(key.fileobj)  # type: ignore[call-overload]
                    if pending is None:  # dropped by an earlier event of this round
                        continue
                    channel = self._advance(pending)
                    if channel is not None:
                        return channel

    def _take_connections(self) -> None:
        deadline = time.monotonic() + self._handshake_timeout
        while True:
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # A connection reset before accept, or out of descriptors: the
                # listener itself is fine; EMFILE must reach the caller.
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
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
            self._drop(pending, exc)
            raise
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
        seconds = f"{self._handshake_timeout:g} s"
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            late = TimeoutError(f"the peer did not complete the connection opening within {seconds}")
            self._drop(pending, late)
        for sock in self._groups.expired(now):
            with contextlib.suppress(OSError), contextlib.closing(sock):
                peer = sock.getpeername()
                self._dropped(peer, sock, TimeoutError(
                    f"the peer did not connect every stream of its group within {seconds}"
                ))

    def _drop(self, pending: _Pending, why: BaseException) -> None:
        self._selector.unregister(pending.sock)
        del self._pending[pending.sock]
        with contextlib.closing(pending.sock):
            self._dropped(pending.peer, pending.sock, why)

    def _dropped(self, peer: Any, sock: socket.socket, why: BaseException) -> None:
        if self._on_drop is not None:
            self._on_drop(peer, why, sock)

    def close(self) -> None:
        """Stop listening; drop connections whose opening was not done."""
        for pending in list(self._pending.values()):
            pending.sock.close()
        self._pending.clear()
        for sock in self._groups.clear():
            sock.close()
        if self._sock.fileno() != -1:
            self._selector.close()
            self._sock.close()
            remove_socket_file(self._unix_name)

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
