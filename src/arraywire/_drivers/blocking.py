"""The message engine driven with the core's blocking calls: what the blocking
functions, the Channel, aio's worker threads and the command line share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from arraywire._core import transport
from arraywire._core.protocol import Core
from arraywire._wire.engine import Receive, Reporter, SendPlan


def write_plan(
    plan: SendPlan, sock: Any, reporter: Reporter | None, core: Core | None = None
) -> None:
    """Write every batch of a plan with the core's gather sends (the
    transport's, unless given: a Channel over TLS passes its own)."""
    sendmsg_from = (transport.impl if core is None else core).sendmsg_from
    for batch in plan.batches():
        if reporter is None:
            plan.moved(sendmsg_from(batch, sock))
        else:
            plan.moved(sendmsg_from(batch, sock, progress=reporter.part(plan.offset)))


def one_stream(message: Receive) -> Iterator[list[Any]]:
    """The reads of a message on a socket of its own (never striped)."""
    return message.reads()  # type: ignore[return-value]  # a cast() call costs


def read_into(
    message: Receive, reads: Iterator[list[Any]], sock: Any, core: Core | None = None
) -> None:
    """Fill the message's reads with the core's scatter receives (the
    transport's, unless given)."""
    if core is None:
        core = transport.impl
    moved = message.moved
    recv_into = core.recv_into
    try:
        for buffers in reads:
            reporter = message.reporter  # set once the header is read
            if len(buffers) != 1:
                part = None if reporter is None else reporter.part(message.offset)
                moved(core.recvmsg_into(buffers, sock, progress=part))
            elif reporter is None:  # a header part, or one array: the cheaper call
                moved(recv_into(buffers[0], sock))
            else:
                moved(recv_into(buffers[0], sock, progress=reporter.part(message.offset)))
    except BaseException as exc:
        message.fail(exc)
        end = message.end_of_stream(exc)
        if end is not None:
            raise end from None
        raise

