"""arraywire: move large numpy arrays over sockets without copies.

The transfer loop runs in compiled code with the GIL released (``BACKEND == "c"``),
or in a pure-Python twin (``BACKEND == "python"``) where no compiler was found
or ``ARRAYWIRE_NO_EXTENSIONS=1`` is set.
"""

from arraywire._channel import Channel, ChannelItem
from arraywire._connection import Listener, connect, listen
from arraywire._engine import STRIPE_BYTES, Message
from arraywire._errors import (
    AuthenticationError,
    BrokenStreamError,
    IncompleteTransferError,
    ProtocolError,
)
from arraywire._framing import recv_array, recv_arrays, recv_message, send_array, send_arrays
from arraywire._protocol import DEFAULT_MAX_BYTES, DEFAULT_MAX_METADATA
from arraywire._transport import BACKEND, impl as _impl

__version__ = "0.1.0"

send_from = _impl.send_from
recv_into = _impl.recv_into
sendmsg_from = _impl.sendmsg_from
recvmsg_into = _impl.recvmsg_into

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
