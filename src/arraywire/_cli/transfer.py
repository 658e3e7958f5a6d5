"""``arraywire send`` and ``arraywire recv``: a .npy file from disk to disk.

Both ends memory-map the file (``numpy.load(mmap_mode='r')`` on the sender,
``numpy.lib.format.open_memmap`` on the receiver), so an array larger than
RAM goes disk -> socket -> disk with no in-memory copy. The sender connects
and the receiver listens, unless ``--listen`` / ``--connect`` swap the roles;
the connecting end tries again while nothing listens, so either may start
first. A port alone listens on every interface, IPv4 and IPv6 (dual-stack).

The receiver reads the arraywire header first and refuses an array larger
than ``--max-bytes`` (default: no cap) or than the free space of the output
directory, then preallocates ``OUT.partial`` (so a full disk fails up front
instead of raising SIGBUS in a mapped write), fills it, flushes it, renames
it to ``OUT`` and only then confirms to the sender with ``ACK``. Either side
exits 0 only after that confirmation; on failure ``OUT.partial`` is removed.
A refusal carries its reason to the sender (``REFUSE``), which prints it.

Progress is a tqdm bar when stderr is a terminal and a plain line every
``LOG_INTERVAL`` seconds otherwise (a log file); sizes are decimal (1 MB =
10^6 bytes) everywhere. Both ends count the array's bytes (the payload, not
the message's header) in the bar, the summary and the errors. Each end's
summary times the array's bytes alone, not the wait for the peer.

With a key (``--key-file``, or the file ``ARRAYWIRE_KEY_FILE`` names) both
ends run the opening of ``arraywire.connect``/``listen`` (hello, then
authentication) before the exchange. With TLS (``--tls``, ``--tls-*``) the end
that listens is the TLS server and everything, the opening too, runs inside
TLS. An end with a key or TLS recognises what a peer without them sends in
their place, and says which end lacks what.

With ``--streams N`` the sender opens N connections, each with the opening
of a stream group, and stripes the array over them as a Channel of N streams
does; the receiver joins them (up to ``--max-streams``) and receives each
stream's part into the output file by a thread of its own.
"""


from __future__ import annotations

import argparse
import errno
import math
import os
import shutil
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any, BinaryIO, NoReturn

import numpy as np
from numpy.lib import format as npy_format

from arraywire._cli.common import (
    ACK,
    ENDS,
    KEY_FILE_VARIABLE,
    Ends,
    Failure,
    Incoming,
    ReplyWaiting,
    WatchedProgress,
    array_bytes_moved,
    array_progress,
    decimal_size,
    of_the_array,
    parse_address,
    parse_seconds,
    parse_size,
    parse_streams,
    print_summary,
    progress_for,
    reply_failure,
    send_refusal,
    stop_on_reply,
    usage_problem,
)
from arraywire._cli.links import accept, dial, dropped, handshake_seconds, listening, tls_failure
from arraywire._core import transport
from arraywire._core.protocol import Core
from arraywire._drivers import blocking, sockets
from arraywire._drivers.sockets import DEFAULT_HANDSHAKE_TIMEOUT
from arraywire._drivers.striping import Job, move_parts, send_jobs
from arraywire._sync.channel import Channel
from arraywire._wire.engine import (
    STRIPE_BYTES,
    MessageProgress,
    plan_send,
)
from arraywire._wire.errors import IncompleteTransferError, ProtocolError
from arraywire._wire.groups import DEFAULT_MAX_STREAMS
from arraywire._wire.header import check_transferable
from arraywire._wire.limits import Progress

# Shown as written (RawDescriptionHelpFormatter): wrapped here.
SEND_DESCRIPTION = """\
Send a .npy file to arraywire recv: connect to it (or, with --listen, let it
connect), send the array straight from the memory-mapped file, and exit 0 once
the receiver confirms that it wrote the array to its disk.
"""


SEND_EXAMPLES = """\
examples:
  arraywire send weights.npy receiver-host:5000   to arraywire recv 5000
  arraywire send weights.npy '[fd00::2]:5000'     an IPv6 address goes in brackets
  arraywire send weights.npy 5000 --listen        to arraywire recv HOST:5000 --connect
  arraywire send weights.npy host:5000 --key-file transfer.key --tls-ca ca.pem
  arraywire send weights.npy host:5000 --streams 4  four connections at once

The connecting end tries again while nothing listens (see --timeout), so either
end may start first. The bar and the summary count in decimal units: 1 MB is
1,000,000 bytes.
"""


RECV_DESCRIPTION = """\
Receive one array from arraywire send into a .npy file: listen (or, with
--connect, connect), refuse an array larger than --max-bytes or the free disk
space, write OUTPUT.partial, rename it to OUTPUT, then confirm to the sender.
"""


RECV_EXAMPLES = """\
examples:
  arraywire recv 5000 -o weights.npy               all interfaces, IPv4 and IPv6
  arraywire recv '[::1]:5000' -o weights.npy       IPv6 loopback only
  arraywire recv 0 -o weights.npy                  a free port, printed on stderr
  arraywire recv sender-host:5000 -o weights.npy --connect
  arraywire recv 5000 -o weights.npy --max-bytes 60GB --force

SIZE is a byte count with an optional unit: kB, MB, GB, TB (powers of 1000, as
the bar and the summary show sizes) or KiB, MiB, GiB, TiB (powers of 1024);
fractions are fine (1.5GB, 7.6MiB).
"""


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the .npy file to send")
    parser.add_argument(
        "address", type=parse_address,
        help="HOST:PORT of the receiver ([IPv6]:PORT for an IPv6 address); with --listen, "
             "[HOST:]PORT to listen on",
    )
    parser.add_argument(
        "--listen", action="store_true",
        help="listen and send to the first receiver that connects "
             "(for a receiver that runs arraywire recv --connect)",
    )
    parser.add_argument(
        "--streams", type=parse_streams, default=1, metavar="N",
        help="send over N parallel connections, each part of the array by a thread of "
             "its own (default 1; not with --listen; the receiver takes at most its "
             f"--max-streams, by default {DEFAULT_MAX_STREAMS}); an array under "
             f"{STRIPE_BYTES:,} bytes ({decimal_size(STRIPE_BYTES)}) goes whole over the first "
             "connection",
    )
    parser.add_argument(
        "--no-confirm", action="store_true",
        help="do not wait for the receiver to confirm that it wrote the array "
             "(for a receiving program that does not answer b'AWOK')",
    )
    _add_common(parser)
    parser.set_defaults(run=partial(run_send, parser))


def add_recv_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address", type=parse_address,
        help="[HOST:]PORT to listen on (a port alone: all interfaces, IPv4 and IPv6); "
             "with --connect, HOST:PORT of the sender ([IPv6]:PORT for an IPv6 address)",
    )
    parser.add_argument("-o", "--output", required=True, help="the .npy file to write")
    parser.add_argument(
        "--connect", action="store_true",
        help="connect to a sender that runs arraywire send --listen",
    )
    parser.add_argument(
        "--max-bytes", type=parse_size, default=None, metavar="SIZE",
        help="refuse arrays larger than this (default: no cap, only the free space of "
             "the output directory)",
    )
    parser.add_argument(
        "--max-streams", type=parse_streams, default=None, metavar="M",
        help="take a sender's parallel streams (arraywire send --streams N) up to M "
             f"connections (default {DEFAULT_MAX_STREAMS}); a sender asking for more is "
             "refused. All of them must connect within --handshake-timeout",
    )
    parser.add_argument("-f", "--force", action="store_true", help="replace an existing OUTPUT")
    _add_common(parser)
    parser.set_defaults(run=partial(run_recv, parser))


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="no progress and no summary (errors and the listening address remain)",
    )
    parser.add_argument(
        "--timeout", type=parse_seconds, default=None, metavar="SECONDS",
        help="give up when the peer does not connect, or no byte moves, for this long "
             "(default: wait forever). "
             "The connecting end tries again every "
             f"{sockets.RETRY_INTERVAL * 1000:g} ms while nothing listens: until this "
             "timeout, by default until something listens",
    )
    parser.add_argument(
        "--handshake-timeout", type=parse_seconds, default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="give a peer this long for everything before the array's header: the TLS "
             "handshake, the key's opening, the streams joining (default "
             f"{DEFAULT_HANDSHAKE_TIMEOUT:g}, at most --timeout). A listening receiver drops "
             "a peer that fails it, or any part of the opening, and waits for the next",
    )
    security = parser.add_argument_group(
        "security",
        "Without these the connection is plain TCP: no authentication, no\n"
        "encryption. The end that listens is the TLS server.",
    )
    security.add_argument(
        "--key-file", metavar="PATH",
        help="authenticate the peer with the key in this file (its bytes, surrounding "
             "whitespace stripped); the peer needs the same key (default: the file "
             f"{KEY_FILE_VARIABLE} names, if set)",
    )
    security.add_argument(
        "--tls", action="store_true",
        help="encrypt the connection with TLS (implied by the --tls-* options); the "
             "connecting end checks the server's certificate against the system's CAs "
             "unless --tls-ca",
    )
    security.add_argument(
        "--tls-cert", metavar="PEM",
        help="this end's certificate (chain): the listening end needs one; the "
             "connecting end presents it when given",
    )
    security.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    security.add_argument(
        "--tls-ca", metavar="PEM",
        help="CA certificates to trust: the connecting end checks the server's certificate "
             "and host name against them; the listening end then requires the client "
             "to present a certificate they signed",
    )


def run_send(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    problem = usage_problem(args, args.listen, ENDS["send"])
    if args.listen and args.streams > 1:
        problem = (
            "--streams needs this end to connect: the connecting end opens the streams, "
            "so drop --listen and run arraywire recv without --connect"
        )
    if problem:
        parser.error(problem)
    return _main("send", args, _send)


def _send(args: argparse.Namespace) -> str:
    array = open_source(args.file)
    plan = plan_send([array])
    with _peer(args, ENDS["send"], args.listen, args.streams) as channel:
        streams = channel.sockets
        sock = channel.socket
        core = transport.core_for(sock)
        incoming = Incoming(sock)
        parts = plan.stripes(len(streams))
        header = len(plan.header)
        with progress_for(args, "send", os.path.basename(args.file), array.nbytes) as bar:
            progress = array_progress(bar, header)
            started = time.perf_counter()
            try:
                if parts is None:
                    reporter: WatchedProgress | MessageProgress = WatchedProgress(
                        MessageProgress(progress, plan.total), incoming
                    )
                    blocking.write_plan(plan, sock, reporter, core)
                else:
                    reporter = MessageProgress(progress, plan.total)
                    # Only stream 0's own thread reads stream 0 (an SSLSocket
                    # is not for two threads at once).
                    jobs: list[Job] = [
                        partial(_watched_part, core, parts[0], sock, incoming),
                        *send_jobs(core, parts[1:], streams[1:]),
                    ]
                    plan.moved(move_parts(jobs, streams, reporter, 0))
            except (ReplyWaiting, ConnectionError, ssl.SSLEOFError) as exc:
                # A TLS send to a closed peer raises SSLEOFError; why it closed
                # (an alert, a refusal) may still wait to be read.
                plan.fail(exc)  # counts the bytes from the message's start
                closed = "the connection" if parts is None else "a stream"
                moved = array_bytes_moved(exc, header, array.nbytes)
                raise reply_failure(incoming.reply()) or Failure(
                    f"the receiver closed {closed} after {of_the_array(moved, array.nbytes)}"
                    f"{_over(streams, 'sent')}"
                ) from None
            reporter.finish()
            seconds = time.perf_counter() - started
        if not args.no_confirm:
            reply = incoming.reply()
            if reply[0] != ACK:
                raise reply_failure(reply) or Failure(
                    "the receiver closed the connection without confirming that it wrote "
                    "the array (see its messages; a program that receives with "
                    "arraywire.recv_array confirms by sending b'AWOK', or pass --no-confirm)"
                )
    return print_summary(f"sent {args.file}", array.dtype, array.shape, seconds) + _over(streams)


@contextmanager
def _peer(args: argparse.Namespace, ends: Ends, listen: bool, streams: int = 1) -> Iterator[Channel]:
    """The Channel to the peer: the first that completes its opening when
    this end listens."""
    if not listen:
        with dial(args, ends, streams) as channel:
            yield channel
        return
    with listening(args, ends) as listener:
        with accept(listener, args, _deadline(args)) as channel:
            yield channel


def _deadline(args: argparse.Namespace) -> float | None:
    return None if args.timeout is None else time.monotonic() + args.timeout


def _watched_part(
    core: Core, part: list[Any], sock: socket.socket, incoming: Incoming,
    progress: Progress | None,
) -> int:
    """Send stream 0's part of a striped array, stopping once the receiver answers."""
    assert progress is not None  # move_parts gets a reporter
    return int(core.sendmsg_from(part, sock, progress=stop_on_reply(incoming, progress)))


def _over(streams: Sequence[socket.socket], moved: str = "") -> str:
    """The stream count, for messages: nothing for one stream."""
    if len(streams) == 1:
        return ""
    if moved:
        return f" ({moved} over {len(streams)} streams)"
    return f" over {len(streams)} streams"


def open_source(path: str) -> np.ndarray:
    """Memory-map a .npy file for reading, with one-line errors."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            dtype, shape, offset = _npy_header(path, file, size)
    except FileNotFoundError:
        raise Failure(f"no such file: {path}") from None
    except IsADirectoryError:
        raise Failure(f"{path} is a directory, not a .npy file") from None
    try:
        check_transferable(dtype)
    except TypeError:
        raise Failure(
            f"{path} holds Python objects (dtype {dtype}); arraywire sends raw "
            "array bytes only"
        ) from None
    nbytes = math.prod(shape) * dtype.itemsize
    if size - offset < nbytes:  # numpy's mmap would fail with "mmap length is greater ..."
        raise Failure(
            f"{path} is truncated: its header declares {dtype} {shape}, {nbytes:,} bytes, "
            f"but the file holds {max(size - offset, 0):,} bytes after its {offset:,}-byte "
            "header"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise Failure(f"cannot read {path}: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise Failure(f"{path} is not a .npy file")
    return array


# numpy's .npy format versions: the header's length field of each, in bytes.
NPY_LENGTH_BYTES = {(1, 0): 2, (2, 0): 4, (3, 0): 4}


def _npy_header(path: str, file: BinaryIO, size: int) -> tuple[np.dtype, tuple[int, ...], int]:
    """The dtype and shape a .npy file's header declares, and where its data
    start; a Failure naming the file for anything else. The header's length
    is checked against the file's before numpy reads it."""
    if size == 0:
        raise Failure(f"{path} is empty, not a .npy file")
    try:
        version = npy_format.read_magic(file)
    except ValueError:
        raise Failure(
            f"{path} is not a .npy file: it does not begin with numpy's magic "
            f"{npy_format.MAGIC_PREFIX!r}"
        ) from None
    length_bytes = NPY_LENGTH_BYTES.get(version)
    if length_bytes is None:
        raise Failure(
            f"{path} is a .npy file of format version {version[0]}.{version[1]}, which "
            "this numpy does not read (it reads 1.0, 2.0 and 3.0)"
        )
    field = file.read(length_bytes)
    start = npy_format.MAGIC_LEN + length_bytes
    declared = int.from_bytes(field, "little") if len(field) == length_bytes else None
    if declared is None or start + declared > size:
        header = "" if declared is None else f" of {declared:,} bytes"
        raise Failure(
            f"{path} is truncated: it ends inside its .npy header{header} ({size:,} bytes "
            "in all)"
        )
    file.seek(npy_format.MAGIC_LEN)
    read_header = (
        npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    )
    try:
        shape, _, dtype = read_header(file)
    except ValueError as exc:
        raise Failure(f"{path} is not a .npy file: its header does not read ({exc})") from None
    return dtype, shape, file.tell()


def run_recv(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    problem = usage_problem(args, not args.connect, ENDS["recv"])
    if args.connect and args.max_streams is not None:
        problem = (
            "--max-streams is for a listening receiver: with --connect this end opens "
            "one connection"
        )
    if problem:
        parser.error(problem)
    return _main("recv", args, _recv)


def _recv(args: argparse.Namespace) -> str:
    _check_output(args.output, args.force)
    ends = ENDS["recv"]
    if args.connect:
        with dial(args, ends) as channel:
            return _receive_from(channel, args)
    deadline = _deadline(args)
    with listening(args, ends) as listener:
        while True:
            with accept(listener, args, deadline) as channel:
                peer = channel.socket.getpeername()  # the socket is closed if it breaks
                try:
                    return _receive_from(channel, args)
                except NotASender as exc:
                    dropped(peer, str(exc))


class NotASender(Exception):
    """The peer completed an opening but sent no arraywire header in time."""


def _receive_from(channel: Channel, args: argparse.Namespace) -> str:
    """Receive the array into the output file once its header says what it is."""
    target = _Target(channel, args)
    sock = channel.socket
    sock.settimeout(handshake_seconds(args))
    try:
        with ExitStack() as stack:
            target.stack = stack
            try:
                channel.recv(out=target, max_bytes=None, progress=target.progress)
            except ValueError as exc:  # a message of several arrays, drained
                if target.spec is None and not isinstance(exc, ProtocolError):
                    target.refuse(str(exc))
                raise
            seconds = time.perf_counter() - target.started
        assert target.array is not None and target.spec is not None
        target.array.flush()
        spec = target.spec
        target.array = None  # unmapped before the rename
        os.replace(target.partial, args.output)
    except BaseException as exc:
        target.array = None
        _remove(target.partial)
        if target.spec is None:
            _not_a_sender(exc, args)
        if isinstance(exc, (IncompleteTransferError, ConnectionError)):
            raise _lost(exc, target, channel.sockets) from None
        raise
    try:
        sock.sendall(ACK)
    except OSError:  # the file is complete; the sender reports its own failure
        pass
    return print_summary(f"wrote {args.output}", spec.dtype, spec.shape, seconds) + _over(
        channel.sockets
    )


def _not_a_sender(exc: BaseException, args: argparse.Namespace) -> None:
    """Raise what a failure before the array's header means: a peer that is
    not a sender (dropped by a listening receiver), or the end of the sender."""
    if isinstance(exc, EOFError):  # cleanly or inside the header
        failure = "the sender closed the connection before sending an array"
    elif isinstance(exc, TimeoutError):
        failure = f"no array's header within {handshake_seconds(args):g} s"
    elif isinstance(exc, ProtocolError):
        failure = f"the sender's header is not one this end reads: {exc}"
    else:
        return
    if args.connect:
        raise Failure(failure) from None
    raise NotASender(failure) from None


class _Target:
    """The output for the array that the header announces: checked against
    --max-bytes and the free space, allocated as OUT.partial and mapped; the
    header's arrival also starts the bar and the clock."""

    def __init__(self, channel: Channel, args: argparse.Namespace) -> None:
        self.channel = channel
        self.args = args
        self.partial = args.output + ".partial"
        self.spec: Any = None
        self.array: np.memmap | None = None
        self.stack = ExitStack()
        self.bar: Progress | None = None
        self.started = 0.0
        self.header = 0  # the message's bytes before the array's, once progress tells

    def refuse(self, reason: str) -> NoReturn:
        send_refusal(self.channel.socket, reason, others=self.channel.sockets[1:])

    def __call__(self, spec: Any) -> np.ndarray:
        self.spec = spec
        args = self.args
        for sock in self.channel.sockets:  # a sender's: --timeout from here on
            sock.settimeout(args.timeout)
        if args.max_bytes is not None and spec.nbytes > args.max_bytes:
            self.refuse(
                f"the array is {spec.nbytes:,} bytes, over its --max-bytes of "
                f"{args.max_bytes:,}",
            )
        try:
            self.array = _create_partial(self.partial, spec)
        except Failure as exc:
            _remove(self.partial)
            self.refuse(str(exc))
        name = os.path.basename(args.output)
        self.bar = self.stack.enter_context(progress_for(args, "recv", name, spec.nbytes))
        # From the array's first byte: not the wait for the sender, nor the
        # allocation of the file.
        self.started = time.perf_counter()
        return self.array

    def progress(self, done: int, total: int) -> None:
        """The message's progress, as the array's."""
        self.header = total - self.spec.nbytes
        if self.bar is not None:
            array_progress(self.bar, self.header)(done, total)


def _lost(exc: BaseException, target: _Target, streams: Sequence[socket.socket]) -> Failure:
    """A transfer cut short inside the array, counted in the array's bytes."""
    nbytes = target.spec.nbytes
    total = getattr(exc, "bytes_expected", None)
    header = target.header if total is None else total - nbytes
    moved = of_the_array(array_bytes_moved(exc, header, nbytes), nbytes)
    striped = len(streams) > 1 and nbytes >= STRIPE_BYTES
    where = _over(streams, "received") if striped else ""
    part = "a stream" if striped else "the connection"
    if isinstance(exc, IncompleteTransferError):
        return Failure(f"the sender closed {part} after {moved}{where}")
    strerror = getattr(exc, "strerror", None) or exc
    return Failure(f"lost {part} after {moved} ({strerror}){where}")


def _check_output(output: str, force: bool) -> None:
    directory = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise Failure(f"{output} is a directory")
    if not os.path.isdir(directory):
        raise Failure(f"no such directory: {directory}")
    if not os.access(directory, os.W_OK):
        raise Failure(f"cannot write to {directory}: permission denied")
    if os.path.exists(output) and not force:
        raise Failure(f"{output} exists (use --force to replace it)")


def _create_partial(path: str, spec: Any) -> np.memmap:
    """The output file, allocated at full size on disk, mapped for writing."""
    directory = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(directory).free
    no_space = Failure(
        f"not enough disk space in {directory}: the array needs {spec.nbytes:,} bytes, "
        f"{free:,} are free"
    )
    if spec.nbytes >= free:
        raise no_space
    try:
        # numpy writes the header and sizes the (sparse) file; unmap it, then
        # allocate every block before mapping it again for the transfer.
        created = npy_format.open_memmap(
            path, mode="w+", dtype=spec.dtype, shape=spec.shape,
            fortran_order=spec.order == "F",
        )
        del created
        _preallocate(path)
        return npy_format.open_memmap(path, mode="r+")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space from None
        raise Failure(f"cannot create {path}: {exc.strerror or exc}") from None


def _preallocate(path: str) -> None:
    """Give every block of the file disk space now: a write through a mapping
    into a hole of a full disk is a SIGBUS, not an error."""
    if not hasattr(os, "posix_fallocate"):  # macOS: the mapped writes must do
        return
    with open(path, "r+b") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _main(command: str, args: argparse.Namespace, body: Callable[[argparse.Namespace], str]) -> int:
    # SIGTERM unwinds like Ctrl-C, so a partial output file is removed.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGALRM, _terminate)
    try:
        try:
            return _run(command, args, body)
        finally:
            # before the handler below: a Terminated raised again while it
            # runs would escape it, a traceback and exit status 1
            _stop_terminating()
    except (KeyboardInterrupt, Terminated):
        return _fail(command, "interrupted", 130)


def _run(command: str, args: argparse.Namespace, body: Callable[[argparse.Namespace], str]) -> int:
    try:
        summary = body(args)
    except Failure as exc:
        return _fail(command, str(exc))
    except TimeoutError:
        return _fail(command, f"nothing moved for {args.timeout:g} s; gave up")
    except ssl.SSLError as exc:
        return _fail(command, tls_failure(exc, ENDS[command].peer))
    except OSError as exc:
        return _fail(command, _os_error(exc))
    if not args.quiet:
        print(f"arraywire {command}: {summary}", file=sys.stderr)
    return 0


class Terminated(BaseException):
    """SIGTERM, unwinding like Ctrl-C. Not KeyboardInterrupt: an interpreter
    that saw one may end by SIGINT even after it was handled."""


def _terminate(signum: int, frame: object) -> NoReturn:
    # A handler can run where an exception is swallowed (a weakref callback,
    # say): raise again every 0.2 s until the unwinding has begun.
    signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)
    raise Terminated


def _stop_terminating() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)


def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"arraywire {command}: error: {message}", file=sys.stderr)
    return status


def _os_error(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: {exc.filename or ''} {exc.strerror}".replace("  ", " ")
    text = exc.strerror or str(exc)
    if exc.filename:
        return f"{exc.filename}: {text}"
    return text


__all__ = ["add_recv_arguments", "add_send_arguments"]
