"""Dask distributed's ``aw://`` comm backend (the ``arraywire[dask]`` extra).

Dask finds it through the entry point ``aw`` in ``distributed.comm.backends``:
``LocalCluster(protocol="aw://")``, ``dask scheduler --protocol aw``. Each
Dask message is one arraywire message on an ``arraywire.aio`` Channel, so its
buffers move by the GIL-free core straight into arrays of their own. Addresses,
resolution and the contact address of a wildcard listener are ``tcp://``'s.
With TLS configured in Dask's Security (``ssl_context`` in the connection
arguments), each connection runs inside TLS, as ``tls://``'s do.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import dask.config
import numpy as np
from dask.utils import parse_bytes
from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.comm.core import (
    BaseListener,
    Comm,
    CommClosedError,
    Connector,
    FatalCommClosedError,
)
from distributed.comm.tcp import BaseTCPBackend, set_tcp_timeout
from distributed.comm.utils import ensure_concrete_host, from_frames, to_frames

from arraywire import aio
from arraywire._aio.connection import Listener as AioListener
from arraywire._aio.tls import TLSChannel
from arraywire._core import transport
from arraywire._drivers.sockets import DEFAULT_HANDSHAKE_TIMEOUT, server_socket
from arraywire._wire import dask_frames
from arraywire._wire.errors import ProtocolError

# Where Dask's comms log: distributed.comm.tcp for tcp://, this for aw://.
logger = logging.getLogger("distributed.comm.aw")
T = TypeVar("T")

PREFIX = "aw://"
# Dask's config key for a cap on the bytes of one received message; like
# tcp://, none by default.
MAX_MESSAGE_KEY = "distributed.comm.aw.max-message-bytes"
# Dask's config key for the bytes written but not yet sent that one comm
# holds before a further write waits.
MAX_QUEUED_KEY = "distributed.comm.aw.max-queued-bytes"
MAX_QUEUED_DEFAULT = "256 MiB"
# What a failed transfer raises that means the comm is gone.
LOST = (EOFError, OSError, ProtocolError)


def config_bytes(key: str, default: str | None) -> int | None:
    """A size set in Dask's config (bytes, or a string such as "2 GiB")."""
    value = dask.config.get(key, default=default)
    if value is None:
        return None
    return parse_bytes(value) if isinstance(value, str) else int(value)


def max_message_bytes() -> int | None:
    """The cap on one received message (None: no cap, as tcp://)."""
    return config_bytes(MAX_MESSAGE_KEY, None)


def max_queued_bytes() -> int | None:
    """The bound on the bytes one comm holds for sending (None: no bound)."""
    return config_bytes(MAX_QUEUED_KEY, MAX_QUEUED_DEFAULT)


class NotArraywireError(ConnectionError):
    """The peer answered, but not as arraywire (an HTTP server, say): a
    connection failure to Dask, which retries it until its connect timeout."""


def tls_context(address: str, connection_args: dict[str, Any]) -> ssl.SSLContext | None:
    """The SSLContext of Dask's Security (None: plain TCP). Encryption required
    without one is refused, as tcp:// refuses it."""
    context = connection_args.get("ssl_context")
    if context is None:
        if connection_args.get("require_encryption"):
            raise RuntimeError(
                "Dask's configuration requires encryption (distributed.comm.require-encryption) "
                f"but no TLS is configured: refusing {PREFIX}{address}. Configure TLS in "
                "Dask's Security: the distributed.comm.tls.* settings (ca-file and each "
                "role's cert and key), or Security(tls_ca_file=..., tls_client_cert=..., ...)"
            )
        return None
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"aw:// expects ssl_context to be an ssl.SSLContext, got {context!r}")
    return context


async def resolve(host: str, port: int) -> str:
    """The first IP address of host (IPv4 or IPv6). A numeric one needs no
    thread; a name is looked up in the event loop's executor, as tcp:// does."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        )
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            raise
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


class ArraywireComm(Comm):
    """One established ``aw://`` connection: Dask messages in, Dask messages out."""

    def __init__(
        self, channel: aio.Channel, local_addr: str, peer_addr: str, deserialize: bool = True
    ) -> None:
        self._closed = False
        self._channel = channel
        self._transfers = 0  # reads and sends holding the socket
        # Written messages (their arrays, kept referenced) not yet sent, in
        # order, and their bytes; one task sends them.
        self._queue: collections.deque[tuple[list[np.ndarray], int]] = collections.deque()
        self._queued_bytes = 0
        self.max_queued_bytes = max_queued_bytes()
        self._sender: asyncio.Task[None] | None = None
        self._writes = 0  # writes not yet queued (serialising or waiting for room)
        self._admission = asyncio.Lock()  # writes waiting for room queue in turn
        self._sent = asyncio.Event()  # set whenever a queued message leaves
        self._flushed = asyncio.Event()  # no write in progress, nothing queued
        self._flushed.set()
        # Shards of at most this size, as tcp:// cuts them
        self._shard_bytes = parse_bytes(dask.config.get("distributed.comm.shard"))
        super().__init__(deserialize=deserialize)
        self._local_addr = local_addr
        self._peer_addr = peer_addr
        self.max_message_bytes = max_message_bytes()
        self._extra: dict[str, Any] = {"arraywire_backend": transport.impl.BACKEND}
        if isinstance(channel, TLSChannel):  # read now: the session is gone once closed
            session = channel.ssl_object
            self._extra.update(peercert=session.getpeercert(), cipher=session.cipher())
        set_tcp_timeout(self)  # keepalive and TCP_USER_TIMEOUT, as tcp:// sets them

    @property
    def socket(self) -> socket.socket:
        """The connected socket."""
        return self._channel.socket

    @property
    def local_address(self) -> str:
        return self._local_addr

    @property
    def peer_address(self) -> str:
        return self._peer_addr

    @property
    def extra_info(self) -> dict[str, Any]:
        return self._extra

    async def read(self, deserializers: Any = None) -> Any:
        if self._closed:
            raise CommClosedError(f"in {self}: closed")
        message = await self._transfer(
            self._channel.recv_message(max_bytes=self.max_message_bytes)
        )
        try:
            frames = dask_frames.to_frames(message.arrays)
        except ProtocolError as exc:
            self.abort()
            raise CommClosedError(f"in {self}: ProtocolError: {exc}") from exc
        try:
            return await from_frames(
                frames,
                deserialize=self.deserialize,
                deserializers=deserializers,
                allow_offload=self.allow_offload,
            )
        except EOFError:
            self.abort()
            raise CommClosedError(f"in {self}: aborted stream on truncated data") from None

    async def write(self, msg: Any, serializers: Any = None, on_error: str = "message") -> int:
        """Queue the message and return its bytes, as tcp:// hands its frames
        to the stream's buffer: a later send failure closes the comm. An
        error before the message is queued leaves the comm open."""
        if self._closed:
            raise CommClosedError(f"in {self}: closed")
        self._writes += 1
        self._flushed.clear()
        try:
            frames = await to_frames(
                msg,
                allow_offload=self.allow_offload,
                serializers=serializers,
                on_error=on_error,
                context={
                    "sender": self.local_info,
                    "recipient": self.remote_info,
                    **self.handshake_options,
                },
                frame_split_size=self._shard_bytes,
            )
            arrays = dask_frames.to_arrays(frames)
            nbytes = sum(array.nbytes for array in arrays)
            if self._must_wait(nbytes) or self._admission.locked():
                async with self._admission:
                    while self._must_wait(nbytes):
                        self._sent.clear()
                        await self._sent.wait()
            if self._closed:  # aborted while the message was serialised or waited
                raise CommClosedError(f"in {self}: closed")
            if self._sender is not None:  # a message is being sent: after it, in order
                self._queue.append((arrays, nbytes))
                self._queued_bytes += nbytes
                return nbytes
            rest = self._send_now(arrays)
            if rest is not None:
                self._queued_bytes += nbytes
                self._sender = asyncio.get_running_loop().create_task(
                    self._send_queued(rest, nbytes)
                )
            return nbytes
        finally:
            self._writes -= 1
            self._check_flushed()

    def _must_wait(self, nbytes: int) -> bool:
        """Whether a write of nbytes waits for room: into an empty queue, any
        size goes."""
        bound = self.max_queued_bytes
        return (
            not self._closed
            and bound is not None
            and self._queued_bytes > 0
            and self._queued_bytes + nbytes > bound
        )

    def _send_now(self, arrays: list[np.ndarray]) -> Coroutine[Any, Any, int] | None:
        """Send what the socket takes at once, in the writer's task; what it
        does not take is the coroutine returned, which sends the rest."""
        self._transfers += 1
        try:
            sent = self._channel.send_arrays_now(arrays)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._release()
        return None if isinstance(sent, int) else sent

    async def _send_queued(self, started: Awaitable[int], nbytes: int) -> None:
        """Finish the message started, then send the queued ones in order; a
        failure aborts the comm (the writers were answered already: later
        calls raise CommClosedError)."""
        try:
            await self._transfer(started)
            if not self._closed:  # else abort() let go of the count
                self._queued_bytes -= nbytes
            self._sent.set()
            while self._queue and not self._closed:
                arrays, nbytes = self._queue[0]
                await self._transfer(self._channel.send_arrays(arrays))
                if self._queue:  # abort() emptied it
                    self._queue.popleft()
                    self._queued_bytes -= nbytes
                self._sent.set()
        except CommClosedError as exc:  # _transfer aborted the comm
            logger.debug("aw:// send to %s failed: %r", self._peer_addr, exc)
        finally:
            self._sender = None
            self._sent.set()
            self._check_flushed()

    def _check_flushed(self) -> None:
        if not self._writes and self._sender is None:
            self._flushed.set()

    async def _transfer(self, transfer: Awaitable[T]) -> T:
        """Await a send or receive of the channel; a failure closes the comm."""
        self._transfers += 1
        try:
            return await transfer
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._release()

    def _fail(self, exc: BaseException) -> None:
        """Abort after a failed send or receive (cancelled part-way, say: the
        stream is out of step); the comm's loss is CommClosedError."""
        self.abort()
        if isinstance(exc, LOST):
            raise CommClosedError(f"in {self}: {type(exc).__name__}: {exc}") from exc

    def _release(self) -> None:
        self._transfers -= 1
        if self._closed and not self._transfers:
            self._channel.close()

    async def close(self) -> None:
        """Close once every written message is sent (or the comm failed)."""
        try:
            await self._flushed.wait()
        finally:
            self.abort()

    def abort(self) -> None:
        """Close at once, dropping what is queued. A read or send in progress
        wakes up (the socket is shut down) and closes the socket when it lets
        go of it."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._sent.set()  # writes waiting for room see the comm closed
        try:
            self._channel.socket.shutdown(socket.SHUT_RDWR)
        except OSError:  # never connected, or the peer is gone already
            pass
        if not self._transfers:
            self._channel.close()

    def closed(self) -> bool:
        return self._closed


class ArraywireConnector(Connector):
    async def connect(
        self, address: str, deserialize: bool = True, **connection_args: Any
    ) -> ArraywireComm:
        context = tls_context(address, connection_args)
        host, port = parse_host_port(address)
        where = (await resolve(host, port), port)
        if context is None:
            try:
                channel = await aio.connect(where)
            except ProtocolError as exc:
                raise NotArraywireError(
                    f"{PREFIX}{address} is not an arraywire listener: {exc}"
                ) from exc
        else:
            # the server name tls:// gives: the worker's scheduler-sni, else the host
            server_hostname = connection_args.get("server_hostname") or host
            channel = await connect_tls(address, where, context, server_hostname)
        local = PREFIX + unparse_host_port(*channel.socket.getsockname()[:2])
        return ArraywireComm(channel, local, PREFIX + address, deserialize)


async def connect_tls(
    address: str,
    where: tuple[str, int],
    context: ssl.SSLContext,
    server_hostname: str,
) -> aio.Channel:
    """Connect over TLS. A failed handshake is fatal, as in tls://: trying
    again cannot help."""
    try:
        return await aio.connect(where, ssl=context, server_hostname=server_hostname)
    except ssl.SSLCertVerificationError as exc:
        raise FatalCommClosedError(
            f"the TLS certificate of {PREFIX}{address} was not accepted ({exc.verify_message}); "
            "check Dask's Security settings (https://distributed.dask.org/en/latest/tls.html)"
        ) from exc
    except (ssl.SSLError, ProtocolError) as exc:
        # ProtocolError: the peer does not speak TLS, or closed the connection
        # after the handshake (it refused this end's certificate, say)
        raise FatalCommClosedError(
            f"TLS with {PREFIX}{address} failed: {exc}. Check that both ends have TLS in "
            "their Dask Security, with certificates the other end's CA trusts"
        ) from exc


class ArraywireListener(BaseListener):
    """Listens on a TCP address; each connection becomes a comm handed to
    ``comm_handler`` after Dask's handshake."""

    prefix = PREFIX  # read by Dask's Worker

    def __init__(
        self,
        address: str,
        comm_handler: Any,
        deserialize: bool = True,
        allow_offload: bool = True,
        default_host: str | None = None,
        default_port: int = 0,
        **connection_args: Any,
    ) -> None:
        super().__init__()
        self._ssl = tls_context(address, connection_args)
        self.ip, self.port = parse_host_port(address, default_port)
        self.default_host = default_host
        self.comm_handler = comm_handler
        self.deserialize = deserialize
        self.allow_offload = allow_offload
        self._listener: aio.Listener | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        backlog = int(dask.config.get("distributed.comm.socket-backlog"))
        sock, _ = server_socket((self.ip, self.port), backlog)
        # each peer dropped during its opening is one warning under Dask's comm loggers
        self._listener = AioListener(
            sock, DEFAULT_HANDSHAKE_TIMEOUT, None, ssl=self._ssl, logger=logger
        )
        self._spawn(self._accept_all(self._listener))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_all(self, listener: aio.Listener) -> None:
        # until stop(); the Listener has logged the peers it dropped
        async for channel in listener:
            self._spawn(self._handle(channel))

    async def _handle(self, channel: aio.Channel) -> None:
        if self._listener is None:  # stopped after this connection was accepted
            channel.close()
            return
        sock = channel.socket
        try:
            peer = PREFIX + unparse_host_port(*sock.getpeername()[:2])
            local = PREFIX + unparse_host_port(*sock.getsockname()[:2])
        except OSError:  # reset by the peer since its hello
            channel.close()
            return
        comm = ArraywireComm(channel, local, peer, self.deserialize)
        comm.allow_offload = self.allow_offload
        try:
            await self.on_connection(comm)
        except CommClosedError:
            logger.info("Connection from %s closed before handshake completed", peer)
            return
        await self.comm_handler(comm)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def get_host_port(self) -> tuple[str, int]:
        """The listening address as (host, port)."""
        if self._listener is None:
            raise ValueError("invalid operation on a non-started aw:// listener")
        host, port = self._listener.address
        return host, port

    @property
    def listen_address(self) -> str:
        return PREFIX + unparse_host_port(*self.get_host_port())

    @property
    def contact_address(self) -> str:
        host, port = self.get_host_port()
        return PREFIX + unparse_host_port(ensure_concrete_host(host, self.default_host), port)


class ArraywireBackend(BaseTCPBackend):
    """The ``aw`` scheme: tcp://'s address rules, arraywire's comms."""

    _connector_class = ArraywireConnector
    _listener_class = ArraywireListener
