"""What ``arraywire send`` and ``recv`` share: the exchange's constants and
replies, arguments' parsing, addresses, and progress and summaries."""


from __future__ import annotations

import argparse
import math
import re
import select
import socket
import ssl
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from decimal import Decimal
from typing import NamedTuple, NoReturn

import numpy as np

from arraywire._wire import control, hello, peers
from arraywire._wire.engine import MessageProgress
from arraywire._wire.errors import AuthenticationError, ProtocolError
from arraywire._wire.limits import Progress

# The receiver's reply (docs/PROTOCOL.md, "The command line's exchange"): ACK
# once the file is complete on its disk, or REFUSE, the reason's length and
# the reason in UTF-8.
ACK = b"AWOK"


REFUSE = peers.REFUSAL_MAGIC


REASON_LENGTH = struct.Struct("<I")


MAX_REASON = peers.MAX_REASON


# Of a peer that answers as no arraywire receiver does, this much is shown.
FOREIGN_BYTES = 60


# How long an end that refuses takes in what the peer still sends.
DISCARD_SECONDS = 10.0


KEY_FILE_VARIABLE = "ARRAYWIRE_KEY_FILE"


# A key is a short secret: a larger file was named by mistake.
MAX_KEY_BYTES = 64 << 10


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
    me_command: str


ENDS = {
    "send": Ends("sender", "receiver", "recv", "send"),
    "recv": Ends("receiver", "sender", "send", "recv"),
}


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


# PORT, HOST:PORT or [IPv6]:PORT; the host may be empty (":5000").
_ADDRESS = re.compile(r"(?:\[([^\[\]]+)\]:|([^\[\]:]*):)?(\d+)")


def parse_address(text: str) -> tuple[str, int]:
    """PORT, HOST:PORT or [IPv6]:PORT, as the library's (host, port); the
    host is "" for a port alone. A bare IPv6 address would be ambiguous."""
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
    return bracketed or host or "", int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def usage_problem(args: argparse.Namespace, listen: bool, ends: Ends) -> str | None:
    """What is wrong with the command line beyond what argparse checks; None if nothing."""
    host, port = args.address
    typed = format_address(host, port) if host else str(port)
    if not listen and not host:
        return f"bad address {typed!r}: connecting needs the {ends.peer}'s HOST:PORT"
    if not listen and port == 0:
        return (
            f"bad address {typed!r}: port 0 is for listening (it picks a free port); "
            f"give the port the {ends.peer} listens on"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key go together: a certificate and its private key"
    if listen and args.tls_cert is None and (args.tls or args.tls_ca):
        return "this end listens, so it is the TLS server: give it --tls-cert and --tls-key"
    return None


class ReplyWaiting(Exception):
    """The receiver answered before the array was sent: it refused it."""


def stop_on_reply(incoming: Incoming, progress: Progress) -> Progress:
    """progress, which also stops the send once the receiver has answered."""

    def report(done: int, total: int) -> None:
        progress(done, total)
        if done < total and incoming.answered():
            raise ReplyWaiting

    return report


class WatchedProgress:
    """A message's reporter whose every core callback, before the throttle,
    also stops the send once the receiver has answered: a peer that is not
    an arraywire receiver is heard within a call's PROGRESS_CHUNK."""

    def __init__(self, reporter: MessageProgress, incoming: Incoming) -> None:
        self.reporter = reporter
        self.incoming = incoming

    def part(self, offset: int) -> Progress:
        return stop_on_reply(self.incoming, self.reporter.part(offset))

    def finish(self) -> None:
        self.reporter.finish()


def array_progress(progress: Progress, header: int) -> Progress:
    """progress in the array's bytes, fed a message's progress (header
    bytes first): both ends count the same quantity."""

    def report(done: int, total: int) -> None:
        progress(max(done - header, 0), total - header)

    return report


def array_bytes_moved(exc: BaseException, header: int, nbytes: int) -> int:
    """The array's bytes that moved before exc, whose bytes_done counts a
    message of header bytes then the array's nbytes."""
    return min(max(bytes_moved(exc) - header, 0), nbytes)


def of_the_array(moved: int, nbytes: int) -> str:
    """How much of the array moved, as both ends say it."""
    return f"{moved:,} of {nbytes:,} bytes of the array"


class Incoming:
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

    def arrived(self, size: int) -> bytes:
        """Up to size bytes of what the peer has sent already, without waiting."""
        data, self.early = self.early[:size], self.early[size:]
        if len(data) < size and not self.ended:
            timeout = self.sock.gettimeout()
            self.sock.settimeout(0)
            with suppress(OSError):  # none waiting (BlockingIOError, SSLWantReadError), or reset
                data += self.sock.recv(size - len(data))
            self.sock.settimeout(timeout)
        return data

    def reply(self) -> tuple[bytes, str]:
        """(ACK, "") or (REFUSE, reason), else the first bytes that came instead
        (for a peer that is not arraywire, what has come of its first line;
        (b"", "") if the peer closed the connection without a reply). A
        reason is read up to MAX_REASON bytes, whatever length the peer gave."""
        try:
            tag = self.read(len(ACK))
            if tag == peers.CONTROL_MAGIC:
                return self._record(tag)
            if tag != REFUSE:
                if len(tag) == len(ACK) and peers.identify(tag) in ("http", "other"):
                    tag += self.arrived(FOREIGN_BYTES)
                return tag, ""
            length = self.read(REASON_LENGTH.size)
            size = REASON_LENGTH.unpack(length)[0] if len(length) == REASON_LENGTH.size else 0
            return tag, self.read(min(size, MAX_REASON)).decode("utf-8", "replace")
        except (ConnectionError, TimeoutError):
            return b"", ""


    def _record(self, magic: bytes) -> tuple[bytes, str]:
        """A refusal record (a Channel's, on a connection with control records
        on) as the reply it stands for: (REFUSE, reason)."""
        start = magic + self.read(control.SIZE - len(magic))
        try:
            record = control.decode(start, hello.CONTROL) if len(start) == control.SIZE else None
        except ProtocolError:
            record = None
        if record is None or record.kind != control.REFUSAL:
            return start, ""
        return REFUSE, control.refusal_reason(self.read(record.length))


def key_on_one_end(ends: Ends, keyed_here: bool) -> str:
    """What an end says when only one of the two uses a key (this one when
    ``keyed_here``)."""
    if keyed_here:
        return (
            f"the {ends.me} (this end) uses a key and the {ends.peer} does not: give "
            f"arraywire {ends.peer_command} the same key (--key-file or {KEY_FILE_VARIABLE})"
        )
    return (
        f"the {ends.peer} uses a key and the {ends.me} (this end) does not: give this end "
        f"the same key (--key-file or {KEY_FILE_VARIABLE})"
    )


def authentication_failure(why: AuthenticationError, ends: Ends) -> str:
    """A failed authentication, in the command line's words."""
    if why.keyless is not None:
        return key_on_one_end(ends, keyed_here=why.keyless == "peer")
    return f"authentication with the {ends.peer} failed: {why}"


def reply_failure(reply: tuple[bytes, str]) -> Failure | None:
    """What a reply other than ACK says went wrong; None if it says nothing."""
    tag, reason = reply
    if tag == REFUSE:
        return Failure(f"the receiver refused: {reason}")
    speaks = peers.identify(tag) if len(tag) >= len(ACK) else "nothing"
    if speaks == "hello":
        return Failure(key_on_one_end(ENDS["send"], keyed_here=False))
    if speaks == "tls":
        return Failure(
            "the receiver uses TLS and this end does not: give this end --tls too "
            "(and --tls-ca for a CA of your own)"
        )
    if speaks == "nothing" or tag == ACK:
        return None
    return Failure(not_a_receiver(tag, speaks))


def not_a_receiver(first: bytes, speaks: str) -> str:
    """What a sender says of a peer that answered with bytes no arraywire
    receiver sends: the start of its first line."""
    line = first.split(b"\n", 1)[0].rstrip(b"\r")
    looks = ", which looks like HTTP" if speaks == "http" else ""
    return f"the receiver is not arraywire recv: it answered {line!r}{looks}"


def send_refusal(
    sock: socket.socket, reason: str, failure: str | None = None,
    others: Sequence[socket.socket] = (),
) -> NoReturn:
    """Tell the peer why this end refuses (docs/PROTOCOL.md, "The command
    line's exchange"), hang up, then fail with failure (by default: the
    sender's array was refused for reason). The sender's other streams are
    closed once the reason is out: their threads stop at once."""
    text = peers.encode_reason(reason)
    with suppress(OSError):
        sock.sendall(REFUSE + REASON_LENGTH.pack(len(text)) + text)
        for other in others:
            other.close()
        hang_up(sock)
    raise Failure(failure or f"refused the sender's array: {reason}")


def hang_up(sock: socket.socket) -> None:
    """Shut this end's side, then take in what the peer still sends until it
    closes: closing with unread bytes would reset the connection and could
    discard what this end sent before the peer reads it."""
    with suppress(OSError):
        sock.shutdown(socket.SHUT_WR)  # on an SSLSocket, reads are raw from here on
        deadline = time.monotonic() + DISCARD_SECONDS
        sock.settimeout(DISCARD_SECONDS)
        while time.monotonic() < deadline and sock.recv(1 << 20):
            pass


@contextmanager
def progress_for(args: argparse.Namespace, command: str, name: str, total: int) -> Iterator[Progress]:
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


def print_summary(done: str, dtype: np.dtype, shape: tuple[int, ...], seconds: float) -> str:
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


def bytes_moved(exc: BaseException) -> int:
    return int(getattr(exc, "bytes_done", None) or 0)
