"""The command line's connections, made with the library's Listener and
connections: listening or connecting, TLS, the key's opening and the stream
groups of ``--streams``. A receiver that listens drops, in one line, every
peer that fails its opening, and waits for the next."""


from __future__ import annotations

import argparse
import errno
import math
import os
import select
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

from arraywire._cli.common import (
    HOSTNAME_MISMATCH,
    IP_ADDRESS_MISMATCH,
    KEY_FILE_VARIABLE,
    MAX_KEY_BYTES,
    Ends,
    Failure,
    Incoming,
    authentication_failure,
    format_address,
    hang_up,
    key_on_one_end,
    send_refusal,
)
from arraywire._drivers import sockets
from arraywire._sync.channel import Channel
from arraywire._sync.connection import open_channel
from arraywire._sync.listener import Listener
from arraywire._wire import hello
from arraywire._wire.errors import AuthenticationError, ProtocolError, StreamsRefused
from arraywire._wire.groups import DEFAULT_MAX_STREAMS, Groups

# Once --timeout has passed, how often a receiver looks whether a peer that
# came in time has finished its opening.
RETRY_SECONDS = 0.05


def handshake_seconds(args: argparse.Namespace) -> float:
    """How long a peer has for everything before the array's header: the
    TLS handshake, the opening and (at a receiver) the header itself."""
    return float(min(args.handshake_timeout, args.timeout or math.inf))


@contextmanager
def listening(args: argparse.Namespace, ends: Ends) -> Iterator[Listener]:
    """The library's Listener for this end's peers; its address is printed
    for them. Without a key a receiver takes a sender's bare message (or the
    hellos of its streams), and a sender expects nothing of its receiver."""
    key = read_key(args.key_file)
    context = tls_context(args, True)
    host, port = args.address
    # A port alone: every interface, IPv4 and IPv6 on one socket where the OS can.
    host = host or ("::" if socket.has_dualstack_ipv6() else "")
    where = format_address(host or "0.0.0.0", port)
    try:
        server, _ = sockets.server_socket((host, port), sockets.DEFAULT_BACKLOG)
    except socket.gaierror as exc:
        raise Failure(f"cannot listen on {where}: {exc.strerror}") from None
    except OSError as exc:
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise Failure(f"cannot listen on {where}: {reason}") from None
    opening = _opening(key, ends)
    wait = handshake_seconds(args)
    max_streams = getattr(args, "max_streams", None) or DEFAULT_MAX_STREAMS  # send has none
    groups: Groups[socket.socket] = Groups(max_streams, wait)
    listener = Listener(
        server, wait, authkey=key, ssl=context, groups=groups, opening=opening,
        on_drop=_on_drop(args, ends, context is not None, key is not None, wait),
    )
    with listener:
        # Printed even with --quiet: the peer needs the port (which may be 0 here).
        # One write per line (end=""): the Listener's thread may print a dropped peer meanwhile.
        print(f"arraywire {ends.me_command}: listening on {_listening_on(server)}\n", end="",
              file=sys.stderr, flush=True)
        yield listener


def _opening(key: bytes | None, ends: Ends, streams: int = 1) -> str:
    """How a connection of this end opens: with a key or streams, the hello;
    else a plain transfer, one bare message, which the receiver waits for."""
    if key is not None or streams > 1:
        return "hello"
    return "hello or message" if ends.me == "receiver" else "none"


def accept(listener: Listener, args: argparse.Namespace, deadline: float | None) -> Channel:
    """The next peer whose opening is done; a Failure once none came by the
    deadline (--timeout). Dropped peers have been told of on stderr."""
    while True:
        wait = None if deadline is None else deadline - time.monotonic()
        try:
            if wait is not None and wait <= 0:
                raise TimeoutError
            channel = listener.accept(timeout=wait)
        except TimeoutError:
            # a peer came in time (its opening is under way, or the Listener's
            # thread has yet to take it from the backlog): its opening decides
            if listener.openings or select.select([listener], [], [], 0)[0]:
                deadline = time.monotonic() + RETRY_SECONDS
                continue
            raise Failure(f"nobody connected within {args.timeout:g} s") from None
        except AuthenticationError:
            continue  # on_drop said so
        for sock in channel.sockets:
            sock.settimeout(args.timeout)
        return channel


def dropped(peer: Any, text: str) -> None:
    """One line on a peer this receiver dropped, also under --quiet."""
    # one write (end=""), as the Listener's thread prints it beside the main thread's lines
    print(f"arraywire recv: dropped {_peer_name(peer)}: {text}\n", end="", file=sys.stderr,
          flush=True)


def _peer_name(peer: Any) -> str:
    if isinstance(peer, tuple):
        return format_address(peer[0], peer[1])
    return str(peer) or "a local peer"


def _on_drop(
    args: argparse.Namespace, ends: Ends, uses_tls: bool, keyed: bool, wait: float
) -> Callable[[Any, BaseException, socket.socket], None]:
    """What this end does with a peer that failed its opening: a receiver
    says so and waits for the next; a sender fails."""

    def on_drop(peer: Any, why: BaseException, sock: socket.socket) -> None:
        text = _why_dropped(why, sock, ends, uses_tls, keyed, wait)
        if ends.me == "sender":
            raise Failure(text)
        dropped(peer, text)

    return on_drop


def _why_dropped(
    why: BaseException, sock: socket.socket, ends: Ends, uses_tls: bool, keyed: bool,
    wait: float,
) -> str:
    """A dropped peer's failure, in the command line's words."""
    peer = ends.peer
    if isinstance(why, ProtocolError) and why.speaks is not None:
        return _unexpected(why, sock, ends, uses_tls, keyed)
    if isinstance(why, (AuthenticationError, StreamsRefused)):
        hang_up(sock)  # the peer reads why before the connection closes
    if isinstance(why, StreamsRefused):
        if why.status == hello.TOO_MANY_STREAMS:
            return (
                f"refused the sender's {why.asked} streams: this end takes at most "
                f"{why.max_streams} (--max-streams)"
            )
        return "closed a connection that is not one of the sender's streams"
    if isinstance(why, AuthenticationError):
        return authentication_failure(why, ends)
    if isinstance(why, ssl.SSLError):
        return tls_failure(why, peer)
    if isinstance(why, TimeoutError):
        if uses_tls and not isinstance(sock, ssl.SSLSocket):
            return (
                f"the TLS handshake with the {peer} did not complete within {wait:g} s "
                f"(does it use TLS? run arraywire {ends.peer_command} with --tls too)"
            )
        return str(why).replace("the peer", f"the {peer}", 1)
    if isinstance(why, ProtocolError):
        return f"the connection opening with the {peer} failed: {why}"
    if isinstance(why, ConnectionResetError):
        return f"the {peer} reset the connection during the opening"
    return f"the {peer} closed the connection during the opening"


def _unexpected(
    why: ProtocolError, sock: socket.socket, ends: Ends, uses_tls: bool, keyed: bool
) -> str:
    """A peer that sent something else than this end waited for."""
    speaks, first = why.speaks, why.first
    if speaks in ("http", "other"):
        return f"not an arraywire peer ({first[:4]!r})"
    if speaks == "refusal":
        return f"the {ends.peer} refused: {Incoming(sock, first).reply()[1]}"
    # a TLS Listener's plain socket is still plain only when its peer spoke first in clear
    if (not isinstance(sock, ssl.SSLSocket)) if uses_tls else speaks == "tls":
        if uses_tls:
            told = f"the {ends.me} uses TLS: run arraywire {ends.peer_command} with --tls too"
            text = f"the {ends.peer} does not use TLS: run arraywire {ends.peer_command} with --tls too"
        else:
            told = f"the {ends.me} does not use TLS: run arraywire {ends.me_command} with --tls"
            text = _peer_uses_tls(ends)
        if ends.me == "receiver":
            # Told in clear, in the words of the exchange: the peer reads it as a refusal.
            with suppress(Failure):
                send_refusal(sock, f"{told} (and --tls-ca for a CA of your own)" if uses_tls else told)
        return text
    if speaks == "message" and ends.me == "receiver" and not keyed:
        # a plain sender's message that this end cannot read: it waits for the verdict
        with suppress(Failure):
            send_refusal(sock, str(why))
        return f"refused the sender's array: {why}"
    hang_up(sock)  # the peer reads this end's hello as what is wrong
    if speaks == "message":
        return key_on_one_end(ends, keyed_here=True)  # only a keyless sender sends one
    return f"the connection opening with the {ends.peer} failed: {why}"


def _peer_uses_tls(ends: Ends) -> str:
    """What an end without TLS says of a peer that opened with a TLS handshake."""
    return (
        f"the {ends.peer} uses TLS and this end does not: give this end --tls-cert and "
        "--tls-key too"
    )


def _listening_on(server: socket.socket) -> str:
    host, port = sockets.bound_address(server)
    where = format_address(host, port)
    if host == "0.0.0.0":
        return f"{where} (all interfaces, IPv4 only)"
    if host == "::":
        ipv6_only = server.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        return f"{where} (all interfaces, {'IPv6 only' if ipv6_only else 'IPv4 and IPv6'})"
    return where


def dial(args: argparse.Namespace, ends: Ends, streams: int = 1) -> Channel:
    """A connection to the listening peer, opening done, tried again while
    refused so that either end may start first. Without a key or streams it
    sends no hello: a plain transfer is one bare message."""
    key = read_key(args.key_file)
    context = tls_context(args, False)
    where = format_address(*args.address)
    quiet = args.quiet

    def waiting() -> None:
        if not quiet:  # --quiet: no note while waiting
            until = "until it does" if args.timeout is None else f"for up to {args.timeout:g} s"
            print(
                f"arraywire {ends.me_command}: nothing listens on {where} yet; trying again {until} "
                f"(is the {ends.peer} running?)",
                file=sys.stderr, flush=True,
            )

    try:
        channel = open_channel(
            args.address, timeout=args.timeout, authkey=key, ssl=context,
            streams=streams, opening=_opening(key, ends, streams), wait_for_listener=True,
            on_refused=waiting, handshake_timeout=handshake_seconds(args),
        )
    except StreamsRefused as exc:
        raise Failure(_streams_refused(exc)) from None
    except ConnectionRefusedError:
        if args.timeout is None:  # stream 0 waits for a listener: a later one was refused
            raise Failure(
                f"cannot connect every stream to {where}: connection refused (the "
                f"{ends.peer} stopped listening after stream 0; see its messages)"
            ) from None
        raise Failure(
            f"cannot connect to {where}: connection refused for {args.timeout:g} s "
            "(nothing listens there)"
        ) from None
    except socket.gaierror as exc:
        raise Failure(f"cannot connect to {where}: {exc.strerror}") from None
    except AuthenticationError as exc:
        raise Failure(authentication_failure(exc, ends)) from None
    except ProtocolError as exc:
        raise Failure(_opening_failed(exc, ends, key is not None)) from None
    except TimeoutError as exc:
        # The OS's own time limit says so in strerror; the socket's does not.
        raise Failure(
            f"cannot connect to {where}, or open the connection, in time: "
            f"{exc.strerror or exc or 'no answer'}"
        ) from None
    except ConnectionResetError:
        raise Failure(f"the {ends.peer} reset the connection during the opening") from None
    except ssl.SSLError:
        raise
    except OSError as exc:
        raise Failure(f"cannot connect to {where}: {exc.strerror or exc}") from None
    for sock in channel.sockets:
        sock.settimeout(args.timeout)
    return channel


def _streams_refused(exc: StreamsRefused) -> str:
    """The receiver's answer to a stream of the sender's group, in the
    command line's words."""
    if exc.status == hello.TOO_MANY_STREAMS:
        return (
            f"the receiver takes at most {exc.max_streams} streams: use --streams "
            f"{exc.max_streams} or fewer, or arraywire recv --max-streams {exc.asked}"
        )
    if exc.status == hello.NOT_JOINABLE:
        return (
            f"the receiver did not let stream {exc.member} join the others (it gave up "
            "waiting for them, or has that stream already)"
        )
    return "the receiver takes no parallel streams: use --streams 1"


def _opening_failed(exc: ProtocolError, ends: Ends, keyed: bool) -> str:
    """A failed opening of a connecting end, in the command line's words."""
    if exc.speaks == "nothing" and ends.me == "receiver":
        return "the sender closed the connection before sending an array"
    if exc.speaks == "refusal":
        return f"the {ends.peer} refused: {str(exc).removeprefix('the peer refused: ')}"
    if exc.speaks == "message" and not keyed:  # a keyless receiver's: a preamble it cannot read
        return f"the sender's header is not one this end reads: {exc}"
    if exc.speaks == "message":
        return key_on_one_end(ends, keyed_here=True)
    if exc.speaks == "tls":
        return _peer_uses_tls(ends)
    if "does not speak TLS" in str(exc):  # the TLS handshake met a plain peer
        return (
            f"the {ends.peer} does not use TLS: run arraywire {ends.peer_command} with "
            "--tls-cert and --tls-key too"
        )
    return f"the connection opening with the {ends.peer} failed: {exc}"


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
