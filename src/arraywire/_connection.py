"""Opening connections: ``listen``, ``connect`` and the ``Listener``, with the
hello of ``_hello`` exchanged before the first message.

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
from types import TracebackType
from typing import Any, TypeAlias

from arraywire import _hello
from arraywire._channel import Channel
from arraywire._errors import ProtocolError

Address: TypeAlias = "tuple[str, int] | str | os.PathLike[str]"

DEFAULT_BACKLOG = 128
# A Listener drops a peer whose hello has not come this long after accept()
# took its connection.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# connect(timeout=...) tries again this often while the address refuses.
RETRY_INTERVAL = 0.05


def family_of(address: Any) -> tuple[socket.AddressFamily, Any]:
    """The socket family of an address, and the address in that family's form."""
    if isinstance(address, (str, os.PathLike)):
        return socket.AF_UNIX, os.fspath(address)
    if isinstance(address, tuple) and len(address) == 2:
        host, port = address
        if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(
                f"a TCP address is (host: str, port: int), got ({type(host).__name__}, "
                f"{type(port).__name__})"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0..65535")
        return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, port)
    raise TypeError(
        "an address is a (host, port) tuple for TCP or a str / os.PathLike path for "
        f"AF_UNIX, got {address!r}"
    )


def bound_address(sock: socket.socket) -> Any:
    """A listening socket's address: (host, port) with the real port, or the path."""
    name = sock.getsockname()
    return name[:2] if isinstance(name, tuple) else name


def closed_listener() -> OSError:
    """What accept() raises once the Listener is closed, as a closed socket's would."""
    return OSError(errno.EBADF, "accept() on a closed Listener")


def tune(sock: socket.socket) -> None:
    """Small messages go out at once: no Nagle delay on TCP."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def listen(
    address: Address,
    *,
    backlog: int = DEFAULT_BACKLOG,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Listener:
    """Listen for connections at address; ``accept()`` gives a Channel each.
    A peer whose hello has not arrived after handshake_timeout seconds is
    dropped; it never holds up the others."""
    sock, path = server_socket(address, backlog)
    return Listener(sock, handshake_timeout, unlink=path)


def server_socket(address: Address, backlog: int) -> tuple[socket.socket, str | None]:
    """A listening socket bound to address, and the AF_UNIX path it created."""
    family, where = family_of(address)
    if family == socket.AF_UNIX:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(where)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock, where
    host, port = where
    if host not in ("", "::") and ":" not in host:
        # a name: the family of its first address
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    dualstack = host == "::" and socket.has_dualstack_ipv6()
    sock = socket.create_server((host, port), family=family, backlog=backlog, dualstack_ipv6=dualstack)
    return sock, None


def connect(address: Address, *, timeout: float | None = None) -> Channel:
    """Connect to a Listener at address; return the Channel once both hellos
    are exchanged. With a timeout, a refused connection (nobody listening
    yet) is tried again until the timeout passes, so start order does not
    matter, and the timeout bounds the hello too. A peer that is not
    arraywire raises ProtocolError."""
    family, where = family_of(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            sock = _connect_once(family, where, timeout)
            break
        except (ConnectionRefusedError, FileNotFoundError):
            if deadline is None or time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_INTERVAL)
    try:
        tune(sock)
        sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.001))
        sock.sendall(_hello.encode())
        peer = _hello.decode(_read_hello(sock))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return Channel(sock, peer_reads=peer.reads_messages)


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


def _read_hello(sock: socket.socket) -> bytes:
    data = bytearray(_hello.SIZE)
    view = memoryview(data)
    filled = 0
    while filled < _hello.SIZE:
        try:
            count = sock.recv_into(view[filled:])
        except TimeoutError:
            raise TimeoutError(
                f"the peer sent {filled} of the {_hello.SIZE} bytes of its hello in time"
            ) from None
        if not count:
            raise ProtocolError(
                f"the peer closed the connection after {filled} of the {_hello.SIZE} bytes "
                "of its hello (is it an arraywire Listener?)"
            )
        filled += count
    return bytes(data)


class _Handshake:
    """An accepted connection whose hello is still coming."""

    __slots__ = ("data", "deadline", "filled", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.data = bytearray(_hello.SIZE)
        self.filled = 0


class Listener:
    """Accepts connections; each becomes a Channel once its hello arrived.

    Hellos are awaited side by side: a peer that connects and stays silent, or
    sends something else, never holds up ``accept()`` for others. It is
    dropped after ``handshake_timeout`` seconds, or as soon as its hello is
    wrong.
    """

    def __init__(
        self, sock: socket.socket, handshake_timeout: float, unlink: str | None = None
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._handshake_timeout = handshake_timeout
        self._unlink = unlink
        self._pending: dict[socket.socket, _Handshake] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._accepting = threading.Lock()
        self._hello = _hello.encode()

    @property
    def address(self) -> Any:
        """The bound address: (host, port) with the real port, or the path."""
        return bound_address(self._sock)

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self._sock.fileno()

    def accept(self, *, timeout: float | None = None) -> Channel:
        """The next connection whose hello arrived, as a Channel; with a timeout,
        TimeoutError when none did in time."""
        with self._accepting:
            if self._sock.fileno() == -1:
                raise closed_listener()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                now = time.monotonic()
                self._drop_late(now)
                wait = min((h.deadline for h in self._pending.values()), default=None)
                if deadline is not None:
                    if now >= deadline:
                        raise TimeoutError("no connection completed its hello in time")
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
                conn.send(self._hello)  # 16 bytes into an empty send buffer
            except OSError:
                conn.close()
                continue
            self._pending[conn] = _Handshake(conn, deadline)
            self._selector.register(conn, selectors.EVENT_READ)

    def _advance(self, handshake: _Handshake) -> Channel | None:
        sock = handshake.sock
        try:
            count = sock.recv_into(memoryview(handshake.data)[handshake.filled :])
            if not count:
                raise ConnectionError("closed during the hello")
            handshake.filled += count
            if handshake.filled < _hello.SIZE:
                return None
            peer = _hello.decode(bytes(handshake.data))
        except (BlockingIOError, InterruptedError):
            return None
        except (OSError, ProtocolError):
            self._drop(sock)
            return None
        self._selector.unregister(sock)
        del self._pending[sock]
        sock.setblocking(True)
        return Channel(sock, peer_reads=peer.reads_messages)

    def _drop_late(self, now: float) -> None:
        for sock in [s for s, h in self._pending.items() if h.deadline <= now]:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        del self._pending[sock]
        sock.close()

    def close(self) -> None:
        """Stop listening; drop connections whose hello had not arrived."""
        for sock in list(self._pending):
            self._drop(sock)
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
