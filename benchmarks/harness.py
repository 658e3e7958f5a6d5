"""The benchmark suite's child processes: contenders, streams over several
connections, ping-pongs and memory, on the process pairs of
``arraywire._bench`` (the harness of ``arraywire bench``).

``run_pair(job)`` starts this file as both children. Job keys beyond those of
``arraywire._bench.run_pair``: kind ("stream" or "pingpong"), contender
("module:Class", imported from the job's path) and netns (role -> the network
namespace that child runs in; its contender makes its own connection).
"""

from __future__ import annotations

import ctypes
import importlib
import itertools
import json
import os
import resource
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

import arraywire
from arraywire._cli import bench
from arraywire._cli.bench import check, pattern, recv_line, repetitions, send_line

HERE = str(Path(__file__).resolve().parent)
CLONE_NEWNET = 0x40000000
# A receiver of parallel streams takes up to 8, as `arraywire recv` does.
MAX_STREAMS = 8
CHILD = (sys.executable, str(Path(__file__).resolve()))


def run_pair(job: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    return bench.run_pair(job, CHILD, timeout)


class Contender:
    """A way to move arrays, built in both child processes as
    ``Class(sock, ctl, job, role)``; role "measure" is the side that times
    (the receiver of a stream, the client of a ping-pong). Streams call
    send_many / recv_many, ping-pongs send / recv."""

    def __init__(self, sock: socket.socket, ctl: socket.socket, job: dict[str, Any], role: str):
        self.sock = sock

    def send(self, array: np.ndarray) -> None:
        raise NotImplementedError

    def recv(self, out: np.ndarray) -> Any:
        """Receive one message (into out where the contender can); return it."""
        raise NotImplementedError

    def send_many(self, array: np.ndarray, count: int) -> None:
        for _ in range(count):
            self.send(array)

    def recv_many(self, out: np.ndarray, count: int) -> Any:
        received = None
        for _ in range(count):
            received = None  # free a received message before the next
            received = self.recv(out)
        return received

    def close(self) -> None:
        self.sock.close()

    def details(self) -> dict[str, Any]:
        """What the result should say about the connection, beyond its timings."""
        return {}


class Raw(Contender):
    """arraywire.send_from / recv_into."""

    def send(self, array: np.ndarray) -> None:
        arraywire.send_from(array, self.sock)

    def recv(self, out: np.ndarray) -> np.ndarray:
        arraywire.recv_into(out, self.sock)
        return out


class Framed(Contender):
    """Self-describing messages: send_array / recv_array (a new array each)."""

    def send(self, array: np.ndarray) -> None:
        arraywire.send_array(array, self.sock)

    def recv(self, out: np.ndarray) -> np.ndarray:
        return arraywire.recv_array(self.sock, max_bytes=None)


class ChannelMessages(Contender):
    """arraywire.Channel: send / recv, one call per message."""

    def __init__(self, sock: socket.socket, ctl: socket.socket, job: dict[str, Any], role: str):
        super().__init__(sock, ctl, job, role)
        self.channel = self.open(sock, ctl, job, role)

    def open(self, sock: socket.socket, ctl: socket.socket, job: dict[str, Any], role: str) -> arraywire.Channel:
        return arraywire.Channel(sock)

    def send(self, array: np.ndarray) -> None:
        self.channel.send(array)

    def recv(self, out: np.ndarray) -> np.ndarray:
        return self.channel.recv(max_bytes=None)

    def close(self) -> None:
        self.channel.close()


class Connected(ChannelMessages):
    """A Channel from arraywire.listen / connect, as users open one (hello
    included), over TLS when job["certs"] names the PEM files, over
    job["streams"] parallel connections when it is above 1, with
    ``same_host=job["same_host"]`` at both ends (the default when absent).
    The measuring side listens on job["host"] (loopback by default), or on a
    path in a temporary directory when job["family"] is "unix", and passes
    its port or path over the control socket."""

    def open(self, sock: socket.socket, ctl: socket.socket, job: dict[str, Any], role: str) -> arraywire.Channel:
        sock.close()
        certs = job.get("certs")
        host = job.get("host", "127.0.0.1")
        unix = job["family"] == "unix"
        options = {"streams": job.get("streams", 1), "same_host": job.get("same_host")}
        if role != "measure":
            context = ssl.create_default_context(cafile=certs["ca"]) if certs else None
            where = recv_line(ctl)
            return arraywire.connect(where if unix else (host, int(where)), ssl=context, **options)
        context = None
        if certs:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certs["cert"])
        with tempfile.TemporaryDirectory() as directory:
            address = os.path.join(directory, "listener") if unix else (host, 0)
            with arraywire.listen(address, ssl=context, max_streams=MAX_STREAMS,
                                  same_host=options["same_host"]) as listener:
                send_line(ctl, address if unix else str(listener.address[1]))
                return listener.accept()

    def details(self) -> dict[str, Any]:
        # The connections the receiver joined: a streams= that was ignored shows here;
        # likewise whether the opening turned same-host copies on.
        details: dict[str, Any] = {"sockets": len(self.channel.sockets), "same_host": self.channel.same_host}
        tls = self.channel.socket
        if isinstance(tls, ssl.SSLSocket):
            details["tls"] = f"{tls.version()}, {tls.cipher()[0]}, {ssl.OPENSSL_VERSION}"
        return details


class ConnectedInto(Connected):
    """Connected, receiving with ``recv(out=)`` into the reused buffer (the
    warm-up repetition has faulted its pages in)."""

    def recv(self, out: np.ndarray) -> np.ndarray:
        return self.channel.recv(out=out, max_bytes=None)


class ChannelBatched(ChannelMessages):
    """arraywire.Channel: send_many into ``for x in channel``."""

    def send_many(self, array: np.ndarray, count: int) -> None:
        self.channel.send_many(itertools.repeat(array, count))

    def recv_many(self, out: np.ndarray, count: int) -> Any:
        received = None
        for received in itertools.islice(self.channel, count):  # noqa: B007 - the last one is checked
            pass
        return received


def rss_kib() -> tuple[int, int]:
    """(current, peak) resident set size in KiB (Linux).

    The peak is ru_maxrss. Linux carries it over from the parent through
    fork and exec, so a baseline must be the current size, not the peak.
    """
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def stream(job: dict[str, Any], role: str, ctl: socket.socket, contenders: list[Any]) -> dict[str, Any]:
    """The receiver times each repetition from its "go" to its last byte.

    One connection runs in the main thread, as most programs would run it;
    several run in one thread each.
    """
    sizes = job["sizes"]
    receiving = role == "measure"
    rss_before, _ = rss_kib()
    # Receive buffers are only touched (and counted in RSS) by contenders
    # that receive into them.
    buffers = [
        np.empty(max(sizes) // 8) if receiving else pattern(max(sizes)) for _ in contenders
    ]
    seconds = {}
    with ThreadPoolExecutor(len(contenders)) as pool:
        for size in sizes:
            seconds[str(size)] = repetitions(
                job, role, ctl, size, mover(contenders, buffers, size, receiving, pool)
            )
    return {
        "seconds": seconds,
        "connections": len(contenders),
        "rss_before_kib": rss_before,
        "max_rss_after_kib": rss_kib()[1],
    }


def mover(
    contenders: list[Any], buffers: list[np.ndarray], size: int, receiving: bool,
    pool: ThreadPoolExecutor,
) -> Callable[[int], None]:
    """run(count): move count messages of size bytes on every connection."""

    def move(index: int, count: int) -> Any:
        array = buffers[index][: size // 8]
        if receiving:
            return contenders[index].recv_many(array, count)
        contenders[index].send_many(array, count)
        return None

    def run(count: int) -> None:
        if len(contenders) == 1:
            results = [move(0, count)]
        else:
            results = list(pool.map(move, range(len(contenders)), [count] * len(contenders)))
        if receiving:
            for received in results:
                check(received, size)

    return run


def pingpong(job: dict[str, Any], role: str, ctl: socket.socket, contenders: list[Any]) -> dict[str, Any]:
    """The client times round trips: it sends, the peer echoes what it got."""
    (contender,) = contenders
    seconds = {}
    for size in job["sizes"]:
        array = pattern(size)
        out = np.empty_like(array)

        def run(count: int) -> None:
            if role != "measure":
                for _ in range(count):
                    contender.send(contender.recv(out))
                return
            for _ in range(count):
                contender.send(array)
                received = contender.recv(out)
            check(received, size)

        seconds[str(size)] = repetitions(job, role, ctl, size, run)
    return {"seconds": seconds, "connections": 1}


def measure(
    job: dict[str, Any], role: str, ctl: socket.socket, socks: list[socket.socket],
    closing: ExitStack,
) -> dict[str, Any]:
    module, name = job["contender"].split(":")
    factory = getattr(importlib.import_module(module), name)
    contenders = [factory(sock, ctl, job, role) for sock in socks]
    for contender in contenders:
        closing.callback(contender.close)
    result = (pingpong if job["kind"] == "pingpong" else stream)(job, role, ctl, contenders)
    return {**result, **contenders[0].details()}


def enter_netns(name: str) -> None:
    """Move this process into a network namespace made by `ip netns add`
    (the job's "netns" maps each role to one), before any socket or thread."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}") as namespace:
        if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"cannot enter network namespace {name}")


if __name__ == "__main__":
    namespace = json.loads(sys.argv[1]).get("netns", {}).get(sys.argv[2])
    if namespace:
        enter_netns(namespace)
    raise SystemExit(bench.serve_role(sys.argv[1:], measure))
