"""The command line's connections: listening or connecting, TLS, the key's
opening and the stream groups of ``--streams``."""


from __future__ import annotations

import argparse
import errno
import os
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any, NamedTuple, NoReturn

from arraywire._cli.common import (
    ENDS,
    HOSTNAME_MISMATCH,
    IP_ADDRESS_MISMATCH,
    KEY_FILE_VARIABLE,
    MAX_KEY_BYTES,
    REFUSE,
    TLS_HANDSHAKE,
    Address,
    Ends,
    Failure,
    Incoming,
    format_address,
    hang_up,
    send_refusal,
)
from arraywire._core import tls, transport
from arraywire._drivers import sockets
from arraywire._sync import connection
from arraywire._wire import hello, peers
from arraywire._wire.errors import AuthenticationError, IncompleteTransferError, ProtocolError
from arraywire._wire.groups import DEFAULT_MAX_STREAMS
from arraywire._wire.header import MAGIC as MESSAGE_MAGIC


class Link(NamedTuple):
    """The connection to the peer, opening done: its streams (one unless the
    sender asked for more; SSLSockets with TLS), and the bytes a receiver
    without a key read from stream 0 while looking for a hello."""

    streams: list[socket.socket]
    early: bytes


@contextmanager
def link_for(
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
        core_for(sock).recv_into(start, sock)
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
        hang_up(first)
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


def core_for(sock: socket.socket) -> Any:
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
            send_refusal(
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


def tls_failure(exc: ssl.SSLError, peer: str) -> str:
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
            raise Failure(f"the {ends.peer} refused: {Incoming(sock, data).reply()[1]}") from None
        hang_up(sock)  # the peer reads this end's hello as what is wrong
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
