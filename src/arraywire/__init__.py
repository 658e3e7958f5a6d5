"""Move numpy arrays over sockets without copies, with the GIL released.

arraywire sends numpy arrays (any non-object dtype, C or Fortran order) and
other contiguous buffers over stream sockets: the bytes go from the array's
memory to the socket and from the socket into the receiving array, by a
transfer loop that leaves the other Python threads running.

Entry points
------------
listen, connect
    Open a connection: ``listen(address)`` returns a Listener whose
    ``accept()`` returns a Channel; ``connect(address)`` returns a Channel.
    ``authkey=`` adds a shared-key check, ``ssl=`` TLS.
Channel
    Messages over one connection: ``send(array)``, ``recv()``,
    ``send_arrays``, ``recv_arrays``, ``recv_message``, ``send_many`` and
    ``for array in channel``.
send_array, recv_array, send_arrays, recv_arrays, recv_message
    The same self-describing messages over a socket of your own.
send_from, recv_into, sendmsg_from, recvmsg_into
    The bytes of buffers whose sizes both ends already know.
arraywire.aio
    The same for asyncio.

A malformed or over-limit header raises ProtocolError; a peer that closes
inside a message raises IncompleteTransferError, one that closes between
messages a plain EOFError.

Example
-------
>>> import socket
>>> import numpy as np
>>> import arraywire
>>> a, b = socket.socketpair()
>>> sent = arraywire.send_array(np.arange(4.0), a)
>>> arraywire.recv_array(b)
array([0., 1., 2., 3.])
>>> a.close(); b.close()

Between two hosts, host A receives::

    with arraywire.listen(("", 5030)) as listener, listener.accept() as channel:
        weights = channel.recv()

and host B sends::

    with arraywire.connect(("host-a", 5030), timeout=10) as channel:
        channel.send(weights)

Backends
--------
``BACKEND == "c"``: the compiled transfer core, which runs the whole transfer
loop with the GIL released. ``BACKEND == "python"``: its pure-Python twin
(same functions, results and errors; it takes the GIL again after every
partial send or receive), used on Windows, where no C compiler was found at
install time, and when ``ARRAYWIRE_NO_EXTENSIONS=1`` is set.

Protocol
--------
The wire format (messages, the connection hello, authentication, the command
line's exchange) is specified in docs/PROTOCOL.md of the source distribution.
"""

import logging as _logging
from types import FunctionType as _FunctionType

from arraywire._core.transport import BACKEND, recv_into, recvmsg_into, send_from, sendmsg_from
from arraywire._drivers.rules import ChannelItem
from arraywire._sync.channel import Channel
from arraywire._sync.connection import connect, listen
from arraywire._sync.framing import recv_array, recv_arrays, recv_message, send_array, send_arrays
from arraywire._sync.listener import Listener
from arraywire._wire.engine import STRIPE_BYTES, Message
from arraywire._wire.errors import (
    AuthenticationError,
    BrokenStreamError,
    IncompleteTransferError,
    ProtocolError,
)
from arraywire._wire.header import DEFAULT_MAX_BYTES, DEFAULT_MAX_METADATA

__version__ = "0.1.0"

# A library logs and the application decides where it goes: without a
# handler of the application's, no warning of a dropped peer reaches stderr.
_logging.getLogger("arraywire").addHandler(_logging.NullHandler())

# help(), tracebacks and pickles name the classes where users import them from
for _public_class in (
    AuthenticationError,
    BrokenStreamError,
    Channel,
    IncompleteTransferError,
    Listener,
    Message,
    ProtocolError,
):
    _public_class.__module__ = __name__
    # pydoc (3.13 on) names a method's own module when it differs from its class's
    for _member in vars(_public_class).values():
        if isinstance(_member, _FunctionType):
            _member.__module__ = __name__
del _public_class, _member, _FunctionType, _logging

__all__ = [
    "BACKEND",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_METADATA",
    "STRIPE_BYTES",
    "AuthenticationError",
    "BrokenStreamError",
    "Channel",
    "ChannelItem",
    "IncompleteTransferError",
    "Listener",
    "Message",
    "ProtocolError",
    "connect",
    "listen",
    "recv_array",
    "recv_arrays",
    "recv_into",
    "recv_message",
    "recvmsg_into",
    "send_array",
    "send_arrays",
    "send_from",
    "sendmsg_from",
]
