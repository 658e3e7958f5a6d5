"""Picks the transport backend once, at import.

The compiled ``transport_c`` is used when it was built; ARRAYWIRE_NO_EXTENSIONS=1
(any value but "" or "0") forces the pure-Python ``transport_py``. Both
modules stay importable by name.
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING

from arraywire._core import tls, transport_py
from arraywire._core.protocol import Core

NO_EXTENSIONS = os.environ.get("ARRAYWIRE_NO_EXTENSIONS", "") not in ("", "0")

# Type checkers see the pure twin: the compiled one has the same signatures
# (transport_c.pyi, checked against both by tests/test_stub.py).
if TYPE_CHECKING or NO_EXTENSIONS:
    impl = transport_py
else:
    try:
        from arraywire._core import transport_c as impl
    except ImportError:  # built without a compiler: the pure twin serves
        impl = transport_py

BACKEND: str = impl.BACKEND
# the package's own transfer functions
send_from = impl.send_from
recv_into = impl.recv_into
sendmsg_from = impl.sendmsg_from
recvmsg_into = impl.recvmsg_into


def core_for(sock: object) -> Core:
    """The core that moves a socket's bytes: the TLS core for an
    ``ssl.SSLSocket`` (the plain cores refuse one), else the chosen twin."""
    return tls if isinstance(sock, ssl.SSLSocket) else impl
