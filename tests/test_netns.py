"""Real, constrained links: two network namespaces joined by a veth pair.

In the first, the sending side is rate-limited by tbf with a queue so small
that it drops packets. TCP retransmits; the data must still arrive intact.
The second is the shaped link of benchmarks/netlink.py (100 Mbit/s per TCP
source port bucket, 1 Gbit/s in all): parallel streams must be distinct
flows, each through its own bucket, and the data must arrive intact.

Needs root and iproute2 (`ip`, `tc`); skipped with the reason otherwise. The
namespaces are these tests' own: their only route is the veth pair."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from backends import Backend
from faultkit import Child

SIZE = 256 << 20
# A few seconds for 256 MB, and a queue smaller than one TSO burst, so it
# drops tens of thousands of packets (a 16 KB queue makes TCP back off for minutes).
RATE, BURST, LIMIT = "1gbit", "32kb", "64kb"
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
STREAMS = 4
# About 1.4 s over 4 streams, 5.6 s if they shared one flow's limit.
STREAMS_SIZE = 64 << 20


@dataclass(frozen=True)
class Link:
    sender_ns: str
    receiver_ns: str
    sender_dev: str
    receiver_address: str


def _ip(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


def _dropped(link: Link) -> int:
    stats = _ip("tc", "-n", link.sender_ns, "-s", "qdisc", "show", "dev", link.sender_dev)
    return sum(int(n) for n in re.findall(r"dropped (\d+)", stats))


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"iproute2 is missing: {', '.join(missing)}")
    tag = f"aw{os.getpid() % 1_000_000}"
    made = Link(f"{tag}s", f"{tag}r", f"{tag}vs", "10.213.0.2")
    receiver_dev = f"{tag}vr"
    steps = [
        ("ip", "netns", "add", made.sender_ns),
        ("ip", "netns", "add", made.receiver_ns),
        ("ip", "link", "add", made.sender_dev, "type", "veth", "peer", "name", receiver_dev),
        ("ip", "link", "set", made.sender_dev, "netns", made.sender_ns),
        ("ip", "link", "set", receiver_dev, "netns", made.receiver_ns),
        ("ip", "-n", made.sender_ns, "addr", "add", "10.213.0.1/30", "dev", made.sender_dev),
        ("ip", "-n", made.receiver_ns, "addr", "add", "10.213.0.2/30", "dev", receiver_dev),
        ("ip", "-n", made.sender_ns, "link", "set", made.sender_dev, "up"),
        ("ip", "-n", made.receiver_ns, "link", "set", receiver_dev, "up"),
        ("tc", "-n", made.sender_ns, "qdisc", "add", "dev", made.sender_dev, "root",
         "tbf", "rate", RATE, "burst", BURST, "limit", LIMIT),
    ]

    def remove() -> None:
        for args in (
            ("ip", "link", "del", made.sender_dev),  # only if it never moved
            ("ip", "netns", "del", made.sender_ns),  # takes its end of the pair
            ("ip", "netns", "del", made.receiver_ns),
        ):
            subprocess.run(args, capture_output=True, timeout=30)

    try:
        for args in steps:
            _ip(*args)
    except subprocess.CalledProcessError as exc:
        remove()
        pytest.skip(f"cannot build the test link ({' '.join(exc.cmd)}): {exc.stderr.strip()}")
    yield made
    remove()


@pytest.mark.slow
def test_256_mb_over_a_rate_limited_lossy_link(backend: Backend, link: Link) -> None:
    dropped_before = _dropped(link)
    receiver = Child(
        backend.name,
        "import hashlib\n"
        f"server = socket.create_server(({link.receiver_address!r}, 0))\n"
        "print(server.getsockname()[1], flush=True)\n"
        "server.settimeout(60)\n"
        "conn, _ = server.accept()\n"
        "conn.settimeout(30)\n"
        "started = time.monotonic()\n"
        "array = arraywire.recv_array(conn)\n"
        "print(hashlib.blake2b(array).hexdigest(), array.nbytes, time.monotonic() - started, flush=True)\n",
        prefix=("ip", "netns", "exec", link.receiver_ns),
    )
    sender = None
    try:
        port = int(receiver.line())
        sender = Child(
            backend.name,
            "import hashlib\n"
            f"array = np.random.default_rng(3).integers(0, 256, {SIZE}, dtype=np.uint8)\n"
            f"sock = socket.create_connection(({link.receiver_address!r}, {port}), timeout=30)\n"
            "arraywire.send_array(array, sock)\n"
            "sock.close()\n"
            "print(hashlib.blake2b(array).hexdigest(), flush=True)\n",
            prefix=("ip", "netns", "exec", link.sender_ns),
        )
        sent_digest = sender.line(120)
        received_digest, nbytes, seconds = receiver.line(120).split()
        assert receiver.wait() == 0 and sender.wait() == 0
    finally:
        receiver.kill()
        if sender is not None:
            sender.kill()
    assert (received_digest, int(nbytes)) == (sent_digest, SIZE)
    assert _dropped(link) > dropped_before, "the queue dropped nothing: the link is not lossy"
    print(f"256 MB in {float(seconds):.1f} s, {_dropped(link) - dropped_before} packets dropped")


@pytest.fixture(scope="module")
def shaped_link() -> Iterator[Any]:
    """The benchmarks' shaped link (benchmarks/netlink.py)."""
    if not (BENCHMARKS / "netlink.py").exists():
        pytest.skip("benchmarks/netlink.py is not beside the tests (a copy of the tests alone)")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import netlink
    finally:
        sys.path.remove(str(BENCHMARKS))
    reason = netlink.unavailable()
    if reason:
        pytest.skip(reason)
    with ExitStack() as stack:
        try:
            link = stack.enter_context(netlink.shaped_link())
        except RuntimeError as exc:
            pytest.skip(str(exc))
        yield link


@pytest.mark.slow
def test_parallel_streams_are_distinct_flows_through_a_shaped_link(backend: Backend, shaped_link: Any) -> None:
    link = shaped_link
    before = link.bucket_bytes()
    receiver = Child(
        backend.name,
        "import hashlib\n"
        f"listener = arraywire.listen(({link.receiver_address!r}, 0), max_streams=8)\n"
        "print(listener.address[1], flush=True)\n"
        "channel = listener.accept(timeout=60)\n"
        "started = time.monotonic()\n"
        "array = channel.recv(max_bytes=None)\n"
        "seconds = time.monotonic() - started\n"
        "print(hashlib.blake2b(array).hexdigest(), array.nbytes, len(channel.sockets), seconds, flush=True)\n"
        "channel.close()\n",
        prefix=link.prefix("receiver"),
    )
    sender = None
    try:
        port = int(receiver.line())
        sender = Child(
            backend.name,
            "import hashlib, json\n"
            f"array = np.random.default_rng(4).integers(0, 256, {STREAMS_SIZE}, dtype=np.uint8)\n"
            f"channel = arraywire.connect(({link.receiver_address!r}, {port}), streams={STREAMS}, timeout=30)\n"
            "ports = [sock.getsockname()[1] for sock in channel.sockets]\n"
            "channel.send(array)\n"
            "channel.close()\n"
            "print(hashlib.blake2b(array).hexdigest(), json.dumps(ports), flush=True)\n",
            prefix=link.prefix("sender"),
        )
        sent_digest, ports_json = sender.line(120).split(" ", 1)
        received_digest, nbytes, joined, seconds = receiver.line(120).split()
        assert receiver.wait() == 0 and sender.wait() == 0
    finally:
        receiver.kill()
        if sender is not None:
            sender.kill()
    assert (received_digest, int(nbytes)) == (sent_digest, STREAMS_SIZE)
    ports = json.loads(ports_json)
    assert len(set(ports)) == STREAMS == int(joined), f"source ports {ports}, {joined} joined"
    # Each stream went through its own 100 Mbit/s bucket and carried a share.
    after = link.bucket_bytes()
    carried = {port: after[port & 0xFF] - before.get(port & 0xFF, 0) for port in ports}
    assert len({port & 0xFF for port in ports}) == STREAMS, f"source ports {ports} share a bucket"
    assert all(n > STREAMS_SIZE / (2 * STREAMS) for n in carried.values()), f"bytes per stream: {carried}"
    mbps = STREAMS_SIZE * 8 / float(seconds) / 1e6  # measured by the benchmarks: reported only
    print(f"{STREAMS} streams: {mbps:.0f} Mbit/s, bytes per source port {carried}")
