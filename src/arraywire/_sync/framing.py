"""Self-describing messages over blocking sockets: the blocking driver of the
message engine (``_wire.engine``).

A message is a header (see ``_wire.header`` and docs/PROTOCOL.md) followed by each
array's bytes. Contiguous arrays go out with the header in gather sendmsg
calls; receivers get fresh arrays filled in place by one scatter recvmsg.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from arraywire._drivers.blocking import one_stream, read_into, write_plan
from arraywire._wire.engine import Message, Receive, plan_send
from arraywire._wire.header import DEFAULT_MAX_BYTES, DEFAULT_MAX_METADATA
from arraywire._wire.limits import Progress


def send_arrays(
    arrays: Iterable[Any] | Mapping[str, Any],
    sock: Any,
    *,
    metadata: bytes | None = None,
    progress: Progress | None = None,
) -> int:
    """Send arrays as one self-describing message over a connected stream socket.

    ``arrays`` is an iterable of arrays (numpy arrays of any non-object
    dtype, other objects exporting a buffer, or what ``numpy.asarray``
    converts without loss), or a mapping of str names to arrays, which sends
    the names too (``recv_arrays`` then returns a dict in the same order).
    ``metadata`` adds bytes of your own, read back with ``recv_message``; a
    receiver refuses more than its ``max_metadata`` (by default 64 KiB).
    Non-contiguous arrays go out without a full-size copy. ``progress(bytes_done,
    bytes_total)`` is called about every 0.1 s and once at the end.

    Returns
    -------
    int
        The bytes sent: the header's and every array's.

    Raises
    ------
    TypeError
        Before the first byte: an item that is not an array of a transferable
        dtype (object dtype, masked array, str, a mapping as an item), a name
        that is not str, metadata that is not bytes-like, or a socket that is
        not a stream ``socket.socket``.
    ValueError
        Before the first byte: the message is over a limit of the format
        (docs/PROTOCOL.md: dtype text, header size, dimensions, name length).
    OSError
        The socket's error (BrokenPipeError, ConnectionResetError,
        TimeoutError after the socket's timeout with no byte moved, ...), with
        ``bytes_done`` counted from the start of the message.
    """
    plan = plan_send(arrays, progress, metadata)
    try:
        write_plan(plan, sock, plan.reporter)
    except BaseException as exc:
        plan.fail(exc)
        raise
    return plan.complete()


def send_array(
    array: Any, sock: Any, *, metadata: bytes | None = None, progress: Progress | None = None
) -> int:
    """Send one array as a self-describing message over a connected stream socket.

    The message is that of ``send_arrays((array,), sock)``; the receiver gets
    the array back with ``recv_array``. ``metadata`` and ``progress`` are as
    for send_arrays.

    Returns
    -------
    int
        The bytes sent: the header's and the array's.

    Raises
    ------
    TypeError, ValueError, OSError
        As send_arrays raises them (TypeError and ValueError before the
        first byte).
    """
    return send_arrays((array,), sock, metadata=metadata, progress=progress)


def recv_arrays(
    sock: Any,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Receive one message of any number of arrays from a connected stream socket.

    The header is checked before anything is allocated; each array then
    receives its bytes in place. ``max_bytes`` caps the payload a header may
    declare (None: only the format's limit, 2**47 bytes). ``progress`` is as
    for send_arrays.

    Returns
    -------
    list of numpy.ndarray, or dict of str to numpy.ndarray
        The arrays, each fresh, writable and with memory of its own, with the
        sender's dtype, shape and memory order: a dict in the sender's order
        when the sender named them, else a list. The message's metadata is
        dropped (``recv_message`` returns it).

    Raises
    ------
    EOFError
        The peer closed the connection cleanly, before the message's first byte.
    IncompleteTransferError
        The peer closed inside the message; ``bytes_done`` and
        ``bytes_expected`` count from its start.
    ProtocolError
        The header is malformed, of an unsupported version, or declares more
        than ``max_bytes`` of payload or more metadata than 64 KiB
        (``DEFAULT_MAX_METADATA``).
    TypeError
        The socket is not a stream ``socket.socket``.
    OSError
        The socket's error (ConnectionResetError, TimeoutError after the
        socket's timeout with no byte moved, ...), with ``bytes_done``.
    """
    return recv_message(sock, max_bytes=max_bytes, progress=progress).arrays


def recv_message(
    sock: Any,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_metadata: int = DEFAULT_MAX_METADATA,
    progress: Progress | None = None,
) -> Message:
    """Receive one message with its metadata from a connected stream socket.

    As ``recv_arrays``, with the metadata the sender passed to
    ``send_arrays(..., metadata=...)``; ``max_metadata`` caps its size.

    Returns
    -------
    Message
        ``Message(arrays, metadata)``: the arrays as ``recv_arrays`` returns
        them, and the metadata bytes (b"" when the sender gave none).

    Raises
    ------
    ProtocolError
        The header is malformed, or declares more than ``max_bytes`` of
        payload or more than ``max_metadata`` bytes of metadata.
    EOFError, IncompleteTransferError, TypeError, OSError
        As recv_arrays raises them.
    """
    message = Receive(max_bytes, max_metadata, progress)
    read_into(message, one_stream(message), sock)
    return message.message()


def recv_array(
    sock: Any,
    *,
    out: np.ndarray | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> np.ndarray:
    """Receive a one-array message from a connected stream socket.

    ``out``, when given, receives the payload in place; ``max_bytes`` and
    ``progress`` are as for recv_arrays.

    Returns
    -------
    numpy.ndarray
        ``out`` when given, else a fresh, writable array with memory of its
        own, of the sender's dtype, shape and memory order.

    Raises
    ------
    ValueError
        ``out`` does not match the message (dtype, shape, memory order), or
        the message holds another number of arrays than one. The payload was
        read and discarded first, so the connection stays usable.
    EOFError, IncompleteTransferError, ProtocolError, TypeError, OSError
        As recv_arrays raises them.
    """
    message = Receive(max_bytes, DEFAULT_MAX_METADATA, progress, True, out)
    read_into(message, one_stream(message), sock)
    return message.result()[0]
