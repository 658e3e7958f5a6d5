"""A Channel's part in control records, for both drivers (docs/PROTOCOL.md,
"Control records"): whether a refusing receiver may write its record, the
drain that follows it, and what a sender reads of the receiver's last word.
What the bytes mean is the wire layer's (``control``, ``Receive``)."""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence

from arraywire._core.protocol import Core, ReadAhead as Inbox
from arraywire._drivers.rules import ChannelRules
from arraywire._wire import control, hello
from arraywire._wire.engine import ReadAhead, Receive

# A send fails with these when the receiver closed; its last word may say why.
CLOSED_BY_PEER = (BrokenPipeError, ConnectionResetError)
DRAIN_READ_BYTES = 1 << 16
# A Channel with control records looks for a refusal of an earlier message
# before each send it plans, after one of at least this many bytes, and after
# this many bytes of sends of a learned layout: a poll, so a small learned
# send costs no system call for it.
CHECK_BYTES = 1 << 20
PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
REFUSAL_START = struct.Struct("<4sH")  # a record's magic and type


def may_write_record(rules: ChannelRules) -> bool:
    """Claim the send direction for a refusing receive's record: False when
    another send holds it (a record now would cut into its message). The
    caller releases it with ``release_record`` once the record is written."""
    send = rules.lanes["send"]
    return send is rules.lanes["receive"] or send.acquire(False)


def release_record(rules: ChannelRules) -> None:
    """Give back the send direction ``may_write_record`` took."""
    send = rules.lanes["send"]
    if send is not rules.lanes["receive"]:
        send.release()


def refuse(rules: ChannelRules, socks: Sequence[socket.socket], core: Core, record: bytes) -> bool:
    """A blocking receive's refusal: write the record on the first stream
    (unless a send holds it) within DRAIN_SECONDS (the socket's buffer takes
    it at once unless the peer stopped reading), then ``drain``. False when
    no record went: the caller shuts the connection down as for any broken
    stream."""
    if not may_write_record(rules):
        return False
    try:
        socks[0].settimeout(control.DRAIN_SECONDS)
        core.send_from(record, socks[0])
        drain(socks)
    except OSError:  # the sender is gone: it hears nothing
        return False
    finally:
        release_record(rules)
    return True


def drain(socks: Sequence[socket.socket]) -> None:
    """After a refusal record: shut the connection for writing and hand
    copies of its descriptors to a daemon thread, which reads and discards
    what the peer still sends until it closes every stream or
    ``control.DRAIN_SECONDS`` pass, then closes them; the caller closes its
    own sockets at once. A thread, for both drivers: the drain outlives the
    refusing call (which must not wait for it) and, in asyncio, possibly the
    event loop; one plain socket loop serves plain and TLS connections alike,
    since what is drained is never decrypted."""
    copies = []
    for sock in socks:
        try:
            socket.socket.shutdown(sock, socket.SHUT_WR)  # the plain one under TLS too
            copies.append(socket.socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno())))
        except OSError:  # the peer is gone already
            continue
    if copies:
        deadline = time.monotonic() + control.DRAIN_SECONDS
        threading.Thread(
            target=_discard, args=(copies, deadline), name="arraywire drain", daemon=True
        ).start()


def _discard(copies: list[socket.socket], deadline: float) -> None:
    scratch = memoryview(bytearray(DRAIN_READ_BYTES))
    try:
        with selectors.DefaultSelector() as selector:
            for sock in copies:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, sock)
            left = len(copies)
            while left and (wait := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(wait):
                    stream: socket.socket = key.data
                    try:
                        if stream.recv_into(scratch):
                            continue
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        pass
                    selector.unregister(stream)  # this stream ended
                    left -= 1
    finally:
        for sock in copies:
            sock.close()


def readable(sock: socket.socket) -> bool:
    """Whether the socket has bytes (or the peer's close) to read now: one poll."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def read_refusal(
    rules: ChannelRules,
    sock: socket.socket,
    inbox: Inbox,
    read: Callable[[Receive], object],
    capabilities: int,
) -> None:
    """A blocking send's look for a refusal of an earlier message: when one
    is readable, ``read`` it (which raises it), unless a receive in progress
    holds the direction (it reads the refusal itself)."""
    receive = rules.lanes["receive"]
    own = receive is rules.lanes["send"]  # over TLS this send holds the one turn
    if not own and not receive.acquire(False):
        return
    try:
        if readable_record(sock, inbox):
            read(Receive(None, capabilities=capabilities))
    finally:
        if not own:
            receive.release()


def readable_record(sock: socket.socket, inbox: Inbox) -> bool:
    """Whether the peer's next bytes, waiting with nothing in the read-ahead
    buffer, begin a refusal record: a poll, and a look only when the socket
    is readable (MSG_PEEK; over TLS, what has come decrypted into the buffer
    without waiting, left there for the next receive). Bytes already in the
    buffer belong to messages the next receive takes, records after them too."""
    if inbox.buffered:
        return False
    if not isinstance(sock, ssl.SSLSocket):
        if not readable(sock):
            return False
        try:
            first = sock.recv(REFUSAL_START.size, PEEK)
        except OSError:
            return False
        return is_refusal(first)
    if not sock.pending():
        try:  # the encrypted bytes: a peer's close is left for the send to meet
            if not (readable(sock) and socket.socket.recv(sock, 1, PEEK)):
                return False
        except OSError:
            return False
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        inbox.fill()
    except OSError:  # no whole TLS record yet, or an error the next call meets
        return False
    finally:
        sock.settimeout(timeout)
    buffered = bytearray(inbox.buffered)  # the core's buffer has no look: take it, put it back
    inbox.take(buffered)
    inbox.preload(bytes(buffered))
    return is_refusal(bytes(buffered[: REFUSAL_START.size]))


def is_refusal(first: bytes) -> bool:
    """Whether a message's first bytes begin a refusal record (the records
    of same-host copies are the receive's to read)."""
    return first == REFUSAL_START.pack(control.MAGIC, control.REFUSAL)


def last_word(
    inbox: ReadAhead, receive_into: Callable[[memoryview], int], capabilities: int
) -> Exception | None:
    """After a send failed because the receiver closed: the refusal in the
    at most LAST_WORD_BYTES it sent before (the read-ahead buffer's first,
    then ``receive_into``, which never waits), or None."""
    if not capabilities & hello.CONTROL:
        return None
    data = bytearray(control.LAST_WORD_BYTES)
    view = memoryview(data)
    got = inbox.take(view) if inbox.buffered else 0
    while got < len(data):
        try:
            count = receive_into(view[got:])
        except OSError:  # nothing more has come (or the reset)
            break
        if not count:
            break
        got += count
    return control.last_word(bytes(data[:got]), capabilities)


def refusal_after(
    exc: BaseException,
    rules: ChannelRules,
    capabilities: int,
    inbox: ReadAhead,
    receive_into: Callable[[memoryview], int],
) -> Exception | None:
    """What a Channel's send that failed with exc raises instead: the
    receiver's refusal, when exc says the receiver closed and its last word
    (``last_word``) holds one, with exc's ``bytes_done``; else None. The read
    takes the receive direction, unless a receive in progress has it (that
    receive reads the record itself)."""
    if not (capabilities and closed_by_peer(exc)):
        return None
    receive = rules.lanes["receive"]
    own = receive is rules.lanes["send"]  # one turn for both: the send holds it
    if not own and not receive.acquire(False):
        return None
    try:
        refused = last_word(inbox, receive_into, capabilities)
    finally:
        if not own:
            receive.release()
    if refused is not None:
        refused.bytes_done = getattr(exc, "bytes_done", None)  # type: ignore[attr-defined]
    return refused


def receive_now(sock: socket.socket) -> Callable[[memoryview], int]:
    """``last_word``'s receive on a socket (an SSLSocket too), never waiting."""

    def receive_into(view: memoryview) -> int:
        sock.settimeout(0)
        return sock.recv_into(view)

    return receive_into


def closed_by_peer(exc: BaseException) -> bool:
    """Whether a send failed because the receiver closed the connection."""
    return isinstance(exc, CLOSED_BY_PEER) or (
        isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ECONNRESET)
    )
