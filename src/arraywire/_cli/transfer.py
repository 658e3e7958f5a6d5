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
10^6 bytes) everywhere. Each end's summary times the array's bytes alone,
not the wait for the peer.

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
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple, NoReturn

import numpy as np
from numpy.lib import format as npy_format

from arraywire._core import tls, transport
from arraywire._core.protocol import Core
from arraywire._drivers import blocking, sockets
from arraywire._drivers.striping import Job, move_parts, receive_jobs, send_jobs
from arraywire._sync import connection
from arraywire._wire import hello, peers
from arraywire._wire.engine import (
    STRIPE_BYTES,
    MessageProgress,
    Receive,
    Stripes,
    plan_send,
    split_bytes,
    stripe_sizes,
)
from arraywire._wire.errors import AuthenticationError, IncompleteTransferError, ProtocolError
from arraywire._wire.groups import DEFAULT_MAX_STREAMS
from arraywire._wire.header import MAGIC as MESSAGE_MAGIC, check_transferable
from arraywire._wire.limits import Progress, numpy_bytes

# The receiver's reply (docs/PROTOCOL.md, "The command line's exchange"): ACK
# once the file is complete on its disk, or REFUSE, the reason's length and
# the reason in UTF-8.
ACK = b"AWOK"
REFUSE = b"AWNO"
REASON_LENGTH = struct.Struct("<I")
MAX_REASON = 4096
# How long an end that refuses takes in what the peer still sends.
DISCARD_SECONDS = 10.0
KEY_FILE_VARIABLE = "ARRAYWIRE_KEY_FILE"
# A key is a short secret: a larger file was named by mistake.
MAX_KEY_BYTES = 64 << 10
# The first byte a TLS client sends: a handshake record.
TLS_HANDSHAKE = b"\x16"
# OpenSSL's verify codes for a certificate of another host.
HOSTNAME_MISMATCH = 62
IP_ADDRESS_MISMATCH = 64
# Progress on a stderr that is not a terminal (a log): a plain line this often.
LOG_INTERVAL = 10.0
DECIMAL_PREFIXES = ("", "k", "M", "G", "T", "P")


class Failure(Exception):
    """An expected failure, reported as one line."""


class Ends(NamedTuple):
    """This end and its peer, as messages name them."""

    me: str
    peer: str
    peer_command: str


ENDS = {
    "send": Ends("sender", "receiver", "recv"),
    "recv": Ends("receiver", "sender", "send"),
}

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
             f"{STRIPE_BYTES >> 20} MiB goes whole over the first connection",
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
             "refused. All of them must connect within --timeout (default 10 s)",
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
             "(default: wait forever; 10 s for the TLS handshake and the key's opening). "
             "The connecting end tries again every "
             f"{sockets.RETRY_INTERVAL * 1000:g} ms while nothing listens: until this "
             "timeout, by default until something listens",
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


def parse_size(text: str) -> int:
    """A byte count: decimal units (kB, MB, GB, TB: powers of 1000) as the
    bar and the summaries show them, binary ones (KiB, MiB, ...) on request."""
    match = re.fullmatch(
        r"\s*(\d+\.?\d*|\.\d+)\s*(?:([kmgtp])(i?))?b?\s*", text, re.IGNORECASE
    )
    if not match:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (e.g. 500MB, 1.5G, 7.6MiB; kB, MB, GB, TB are powers "
            "of 1000, KiB, MiB, GiB, TiB of 1024)"
        )
    number, prefix, binary = match.groups()
    scale = 1
    if prefix:
        power = "KMGTP".index(prefix.upper()) + 1
        scale = 1024**power if binary else 1000**power
    # Decimal, not float: 1.1MB is 1,100,000 bytes, not 1,100,000.0000000002.
    return int(Decimal(number) * scale)


def parse_streams(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"not a stream count from 1 to 65535: {text!r}")
    return count


def parse_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"not a number of seconds above 0: {text!r}")
    return seconds


class Address(NamedTuple):
    host: str  # "" when only a port was given
    port: int
    text: str  # as typed, for messages


# PORT, HOST:PORT or [IPv6]:PORT; the host may be empty (":5000").
_ADDRESS = re.compile(r"(?:\[([^\[\]]+)\]:|([^\[\]:]*):)?(\d+)")


def parse_address(text: str) -> Address:
    """PORT, HOST:PORT or [IPv6]:PORT: a bare IPv6 address would be ambiguous."""
    match = _ADDRESS.fullmatch(text)
    if not match:
        if text.count(":") > 1 and not text.startswith("["):
            raise argparse.ArgumentTypeError(
                f"bad address {text!r}: an IPv6 address goes in brackets, as in [::1]:5000"
            )
        raise argparse.ArgumentTypeError(
            f"bad address {text!r}: expected PORT, HOST:PORT or [IPv6]:PORT"
        )
    bracketed, host, port = match.groups()
    if int(port) > 65535:
        raise argparse.ArgumentTypeError(f"bad address {text!r}: port {port} is over 65535")
    return Address(bracketed or host or "", int(port), text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def usage_problem(args: argparse.Namespace, listen: bool, ends: Ends) -> str | None:
    """What is wrong with the command line beyond what argparse checks; None if nothing."""
    address = args.address
    if not listen and not address.host:
        return f"bad address {address.text!r}: connecting needs the {ends.peer}'s HOST:PORT"
    if not listen and address.port == 0:
        return (
            f"bad address {address.text!r}: port 0 is for listening (it picks a free port); "
            f"give the port the {ends.peer} listens on"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key go together: a certificate and its private key"
    if listen and args.tls_cert is None and (args.tls or args.tls_ca):
        return "this end listens, so it is the TLS server: give it --tls-cert and --tls-key"
    return None


# --- sending -----------------------------------------------------------------


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
    with _connected(args, args.listen, ENDS["send"], streams=args.streams) as link:
        sock = link.streams[0]
        core = _core(sock)
        incoming = _Incoming(sock)
        parts = plan.stripes(len(link.streams))
        with _progress(args, "send", os.path.basename(args.file), plan.total) as progress:
            started = time.perf_counter()
            try:
                if parts is None:
                    reporter = MessageProgress(_stop_on_reply(incoming, progress), plan.total)
                    blocking.write_plan(plan, sock, reporter, core)
                else:
                    reporter = MessageProgress(progress, plan.total)
                    # Only stream 0's own thread reads stream 0 (an SSLSocket
                    # is not for two threads at once).
                    jobs: list[Job] = [
                        partial(_watched_part, core, parts[0], sock, incoming),
                        *send_jobs(core, parts[1:], link.streams[1:]),
                    ]
                    plan.moved(move_parts(jobs, link.streams, reporter, 0))
            except (_ReplyWaiting, ConnectionError, ssl.SSLEOFError) as exc:
                # A TLS send to a closed peer raises SSLEOFError; why it closed
                # (an alert, a refusal) may still wait to be read.
                plan.fail(exc)  # counts the bytes from the message's start
                closed = "the connection" if parts is None else "a stream"
                raise _reply_failure(incoming.reply()) or Failure(
                    f"the receiver closed {closed} after {_moved(exc):,} of "
                    f"{plan.total:,} bytes{_over(link.streams, 'sent')}"
                ) from None
            reporter.finish()
            seconds = time.perf_counter() - started
        if not args.no_confirm:
            reply = incoming.reply()
            if reply[0] != ACK:
                raise _reply_failure(reply) or Failure(
                    "the receiver closed the connection without confirming that it wrote "
                    "the array (see its messages; a program that receives with "
                    "arraywire.recv_array confirms by sending b'AWOK', or pass --no-confirm)"
                )
    return _summary(f"sent {args.file}", array.dtype, array.shape, seconds) + _over(link.streams)


def _watched_part(
    core: Core, part: list[Any], sock: socket.socket, incoming: _Incoming,
    progress: Progress | None,
) -> int:
    """Send stream 0's part of a striped array, stopping once the receiver answers."""
    assert progress is not None  # move_parts gets a reporter
    return int(core.sendmsg_from(part, sock, progress=_stop_on_reply(incoming, progress)))


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
            try:
                version = npy_format.read_magic(file)
            except ValueError:
                raise Failure(f"{path} is not a .npy file") from None
            if version == (1, 0):
                _, _, dtype = npy_format.read_array_header_1_0(file)
            elif version == (2, 0):
                _, _, dtype = npy_format.read_array_header_2_0(file)
            else:  # newer versions: numpy.load checks them below
                dtype = None
    except FileNotFoundError:
        raise Failure(f"no such file: {path}") from None
    except IsADirectoryError:
        raise Failure(f"{path} is a directory, not a .npy file") from None
    if dtype is not None:
        try:
            check_transferable(dtype)
        except TypeError:
            raise Failure(
                f"{path} holds Python objects (dtype {dtype}); arraywire sends raw "
                "array bytes only"
            ) from None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise Failure(f"cannot read {path}: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise Failure(f"{path} is not a .npy file")
    return array


class _ReplyWaiting(Exception):
    """The receiver answered before the array was sent: it refused it."""


def _stop_on_reply(incoming: _Incoming, progress: Progress) -> Progress:
    """progress, which also stops the send once the receiver has answered."""

    def report(done: int, total: int) -> None:
        progress(done, total)
        if done < total and incoming.answered():
            raise _ReplyWaiting

    return report


class _Incoming:
    """What the peer sends outside messages (a reply, a refusal), read exactly."""

    def __init__(self, sock: socket.socket, early: bytes = b"") -> None:
        self.sock = sock
        self.early = early  # received already
        self.ended = False

    def answered(self) -> bool:
        """Whether the peer has sent something, or closed, without waiting."""
        sock = self.sock
        if self.early or self.ended:
            return True
        if not isinstance(sock, ssl.SSLSocket):
            return bool(select.select([sock], [], [], 0)[0])
        # select cannot see decrypted bytes waiting in pending(), and sees TLS
        # records that carry none (the session tickets of a TLS 1.3 server).
        if not sock.pending() and not select.select([sock], [], [], 0)[0]:
            return False
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            self.early = sock.recv(MAX_REASON)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        finally:
            sock.settimeout(timeout)
        self.ended = not self.early
        return True

    def read(self, size: int) -> bytes:
        """size bytes, or fewer when the peer closed."""
        data, self.early = self.early[:size], self.early[size:]
        while len(data) < size and not self.ended:
            chunk = self.sock.recv(size - len(data))
            self.ended = not chunk
            data += chunk
        return data

    def reply(self) -> tuple[bytes, str]:
        """(ACK, "") or (REFUSE, reason), else the first bytes that came instead
        ((b"", "") if the peer closed the connection without a reply)."""
        try:
            tag = self.read(len(ACK))
            if tag != REFUSE:
                return tag, ""
            length = self.read(REASON_LENGTH.size)
            size = REASON_LENGTH.unpack(length)[0] if len(length) == REASON_LENGTH.size else 0
            return tag, self.read(min(size, MAX_REASON)).decode("utf-8", "replace")
        except (ConnectionError, TimeoutError):
            return b"", ""


def _reply_failure(reply: tuple[bytes, str]) -> Failure | None:
    """What a reply other than ACK says went wrong; None if it says nothing."""
    tag, reason = reply
    if tag == REFUSE:
        return Failure(f"the receiver refused: {reason}")
    if tag == hello.MAGIC:
        return Failure(
            "the receiver requires a key and this end has none (it opened with a "
            f"connection hello): give this end the same key (--key-file or {KEY_FILE_VARIABLE})"
        )
    if tag[:2] in peers.TLS_RECORDS:
        return Failure(
            "the receiver uses TLS and this end does not: give this end --tls too "
            "(and --tls-ca for a CA of your own)"
        )
    return None


# --- receiving ---------------------------------------------------------------


def _refuse(
    sock: socket.socket, reason: str, failure: str | None = None,
    others: Sequence[socket.socket] = (),
) -> NoReturn:
    """Tell the peer why this end refuses (docs/PROTOCOL.md, "The command
    line's exchange"), hang up, then fail with failure (by default: the
    sender's array was refused for reason). The sender's other streams are
    closed once the reason is out: their threads stop at once."""
    text = reason.encode("utf-8")[:MAX_REASON]
    with suppress(OSError):
        sock.sendall(REFUSE + REASON_LENGTH.pack(len(text)) + text)
        for other in others:
            other.close()
        _hang_up(sock)
    raise Failure(failure or f"refused the sender's array: {reason}")


def _hang_up(sock: socket.socket) -> None:
    """Shut this end's side, then take in what the peer still sends until it
    closes: closing with unread bytes would reset the connection and could
    discard what this end sent before the peer reads it."""
    with suppress(OSError):
        sock.shutdown(socket.SHUT_WR)  # on an SSLSocket, reads are raw from here on
        deadline = time.monotonic() + DISCARD_SECONDS
        sock.settimeout(DISCARD_SECONDS)
        while time.monotonic() < deadline and sock.recv(1 << 20):
            pass


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
    output = args.output
    partial = output + ".partial"
    _check_output(output, args.force)
    with _connected(args, not args.connect, ENDS["recv"]) as link:
        sock = link.streams[0]
        core = _core(sock)

        def refuse(reason: str) -> NoReturn:
            _refuse(sock, reason, others=link.streams[1:])

        try:
            specs = _recv_header(sock, core, link.early)
        except ProtocolError as exc:
            refuse(str(exc))
        except EOFError:  # cleanly or inside the header
            raise Failure("the sender closed the connection before sending an array") from None
        if len(specs) != 1:
            refuse(f"the message holds {len(specs)} arrays; arraywire recv takes one")
        spec = specs[0]
        if args.max_bytes is not None and spec.nbytes > args.max_bytes:
            refuse(
                f"the array is {spec.nbytes:,} bytes, over its --max-bytes of "
                f"{args.max_bytes:,}",
            )
        try:
            target = _create_partial(partial, spec)
        except BaseException as exc:
            _remove(partial)
            if isinstance(exc, Failure):
                refuse(str(exc))
            raise
        try:
            try:
                with _progress(args, "recv", os.path.basename(output), spec.nbytes) as progress:
                    # From the array's first byte: not the wait for the
                    # sender, nor the allocation of the file.
                    started = time.perf_counter()
                    _receive(link.streams, target, spec.nbytes, progress, core)
                    seconds = time.perf_counter() - started
                target.flush()
            finally:
                del target
            os.replace(partial, output)
        except BaseException:
            _remove(partial)
            raise
        try:
            sock.sendall(ACK)
        except OSError:  # the file is complete; the sender reports its own failure
            pass
    return _summary(f"wrote {output}", spec.dtype, spec.shape, seconds) + _over(link.streams)


def _recv_header(sock: socket.socket, core: Core, early: bytes) -> tuple[Any, ...]:
    """The message header's arrays; early holds its first bytes when read already."""
    if not early:
        return blocking.recv_header(sock, None, core)
    message = Receive(None)
    reads = message.header_reads()
    next(reads)[0][:] = early  # the preamble
    message.moved(len(early))
    blocking.read_into(message, reads, sock, core)
    return message.specs


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


def _receive(
    streams: list[socket.socket], target: np.ndarray, nbytes: int, progress: Progress,
    core: Core,
) -> None:
    """Fill target with the array's payload: striped over the streams as the
    sender striped it, each part by a thread of its own."""
    striped = len(streams) > 1 and nbytes >= STRIPE_BYTES
    try:
        if not striped:
            core.recv_into(target, streams[0], progress=progress)
        else:
            sizes = stripe_sizes(nbytes, len(streams))
            parts = split_bytes([numpy_bytes(target, True)], sizes)
            jobs = receive_jobs(core, Stripes(sizes, parts), streams)
            move_parts(jobs, streams, MessageProgress(progress, nbytes), 0)
    except IncompleteTransferError as exc:
        closed = "a stream" if striped else "the connection"
        raise Failure(
            f"the sender closed {closed} after {_moved(exc):,} of {nbytes:,} "
            f"bytes of the array{_over(streams, 'received') if striped else ''}"
        ) from None
    except ConnectionError as exc:
        lost = "a stream" if striped else "the connection"
        raise Failure(
            f"lost {lost} after {_moved(exc):,} of {nbytes:,} bytes of the array "
            f"({exc.strerror or exc}){_over(streams, 'received') if striped else ''}"
        ) from None


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- shared --------------------------------------------------------------------


def _main(command: str, args: argparse.Namespace, body: Callable[[argparse.Namespace], str]) -> int:
    # SIGTERM unwinds like Ctrl-C, so a partial output file is removed.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGALRM, _terminate)
    try:
        return _run(command, args, body)
    except (KeyboardInterrupt, Terminated):
        return _fail(command, "interrupted", 130)
    finally:
        _stop_terminating()


def _run(command: str, args: argparse.Namespace, body: Callable[[argparse.Namespace], str]) -> int:
    try:
        summary = body(args)
    except Failure as exc:
        return _fail(command, str(exc))
    except TimeoutError:
        return _fail(command, f"nothing moved for {args.timeout:g} s; gave up")
    except ssl.SSLError as exc:
        return _fail(command, _tls_failure(exc, ENDS[command].peer))
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


class Link(NamedTuple):
    """The connection to the peer, opening done: its streams (one unless the
    sender asked for more; SSLSockets with TLS), and the bytes a receiver
    without a key read from stream 0 while looking for a hello."""

    streams: list[socket.socket]
    early: bytes


@contextmanager
def _connected(
    args: argparse.Namespace, listen: bool, ends: Ends, streams: int = 1
) -> Iterator[Link]:
    """The connection to the peer once its opening is done: as many streams
    as the connecting sender asks for."""
    key = read_key(args.key_file)
    context = tls_context(args, listen)
    with ExitStack() as stack:
        if listen:
            yield _take_peer(stack, args, ends, key, context)
        else:
            yield _dial_peer(stack, args, ends, key, context, streams)


def _dial_peer(
    stack: ExitStack, args: argparse.Namespace, ends: Ends, key: bytes | None,
    context: ssl.SSLContext | None, streams: int,
) -> Link:
    """Connect to the listening peer: with several streams, each with the
    opening of the group."""
    wait = sockets.DEFAULT_HANDSHAKE_TIMEOUT if args.timeout is None else args.timeout
    ident = os.urandom(hello.GROUP_ID_BYTES)
    socks = []
    for index in range(streams):
        raw = _connect_when_listening(args.address, args.timeout, ends, args.quiet, index)
        sock = _secure(stack, raw, context, False, ends, args.address.host, wait)
        group = None if streams == 1 else hello.Group(ident, index, streams)
        if key is not None or group is not None:
            opening = _Opening(key, connecting=True, group=group)
            _open(sock, opening, time.monotonic() + wait, ends, wait)
        sock.settimeout(args.timeout)
        socks.append(sock)
    return Link(socks, b"")


def _take_peer(
    stack: ExitStack, args: argparse.Namespace, ends: Ends, key: bytes | None,
    context: ssl.SSLContext | None,
) -> Link:
    """Listen for the peer; a receiver then joins the sender's streams."""
    wait = sockets.DEFAULT_HANDSHAKE_TIMEOUT if args.timeout is None else args.timeout
    server = stack.enter_context(_listening(args.address))
    raw = _accept(server, args.timeout)
    if raw is None:
        raise Failure(f"nobody connected within {args.timeout:g} s")
    sock = _secure(stack, raw, context, True, ends, args.address.host, wait)
    deadline = time.monotonic() + wait
    early = b""
    opening: _Opening | None = None
    if key is not None:
        opening = _open(sock, _Opening(key, connecting=False), deadline, ends, wait)
    elif ends.me == "receiver":
        # A sender without a key begins with its message, or with the hello
        # of a stream group.
        sock.settimeout(args.timeout)
        early = _read_start(sock)
        if _is_group_hello(early):
            opening = _Opening(None, connecting=False)
            sock.sendall(opening.outgoing())
            try:
                opening.received(early)
            except ProtocolError as exc:
                raise Failure(f"the connection opening with the sender failed: {exc}") from None
            early = b""
            _open(sock, opening, deadline, ends, wait)
    sock.settimeout(args.timeout)
    if opening is None or opening.group is None:
        return Link([sock], early)
    return Link(_join_group(stack, server, sock, opening, args, context, key, wait), early)


def _secure(
    stack: ExitStack, sock: socket.socket, context: ssl.SSLContext | None, listen: bool,
    ends: Ends, host: str, wait: float,
) -> socket.socket:
    """sock, closed with the stack, over TLS when there is a context."""
    stack.enter_context(sock)
    if context is None:
        return sock
    sock.settimeout(wait)
    # the SSLSocket: the TCP socket is detached from it
    return stack.enter_context(_start_tls(context, sock, host, listen, ends, wait))


def _read_start(sock: socket.socket) -> bytes:
    """The first bytes of what a sender without a key sends: a message's
    preamble, or a hello (both are 16 bytes)."""
    start = bytearray(hello.SIZE)
    try:
        _core(sock).recv_into(start, sock)
    except IncompleteTransferError:
        raise Failure("the sender closed the connection before sending an array") from None
    return bytes(start)


def _is_group_hello(data: bytes) -> bool:
    """Whether data is the hello of a stream of a group without a key (a
    keyed hello is refused as the message it is not, saying so)."""
    if not data.startswith(hello.MAGIC):
        return False
    features = hello.HELLO.unpack(data)[3]
    return bool(features & hello.STREAMS) and not features & hello.AUTH


def _join_group(
    stack: ExitStack, server: socket.socket, first: socket.socket, opening: _Opening,
    args: argparse.Namespace, context: ssl.SSLContext | None, key: bytes | None, wait: float,
) -> list[socket.socket]:
    """Answer the first stream of the sender's group, then take the others as
    they connect, in index order; other connections are refused and closed."""
    group = opening.group
    assert group is not None
    max_streams = args.max_streams or DEFAULT_MAX_STREAMS
    if group.size > max_streams:
        _answer(first, opening, hello.TOO_MANY_STREAMS, max_streams)
        _hang_up(first)
        raise Failure(
            f"refused the sender's {group.size} streams: this end takes at most "
            f"{max_streams} (--max-streams)"
        )
    _answer(first, opening, hello.JOINED, max_streams)
    members: list[socket.socket | None] = [None] * group.size
    members[group.member] = first
    deadline = time.monotonic() + wait
    ends = ENDS["recv"]
    while None in members:
        raw = _accept(server, deadline - time.monotonic())
        if raw is None:
            joined = group.size - members.count(None)
            raise Failure(
                f"only {joined} of the sender's {group.size} streams connected within "
                f"{wait:g} s"
            )
        sock = raw
        try:
            sock = _secure(stack, raw, context, True, ends, args.address.host, wait)
            other = _Opening(key, connecting=False)
            connection.run_opening(sock, other, deadline)
        except (Failure, OSError, ProtocolError, AuthenticationError, _NotAHello) as exc:
            sock.close()
            reason = f" ({exc})" if str(exc) else ""
            _note(args, f"closed a connection that is not one of the sender's streams{reason}")
            continue
        stream = other.group
        if stream is None or stream.ident != group.ident or stream.size != group.size or (
            members[stream.member] is not None
        ):
            if stream is not None:
                with suppress(OSError):
                    _answer(sock, other, hello.NOT_JOINABLE, max_streams)
            sock.close()
            _note(args, "closed a connection that is not one of the sender's streams")
            continue
        _answer(sock, other, hello.JOINED, max_streams)
        sock.settimeout(args.timeout)
        members[stream.member] = sock
    return members  # type: ignore[return-value]


def _answer(sock: socket.socket, opening: _Opening, status: int, max_streams: int) -> None:
    opening.answer_join(status, max_streams)
    sock.sendall(opening.outgoing())


def _note(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"arraywire recv: {text}", file=sys.stderr, flush=True)


@contextmanager
def _listening(address: Address) -> Iterator[socket.socket]:
    """The listening socket; its address is printed for the peer."""
    # A port alone: every interface, IPv4 and IPv6 on one socket where the OS can.
    host = address.host or ("::" if socket.has_dualstack_ipv6() else "")
    where = format_address(host or "0.0.0.0", address.port)
    try:
        server, _ = sockets.server_socket((host, address.port), sockets.DEFAULT_BACKLOG)
    except socket.gaierror as exc:
        raise Failure(f"cannot listen on {where}: {exc.strerror}") from None
    except OSError as exc:
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise Failure(f"cannot listen on {where}: {reason}") from None
    with server:
        # Printed even with --quiet: the peer needs the port (which may be 0 here).
        print(f"arraywire: listening on {_listening_on(server)}", file=sys.stderr, flush=True)
        yield server


def _accept(server: socket.socket, timeout: float | None) -> socket.socket | None:
    """The next connection; None when none came within timeout."""
    if timeout is not None and timeout <= 0:
        return None
    server.settimeout(timeout)
    try:
        sock, _ = server.accept()
    except TimeoutError:
        return None
    return sock


def _listening_on(server: socket.socket) -> str:
    host, port = sockets.bound_address(server)
    where = format_address(host, port)
    if host == "0.0.0.0":
        return f"{where} (all interfaces, IPv4 only)"
    if host == "::":
        ipv6_only = server.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        return f"{where} (all interfaces, {'IPv6 only' if ipv6_only else 'IPv4 and IPv6'})"
    return where


def _connect_when_listening(
    address: Address, timeout: float | None, ends: Ends, quiet: bool, stream: int = 0
) -> socket.socket:
    """A connection to the peer, tried again while refused so that either end
    may start first. The later streams of a group are not: the peer listened for stream 0."""
    where = format_address(address.host, address.port)
    deadline = None if timeout is None else time.monotonic() + timeout
    told = quiet  # --quiet: no note while waiting
    while True:
        try:
            return socket.create_connection(
                (address.host, address.port), timeout=sockets.remaining(deadline)
            )
        except ConnectionRefusedError:
            if stream:
                raise Failure(
                    f"cannot connect stream {stream} to {where}: connection refused (the "
                    f"{ends.peer} stopped listening after stream 0; see its messages)"
                ) from None
            if deadline is not None and time.monotonic() >= deadline:
                raise Failure(
                    f"cannot connect to {where}: connection refused for {timeout:g} s "
                    "(nothing listens there)"
                ) from None
            if not told:
                told = True
                until = "until it does" if timeout is None else f"for up to {timeout:g} s"
                print(
                    f"arraywire: nothing listens on {where} yet; trying again {until} "
                    f"(is the {ends.peer} running?)",
                    file=sys.stderr, flush=True,
                )
        except socket.gaierror as exc:
            raise Failure(f"cannot connect to {where}: {exc.strerror}") from None
        except TimeoutError as exc:
            # The OS's own time limit says so in strerror; the socket's does not.
            reason = exc.strerror or f"no answer within {timeout:g} s"
            raise Failure(f"cannot connect to {where}: {reason}") from None
        except OSError as exc:
            raise Failure(f"cannot connect to {where}: {exc.strerror}") from None
        time.sleep(sockets.RETRY_INTERVAL)


def _core(sock: socket.socket) -> Any:
    """The transfer core for sock: the plain cores refuse an SSLSocket."""
    return tls if isinstance(sock, ssl.SSLSocket) else transport.impl


def read_key(path: str | None) -> bytes | None:
    """The key in the file --key-file names, else ARRAYWIRE_KEY_FILE; None
    when neither names one."""
    source = "--key-file"
    if path is None:
        path = os.environ.get(KEY_FILE_VARIABLE) or None
        source = KEY_FILE_VARIABLE
        if path is None:
            return None
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise Failure(f"cannot read the key file {path} ({source}): {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_BYTES:
        raise Failure(
            f"the key file {path} ({source}) holds over {MAX_KEY_BYTES:,} bytes: a key is "
            "a short secret (32 random bytes are usual)"
        )
    key = data.strip()
    if not key:
        raise Failure(f"the key file {path} ({source}) is empty")
    return key


def tls_context(args: argparse.Namespace, listen: bool) -> ssl.SSLContext | None:
    """This end's TLS context (the server's when it listens); None without TLS.
    usage_problem has checked that the options go together."""
    cert, key, ca = args.tls_cert, args.tls_key, args.tls_ca
    if not (args.tls or cert or key or ca):
        return None
    for option, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise Failure(f"cannot read {option} {path}: {exc.strerror or exc}") from None
    purpose = ssl.Purpose.CLIENT_AUTH if listen else ssl.Purpose.SERVER_AUTH
    try:
        context = ssl.create_default_context(purpose, cafile=ca)
    except ssl.SSLError:
        raise Failure(f"--tls-ca {ca} holds no PEM certificate") from None
    if listen and ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    if cert is not None:
        try:
            context.load_cert_chain(cert, key, password=lambda: _encrypted(key))
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise Failure(
                    f"--tls-key {key} is not the private key of the certificate in "
                    f"--tls-cert {cert}"
                ) from None
            raise Failure(
                f"cannot load --tls-cert {cert} and --tls-key {key}: expected a PEM "
                "certificate (chain) and its PEM private key"
            ) from None
    return context


def _encrypted(path: str) -> NoReturn:
    """The passphrase callback: a prompt would hang an unattended transfer."""
    raise Failure(f"--tls-key {path} is encrypted: give the private key unencrypted")


def _start_tls(
    context: ssl.SSLContext, sock: socket.socket, host: str, listen: bool, ends: Ends,
    wait: float,
) -> ssl.SSLSocket:
    """The TLS handshake: the end that listens is the server."""
    try:
        if not listen:
            return connection.secure(context, sock, host)
        first = sock.recv(1, socket.MSG_PEEK)
        if first != TLS_HANDSHAKE:
            if not first:
                raise Failure(f"the {ends.peer} closed the connection before the TLS handshake")
            # Told in clear, in the words of the exchange: the peer reads it
            # as a refusal.
            _refuse(
                sock,
                f"the {ends.me} uses TLS: run arraywire {ends.peer_command} with --tls too "
                "(and --tls-ca for a CA of your own)",
                f"the {ends.peer} does not use TLS: run arraywire {ends.peer_command} with "
                "--tls too",
            )
        return context.wrap_socket(sock, server_side=True)
    except TimeoutError:
        raise Failure(
            f"the TLS handshake with the {ends.peer} did not complete within {wait:g} s "
            f"(does it use TLS? run arraywire {ends.peer_command} with --tls too)"
        ) from None
    except ProtocolError:  # from secure(): the server answered in clear
        raise Failure(
            f"the {ends.peer} does not use TLS: run arraywire {ends.peer_command} with "
            "--tls-cert and --tls-key too"
        ) from None


def _tls_failure(exc: ssl.SSLError, peer: str) -> str:
    """A failed TLS connection, in one line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in (HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH):
            hint = "connect to a host name or address the certificate names"
        else:
            hint = "--tls-ca names the CA to trust"
        return f"cannot verify the {peer}'s TLS certificate: {exc.verify_message} ({hint})"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return f"the {peer} closed the TLS connection"
    reason = exc.reason or str(exc)
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return (
            f"the {peer} presented no TLS certificate and --tls-ca requires one: give it "
            "--tls-cert and --tls-key"
        )
    if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
        return f"the {peer} requires a TLS certificate of this end: give it --tls-cert and --tls-key"
    if "CERTIFICATE" in reason or reason == "TLSV1_ALERT_UNKNOWN_CA":
        return f"the {peer} rejected this end's TLS certificate ({reason}; its message says why)"
    return f"the TLS connection with the {peer} failed: {reason}"


class _NotAHello(Exception):
    """What an end without a key or TLS sends came where the peer's hello should."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data


class _Opening(hello.Opening):
    """The opening of arraywire.connect/listen, which stops at a refusal, a
    message or a TLS handshake in place of the peer's hello."""

    __slots__ = ("joining",)

    def __init__(
        self, authkey: bytes | None, *, connecting: bool, group: hello.Group | None = None
    ) -> None:
        super().__init__(authkey, connecting=connecting, group=group)
        self.joining = group  # the group this end's stream asks to join

    def received(self, data: bytes) -> None:
        if self.part == "hello" and (
            data.startswith((REFUSE, MESSAGE_MAGIC)) or data[:2] in peers.TLS_RECORDS
        ):
            raise _NotAHello(data)
        if self.part == hello.PARTS["join"]:
            _check_joined(data, self.joining)
        super().received(data)


def _check_joined(data: bytes, group: hello.Group | None) -> None:
    """The receiver's answer to a stream of the sender's group, in the
    command line's words when it refuses."""
    assert group is not None
    status, _, max_streams = hello.JOIN.unpack(data)
    if status == hello.TOO_MANY_STREAMS:
        raise Failure(
            f"the receiver takes at most {max_streams} streams: use --streams {max_streams} "
            f"or fewer, or arraywire recv --max-streams {group.size}"
        )
    if status == hello.NOT_JOINABLE:
        raise Failure(
            f"the receiver did not let stream {group.member} join the others (it gave up "
            "waiting for them, or has that stream already)"
        )
    if status == hello.NO_STREAMS:
        raise Failure("the receiver takes no parallel streams: use --streams 1")


def _open(
    sock: socket.socket, opening: _Opening, deadline: float, ends: Ends, wait: float
) -> _Opening:
    """The connection opening (docs/PROTOCOL.md, "Connections"): with a key,
    or for a stream of a group; returns the opening once done."""
    try:
        connection.run_opening(sock, opening, deadline)
    except _NotAHello as exc:
        data = exc.data
        if data.startswith(REFUSE):
            raise Failure(f"the {ends.peer} refused: {_Incoming(sock, data).reply()[1]}") from None
        _hang_up(sock)  # the peer reads this end's hello as what is wrong
        if data.startswith(MESSAGE_MAGIC):  # only a sender sends messages
            raise Failure(
                "the sender has no key: it sent its array without the connection opening; "
                f"give it the same key (--key-file or {KEY_FILE_VARIABLE})"
            ) from None
        raise Failure(
            f"the {ends.peer} uses TLS and this end does not: give this end --tls-cert and "
            "--tls-key too"
        ) from None
    except AuthenticationError as exc:
        raise Failure(f"authentication with the {ends.peer} failed: {exc}") from None
    except TimeoutError as exc:
        raise Failure(
            f"the {ends.peer} did not complete the connection opening within {wait:g} s: {exc}"
        ) from None
    except ConnectionResetError:
        raise Failure(f"the {ends.peer} reset the connection during the opening") from None
    except ProtocolError as exc:
        raise Failure(f"the connection opening with the {ends.peer} failed: {exc}") from None
    return opening


@contextmanager
def _progress(args: argparse.Namespace, command: str, name: str, total: int) -> Iterator[Progress]:
    """A bar on a terminal, plain lines in a log, nothing with --quiet."""
    if args.quiet:
        yield _no_progress
    elif sys.stderr.isatty():
        with _bar(f"{command} {name}", total) as progress:
            yield progress
    else:
        yield _LogLines(f"arraywire {command}: {name}")


def _no_progress(done: int, total: int) -> None:
    """--quiet: nothing to show."""


@contextmanager
def _bar(label: str, total: int) -> Iterator[Progress]:
    from tqdm import tqdm  # type: ignore[import-untyped]  # lazy: only for a bar; no stubs in the lint extra

    # The bar is driven by progress callbacks: tqdm's watchdog thread adds nothing.
    tqdm.monitor_interval = 0
    bar = tqdm(
        total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1000,
        file=sys.stderr, dynamic_ncols=True,
        # "8.00MB/8.00MB", not tqdm's "8.00M/8.00M" beside a rate in MB/s
        bar_format="{l_bar}{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}]",
    )

    def progress(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    with bar:
        yield progress


class _LogLines:
    """Progress as a plain line every LOG_INTERVAL seconds, for a log file,
    where a bar's carriage returns would pile up on one line. A transfer done
    sooner prints only its summary."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last_time = time.monotonic()
        self.last_done = 0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self.last_time < LOG_INTERVAL:
            return  # the summary follows the end
        rate = (done - self.last_done) / (now - self.last_time)
        print(
            f"{self.label}: {100 * done // total}%, {decimal_size(done)} of "
            f"{decimal_size(total)} ({decimal_size(rate, 'B/s')})",
            file=sys.stderr, flush=True,
        )
        self.last_time, self.last_done = now, done


def decimal_size(value: float, unit: str = "B") -> str:
    """value in decimal units (1 kB = 1000 B), three significant digits, as
    the bar shows sizes."""
    exponent = 0
    while value >= 999.5 and exponent < len(DECIMAL_PREFIXES) - 1:
        value /= 1000
        exponent += 1
    digits = 2 if value < 9.995 else 1 if value < 99.95 else 0
    return f"{value:.{digits}f} {DECIMAL_PREFIXES[exponent]}{unit}"


def _summary(done: str, dtype: np.dtype, shape: tuple[int, ...], seconds: float) -> str:
    """What was done, and how fast the array's bytes moved."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return (
        f"{done}: {dtype} {shape}, {nbytes:,} bytes in {_duration(seconds)} "
        f"({decimal_size(nbytes / seconds, 'B/s')})"
    )


def _duration(seconds: float) -> str:
    if seconds < 0.1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:,.1f} s"


def _moved(exc: BaseException) -> int:
    return int(getattr(exc, "bytes_done", None) or 0)


__all__ = ["ACK", "REFUSE", "add_recv_arguments", "add_send_arguments", "parse_size"]
