"""Same-host copies, what the drivers share: the peer the kernel names for a
socket (SO_PEERCRED), the answer to its probe in the opening, and the copy
of a described payload with what its failure says (docs/PROTOCOL.md, "Same
host")."""

from __future__ import annotations

import os
import socket
import struct

from arraywire._core import transport
from arraywire._wire import samehost
from arraywire._wire.engine import Receive
from arraywire._wire.errors import IncompleteTransferError
from arraywire._wire.limits import numpy_bytes
from arraywire._wire.opening import Opening, announced

CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


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


def copy_payload(pid: int, request: samehost.Copy, message: Receive) -> None:
    """Copy a described payload from the peer process into the receive's
    arrays, one core call per array, counting each with ``message.moved``;
    an error carries ``bytes_done`` of the array it stopped in."""
    assert request.arrays is not None
    reporter = message.reporter
    for array, ranges in zip(request.arrays, request.description, strict=True):
        if not ranges:
            continue
        part = None if reporter is None else reporter.part(message.offset)
        moved = transport.impl.copy_from_process(
            pid, ranges, numpy_bytes(array, True), progress=part
        )
        message.moved(moved)


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
