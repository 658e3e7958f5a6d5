"""Same-host copies, what the drivers share: the peer the kernel names for a
socket (SO_PEERCRED), the answer to its probe in the opening, a Channel's
rendezvous state, and the copy of a described payload with what its failure
says (docs/PROTOCOL.md, "Same host")."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from arraywire._core import transport
from arraywire._wire import samehost
from arraywire._wire.engine import Message, Receive, Reporter, SendPlan, mismatch
from arraywire._wire.errors import IncompleteTransferError, ProtocolError
from arraywire._wire.header import DEFAULT_MAX_BYTES, ArraySpec
from arraywire._wire.limits import Progress, numpy_bytes
from arraywire._wire.opening import Opening, announced

CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
# One process_vm_readv runs at one CPU's copy speed (and faults a fresh
# destination in on that CPU); from this size on an array is copied as two
# halves at once, which reached memcpy speed on 2 cores (benchmarks, same-host).
SPLIT_BYTES = 16 << 20
# What a described send keeps of the peer's messages while it waits for its
# answer, in all: one message of the default max_bytes.
STASH_BYTES = DEFAULT_MAX_BYTES


def announces(same_host: bool | None, sock: socket.socket, tls: bool, streams: bool) -> int:
    """The capabilities an opening on sock announces (``opening.announced``)."""
    return announced(same_host, unix=sock.family == socket.AF_UNIX, tls=tls, streams=streams)


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of sock's peer as the kernel saw it at connect time, when it
    is a process of this end's uid visible from this pid namespace; else None."""
    if sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, CREDENTIALS.size)
    except OSError:
        return None
    pid, uid, _ = CREDENTIALS.unpack(raw)
    return pid if pid > 0 and uid == os.geteuid() else None


def probe_answer(sock: socket.socket, probe: samehost.Probe) -> int:
    """This end's answer to the peer's probe: its bytes read from the peer
    process and compared, or why not."""
    pid = peer_pid(sock)
    if pid is None:
        return samehost.NOT_VOUCHED
    read = bytearray(samehost.PROBE_BYTES)
    try:
        transport.impl.copy_from_process(pid, [(probe.address, len(read))], read)
    except (OSError, ValueError):  # ValueError: an address past the address space
        return samehost.KERNEL_REFUSED
    return samehost.probe_status(probe, bytes(read))


def answer_probe(opening: Opening, sock: socket.socket) -> None:
    """Answer the peer's probe once the opening has one to answer."""
    if opening.probe is not None:
        opening.answer_probe(probe_answer(sock, opening.probe))


def copy_payload(
    pid: int, request: samehost.Copy, message: Receive, reporter: Reporter | None
) -> None:
    """Copy a described payload from the peer process into the receive's
    arrays, one core call per array (two, in two threads, for a large one),
    counting each with ``message.moved`` (progress through ``reporter``); an
    error carries ``bytes_done`` of the array it stopped in."""
    assert request.arrays is not None
    for array, ranges in zip(request.arrays, request.description, strict=True):
        if not ranges:
            continue
        part = None if reporter is None else reporter.part(message.offset)
        dest = numpy_bytes(array, True)
        if dest.nbytes >= SPLIT_BYTES and several_cpus():
            moved = copy_halves(pid, ranges, dest, part)
        else:
            moved = transport.impl.copy_from_process(pid, ranges, dest, progress=part)
        message.moved(moved)


def several_cpus() -> bool:
    try:
        return len(os.sched_getaffinity(0)) > 1
    except (AttributeError, OSError):
        return (os.cpu_count() or 1) > 1


def split_ranges(ranges: Sequence[tuple[int, int]], cut: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The ranges of the first cut bytes, and those of the rest."""
    head: list[tuple[int, int]] = []
    tail: list[tuple[int, int]] = []
    for address, length in ranges:
        if cut >= length:
            head.append((address, length))
        elif cut > 0:
            head.append((address, cut))
            tail.append((address + cut, length - cut))
        else:
            tail.append((address, length))
        cut = max(0, cut - length)
    return head, tail


def copy_halves(pid: int, ranges: Sequence[tuple[int, int]], dest: Any, progress: Progress | None) -> int:
    """One array's copy as two core calls at once: the second half in a
    helper thread, the first (with progress and signal checks) in this one.
    The helper is always waited for, so that nothing writes into dest once
    this returns or raises; an error's ``bytes_done`` counts the bytes
    copied from the start of dest without a gap."""
    cut = dest.nbytes // 2
    head, tail = split_ranges(ranges, cut)
    failed: list[BaseException] = []

    def second() -> None:
        try:
            transport.impl.copy_from_process(pid, tail, dest[cut:])
        except BaseException as exc:  # noqa: BLE001 - raised by the calling thread
            failed.append(exc)

    total = int(dest.nbytes)
    first = None if progress is None else (lambda done, _part: progress(done, total))
    helper = threading.Thread(target=second, name="arraywire-copy", daemon=True)
    try:
        helper.start()
    except RuntimeError:  # no thread to be had: one call
        return int(transport.impl.copy_from_process(pid, ranges, dest, progress=progress))
    try:
        transport.impl.copy_from_process(pid, head, dest[:cut], progress=first)
    finally:
        while helper.is_alive():
            try:
                helper.join()
            except BaseException:  # noqa: BLE001 - an interrupt: the helper still writes into dest
                continue
    if failed:
        exc = failed[0]
        exc.bytes_done = cut + (getattr(exc, "bytes_done", None) or 0)  # type: ignore[attr-defined]
        raise exc
    if progress is not None:
        progress(total, total)
    return total


def copy_failed(exc: BaseException, request: samehost.Copy, message: Receive) -> tuple[bytes, BaseException]:
    """For a copy that failed with exc: the copied record that says so (the
    payload bytes copied, and the kernel's errno, or 0 for a stop of this
    end's own) and what the receive raises: for a sender that is gone
    (ESRCH), IncompleteTransferError, as for one gone inside a message."""
    assert request.arrays is not None and message.total is not None
    payload = sum(array.nbytes for array in request.arrays)
    copied = message.offset + (getattr(exc, "bytes_done", None) or 0) - (message.total - payload)
    number = (exc.errno or 0) if isinstance(exc, OSError) else 0
    record = samehost.encode_copied(max(0, copied), samehost.FAILED, number)
    if isinstance(exc, ProcessLookupError):
        gone = IncompleteTransferError(getattr(exc, "bytes_done", None) or 0, 0)
        return record, gone
    return record, exc


def refused_copy(answer: samehost.Copied, payload: int) -> ConnectionAbortedError:
    """What a described send raises when the receiver's copy failed."""
    why = os.strerror(answer.errno) if answer.errno else "it stopped of its own accord"
    return ConnectionAbortedError(
        f"the receiver's copy of the message failed after {answer.copied:,} of its "
        f"{payload:,} payload bytes ({why}); it closed the connection"
    )


class Rendezvous:
    """What a Channel of either driver keeps for same-host copies with the
    peer process ``pid``: the described send that awaits its answer, and the
    peer's messages received meanwhile (``stash``, for the next receives).

    A described send reads its answer itself, so a driver describes a
    message only while its send may hold the receive direction too
    (``lending``); a receive that finds the direction lent waits for it."""

    def __init__(self, pid: int, capabilities: int) -> None:
        self.pid = pid
        self.capabilities = capabilities
        self.stash: deque[Receive] = deque()
        self._kept = 0  # payload bytes in the stash
        self.lending = False
        self.awaited: SendPlan | None = None
        self.description: samehost.Description | None = None

    def describes(self, plan: SendPlan) -> bool:
        """Whether this sender describes the plan (its description kept)."""
        if plan.total - len(plan.header) < samehost.SAME_HOST_BYTES:
            return False
        self.description = samehost.describe_ranges(plan.arrays)
        return self.description is not None

    def first_bytes(self) -> bytes:
        """What a described send writes: the ranges record (its bytes count
        for no message byte: ``header_failed``) and the header follow."""
        assert self.description is not None
        return samehost.encode_ranges(self.description)

    def header_sent(self, plan: SendPlan) -> None:
        plan.moved(len(plan.header))
        if plan.reporter is not None:
            plan.reporter.report(0)
        self.awaited = plan

    def next_receive(self) -> Receive:
        """A receive of what comes while the send waits: the peer's message
        (kept, read under the default limits) or the answer."""
        return Receive(DEFAULT_MAX_BYTES, capabilities=self.capabilities)

    def answer(self, answer: samehost.Answer) -> bool:
        """Take a copied record as the answer to the send that awaits it (the
        driver then writes the confirm); True when the read stops there."""
        plan = self.awaited
        if plan is None:
            raise ProtocolError(
                "the peer sent a copied record, and no message of this end awaits one"
            )
        payload = plan.total - len(plan.header)
        copied = samehost.decode_copied(answer.body, payload)
        self.awaited = None
        if copied.status == samehost.FAILED:
            plan.moved(copied.copied)
            raise refused_copy(copied, payload)
        plan.moved(payload)
        return answer.between

    def keep(self, message: Receive) -> None:
        """Keep a message of the peer's received while a send waited; past
        STASH_BYTES in all, ProtocolError (the peer sends and never reads)."""
        self._kept += message.total or 0
        if self._kept > STASH_BYTES:
            raise ProtocolError(
                f"the peer sent over {STASH_BYTES:,} bytes of messages while this end's "
                "described send waited for its answer"
            )
        self.stash.append(message)

    def take(
        self, one_array: bool = False, out: np.ndarray | Callable[[ArraySpec], np.ndarray] | None = None
    ) -> Message:
        """The first kept message, as a receive asking for it takes it
        (``one_array`` and ``out`` as ``Receive``'s): a misfit raises
        ValueError, as on the socket path."""
        message = self.stash.popleft()
        self._kept -= message.total or 0
        if not one_array:
            return message.message()
        arrays = message.result()
        target = out if not callable(out) else out(message.specs[0]) if len(arrays) == 1 else None
        problem = mismatch(message.specs, target)
        if problem:
            raise ValueError(problem)
        if target is not None:
            np.copyto(target, arrays[0])
            arrays = [target]
        return Message(arrays, message.metadata)


def copied_record(request: samehost.Copy) -> bytes:
    """The copied record of a copy that went whole, or was not made (a misfit)."""
    if request.arrays is None:
        return samehost.encode_copied(0, samehost.DISCARDED)
    return samehost.encode_copied(sum(array.nbytes for array in request.arrays))


def unanswerable() -> IncompleteTransferError:
    """What a described receive raises when its copied record cannot go
    (a reset or a broken pipe): the sender is gone, and bytes it never
    confirmed are not returned (the receive's ``fail`` counts them)."""
    return IncompleteTransferError(0, 0)


def header_failed(exc: BaseException, record: bytes) -> None:
    """A described send's write failed: count only its header's bytes."""
    done = getattr(exc, "bytes_done", None) or 0
    exc.bytes_done = max(0, done - len(record))  # type: ignore[attr-defined]


def wait_failed(exc: BaseException) -> BaseException:
    """What a described send raises when its wait for the answer failed
    with exc: for the receiver's close, what a socket's send to a closed
    peer raises; ``bytes_done`` is left to the plan (its header and the
    payload bytes acknowledged)."""
    if isinstance(exc, EOFError):
        exc = BrokenPipeError(
            errno.EPIPE,
            "the receiver closed the connection before it answered the described message",
        )
    exc.bytes_done = 0  # type: ignore[attr-defined]
    return exc
