"""``arraywire bench``: loopback throughput between two processes.

The seed scenario sends 50,000,000 float64 values (400 MB) from a sender
process to a receiver process, on both backends, with and without one
CPU-bound Python thread in the receiver. The benchmark suite
(``benchmarks/``) runs its contenders and scenarios on the same process pairs.

A benchmark is a *job* (a JSON-able dict) run by two child processes, each
started with ``python -m arraywire._bench JOB`` (the suite starts its own
child script) and the backend chosen by ``ARRAYWIRE_NO_EXTENSIONS`` in its
environment. The parent connects the
sockets and passes their descriptors down, so both children use the very
socket type being measured; a second socket pair carries the "go" signals.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np

import arraywire
from arraywire._cli.common import decimal_size

DEFAULT_SIZE = 50_000_000  # float64 values: 400 MB
DEFAULT_REPEATS = 5
FAMILIES = ("tcp", "unix")
FAMILY_NAMES = {"tcp": "TCP", "unix": "AF_UNIX"}
# Small messages are timed in batches: a warm-up batch of at most
# WARMUP_MESSAGES and WARMUP_BYTES, then batches sized to last REP_SECONDS.
WARMUP_MESSAGES = 1000
WARMUP_BYTES = 64 << 20
REP_SECONDS = 0.1
MAX_MESSAGES = 100_000
SEED_CHILD = (sys.executable, "-m", "arraywire._bench")


# --- parent side -------------------------------------------------------------


def compiled_available() -> bool:
    return importlib.util.find_spec("arraywire._transport_c") is not None


def connected_pair(family: str) -> tuple[socket.socket, socket.socket]:
    """Two connected stream sockets over loopback TCP or AF_UNIX."""
    if family == "unix":
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (client, server):
        # As pyzmq does: small messages go out at once, not after an ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def child_env(backend: str, path: Sequence[str] = ()) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ARRAYWIRE_NO_EXTENSIONS", None)
    if backend == "python":
        env["ARRAYWIRE_NO_EXTENSIONS"] = "1"
    if path:
        env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")])
    return env


def run_pair(
    job: dict[str, Any], child: Sequence[str] = SEED_CHILD, timeout: float = 600.0
) -> dict[str, Any]:
    """Run a job's two roles in two child processes (the command child, then
    the job, the role and the descriptors); return the measuring role's
    result (the receiver of a stream, the client of a ping-pong).

    job keys: family, backend, sizes (bytes, multiples of 8), repeats;
    optional: connections, busy ("send"/"recv": that process runs one
    CPU-bound thread), cpus (pin both processes to these CPUs), path
    (directories put on the children's PYTHONPATH), and any key the child reads.
    """
    job = {"connections": 1, "busy": None, **job}
    ctl_a, ctl_b = socket.socketpair()
    pairs = [connected_pair(job["family"]) for _ in range(job["connections"])]
    procs = []
    try:
        for role, ctl, side in (("measure", ctl_a, 0), ("peer", ctl_b, 1)):
            fds = [ctl.fileno()] + [pair[side].fileno() for pair in pairs]
            procs.append(
                subprocess.Popen(
                    [*child, json.dumps(job), role]
                    + [str(fd) for fd in fds],
                    pass_fds=fds,
                    env=child_env(job["backend"], job.get("path", ())),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
    finally:
        # Only the children hold the sockets now: if one dies, the other sees EOF.
        for sock in (ctl_a, ctl_b, *(s for pair in pairs for s in pair)):
            sock.close()
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = [err for proc, (_, err) in zip(procs, outputs, strict=True) if proc.returncode]
    if failed:
        raise RuntimeError(f"benchmark child failed ({job}):\n" + "\n".join(failed))
    result: dict[str, Any] = json.loads(outputs[0][0])
    return result


def median_seconds(result: dict[str, Any], size: int) -> float:
    """Median time of one message (stream) or one round trip (ping-pong)."""
    return float(statistics.median(result["seconds"][str(size)]))


def median_gbps(result: dict[str, Any], size: int) -> float:
    """Median throughput in GB/s (1e9 bytes) of a stream result at one size."""
    return float(size * result["connections"] / median_seconds(result, size) / 1e9)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


# --- the seed scenario: ``arraywire bench`` ----------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", type=int, default=DEFAULT_SIZE,
        help=f"number of float64 values per transfer (default {DEFAULT_SIZE:,})",
    )
    parser.add_argument(
        "--family", choices=("tcp", "unix", "both"), default="both",
        help="loopback TCP, AF_UNIX stream sockets, or both (default)",
    )
    parser.add_argument(
        "--repeats", type=int, default=DEFAULT_REPEATS,
        help=f"timed transfers per case, after one warm-up (default {DEFAULT_REPEATS})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.size < 1 or args.repeats < 1:
        print("arraywire bench: --size and --repeats must be at least 1", file=sys.stderr)
        return 2
    nbytes = args.size * 8
    families = FAMILIES if args.family == "both" else (args.family,)
    backends = ("c", "python") if compiled_available() else ("python",)
    print(
        f"{args.size:,} float64 values ({nbytes:,} bytes, {decimal_size(nbytes)}) from one process to "
        f"another over loopback; GB/s is the median of {args.repeats}."
    )
    if "c" not in backends:
        print("The compiled backend is not built: measuring the pure backend only.")
    print(markdown_table(_SEED_HEADER, []), flush=True)
    for family in families:
        for busy in (None, "recv"):
            speeds = {}
            for backend in backends:
                job = {
                    "family": family, "backend": backend, "sizes": [nbytes],
                    "repeats": args.repeats, "busy": busy,
                }
                speeds[backend] = median_gbps(run_pair(job), nbytes)
            cells = [f"{speeds[b]:.2f}" if b in speeds else "-" for b in ("c", "python")]
            ratio = f"{speeds['c'] / speeds['python']:.1f}x" if "c" in speeds else "-"
            receiver = "1 busy thread" if busy else "idle"
            row = [FAMILY_NAMES[family], receiver, *cells, ratio]
            print(markdown_table(_SEED_HEADER, [row]).splitlines()[-1], flush=True)
    return 0


_SEED_HEADER = ["socket", "receiver", "compiled GB/s", "pure GB/s", "compiled/pure"]


# --- child side ----------------------------------------------------------------


def send_line(ctl: socket.socket, text: str) -> None:
    ctl.sendall(text.encode() + b"\n")


def recv_line(ctl: socket.socket) -> str:
    data = bytearray()
    while not data.endswith(b"\n"):
        byte = ctl.recv(1)
        if not byte:
            raise EOFError("benchmark peer closed the control socket")
        data += byte
    return data[:-1].decode()


def pattern(nbytes: int) -> np.ndarray:
    """The payload: consecutive float64 values (sizes are multiples of 8)."""
    return np.arange(nbytes // 8, dtype=np.float64)


def check(received: Any, size: int) -> None:
    got = np.frombuffer(received, np.float64)
    head = min(got.size, 512)
    if got.nbytes != size or not np.array_equal(got[:head], pattern(head * 8)):
        raise AssertionError(f"received {size:,} bytes that differ from what was sent")


@contextmanager
def busy_thread(enabled: bool) -> Iterator[None]:
    """One CPU-bound pure-Python thread, as an application's compute would be."""
    if not enabled:
        yield
        return
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def repetitions(
    job: dict[str, Any], role: str, ctl: socket.socket, size: int, run: Callable[[int], None]
) -> list[float]:
    """Seconds per message of each timed repetition of run(count) at one size.

    The measuring side starts each repetition with a "go COUNT" line; the
    warm-up's speed sets COUNT so that a repetition lasts about REP_SECONDS.
    """
    count = max(1, min(WARMUP_MESSAGES, WARMUP_BYTES // size))
    per_message = []
    for repetition in range(job["repeats"] + 1):
        if role != "measure":
            run(int(recv_line(ctl).removeprefix("go ")))
            continue
        start = time.perf_counter()
        send_line(ctl, f"go {count}")
        run(count)
        seconds = (time.perf_counter() - start) / count
        if repetition:
            per_message.append(seconds)
        else:
            count = max(1, min(MAX_MESSAGES, round(REP_SECONDS / seconds)))
    return per_message


Measure = Callable[
    [dict[str, Any], str, socket.socket, list[socket.socket], ExitStack], dict[str, Any]
]


def serve_role(argv: Sequence[str], measure: Measure) -> int:
    """A child's main: run measure(job, role, ctl, socks, closing) for the
    role given in argv, end in step with the peer, then close what measure
    pushed on closing; the measuring role prints the result as JSON."""
    job, role = json.loads(argv[0]), argv[1]
    ctl, *socks = (socket.socket(fileno=int(fd)) for fd in argv[2:])
    if arraywire.BACKEND != job["backend"]:
        raise RuntimeError(f"asked for the {job['backend']!r} backend, got {arraywire.BACKEND!r}")
    if job.get("cpus"):
        os.sched_setaffinity(0, job["cpus"])  # before a contender starts threads
    with ExitStack() as closing:
        for sock in socks:
            closing.callback(sock.close)
        with busy_thread(job.get("busy") == ("recv" if role == "measure" else "send")):
            result = measure(job, role, ctl, socks, closing)
        # Queued sends (pyzmq's) are lost if the sender closes before they arrive.
        if role == "measure":
            send_line(ctl, "done")
        elif recv_line(ctl) != "done":
            raise RuntimeError("benchmark peer out of step")
    if role == "measure":
        print(json.dumps(result))
    return 0


def seed_stream(
    job: dict[str, Any], role: str, ctl: socket.socket, socks: list[socket.socket],
    closing: ExitStack,
) -> dict[str, Any]:
    """send_from / recv_into on one connection; the receiver times."""
    (sock,) = socks
    receiving = role == "measure"
    seconds = {}
    for size in job["sizes"]:
        array = np.empty(size // 8) if receiving else pattern(size)

        def run(count: int) -> None:
            for _ in range(count):
                if receiving:
                    arraywire.recv_into(array, sock)
                else:
                    arraywire.send_from(array, sock)
            if receiving:
                check(array, size)

        seconds[str(size)] = repetitions(job, role, ctl, size, run)
    return {"seconds": seconds, "connections": 1}


if __name__ == "__main__":
    raise SystemExit(serve_role(sys.argv[1:], seed_stream))
