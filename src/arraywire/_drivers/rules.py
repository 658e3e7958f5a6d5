"""What the blocking and the asyncio Channel share: the rules of a
connection (one send and one receive at a time, broken once out of step with
the peer, what the peer reads), without I/O, and the layouts their cores learn."""

from __future__ import annotations

import errno
import math
import selectors
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np

from arraywire._core.protocol import LayoutSender, ReadAhead
from arraywire._wire.engine import STRIPE_BYTES, Packed, Receive, SendPlan, Transfer, plan_send
from arraywire._wire.errors import BrokenStreamError
from arraywire._wire.limits import numpy_bytes, repeatable_dtype

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


def coalesce(arrays: Iterable[Any], outbox: LayoutSender) -> Iterator[bytearray | tuple[Any, SendPlan]]:
    """The pieces of send_many: staging buffers holding runs of small
    messages, and (array, plan) for a message to send on its own. An array
    that cannot be sent raises once the staged messages before it were given.
    An array of STRIPE_BYTES or more is never packed: it goes on its own
    (striped over parallel streams, described between processes of one host)."""
    staging = bytearray()
    for array in arrays:
        fits = getattr(array, "nbytes", 0) < STRIPE_BYTES
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


def learn_message(inbox: ReadAhead, message: Receive) -> int:
    """Let the core take the next message of a received one's layout whole;
    return the learned header's length, or 0 when the core keeps the layout
    it had (the aio Channel counts on the length being the core's)."""
    header = message.simple_header
    if header is None or message.problem:
        return 0
    spec = message.specs[0]
    if not repeatable_dtype(spec.dtype):  # the core would refuse it
        return 0
    inbox.learn(header, spec.dtype, spec.shape, spec.order)
    return len(header)


def learned_send(array: Any, streams: int) -> bool:
    """Whether the core's learned-layout send may take array: on parallel
    streams only an array under STRIPE_BYTES, which goes on one stream."""
    return streams == 1 or (type(array) is np.ndarray and array.nbytes < STRIPE_BYTES)


def learned_limit(max_bytes: int | None, streams: int) -> int | None:
    """The max_bytes of the core's learned-layout receive: on parallel
    streams a striped message is the engine's."""
    if streams == 1:
        return max_bytes
    return STRIPE_BYTES - 1 if max_bytes is None else min(max_bytes, STRIPE_BYTES - 1)


def address_form(name: Any) -> Any:
    """A socket name in the form ``connect`` takes: (host, port) for TCP,
    IPv6 included; the path for AF_UNIX ('' for an unnamed socket); any other
    name (an abstract AF_UNIX one, bytes) as the socket gave it."""
    return name[:2] if isinstance(name, tuple) else name


def end_addresses(sock: socket.socket) -> tuple[Any, Any]:
    """A connected socket's (local, peer) addresses, read once so that they
    outlive close(); None where the socket cannot say."""
    ends = []
    for read in (sock.getsockname, sock.getpeername):
        try:
            ends.append(address_form(read()))
        except OSError:
            ends.append(None)
    return ends[0], ends[1]


def cut_short(exc: BaseException, tls: bool) -> bool:
    """Whether a failed send left the peer a part of a message. Over TLS
    any failed write does: OpenSSL may have sent part of a record, and a
    write cut short counts none of its bytes."""
    done = getattr(exc, "bytes_done", None)
    return bool(done) or (tls and done is not None)


def check_wait(timeout: Any, *, zero: bool) -> float | None:
    """A receive's or poll's timeout in seconds: a real number, at least 0
    for poll (``zero``), above 0 for a receive; None waits for ever."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0 or (timeout == 0 and not zero):
        what = "0 or more" if zero else "above 0 (poll() checks without waiting)"
        raise ValueError(f"timeout must be {what} seconds, got {timeout!r}")
    return float(timeout)


def receive_wait(timeout: Any) -> float | None:
    """A receive's ``timeout=``: seconds above 0 that bound each wait for
    bytes (an inactivity limit, as a socket's timeout), or None."""
    return check_wait(timeout, zero=False)


def timed_out() -> TimeoutError:
    """What a receive's wait raises when no byte came within its timeout:
    the socket's own TimeoutError, which the blocking Channel's waits raise.
    The Channel stays usable when no byte of the message had come (read-ahead
    included: ``Transfer.fail`` counts them), and is broken otherwise."""
    return TimeoutError("timed out")


def readable(sock: socket.socket, buffered: int, timeout: float | None) -> bool:
    """poll's answer: bytes of a message are buffered (``buffered``, the
    read-ahead's and the TLS session's), or the socket becomes readable
    within timeout (a closed peer makes it readable too)."""
    if buffered:
        return True
    if sock.fileno() == -1:
        raise OSError(errno.EBADF, "poll() on a closed Channel")
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))


Direction: TypeAlias = Literal["send", "receive"]


@dataclass(frozen=True)
class Wording:
    """What a connection's refusals say: ``busy`` (formatted with the
    direction) for a second concurrent transfer, ``broken`` (with what, why,
    done and of) for the failure that put the stream out of step."""

    busy: str
    broken: str


_CLOSED = (
    "an earlier {what} on this Channel {why} after {done:,}{of} bytes of its message, so "
    "the byte stream is out of step with the peer and the Channel was closed"
)
BLOCKING = Wording("another thread is in a {direction} on this Channel", _CLOSED)
BLOCKING_TLS = Wording(
    "another thread is in a send or receive on this Channel: over TLS they take turns, "
    "since OpenSSL cannot read and write one connection from two threads at once "
    "(arraywire.aio's TLS Channel can do both)",
    _CLOSED,
)
AIO = Wording(
    "another task is in a {direction} on this Channel",
    "an earlier {what} on this Channel {why} after {done:,}{of} bytes of its message, so "
    "the byte stream is out of step with the peer and the Channel was shut down; close it",
)
AIO_SOCKET = Wording(
    "another arraywire.aio {direction} is in progress on this socket",
    "an earlier {what} on this socket {why} after {done:,}{of} bytes, so its byte stream "
    "is out of step with the peer and it was shut down; close it",
)


class ChannelRules:
    """One connection's state, for any driver: which directions are busy,
    why it is broken, and the newest message version the peer reads.

    ``claim`` and ``release`` bracket each transfer (thread-safe, and never
    waiting); with ``take_turns`` a send and a receive share one turn, one
    lock of ``lanes``. ``break_`` records the first failure that left the
    stream out of step; every later claim raises BrokenStreamError saying so.
    The driver closes or shuts down the sockets itself.
    """

    __slots__ = ("broken", "lanes", "peer_reads", "wording")

    def __init__(self, wording: Wording, *, peer_reads: int = 2, take_turns: bool = False) -> None:
        self.wording = wording
        self.peer_reads = peer_reads
        self.broken: str | None = None
        send = threading.Lock()
        self.lanes: dict[Direction, threading.Lock] = {
            "send": send,
            "receive": send if take_turns else threading.Lock(),
        }

    @property
    def busy(self) -> frozenset[str]:
        """The directions claimed now."""
        return frozenset(direction for direction, lane in self.lanes.items() if lane.locked())

    def claim(
        self,
        direction: Direction,
        what: str | None = None,
        wait: Callable[[threading.Lock], bool] | None = None,
    ) -> None:
        """Take the direction for one transfer (``what``, the direction's
        own name by default, is what a refusal names). RuntimeError when it
        is taken, unless ``wait(lane)`` took it after all; BrokenStreamError,
        and nothing taken, once broken."""
        lane = self.lanes[direction]
        if not lane.acquire(False) and not (wait is not None and wait(lane)):
            raise self.busy_error(direction)
        if self.broken is not None:
            lane.release()
            raise self.broken_error(what or direction)

    def release(self, direction: Direction) -> None:
        """Give the direction back after its transfer."""
        self.lanes[direction].release()

    def busy_error(self, direction: Direction) -> RuntimeError:
        """What a claim of a taken direction raises."""
        return RuntimeError(self.wording.busy.format(direction=direction))

    def broken_error(self, what: str) -> BrokenStreamError:
        """What a claim raises once broken: ``what`` cannot run."""
        return BrokenStreamError(f"cannot {what}: {self.broken}")

    def break_(
        self,
        what: str,
        exc: BaseException,
        transfer: Transfer | None = None,
        *,
        cancelled: bool = False,
    ) -> bool:
        """Record that ``what`` failed with exc (or was ``cancelled``) with
        the stream out of step; the bytes come from exc (``bytes_done``, else
        the transfer's offset) and the size from the transfer (else exc's
        ``bytes_expected``). Return False when it was broken already."""
        if self.broken is not None:
            return False
        done = getattr(exc, "bytes_done", None) or (0 if transfer is None else transfer.offset)
        total = getattr(exc, "bytes_expected", None) if transfer is None else transfer.total
        why = "was cancelled" if cancelled else f"failed ({type(exc).__name__}: {exc})"
        of = "" if total is None else f" of {total:,}"
        self.broken = self.wording.broken.format(what=what, why=why, done=done, of=of)
        return True

    def check_peer_reads(self, version: int) -> None:
        """Refuse a message of a version the peer's hello says it cannot read."""
        if version > self.peer_reads:
            raise ValueError(
                f"the peer reads messages up to version {self.peer_reads} (its hello says "
                "so); array names and metadata need version 2: send without them, or "
                "upgrade arraywire at the other end"
            )
