"""How ``arraywire.aio`` moves bytes: which transfers hold a socket (the
connection's rules: a Channel's own, or the socket's for the functions on a
bare socket), and the moves themselves, in the event loop or in a worker
thread."""


from __future__ import annotations

import asyncio
import queue
import socket
import threading
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from arraywire._core import transport
from arraywire._core.sockets import check_socket
from arraywire._core.step import PendingViews, byte_view
from arraywire._drivers.rules import AIO_SOCKET, ChannelRules, Direction, timed_out
from arraywire._drivers.striping import Job, move_parts, shut_down
from arraywire._wire.engine import (
    Reporter,
    Transfer,
)
from arraywire._wire.errors import IncompleteTransferError
from arraywire._wire.limits import MAX_CHUNK, Progress, mark_progress

# Payloads up to this size move in the event loop's thread; larger ones in a
# worker thread (`python benchmarks/run.py --only asyncio` measures both sides).
NATIVE_BYTES = 1 << 20
# The worker's socket needs a timeout to stay non-blocking; this one (23 days,
# under poll()'s INT_MAX milliseconds) only ends a peer that is silent that long.
WORKER_TIMEOUT = 2_000_000.0

T = TypeVar("T")


# --- which transfers hold a socket, and which sockets are broken ---------------


# the rules of each bare socket used with the functions of arraywire.aio
_states: weakref.WeakKeyDictionary[socket.socket, ChannelRules] = weakref.WeakKeyDictionary()


class Claim:
    """One direction of a socket, held by one transfer. When the transfer stops
    with the stream out of step (the engine's ``fail`` says so), or after the
    socket was shut down to stop a worker thread, the socket is shut down and
    the rules marked broken.

    A bare socket's transfer claims the direction in the socket's own rules;
    a Channel passes its ``rules``, which it claimed itself for the whole call.
    A receive's ``timeout`` (seconds, None: none) bounds each of its waits.
    """

    def __init__(
        self,
        sock: Any,
        name: str,
        sending: bool,
        transfer: Transfer,
        rules: ChannelRules | None = None,
        timeout: float | None = None,
    ) -> None:
        _, blocking = check_socket(sock)
        if blocking != 0:
            raise ValueError(
                "the socket must be non-blocking (sock.setblocking(False)) to be used "
                "with asyncio"
            )
        self.sock: socket.socket = sock
        self.name = name
        self.sending = sending
        self.direction: Direction = "send" if sending else "receive"
        self.transfer = transfer
        self.timeout = timeout
        self.shut = False
        self.held = rules is None
        if rules is None:
            rules = _states.get(sock)
            if rules is None:
                rules = _states[sock] = ChannelRules(AIO_SOCKET)
        self.rules = rules

    # Entered with ``with`` by the part of a transfer that needs no waiting,
    # with ``async with`` by the rest: the same rules either way.
    def __enter__(self) -> Claim:
        if self.held:
            self.rules.claim(self.direction, self.name)
        return self

    async def __aenter__(self) -> Claim:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.held:
            self.rules.release(self.direction)
        if exc is None:
            return
        out_of_step = self.transfer.fail(exc)
        if not (out_of_step or self.shut):
            return
        self.rules.break_(
            self.name, exc, self.transfer, cancelled=isinstance(exc, asyncio.CancelledError)
        )
        self.shutdown()

    def wait_limit(self) -> float:
        """A worker's socket timeout: the receive's, else WORKER_TIMEOUT."""
        return WORKER_TIMEOUT if self.timeout is None else self.timeout

    def shutdown(self) -> None:
        self.shut = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already disconnected or closed
            pass


# --- moving bytes: in the event loop, or in a worker thread ---------------------


async def ready(sock: socket.socket, sending: bool, timeout: float | None = None) -> None:
    """Wait until the socket can be written (sending) or read; TimeoutError
    when it cannot within ``timeout`` seconds (None: no limit)."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    waiter = loop.create_future()
    if sending:
        loop.add_writer(fd, _wake, waiter)
    else:
        loop.add_reader(fd, _wake, waiter)
    try:
        if timeout is None:
            await waiter
        elif not (await asyncio.wait((waiter,), timeout=timeout))[0]:
            raise timed_out()
    finally:
        if sending:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def steps(
    sock: socket.socket,
    pending: PendingViews,
    sending: bool,
    progress: Progress | None,
    done: int,
    total: int,
) -> int:
    """Move byte views with non-blocking calls until ``total`` bytes moved or
    the socket would block; return the bytes moved by then, ``done`` of them
    before this call. An error is marked with the bytes moved and the views
    let go, as the core calls do."""
    moved: list[int] = []  # filled by PendingViews.step
    try:
        # not `while done < total`: Python 3.13 lets an interrupt raised while
        # evaluating a loop's condition escape the try (CPython issue 130279)
        while True:
            if done >= total:
                return done
            try:
                transport.impl.step_now(pending, sock, sending, MAX_CHUNK, moved)
            except (BlockingIOError, InterruptedError):
                return done
            if moved[0] == 0 and not sending:
                raise IncompleteTransferError(done, total)
            done += moved[0]
            pending.advance(moved.pop())
            if progress is not None:
                progress(done, total)
    except BaseException as exc:
        mark_progress(exc, done + sum(moved))
        pending.release()
        raise


async def in_loop(
    sock: socket.socket,
    pending: PendingViews,
    sending: bool,
    progress: Progress | None,
    timeout: float | None = None,
    done: int = 0,
) -> int:
    """Move byte views with non-blocking calls: the pure twin's loop, awaiting
    readiness (up to ``timeout`` each time) where that one would block;
    ``done`` of them moved already (by ``steps``). Returns the count of all,
    and marks an error with the bytes moved, as the core calls do."""
    total = pending.nbytes
    try:
        while True:
            done = steps(sock, pending, sending, progress, done, total)
            if done >= total:
                return total
            await ready(sock, sending, timeout)
    except BaseException as exc:
        mark_progress(exc, done)  # a wait cut short: steps marks its own errors
        pending.release()
        raise


class TransferWorkers:
    """Threads that run the GIL-free moves, shared by every event loop: a
    transfer hands its work to an idle one (a new one only when all are
    busy, so a receive never waits behind a send it feeds), and each ends
    after IDLE_SECONDS without work, so none outlives its use for long."""

    IDLE_SECONDS = 1.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[queue.SimpleQueue[Callable[[], Callable[[], None]]]] = []

    def submit(self, job: Callable[[], Callable[[], None]]) -> None:
        """Run job in a worker; the callable it returns runs once the worker
        is idle again, so a transfer woken by it finds the worker free."""
        with self.lock:
            inbox = self.idle.pop() if self.idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(
                target=self.serve, args=(inbox,), name="arraywire.aio transfer worker", daemon=True
            ).start()
        inbox.put(job)

    def serve(self, inbox: queue.SimpleQueue[Callable[[], Callable[[], None]]]) -> None:
        job = inbox.get()
        while True:
            report = job()
            del job
            with self.lock:
                self.idle.append(inbox)
            report()
            del report  # let go of the buffers before waiting
            try:
                job = inbox.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self.lock:
                    if inbox in self.idle:
                        self.idle.remove(inbox)
                        return
                job = inbox.get()  # taken by a submit that is about to put


workers = TransferWorkers()


async def in_thread(
    claim: Claim,
    sending: bool,
    work: Callable[[socket.socket], T],
    *,
    wait: bool = True,
    also: Sequence[socket.socket] = (),
) -> T:
    """Run work(dup_of_sock) in a transfer worker once the socket is ready
    (at once without ``wait``); the worker reports the outcome with one
    wake-up of the loop. A cancellation shuts down the sockets ``also``
    (which the work uses too) with the claim's.

    The work records what it moved in the engine itself; an error it raises
    carries the bytes of its unfinished call, as the core calls' errors do.
    """
    if wait:
        await ready(claim.sock, sending, claim.timeout)
    loop = asyncio.get_running_loop()
    dup = claim.sock.dup()
    dup.settimeout(claim.wait_limit())
    settled = loop.create_future()

    def run() -> Callable[[], None]:
        try:
            outcome: tuple[Any, BaseException | None] = (work(dup), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (None, exc)
        finally:
            dup.close()

        def report() -> None:
            try:
                loop.call_soon_threadsafe(_settle, settled, outcome)
            except RuntimeError:  # the event loop was closed meanwhile
                pass

        return report

    workers.submit(run)
    try:
        await asyncio.wait((settled,))
    except asyncio.CancelledError as cancelled:
        # Stop the work (its poll() wakes up) and wait until it has let go
        # of the buffer; further cancellations cannot cut this short.
        if not settled.done():
            claim.shutdown()
            shut_down(also)
        while not settled.done():
            try:
                await asyncio.wait((settled,))
            except asyncio.CancelledError:
                pass
        _, error = settled.result()
        mark_progress(cancelled, 0 if error is None else _moved(error))
        raise
    result, error = settled.result()
    if error is not None:
        raise error
    return result  # type: ignore[no-any-return]


def _settle(settled: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]) -> None:
    settled.set_result(outcome)


def _moved(error: BaseException) -> int:
    return int(getattr(error, "bytes_done", None) or 0)


class Forward:
    """Hands a worker thread's progress reports to the event loop's thread,
    where the message's reporter (its one throttle) runs the callback.

    An exception from the callback is raised in the worker at its next report,
    which aborts the transfer as it would in the blocking API, or after the
    work by ``raise_error``.
    """

    def __init__(self, reporter: Reporter) -> None:
        self.loop = asyncio.get_running_loop()
        self.reporter = reporter
        self.error: Exception | None = None

    def part(self, offset: int) -> Progress:
        report = self.reporter.part(offset)

        def forward(done: int, total: int) -> None:
            if self.error is not None:
                raise self.error
            self.loop.call_soon_threadsafe(self._deliver, report, done, total)

        return forward

    def _deliver(self, report: Progress, done: int, total: int) -> None:
        if self.error is not None:
            return
        try:
            report(done, total)
        except Exception as exc:  # noqa: BLE001 - re-raised by the transfer
            self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


async def move(
    claim: Claim, buffers: list[Any], sending: bool, reporter: Reporter | None
) -> None:
    """Move one batch (sending) or read (receiving) of the transfer: in the
    event loop up to NATIVE_BYTES, else by the GIL-free core in a thread."""
    transfer = claim.transfer
    offset = transfer.offset
    pending = PendingViews([byte_view(buffer, writable=not sending) for buffer in buffers])
    if pending.nbytes <= NATIVE_BYTES:
        progress = None if reporter is None else reporter.part(offset)
        transfer.moved(await in_loop(claim.sock, pending, sending, progress, claim.timeout))
        return
    pending.release()
    core = transport.impl
    call = core.sendmsg_from if sending else core.recvmsg_into
    forward = None if reporter is None else Forward(reporter)
    await in_thread(
        claim,
        sending,
        lambda dup: transfer.moved(
            call(buffers, dup, progress=None if forward is None else forward.part(offset))
        ),
    )
    if forward is not None:
        forward.raise_error()


async def move_stripes(
    claim: Claim,
    streams: Sequence[socket.socket],
    sending: bool,
    jobs: Callable[[list[socket.socket]], list[Job]],
    reporter: Reporter | None,
) -> None:
    """Move a striped payload's parts at once (``_striping``), in worker
    threads on duplicates of the streams' sockets, and count them in the
    claim's transfer; cancelled as ``in_thread``. Any failure leaves the
    streams shut down, and the socket marked broken."""
    forward = None if reporter is None else Forward(reporter)
    offset = claim.transfer.offset

    def work(first: socket.socket) -> int:
        others = [sock.dup() for sock in streams[1:]]
        try:
            for sock in others:
                sock.settimeout(claim.wait_limit())
            duplicates = [first, *others]
            return move_parts(jobs(duplicates), duplicates, forward, offset)
        finally:
            for sock in others:
                sock.close()

    try:
        # a receive does not wait for the first stream: its part may be read
        # ahead already, and the others' bytes come anyway
        claim.transfer.moved(await in_thread(claim, sending, work, wait=sending, also=streams[1:]))
    except BaseException:
        claim.shutdown()
        shut_down(streams[1:])
        raise
    if forward is not None:
        forward.raise_error()


