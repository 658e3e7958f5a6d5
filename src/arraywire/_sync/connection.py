"""Opening connections: ``listen`` (its ``Listener`` is in ``listener.py``)
and ``connect``, with the opening of ``hello`` (the hello, and with a key the
authentication) exchanged before the first message, over TLS when given an SSLContext.

Addresses take the forms of ``multiprocessing.connection``: a ``(host, port)``
tuple is TCP (IPv4 or IPv6 by the host; ``""`` all IPv4 interfaces, ``"::"``
all interfaces, dual-stack where the OS allows; port 0 picks a free port), a
``str`` or ``os.PathLike`` is an AF_UNIX path; a ``str`` or ``bytes`` starting
with NUL is an abstract AF_UNIX name (Linux).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from ssl import SSLContext, SSLError, SSLSocket
from typing import Any

from arraywire._core.tls import sigpipe_blocked
from arraywire._drivers.listening import DEFAULT_MAX_OPENINGS, check_max_openings
from arraywire._drivers.samehost import announces, answer_probe
from arraywire._drivers.sockets import (
    DEFAULT_BACKLOG,
    DEFAULT_HANDSHAKE_TIMEOUT,
    RETRY_INTERVAL,
    Address,
    check_options,
    check_streams,
    closed_in_opening,
    family_of,
    no_socket_file,
    not_tls,
    remaining,
    reset_in_opening,
    server_socket,
    tune,
)
from arraywire._sync.channel import Channel
from arraywire._sync.listener import OPENINGS, Listener
from arraywire._wire import hello
from arraywire._wire.errors import AuthenticationError
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
    max_openings: int = DEFAULT_MAX_OPENINGS,
) -> Listener:
    """Listen for connections at address; ``accept()`` gives a Channel each,
    and ``for channel in listener`` each in turn until the Listener is closed.

    The Listener runs the openings (TLS handshake, hello, authentication) of
    connections as they arrive, in a thread of its own, so ``connect``
    returns before ``accept()`` is called. A peer whose opening has not
    completed handshake_timeout seconds after the Listener took its
    connection is dropped; it never holds up the others. At most
    ``max_openings`` connections are held at once (openings under way and
    Channels waiting for ``accept()``); more wait in the kernel's backlog.
    Each dropped peer is logged as a warning on the ``arraywire.listener``
    logger. With ``authkey`` only peers that hold the same
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
        An address, ``authkey``, ``ssl``, ``max_streams`` or ``max_openings``
        of the wrong kind or out of range (an empty key, a port outside
        0..65535, ...).
    OSError
        The address cannot be bound or its host not resolved
        (``OSError`` EADDRINUSE, ``socket.gaierror``, ...).
    """
    check_options(authkey, ssl)
    check_same_host(same_host)
    check_max_openings(max_openings)
    groups: Groups[socket.socket] = Groups(max_streams, handshake_timeout)
    sock, path = server_socket(address, backlog)
    return Listener(sock, handshake_timeout, unix_name=path, authkey=authkey, ssl=ssl,
                    groups=groups, same_host=same_host, max_openings=max_openings)


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
