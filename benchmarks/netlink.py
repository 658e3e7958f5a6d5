"""A shaped link for parallel streams: two network namespaces joined by a veth
pair, with a per-flow limit of 100 Mbit/s under a link limit of 1 Gbit/s on
the sending side.

Data flows from the sender namespace (the end that connects) to the receiver
namespace (the end that listens). The sender's veth has a root HTB qdisc, one
1gbit parent class and one 100mbit leaf class (rate = ceil, so it never
borrows) per hash bucket. A u32 filter hashes TCP packets on the low byte of
their source port into 256 buckets, each linked to its own leaf class, so
every stream is held to 100 Mbit/s and N streams can reach N x 100 Mbit/s.

The hash key is ``mask 0x00ff0000 at 20``: the 32-bit word at offset 20 of an
IP header without options (Linux TCP sends none) is source port, destination
port; 0x00ff0000 is the source port's low byte. (``0x000000ff at 20`` is the
destination port's: every stream of one connection lands in one bucket; 4
flows measured 95.6 Mbit/s in total that way.)

Consecutive connects to one destination get source ports 2 to 16 apart
(Linux's port selection, RFC 6056 algorithm 4 with random even steps), so a
few streams opened together have distinct low bytes unless the port range
wraps between them: ``python benchmarks/netlink.py`` counts the collisions.

Needs Linux, root and iproute2; ``unavailable()`` gives the reason otherwise.

    python benchmarks/netlink.py   # build the link, measure plain TCP flows through it
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

FLOW_MBIT = 100
LINK_MBIT = 1000
BUCKETS = 256  # u32's largest divisor: the whole low byte of the source port
LEAF_BASE = 0x100  # leaf class 1:1XX serves bucket XX
DEFAULT_CLASS = 2  # what the filter leaves (ARP, ICMP) is limited too
SUBNET = "10.214.0"


@dataclass(frozen=True)
class ShapedLink:
    sender_ns: str
    receiver_ns: str
    sender_dev: str
    sender_address: str
    receiver_address: str

    def prefix(self, side: str) -> tuple[str, ...]:
        """The command prefix that runs a program in the sender's or receiver's namespace."""
        return ("ip", "netns", "exec", self.sender_ns if side == "sender" else self.receiver_ns)

    def bucket_bytes(self) -> dict[int, int]:
        """Bytes each hash bucket's leaf class has sent so far, by bucket."""
        stats = _run("tc", "-n", self.sender_ns, "-s", "class", "show", "dev", self.sender_dev)
        sent = {}
        for classid, nbytes in re.findall(r"class htb 1:([0-9a-f]+) .*?\n\s*Sent (\d+) bytes", stats):
            bucket = int(classid, 16) - LEAF_BASE
            if 0 <= bucket < BUCKETS:
                sent[bucket] = int(nbytes)
        return sent


def unavailable() -> str | None:
    """Why the link cannot be built here, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"iproute2 is missing: {', '.join(missing)}"
    return None


def _run(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(args, input=stdin, check=True, capture_output=True, text=True, timeout=60).stdout


def _htb(dev: str) -> str:
    """The tc batch of the sender's qdisc, classes and filters."""
    # r2q 1000 keeps every class's quantum (rate / r2q) within HTB's bounds.
    lines = [
        f"qdisc add dev {dev} root handle 1: htb default {DEFAULT_CLASS:x} r2q 1000",
        f"class add dev {dev} parent 1: classid 1:1 htb rate {LINK_MBIT}mbit ceil {LINK_MBIT}mbit",
        f"class add dev {dev} parent 1:1 classid 1:{DEFAULT_CLASS:x} htb rate {FLOW_MBIT}mbit ceil {FLOW_MBIT}mbit",
        f"filter add dev {dev} parent 1: prio 1 handle 2: protocol ip u32 divisor {BUCKETS}",
        f"filter add dev {dev} parent 1: prio 1 protocol ip u32 ht 800:: "
        "match ip protocol 6 0xff hashkey mask 0x00ff0000 at 20 link 2:",
    ]
    for bucket in range(BUCKETS):
        leaf = f"1:{LEAF_BASE + bucket:x}"
        lines.append(f"class add dev {dev} parent 1:1 classid {leaf} htb rate {FLOW_MBIT}mbit ceil {FLOW_MBIT}mbit")
        lines.append(f"filter add dev {dev} parent 1: prio 1 protocol ip u32 ht 2:{bucket:x}: match u32 0 0 flowid {leaf}")
    return "\n".join(lines) + "\n"


@contextmanager
def shaped_link() -> Iterator[ShapedLink]:
    """Build the link; remove both namespaces (and the pair with them) on exit.

    Raises RuntimeError with the reason when it cannot be built.
    """
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    tag = f"awh{os.getpid() % 1_000_000}"
    link = ShapedLink(f"{tag}s", f"{tag}r", f"{tag}vs", f"{SUBNET}.1", f"{SUBNET}.2")
    receiver_dev = f"{tag}vr"
    steps = [
        ("ip", "netns", "add", link.sender_ns),
        ("ip", "netns", "add", link.receiver_ns),
        ("ip", "link", "add", link.sender_dev, "type", "veth", "peer", "name", receiver_dev),
        ("ip", "link", "set", link.sender_dev, "netns", link.sender_ns),
        ("ip", "link", "set", receiver_dev, "netns", link.receiver_ns),
        ("ip", "-n", link.sender_ns, "addr", "add", f"{link.sender_address}/30", "dev", link.sender_dev),
        ("ip", "-n", link.receiver_ns, "addr", "add", f"{link.receiver_address}/30", "dev", receiver_dev),
        ("ip", "-n", link.sender_ns, "link", "set", link.sender_dev, "up"),
        ("ip", "-n", link.receiver_ns, "link", "set", receiver_dev, "up"),
    ]
    try:
        try:
            for args in steps:
                _run(*args)
            _run("tc", "-n", link.sender_ns, "-batch", "-", stdin=_htb(link.sender_dev))
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"cannot build the shaped link ({' '.join(exc.cmd)}): {exc.stderr.strip()}") from None
        yield link
    finally:
        for args in (
            ("ip", "link", "del", link.sender_dev),  # only if it never moved
            ("ip", "netns", "del", link.sender_ns),  # takes its end of the pair
            ("ip", "netns", "del", link.receiver_ns),
        ):
            subprocess.run(args, capture_output=True, timeout=30)


# --- plain TCP flows through the link --------------------------------------------


def plain_flows(link: ShapedLink, flows: int, nbytes: int) -> float:
    """Mbit/s of `flows` TCP connections (one thread each, sendall / recv_into),
    each moving nbytes, timed by the receiver from its first accept to its
    last byte."""
    here = os.path.abspath(__file__)
    sink = subprocess.Popen(
        [*link.prefix("receiver"), sys.executable, here, "sink", link.receiver_address, str(flows), str(nbytes)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert sink.stdout is not None
        port = sink.stdout.readline().strip()
        subprocess.run(
            [*link.prefix("sender"), sys.executable, here, "source", link.receiver_address, port,
             str(flows), str(nbytes)],
            check=True, timeout=600,
        )
        seconds = float(sink.stdout.readline())
        if sink.wait(60):
            raise RuntimeError("the receiving end of the plain flows failed")
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return flows * nbytes * 8 / seconds / 1e6


def _sink(host: str, flows: int, nbytes: int) -> None:
    with socket.create_server((host, 0), backlog=flows) as server:
        print(server.getsockname()[1], flush=True)
        conns = [server.accept()[0]]
        started = time.perf_counter()
        conns += [server.accept()[0] for _ in range(flows - 1)]

    def drain(conn: socket.socket) -> None:
        view = memoryview(bytearray(1 << 20))
        left = nbytes
        while left:
            got = conn.recv_into(view, min(left, len(view)))
            if not got:
                raise EOFError("a flow ended early")
            left -= got

    _each(drain, conns)
    print(time.perf_counter() - started, flush=True)


def _source(host: str, port: int, flows: int, nbytes: int) -> None:
    conns = [socket.create_connection((host, port)) for _ in range(flows)]
    payload = memoryview(bytes(nbytes))
    _each(lambda conn: conn.sendall(payload), conns)


def _each(work: Callable[[socket.socket], object], conns: list[socket.socket]) -> None:
    """work(conn) on every connection at once, one thread each (an error in
    one is raised here); then close them."""
    with ThreadPoolExecutor(len(conns)) as pool:
        list(pool.map(work, conns))
    for conn in conns:
        conn.close()


def port_collisions(link: ShapedLink, streams: int, tries: int) -> int:
    """How many of `tries` groups of `streams` consecutive connects from the
    sender to one receiver port had two source ports in one bucket."""
    here = os.path.abspath(__file__)
    listener = subprocess.Popen(
        [*link.prefix("receiver"), sys.executable, here, "accept", link.receiver_address,
         str(streams * tries)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        code = (
            "import socket\n"
            "shared = 0\n"
            f"for _ in range({tries}):\n"
            f"    conns = [socket.create_connection(({link.receiver_address!r}, {port})) for _ in range({streams})]\n"
            f"    shared += len({{c.getsockname()[1] & 0xff for c in conns}}) < {streams}\n"
            "    for c in conns:\n"
            "        c.close()\n"
            "print(shared)\n"
        )
        return int(_run(*link.prefix("sender"), sys.executable, "-c", code))
    finally:
        listener.kill()
        listener.wait()


def _accept(host: str, count: int) -> None:
    with socket.create_server((host, 0), backlog=64) as server:
        print(server.getsockname()[1], flush=True)
        for _ in range(count):
            server.accept()[0].close()


def main() -> int:
    reason = unavailable()
    if reason:
        print(f"netlink: {reason}", file=sys.stderr)
        return 1
    with shaped_link() as link:
        print(f"per-flow limit {FLOW_MBIT} Mbit/s, link limit {LINK_MBIT} Mbit/s; plain TCP flows:")
        for flows in (1, 2, 4):
            speeds = [plain_flows(link, flows, 25_000_000) for _ in range(3)]
            print(f"  {flows} flow(s): {statistics.median(speeds):.1f} Mbit/s "
                  f"(median of {', '.join(f'{s:.1f}' for s in speeds)})")
        for streams in (2, 4, 8):
            tries = 500
            print(f"  {streams} consecutive connects sharing a bucket: "
                  f"{port_collisions(link, streams, tries)} of {tries}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["sink"]:
        _sink(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1:2] == ["accept"]:
        _accept(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["source"]:
        _source(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(main())
