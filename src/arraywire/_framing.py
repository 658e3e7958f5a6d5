"""Self-describing messages over blocking sockets: the blocking driver of the
message engine (``_engine``).

A message is a header (see _protocol and docs/PROTOCOL.md) followed by each
array's bytes. Contiguous arrays go out with the header in gather sendmsg
calls; receivers get fresh arrays filled in place by one scatter recvmsg.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import numpy as np

from arraywire import _transport
from arraywire._common import Progress
from arraywire._engine import Message, Receive, Reporter, SendPlan, plan_send
from arraywire._protocol import DEFAULT_MAX_BYTES, DEFAULT_MAX_METADATA, ArraySpec


def send_arrays(
    arrays: Iterable[Any] | Mapping[str, Any],
    sock: Any,
    *,
    metadata: bytes | None = None,
    progress: Progress | None = None,
) -> int:
    """Send arrays as one self-describing message; return the bytes sent.

    A mapping of str to arrays sends the names too (``recv_arrays`` then
    returns a dict); ``metadata`` adds up to 64 KiB (the receiver's default
    ``max_metadata``) of bytes of your own, read back with ``recv_message``.
    Raises TypeError for an input that is not an array of a transferable
    dtype and ValueError for a message over a limit of docs/PROTOCOL.md,
    before the first byte; an OSError mid-message carries ``bytes_done``.
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
    """Send one array as a self-describing message; return the bytes sent
    (see send_arrays for what is refused)."""
    return send_arrays((array,), sock, metadata=metadata, progress=progress)


def write_plan(
    plan: SendPlan, sock: Any, reporter: Reporter | None, core: Any = None
) -> None:
    """Write every batch of a plan with the core's gather sends (the
    transport's, unless given: a Channel over TLS passes its own)."""
    sendmsg_from = (_transport.impl if core is None else core).sendmsg_from
    for batch in plan.batches():
        part = None if reporter is None else reporter.part(plan.offset)
        plan.moved(sendmsg_from(batch, sock, progress=part))


def one_stream(message: Receive) -> Iterator[list[Any]]:
    """The reads of a message on a socket of its own (never striped)."""
    return cast("Iterator[list[Any]]", message.reads())


def read_into(
    message: Receive, reads: Iterator[list[Any]], sock: Any, core: Any = None
) -> None:
    """Fill the message's reads with the core's scatter receives (the
    transport's, unless given)."""
    if core is None:
        core = _transport.impl
    moved = message.moved
    try:
        for buffers in reads:
            reporter = message.reporter  # set once the header is read
            part = None if reporter is None else reporter.part(message.offset)
            if len(buffers) == 1:  # a header part, or one array: the cheaper call
                moved(core.recv_into(buffers[0], sock, progress=part))
            else:
                moved(core.recvmsg_into(buffers, sock, progress=part))
    except BaseException as exc:
        message.fail(exc)
        end = message.end_of_stream(exc)
        if end is not None:
            raise end from None
        raise


def recv_header(
    sock: Any, max_bytes: int | None, core: Any = None
) -> tuple[ArraySpec, ...]:
    """Receive and check a message header; return what it says of each array."""
    message = Receive(max_bytes)
    read_into(message, message.header_reads(), sock, core)
    return message.specs


def recv_arrays(
    sock: Any,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Receive one message; return its arrays (each with memory of its own):
    a dict in the sender's order when the sender named them, else a list.

    A header declaring more than max_bytes of payload (None: only the
    format's limit) raises ProtocolError before anything is allocated. A peer
    that closes before the message's first byte raises EOFError; one that
    closes inside it raises IncompleteTransferError with the byte counts.
    """
    return recv_message(sock, max_bytes=max_bytes, progress=progress).arrays


def recv_message(
    sock: Any,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_metadata: int = DEFAULT_MAX_METADATA,
    progress: Progress | None = None,
) -> Message:
    """Receive one message with its metadata: ``Message(arrays, metadata)``,
    arrays as ``recv_arrays`` returns them. Metadata over max_metadata bytes
    raises ProtocolError; the rest is as for recv_arrays."""
    message = Receive(max_bytes, max_metadata=max_metadata, progress=progress)
    read_into(message, one_stream(message), sock)
    return message.message()


def recv_array(
    sock: Any,
    *,
    out: np.ndarray | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> np.ndarray:
    """Receive a one-array message, into ``out`` when given.

    If ``out`` does not match the message (dtype, shape, memory order), or the
    message holds another number of arrays, the payload is read and discarded
    so the connection stays usable, then ValueError is raised. Other errors
    are those of recv_arrays.
    """
    message = Receive(max_bytes, progress=progress, one_array=True, out=out)
    read_into(message, one_stream(message), sock)
    return message.result()[0]
