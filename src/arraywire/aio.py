"""Awaitable transfers for sockets driven by an asyncio event loop.

Same functions, header format, results and errors as the blocking API, for a
non-blocking ``socket.socket`` on a selector event loop (the default on Linux
and macOS; uvloop works too). The event loop is never blocked:

- Up to ``NATIVE_BYTES`` are moved by the loop itself with non-blocking
  ``sendmsg``/``recvmsg_into`` calls, waiting for readiness with
  ``add_writer``/``add_reader`` (the latency of ``loop.sock_sendall``).
- Larger payloads, once the socket is ready, run the blocking GIL-free loop
  in a transfer worker thread on ``sock.dup()``; the descriptor stays
  non-blocking, so the loop polls on EAGAIN. Workers are reused: a transfer
  takes an idle one, a new one starts only when every worker is busy (so a
  send and its receive in one process never wait on each other), and a
  worker ends after a second without work. Each transfer wakes the event
  loop once, when it completes.

Progress callbacks run in the event loop's thread, at most about every
100 ms and once at the end, and an exception from one aborts the transfer.

Cancellation and failures: a transfer that stops after moving some but not
all of its bytes (cancelled, peer gone, bad header, progress callback raised)
shuts the socket down in both directions, so the peer sees the connection end
instead of waiting for bytes that never come, and marks it broken: every later
call of this module on that socket object raises ``BrokenStreamError`` naming
the transfer and how many bytes it moved. A transfer cancelled while still
waiting for the socket, before any byte moved, leaves the stream as it was.
Cancelling a threaded transfer returns only after its worker has stopped
touching the buffer.
"""

from arraywire._aio.channel import Channel
from arraywire._aio.connection import Listener, connect, listen
from arraywire._aio.moving import NATIVE_BYTES
from arraywire._aio.transfers import (
    recv_array,
    recv_arrays,
    recv_into,
    recv_message,
    send_array,
    send_arrays,
    send_from,
)

__all__ = [
    "NATIVE_BYTES",
    "Channel",
    "Listener",
    "connect",
    "listen",
    "recv_array",
    "recv_arrays",
    "recv_into",
    "recv_message",
    "send_array",
    "send_arrays",
    "send_from",
]
