"""Addresses, listening sockets and the opening's errors, the same for the
blocking and the asyncio drivers.

Addresses take the forms of ``multiprocessing.connection``: a ``(host, port)``
tuple is TCP (IPv4 or IPv6 by the host; ``""`` all IPv4 interfaces, ``"::"``
all interfaces, dual-stack where the OS allows; port 0 picks a free port), a
``str`` or ``os.PathLike`` is an AF_UNIX path. A ``str`` or ``bytes`` that
starts with a NUL is a Linux abstract AF_UNIX name: no file, nothing to remove.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable
from ssl import SSLContext, SSLError
from typing import Any, TypeAlias

from arraywire._drivers.rules import receive_wait
from arraywire._wire import hello, peers
from arraywire._wire.errors import ProtocolError, unexpected_peer

Address: TypeAlias = "tuple[str, int] | str | bytes | os.PathLike[str]"


DEFAULT_BACKLOG = 128


# A Listener drops a peer whose opening is not done this long after accept()
# took its connection.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


# connect(timeout=...) tries again this often while the address refuses.
RETRY_INTERVAL = 0.05


def family_of(address: Any) -> tuple[socket.AddressFamily, Any]:
    """The socket family of an address, and the address in that family's form."""
    if isinstance(address, (str, os.PathLike)) or is_abstract(address):
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
        "an address is a (host, port) tuple for TCP, a str / os.PathLike path for "
        f"AF_UNIX or a str / bytes abstract AF_UNIX name starting with NUL, got {address!r}"
    )


def is_abstract(address: Any) -> bool:
    """Whether address is a Linux abstract AF_UNIX name (a str or bytes
    starting with NUL)."""
    return isinstance(address, (str, bytes)) and address[:1] in ("\0", b"\0")


def bound_address(sock: socket.socket, unix_name: str | bytes | None = None) -> Any:
    """A listening socket's address: (host, port) with the real port, or the
    AF_UNIX name as it was given (an abstract name keeps its str or bytes)."""
    if unix_name is not None:
        return unix_name
    name = sock.getsockname()
    return name[:2] if isinstance(name, tuple) else name


def no_socket_file(path: str | bytes) -> FileNotFoundError:
    """What connect() raises for an AF_UNIX path with no socket file, naming
    it (a "host:port" text is a path too)."""
    shown = os.fsdecode(path)
    hint = ""
    host, _, port = shown.rpartition(":")
    if host and port.isdigit() and os.sep not in shown:
        hint = f"; for TCP pass a (host, port) tuple: ({host!r}, {port})"
    return FileNotFoundError(
        errno.ENOENT, f"no AF_UNIX socket file {shown!r} to connect to{hint}", path
    )


def path_in_use(path: str | bytes) -> OSError:
    """What listen() raises for an AF_UNIX path that exists: it names the
    path and says whether a server answers there (the file is never removed:
    it may be another program's)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        state = "a server answers there"
    except OSError:
        state = "nothing answers there (a stale socket file? remove it if no server uses it)"
    finally:
        probe.close()
    return OSError(errno.EADDRINUSE, f"AF_UNIX path {os.fsdecode(path)!r} is in use: {state}", path)


def remove_socket_file(unix_name: str | bytes | None) -> None:
    """Remove the file a closed AF_UNIX Listener was bound to; an abstract
    name has none."""
    if unix_name is None or is_abstract(unix_name):
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(unix_name)


def closed_listener() -> OSError:
    """What accept() raises once the Listener is closed, as a closed socket's would."""
    return OSError(errno.EBADF, "accept() on a closed Listener")


def tune(sock: socket.socket) -> None:
    """Small messages go out at once: no Nagle delay on TCP."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def check_streams(streams: int) -> None:
    """Refuse a stream count that is not an int from 1 to 65535."""
    if not isinstance(streams, int) or isinstance(streams, bool):
        raise TypeError(f"streams must be an int, got {type(streams).__name__}")
    if not 1 <= streams <= 0xFFFF:
        raise ValueError(f"streams must be from 1 to 65535, got {streams}")


def check_options(authkey: bytes | None, ssl: SSLContext | None) -> None:
    """Refuse a key or TLS context of the wrong kind before any connection."""
    hello.check_key(authkey)
    if ssl is not None and not isinstance(ssl, SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext, got {type(ssl).__name__}")


def server_socket(address: Address, backlog: int) -> tuple[socket.socket, str | bytes | None]:
    """A listening socket bound to address, and its AF_UNIX name as given
    (None for TCP)."""
    family, where = family_of(address)
    if family == socket.AF_UNIX:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(where)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or is_abstract(where):
                raise
            raise path_in_use(where) from None
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


def remaining(deadline: float | None) -> float | None:
    """The socket timeout that ends at deadline (None: no deadline)."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)


# OpenSSL's reasons when the peer's first bytes are not TLS at all.
NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                     "UNKNOWN_PROTOCOL", "HTTP_REQUEST"})


def not_tls(exc: SSLError) -> ProtocolError | None:
    """The error to raise for a failed TLS handshake whose peer does not
    speak TLS at all (None for any other failure)."""
    if exc.reason not in NOT_TLS:
        return None
    return ProtocolError(
        f"the TLS handshake failed ({exc.reason}): the peer does not speak TLS; "
        "give the Listener ssl= too, or connect without it"
    )


def not_a_tls_client(first: bytes) -> ProtocolError:
    """What a TLS Listener says of a peer whose first bytes are not TLS."""
    speaks = peers.identify(first)
    text = "the peer does not speak TLS and this end does"
    if speaks in ("http", "other"):
        text += f": {peers.not_arraywire(first)}"
    return unexpected_peer(text, speaks, first)


def closed_in_opening(filled: int, size: int, part: str) -> ProtocolError:
    text = (
        f"the peer closed the connection after {filled:,} of the {size:,} bytes of its {part} "
        "(is it an arraywire Listener, with the same TLS setting, ssl=, as this end?)"
    )
    if filled == 0 and part == hello.PARTS["hello"]:
        return unexpected_peer(text, "nothing", b"")
    return ProtocolError(text)


def reset_in_opening(tls: bool) -> ConnectionResetError:
    """A reset during the opening, saying the likely causes for an end that
    uses TLS (``tls``) or not: only this end's setting is known."""
    if tls:
        causes = (
            "the peer is not an arraywire Listener, or one without TLS, which resets a "
            "TLS handshake (then connect without ssl=, or give the Listener ssl=)"
        )
    else:
        causes = (
            "the peer is not an arraywire Listener, or one that uses TLS, which resets "
            "a peer that does not (then pass ssl= at this end too)"
        )
    return ConnectionResetError(
        errno.ECONNRESET, f"the peer reset the connection during the opening: {causes}"
    )


def receive_timeout(sock: socket.socket, timeout: float | None) -> Callable[[], None]:
    """Set a receive's ``timeout=`` (None: keep the socket's) on sock;
    return what restores the socket's own."""
    seconds = receive_wait(timeout)
    if seconds is None or sock.fileno() == -1:  # closed: the broken check says why
        return _keep
    previous = sock.gettimeout()
    sock.settimeout(seconds)

    def restore() -> None:
        if sock.fileno() != -1:
            sock.settimeout(previous)

    return restore


def _keep() -> None:
    """A receive without its own timeout leaves the socket's."""
