"""``arraywire send`` and ``arraywire recv``: a .npy file from disk to disk.

Both ends memory-map the file (``numpy.load(mmap_mode='r')`` on the sender,
``numpy.lib.format.open_memmap`` on the receiver), so an array larger than
RAM goes disk -> socket -> disk with no in-memory copy. The sender connects
and the receiver listens, unless ``--listen`` / ``--connect`` swap the roles.

The receiver reads the arraywire header first and refuses an array larger
than ``--max-bytes`` (default: no cap) or than the free space of the output
directory, then preallocates ``OUT.partial`` (so a full disk fails up front
instead of raising SIGBUS in a mapped write), fills it, flushes it, renames
it to ``OUT`` and only then confirms to the sender with ``ACK``. Either side
exits 0 only after that confirmation; on failure ``OUT.partial`` is removed.
A refusal carries its reason to the sender (``REFUSE``), which prints it.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import select
import shutil
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import numpy as np
from numpy.lib import format as npy_format

from arraywire import _framing, _transport
from arraywire._common import Progress
from arraywire._engine import plan_send
from arraywire._errors import IncompleteTransferError, ProtocolError
from arraywire._protocol import check_transferable

# The receiver's reply (docs/PROTOCOL.md, "The command line's exchange"): ACK
# once the file is complete on its disk, or REFUSE, the reason's length and
# the reason in UTF-8.
ACK = b"AWOK"
REFUSE = b"AWNO"
REASON_LENGTH = struct.Struct("<I")
MAX_REASON = 4096
# How long a refusing receiver takes in what the sender still sends.
DISCARD_SECONDS = 10.0
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class Failure(Exception):
    """An expected failure, reported as one line."""


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the .npy file to send")
    parser.add_argument(
        "address",
        help="HOST:PORT of the receiver; with --listen, [HOST:]PORT to listen on",
    )
    parser.add_argument(
        "--listen", action="store_true",
        help="listen and send to the first receiver that connects "
             "(for a receiver that runs arraywire recv --connect)",
    )
    parser.add_argument(
        "--no-confirm", action="store_true",
        help="do not wait for the receiver to confirm that it wrote the array "
             "(for a receiving program that does not answer b'AWOK')",
    )
    _add_common(parser)
    parser.set_defaults(run=run_send)


def add_recv_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        help="[HOST:]PORT to listen on (all interfaces by default); "
             "with --connect, HOST:PORT of the sender",
    )
    parser.add_argument("-o", "--output", required=True, help="the .npy file to write")
    parser.add_argument(
        "--connect", action="store_true",
        help="connect to a sender that runs arraywire send --listen",
    )
    parser.add_argument(
        "--max-bytes", type=parse_size, default=None, metavar="SIZE",
        help="refuse arrays larger than this (K, M, G, T are powers of 1024; default: "
             "no cap, only the free space of the output directory)",
    )
    parser.add_argument("-f", "--force", action="store_true", help="replace an existing OUTPUT")
    _add_common(parser)
    parser.set_defaults(run=run_recv)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="no progress bar and no summary (errors and the listening address remain)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS",
        help="give up when the peer does not connect, or no byte moves, for this long "
             "(default: wait forever)",
    )


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 60G, 1T)")
    return int(match[1]) * _UNITS[match[2].upper()]


def parse_address(text: str, *, need_host: bool) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or (when need_host is false) PORT alone."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or int(port) > 65535:
        raise Failure(f"bad address {text!r}: expected {'HOST:' if need_host else '[HOST:]'}PORT")
    if need_host and not host:
        raise Failure(f"bad address {text!r}: expected HOST:PORT")
    return host, int(port)


# --- sending -----------------------------------------------------------------


def run_send(args: argparse.Namespace) -> int:
    return _main("send", args, _send)


def _send(args: argparse.Namespace) -> str:
    array = open_source(args.file)
    host, port = parse_address(args.address, need_host=not args.listen)
    with _connected(args, host, port, args.listen) as sock:
        total = plan_send([array]).total
        with _bar(args, total, f"send {os.path.basename(args.file)}") as progress:
            try:
                _framing.send_array(array, sock, progress=_stop_on_reply(sock, progress))
            except _ReplyWaiting:
                _raise_refusal(_read_reply(sock))
            except ConnectionError as exc:
                _raise_refusal(_read_reply(sock))
                raise Failure(
                    f"the receiver closed the connection after {_moved(exc):,} of "
                    f"{total:,} bytes"
                ) from None
        if not args.no_confirm:
            reply = _read_reply(sock)
            _raise_refusal(reply)
            if reply[0] != ACK:
                raise Failure(
                    "the receiver closed the connection without confirming that it wrote "
                    "the array (see its messages; a program that receives with "
                    "arraywire.recv_array confirms by sending b'AWOK', or pass --no-confirm)"
                )
    return f"sent {args.file} ({_describe(array.dtype, array.shape)})"


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


def _stop_on_reply(sock: socket.socket, progress: Progress) -> Progress:
    """progress, which also stops the send once the receiver has answered."""

    def report(done: int, total: int) -> None:
        progress(done, total)
        if done < total and select.select([sock], [], [], 0)[0]:
            raise _ReplyWaiting

    return report


def _read_reply(sock: socket.socket) -> tuple[bytes, str]:
    """The receiver's reply: (ACK, "") or (REFUSE, reason); (b"", "") if it
    closed the connection without one."""
    try:
        tag = _read_exactly(sock, len(ACK))
        if tag != REFUSE:
            return tag, ""
        (size,) = REASON_LENGTH.unpack(_read_exactly(sock, REASON_LENGTH.size))
        return tag, _read_exactly(sock, min(size, MAX_REASON)).decode("utf-8", "replace")
    except (ConnectionError, TimeoutError):
        return b"", ""


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _raise_refusal(reply: tuple[bytes, str]) -> None:
    if reply[0] == REFUSE:
        raise Failure(f"the receiver refused: {reply[1]}")


# --- receiving ---------------------------------------------------------------


def _refuse(sock: socket.socket, reason: str) -> NoReturn:
    """Tell the sender why its array is refused (docs/PROTOCOL.md, "The
    command line's exchange"), take in what it still sends until it closes,
    then fail with the reason."""
    text = reason.encode("utf-8")[:MAX_REASON]
    try:
        sock.sendall(REFUSE + REASON_LENGTH.pack(len(text)) + text)
        sock.shutdown(socket.SHUT_WR)
        # Closing with unread bytes would reset the connection and could
        # discard the reason before the sender reads it.
        deadline = time.monotonic() + DISCARD_SECONDS
        sock.settimeout(DISCARD_SECONDS)
        while time.monotonic() < deadline and sock.recv(1 << 20):
            pass
    except OSError:
        pass
    raise Failure(f"refused the sender's array: {reason}")


def run_recv(args: argparse.Namespace) -> int:
    return _main("recv", args, _recv)


def _recv(args: argparse.Namespace) -> str:
    output = args.output
    partial = output + ".partial"
    host, port = parse_address(args.address, need_host=args.connect)
    _check_output(output, args.force)
    with _connected(args, host, port, not args.connect) as sock:
        try:
            specs = _framing.recv_header(sock, None)
        except ProtocolError as exc:
            _refuse(sock, str(exc))
        except EOFError:  # cleanly or inside the header
            raise Failure("the sender closed the connection before sending an array") from None
        if len(specs) != 1:
            _refuse(sock, f"the message holds {len(specs)} arrays; arraywire recv takes one")
        spec = specs[0]
        if args.max_bytes is not None and spec.nbytes > args.max_bytes:
            _refuse(
                sock,
                f"the array is {spec.nbytes:,} bytes, over its --max-bytes of "
                f"{args.max_bytes:,}",
            )
        try:
            target = _create_partial(partial, spec)
        except BaseException as exc:
            _remove(partial)
            if isinstance(exc, Failure):
                _refuse(sock, str(exc))
            raise
        try:
            try:
                with _bar(args, spec.nbytes, f"recv {os.path.basename(output)}") as progress:
                    _receive(sock, target, spec.nbytes, progress)
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
    return f"wrote {output} ({_describe(spec.dtype, spec.shape)})"


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


def _receive(sock: socket.socket, target: np.ndarray, nbytes: int, progress: Progress) -> None:
    try:
        _transport.impl.recv_into(target, sock, progress=progress)
    except IncompleteTransferError as exc:
        raise Failure(
            f"the sender closed the connection after {exc.bytes_done:,} of {nbytes:,} "
            "bytes of the array"
        ) from None
    except ConnectionError as exc:
        raise Failure(
            f"lost the connection after {_moved(exc):,} of {nbytes:,} bytes of the array "
            f"({exc.strerror or exc})"
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
    started = time.monotonic()
    try:
        summary = body(args)
    except Failure as exc:
        return _fail(command, str(exc))
    except KeyboardInterrupt:
        return _fail(command, "interrupted", 130)
    except TimeoutError:
        return _fail(command, f"nothing moved for {args.timeout:g} s; gave up")
    except OSError as exc:
        return _fail(command, _os_error(exc))
    if not args.quiet:
        elapsed = time.monotonic() - started
        print(f"arraywire {command}: {summary} in {elapsed:.1f} s", file=sys.stderr)
    return 0


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


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


@contextmanager
def _connected(
    args: argparse.Namespace, host: str, port: int, listen: bool
) -> Iterator[socket.socket]:
    where = f"{host or '*'}:{port}"
    if listen:
        try:
            server = socket.create_server((host, port))
        except socket.gaierror as exc:
            raise Failure(f"cannot listen on {where}: {exc.strerror}") from None
        except OSError as exc:
            reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise Failure(f"cannot listen on {where}: {reason}") from None
        with server:
            bound = server.getsockname()
            # Printed even with --quiet: the peer needs the port (which may be 0 here).
            print(f"arraywire: listening on {host or '*'}:{bound[1]}", file=sys.stderr,
                  flush=True)
            server.settimeout(args.timeout)
            try:
                sock, _ = server.accept()
            except TimeoutError:
                raise Failure(f"nobody connected within {args.timeout:g} s") from None
    else:
        try:
            sock = socket.create_connection((host, port), timeout=args.timeout)
        except socket.gaierror as exc:
            raise Failure(f"cannot connect to {where}: {exc.strerror}") from None
        except ConnectionRefusedError:
            raise Failure(
                f"cannot connect to {where}: connection refused (nothing listens there)"
            ) from None
        except TimeoutError:
            raise Failure(f"cannot connect to {where}: timed out") from None
        except OSError as exc:
            raise Failure(f"cannot connect to {where}: {exc.strerror}") from None
    with sock:
        sock.settimeout(args.timeout)
        yield sock


@contextmanager
def _bar(args: argparse.Namespace, total: int, label: str) -> Iterator[Progress]:
    from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs in the lint extra

    # The bar is driven by progress callbacks: tqdm's watchdog thread adds nothing.
    tqdm.monitor_interval = 0
    bar = tqdm(
        total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
        disable=args.quiet, file=sys.stderr, dynamic_ncols=True,
    )

    def progress(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    with bar:
        yield progress


def _moved(exc: BaseException) -> int:
    return int(getattr(exc, "bytes_done", None) or 0)


def _describe(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return f"{dtype} {shape}, {nbytes:,} bytes"


__all__ = ["ACK", "REFUSE", "add_recv_arguments", "add_send_arguments", "parse_size"]
