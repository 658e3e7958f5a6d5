"""Opening asyncio connections: ``arraywire.aio.connect``, ``listen`` and the
``Listener``, with the same opening (hello, authentication, TLS, stream
groups) as the blocking ones."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from ssl import SSLContext, SSLError
from types import TracebackType
from typing import Any

from arraywire._aio.channel import Channel
from arraywire._aio.tls import TLSChannel, TLSSession
from arraywire._drivers.listening import (
    ACCEPT_PAUSE,
    DEFAULT_MAX_OPENINGS,
    LOGGER,
    Handover,
    check_max_openings,
    group_late,
    log_accept_failed,
    log_dropped,
    opening_late,
    peer_of,
)
from arraywire._drivers.rules import check_wait
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
    not_tls,
    remove_socket_file,
    reset_in_opening,
    server_socket,
    tune,
)
from arraywire._wire import hello
from arraywire._wire.errors import AuthenticationError, ProtocolError
from arraywire._wire.groups import DEFAULT_MAX_STREAMS, Groups
from arraywire._wire.opening import Opening, check_same_host


class _SocketPipe:
    """The bytes of an opening over a plain non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await self._loop.sock_sendall(self._sock, data)

    async def receive(self, size: int, part: str) -> bytes:
        data = bytearray(size)
        view = memoryview(data)
        filled = 0
        while filled < size:
            try:
                count = await self._loop.sock_recv_into(self._sock, view[filled:])
            except ConnectionResetError:
                raise reset_in_opening(tls=False) from None
            if not count:
                raise closed_in_opening(filled, size, part)
            filled += count
        return bytes(data)


class _SessionPipe:
    """The bytes of an opening inside a TLS session."""

    def __init__(self, session: TLSSession) -> None:
        self._session = session

    async def send(self, data: bytes) -> None:
        await self._session.write(data)

    async def receive(self, size: int, part: str) -> bytes:
        data = bytearray(size)
        view = memoryview(data)
        filled = 0
        while filled < size:
            count = await self._session.read_into(view[filled:])
            if not count:
                raise closed_in_opening(filled, size, part)
            filled += count
        return bytes(data)


async def _run_opening(
    pipe: _SocketPipe | _SessionPipe, opening: hello.Opening | Opening, sock: socket.socket | None = None
) -> hello.Hello:
    """Drive an opening to its end; over a plain ``sock``, with its same-host probe."""
    try:
        while True:
            if sock is not None and isinstance(opening, Opening):
                answer_probe(opening, sock)
            data = opening.outgoing()
            if data:
                await pipe.send(data)
            if not opening.wanted:
                assert opening.peer is not None
                return opening.peer
            opening.received(await pipe.receive(opening.wanted, opening.part))
    except AuthenticationError:
        refusal = opening.outgoing()  # tell the peer before closing
        if refusal:
            with contextlib.suppress(OSError):
                await pipe.send(refusal)
        raise


async def _secure(
    sock: socket.socket, context: SSLContext, *, server_side: bool, server_hostname: str | None
) -> TLSSession:
    """A TLS session on a connected socket, its handshake done."""
    session = TLSSession(sock, context, server_side=server_side, server_hostname=server_hostname)
    try:
        await session.handshake()
    except SSLError as exc:
        plain = not_tls(exc)
        if plain is None:
            raise
        raise plain from exc
    except ConnectionResetError:
        raise reset_in_opening(tls=True) from None
    return session


async def _timed(awaitable: Any, timeout: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
        raise TimeoutError(what) from None


async def connect(
    address: Address,
    *,
    timeout: float | None = None,
    authkey: bytes | None = None,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    streams: int = 1,
    same_host: bool | None = None,
) -> Channel:
    """``arraywire.connect`` for asyncio: with a timeout, a refused connection
    is tried again until it passes, and the timeout bounds the opening too;
    ``authkey``, ``ssl``, ``server_hostname``, ``streams`` and
    ``same_host`` as there (parallel streams over TLS need the blocking
    ``arraywire.connect``; asyncio connections under TLS make no same-host
    copies, whatever ``same_host`` says).

    Returns
    -------
    Channel
        An ``arraywire.aio.Channel``, its opening done, its sockets
        non-blocking.

    Raises
    ------
    TypeError, ValueError
        Before any connection: an argument of the wrong kind or out of
        range, or (ValueError) ``streams`` over 1 with ``ssl``.
    OSError
        No connection could be made (ConnectionRefusedError,
        FileNotFoundError for an AF_UNIX path, ``socket.gaierror``, ...).
        With a timeout, a refused connection is tried again, and TimeoutError
        is raised once the timeout passed without a connection and its
        opening. Also ConnectionResetError for a reset during the opening.
    ConnectionRefusedError
        The Listener refused the parallel streams (more than its
        ``max_streams``, or a group it no longer forms).
    AuthenticationError, ProtocolError, ssl.SSLError
        The opening failed, as for ``arraywire.connect``.
    asyncio.CancelledError
        The task was cancelled; the connections made so far are closed.
    """
    check_options(authkey, ssl)
    check_streams(streams)
    check_same_host(same_host)
    if streams > 1 and ssl is not None:
        raise ValueError(
            "arraywire.aio has no parallel streams over TLS: connect with streams=1, or "
            "use the blocking arraywire.connect"
        )
    connecting = _connect_all(
        address, authkey, ssl, server_hostname, streams, timeout is not None, same_host
    )
    if timeout is None:
        return await connecting
    return await _timed(  # type: ignore[no-any-return]
        connecting, timeout, "no Listener completed the opening in time"
    )


async def _connect_all(
    address: Address,
    authkey: bytes | None,
    context: SSLContext | None,
    server_hostname: str | None,
    streams: int,
    retry: bool,
    same_host: bool | None,
) -> Channel:
    if streams == 1:
        return await _connect(address, authkey, context, server_hostname, same_host, retry=retry)
    ident = os.urandom(hello.GROUP_ID_BYTES)
    # the first stream alone, then the others side by side, as the blocking
    # connect opens them
    first, peer = await _open_stream(address, authkey, hello.Group(ident, 0, streams), retry)
    try:
        opened = await asyncio.gather(
            *(_open_stream(address, authkey, hello.Group(ident, i, streams), retry)
              for i in range(1, streams)),
            return_exceptions=True,
        )
    except BaseException:  # cancelled: the others close their own
        first.close()
        raise
    failed = [result for result in opened if isinstance(result, BaseException)]
    others = [result[0] for result in opened if not isinstance(result, BaseException)]
    if failed:
        for sock in (first, *others):
            sock.close()
        raise failed[0]
    return Channel(first, peer_reads=peer.reads_messages, more_streams=others,
                   capabilities=hello.capabilities_on(peer))


async def _open_stream(
    address: Address, authkey: bytes | None, group: hello.Group, retry: bool
) -> tuple[socket.socket, hello.Hello]:
    """One stream of a group, its opening done, and the peer's hello."""
    sock = await _connect_retrying(address, retry)
    try:
        tune(sock)
        opening = hello.Opening(authkey, connecting=True, group=group)
        return sock, await _run_opening(_SocketPipe(sock), opening)
    except BaseException:
        sock.close()
        raise


async def _connect_retrying(address: Address, retry: bool) -> socket.socket:
    while True:
        try:
            return await _connect_once(address)
        except (ConnectionRefusedError, FileNotFoundError):
            if not retry:
                raise
            await asyncio.sleep(RETRY_INTERVAL)


async def _connect(
    address: Address,
    authkey: bytes | None,
    context: SSLContext | None,
    server_hostname: str | None,
    same_host: bool | None,
    *,
    retry: bool,
) -> Channel:
    sock = await _connect_retrying(address, retry)
    try:
        tune(sock)
        opening = Opening(authkey, connecting=True, capabilities=_announces(same_host, sock, context))
        if context is None:
            peer = await _run_opening(_SocketPipe(sock), opening, sock)
            return Channel(sock, peer_reads=peer.reads_messages,
                           capabilities=opening.capabilities)
        if server_hostname is None and isinstance(address, tuple):
            server_hostname = address[0]
        session = await _secure(sock, context, server_side=False, server_hostname=server_hostname)
        peer = await _run_opening(_SessionPipe(session), opening)
        return TLSChannel(session, peer_reads=peer.reads_messages,
                          capabilities=opening.capabilities)
    except BaseException:
        sock.close()
        raise


def _announces(same_host: bool | None, sock: socket.socket, context: SSLContext | None) -> int:
    """What an asyncio opening announces: same-host copies only without TLS
    (an asyncio TLS Channel copies nothing in place)."""
    return announces(False if context is not None else same_host, sock, False, False)


async def _connect_once(address: Address) -> socket.socket:
    family, where = family_of(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, where)
    except FileNotFoundError:
        sock.close()
        raise no_socket_file(where) from None
    except BaseException:
        sock.close()
        raise
    return sock


async def listen(
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
    """``arraywire.listen`` for asyncio: ``await listener.accept()`` or
    ``async for channel in listener``; ``authkey``, ``ssl``, ``max_streams``
    and ``max_openings`` as there (with ``ssl``, a peer's parallel streams
    are refused; ``same_host`` as for ``connect``). Call it in the event loop that will use the Listener:
    its accepting and each opening run as tasks of that loop, as connections
    arrive.

    Returns
    -------
    Listener
        An ``arraywire.aio.Listener``, bound and accepting. Close it with
        ``aclose()``, ``close()`` or ``async with``.

    Raises
    ------
    TypeError, ValueError
        An address, ``authkey``, ``ssl``, ``max_streams`` or ``max_openings``
        of the wrong kind or out of range.
    OSError
        The address cannot be bound or its host not resolved.
    """
    check_options(authkey, ssl)
    check_same_host(same_host)
    check_max_openings(max_openings)
    groups: Groups[socket.socket] = Groups(max_streams, handshake_timeout)
    sock, path = server_socket(address, backlog)
    return Listener(
        sock, handshake_timeout, path, authkey=authkey, ssl=ssl, groups=groups,
        max_openings=max_openings, same_host=same_host,
    )


class Listener:
    """Accepts connections in a task of its own; each opening (TLS handshake,
    hello, authentication) runs in a task too, as connections arrive, so a
    silent peer never holds up another. ``accept()`` gives the next Channel
    whose opening is done (for parallel streams, once the last stream
    joined), and raises AuthenticationError for a peer whose key does not
    match. At most ``max_openings`` connections are held (openings under way
    and Channels waiting for ``accept()``); more wait in the kernel's
    backlog. Each peer dropped during its opening is logged as a warning on
    ``logger``."""

    def __init__(
        self,
        sock: socket.socket,
        handshake_timeout: float,
        unix_name: str | bytes | None,
        *,
        authkey: bytes | None = None,
        ssl: SSLContext | None = None,
        groups: Groups[socket.socket] | None = None,
        max_openings: int = DEFAULT_MAX_OPENINGS,
        logger: logging.Logger = LOGGER,
        same_host: bool | None = False,
    ) -> None:
        self._handover: Handover[Channel] = Handover(max_openings)
        self._same_host = same_host
        sock.setblocking(False)
        self._sock = sock
        self._handshake_timeout = handshake_timeout
        self._groups = Groups(DEFAULT_MAX_STREAMS, handshake_timeout) if groups is None else groups
        self._expiry: asyncio.TimerHandle | None = None
        self._unix_name = unix_name
        self._where = bound_address(sock, unix_name)
        self._authkey = authkey
        self._ssl = ssl
        self._logger = logger
        self._changed = asyncio.Event()  # something was handed over, or the Listener closed
        self._room = asyncio.Event()  # an opening ended, or accept() took a Channel
        self._handshakes: set[asyncio.Task[None]] = set()
        self._acceptor = asyncio.get_running_loop().create_task(self._accept_all())

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
        return len(self._handshakes)

    async def accept(self, *, timeout: float | None = None) -> Channel:
        """Wait for the next connection whose opening is done, up to
        ``timeout`` seconds (None: for ever); connections are handed over in
        the order their openings ended.

        A peer whose opening fails or is not done within
        ``handshake_timeout`` is dropped without raising (and logged).

        Returns
        -------
        Channel
            An ``arraywire.aio.Channel`` (over TLS when the Listener has
            ``ssl``), its sockets non-blocking.

        Raises
        ------
        TimeoutError
            No connection completed its opening within ``timeout``.
        AuthenticationError
            A peer's key differs from the Listener's, or one of them has no
            key. That peer's connection is closed; the next call goes on with
            the others.
        OSError
            The Listener is closed, or was closed while this waited (EBADF);
            or accepting failed for another reason than the peer (EMFILE:
            out of descriptors, ...).
        """
        seconds = check_wait(timeout, zero=True)
        try:
            item = await asyncio.wait_for(self._next(), seconds)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
            raise TimeoutError("no connection completed its opening in time") from None
        if isinstance(item, BaseException):
            raise item
        return item

    async def _next(self) -> Channel | BaseException:
        while (item := self._handover.take()) is None:
            if self._handover.closed:
                raise closed_listener()
            self._changed.clear()
            await self._changed.wait()
        self._room.set()
        return item

    async def __aiter__(self) -> AsyncIterator[Channel]:
        """Each connection whose opening is done, until the Listener is
        closed (from another task); a failed opening is skipped (it was
        logged), as is a failed accept."""
        while True:
            try:
                channel = await self.accept()
            except (AuthenticationError, OSError):
                if self._handover.closed:
                    return
                continue
            yield channel

    async def _accept_all(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._handover.room(len(self._handshakes)):
                self._room.clear()
                await self._room.wait()
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                # out of descriptors, say: accept() raises it; try again later
                log_accept_failed(self._logger, self._where, exc)
                self._fail(exc)
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            task = loop.create_task(self._handshake(conn, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._handshakes.discard(task)
        self._room.set()

    def _fail(self, exc: BaseException) -> None:
        self._handover.fail(exc)
        self._changed.set()

    async def _handshake(self, conn: socket.socket, peer: Any) -> None:
        try:
            conn.setblocking(False)
            tune(conn)
            late = str(opening_late(self._handshake_timeout))
            opened = await _timed(self._open(conn), self._handshake_timeout, late)
        except AuthenticationError as exc:
            conn.close()
            log_dropped(self._logger, self._where, peer, exc)
            self._fail(exc)  # for accept() to raise
            return
        except (OSError, ProtocolError) as exc:
            conn.close()
            log_dropped(self._logger, self._where, peer, exc)
            return
        except BaseException:
            conn.close()
            raise
        if opened is not None and not self._handover.put(opened):
            opened.close()  # closed meanwhile: close() has cleared the rest
            return
        self._changed.set()
        self._schedule_expiry()

    async def _open(self, conn: socket.socket) -> Channel | None:
        """The opening: a Channel, or None for a stream of a group that is
        not whole yet (the last stream to join makes the group's Channel)."""
        opening = Opening(
            self._authkey, connecting=False, capabilities=_announces(self._same_host, conn, self._ssl)
        )
        if self._ssl is None:
            pipe = _SocketPipe(conn)
            peer = await _run_opening(pipe, opening, conn)
            if opening.group is None:
                return Channel(conn, peer_reads=peer.reads_messages,
                               capabilities=opening.capabilities)
            status, members = self._groups.join(opening.group, conn, time.monotonic())
            opening.answer_join(status, self._groups.max_streams)
            await pipe.send(opening.outgoing())
            if status != hello.JOINED:
                raise hello.join_refused(status, opening.group, self._groups.max_streams)
            if members is None:
                return None
            reads = peer.reads_messages
            return Channel(members[0], peer_reads=reads, more_streams=members[1:],
                           capabilities=opening.capabilities)
        session = await _secure(conn, self._ssl, server_side=True, server_hostname=None)
        tls_pipe = _SessionPipe(session)
        peer = await _run_opening(tls_pipe, opening)
        if opening.group is not None:
            opening.answer_join(hello.NO_STREAMS, self._groups.max_streams)
            await tls_pipe.send(opening.outgoing())
            raise hello.join_refused(hello.NO_STREAMS, opening.group, self._groups.max_streams)
        return TLSChannel(session, peer_reads=peer.reads_messages,
                          capabilities=opening.capabilities)

    def _schedule_expiry(self) -> None:
        """Close the streams of groups not whole in time, when their time comes."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        deadline = self._groups.next_deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_at(
                loop.time() + max(deadline - time.monotonic(), 0), self._expire
            )

    def _expire(self) -> None:
        self._expiry = None
        for sock in self._groups.expired(time.monotonic()):
            why = group_late(self._handshake_timeout)
            log_dropped(self._logger, self._where, peer_of(sock), why)
            sock.close()
        self._schedule_expiry()

    def close(self) -> None:
        """Stop listening; drop connections not yet accepted. An ``accept()``
        waiting in another task raises OSError (EBADF)."""
        self._acceptor.cancel()
        for task in self._handshakes:
            task.cancel()
        for channel in self._handover.close():
            channel.close()
        if self._expiry is not None:
            self._expiry.cancel()
        for sock in self._groups.clear():
            sock.close()
        if self._sock.fileno() != -1:
            # The cancelled accept still has the descriptor in the selector:
            # take it out now, before the number can be reused.
            with contextlib.suppress(RuntimeError):  # no loop running
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            remove_socket_file(self._unix_name)
        self._changed.set()  # wakes an accept() waiting now

    async def aclose(self) -> None:
        """close(), after its tasks have stopped using the sockets."""
        tasks = [self._acceptor, *self._handshakes]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.close()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# The TLS driver subclasses Channel above.
