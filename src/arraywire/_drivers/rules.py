"""What the blocking and the asyncio Channel share."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from typing import Any, TypeAlias

import numpy as np

from arraywire._core.protocol import LayoutSender
from arraywire._wire.engine import STRIPE_BYTES, Packed, SendPlan, plan_send
from arraywire._wire.limits import numpy_bytes

ChannelItem: TypeAlias = "np.ndarray | list[np.ndarray] | dict[str, np.ndarray]"
"""What iterating a Channel gives for each message: the array itself for a
message of one unnamed array, else what ``recv_arrays`` returns (a list, or a
dict when the sender named the arrays)."""

Sockets: TypeAlias = "tuple[socket.socket, ...]"

# send_many sends messages smaller than this through one batch buffer, and
# writes the buffer when it holds BATCH_BYTES.
PACK_BYTES = 64 << 10
BATCH_BYTES = 1 << 20


def learn_layout(outbox: LayoutSender, array: Any, plan: SendPlan) -> None:
    """Let the core send the next array of this layout without planning."""
    if type(array) is not np.ndarray or plan.header[4] != 1:  # version 1: one unnamed array
        return
    if array.flags.c_contiguous:
        outbox.learn(plan.header, array.dtype, array.shape, "C")
    elif array.flags.f_contiguous:
        outbox.learn(plan.header, array.dtype, array.shape, "F")


def coalesce(
    arrays: Iterable[Any], outbox: LayoutSender, streams: int = 1
) -> Iterator[bytearray | tuple[Any, SendPlan]]:
    """The pieces of send_many: staging buffers holding runs of small
    messages, and (array, plan) for a message to send on its own. An array
    that cannot be sent raises once the staged messages before it were given.
    On parallel streams (``streams`` > 1) an array of STRIPE_BYTES or more is
    never packed: it is striped."""
    staging = bytearray()
    for array in arrays:
        fits = streams == 1 or (type(array) is np.ndarray and array.nbytes < STRIPE_BYTES)
        if not (fits and outbox.pack(array, staging)):
            try:
                plan = plan_send((array,))
            except (TypeError, ValueError):
                if staging:
                    yield staging
                raise
            learn_layout(outbox, array, plan)
            if plan.total < PACK_BYTES and not any(
                isinstance(segment, Packed) for segment in plan.segments
            ):
                staging += plan.header
                for segment in plan.segments:
                    staging += numpy_bytes(segment, False).data  # type: ignore[arg-type]
            else:
                if staging:
                    yield staging
                    staging = bytearray()
                yield array, plan
                continue
        if len(staging) >= BATCH_BYTES:
            yield staging
            staging = bytearray()
    if staging:
        yield staging


def check_peer_reads(version: int, peer_reads: int) -> None:
    """Refuse a message of a version the peer's hello says it cannot read."""
    if version > peer_reads:
        raise ValueError(
            f"the peer reads messages up to version {peer_reads} (its hello says so); "
            "array names and metadata need version 2: send without them, or upgrade "
            "arraywire at the other end"
        )
