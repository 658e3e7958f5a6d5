"""Same-host copies, what the drivers share: the peer the kernel names for a
socket (SO_PEERCRED) and the answer to its probe in the opening
(docs/PROTOCOL.md, "Same host")."""

from __future__ import annotations

import os
import socket
import struct

from arraywire._core import transport
from arraywire._wire import samehost
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
