"""A real, constrained link: two network namespaces joined by a veth pair whose
sending side is rate-limited by tbf with a queue so small that it drops
packets. TCP retransmits; the data must still arrive intact.

Needs root and iproute2 (`ip`, `tc`); skipped with the reason otherwise. The
namespaces are this test's own: their only route is the veth pair."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from backends import Backend
from faultkit import Child

SIZE = 256 << 20
# A few seconds for 256 MB, and a queue smaller than one TSO burst, so it
# drops tens of thousands of packets (a 16 KB queue makes TCP back off for minutes).
RATE, BURST, LIMIT = "1gbit", "32kb", "64kb"


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
