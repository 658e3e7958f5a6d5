"""Which sockets the transfer core takes: the check both twins and arraywire.aio
make before a transfer."""

from __future__ import annotations

import _socket
import errno
import os
import socket
from typing import Any

try:
    from ssl import SSLSocket
except ImportError:  # Python built without ssl
    SSLSocket = None  # type: ignore[assignment,misc]


_base_type = _socket.socket.type.__get__


def check_socket(sock: Any) -> tuple[int, float | None]:
    """Return (fd, timeout) of a socket arraywire may use, or raise."""
    if type(sock) is not socket.socket and SSLSocket is not None and isinstance(sock, SSLSocket):
        raise TypeError(
            "arraywire cannot use an ssl.SSLSocket: raw socket I/O would bypass TLS; "
            "for TLS, open the connection with arraywire.connect(..., ssl=context) and "
            "arraywire.listen(..., ssl=context)"
        )
    if not isinstance(sock, socket.socket):
        raise TypeError(f"expected a socket.socket, got {type(sock).__name__}")
    # The base class's plain int: socket.socket.type builds an enum member,
    # which costs more than the system call of a small message.
    if _base_type(sock) != socket.SOCK_STREAM:
        raise TypeError(
            f"arraywire needs a stream socket (SOCK_STREAM), got {sock.type!r}: datagram "
            "and packet sockets cut or drop messages"
        )
    fd = sock.fileno()
    if fd == -1:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    return fd, sock.gettimeout()
