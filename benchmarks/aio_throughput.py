"""arraywire.aio against the blocking API, between two processes on loopback.

For each backend (a child interpreter per backend, chosen with
ARRAYWIRE_NO_EXTENSIONS) and socket family it measures:

- throughput of one large float64 array (default 400 MB), blocking
  send_array/recv_array against aio.send_array/aio.recv_array, and the ratio;
- the longest gap seen by a 1 ms ticker coroutine on each side while the aio
  transfers run (event loop responsiveness);
- the round trip of a small array: aio.send_array/recv_array against raw
  loop.sock_sendall/loop.sock_recv_into of the same bytes, and the blocking API.

    python benchmarks/aio_throughput.py [--size N] [--repeats R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SMALL_SIZES = (8, 64 << 10)
ROUND_TRIPS = 2000


def connected_pair(family: str) -> tuple[socket.socket, socket.socket]:
    if family == "unix":
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def in_child(body: Callable[[], Any]) -> Callable[[], Any]:
    """Fork; run body in the child and return a function that collects its
    JSON result (the child writes it to a pipe)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 0
        try:
            result = body()
            os.write(write_end, json.dumps(result).encode())
        except BaseException:  # noqa: BLE001 - report and leave the child
            import traceback

            traceback.print_exc()
            status = 1
        os._exit(status)
    os.close(write_end)

    def collect() -> Any:
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if status:
            raise RuntimeError("benchmark child failed")
        return json.loads(data) if data else None

    return collect


class Ticker:
    """Records the longest interval between wake-ups of a 1 ms sleeper."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> float:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        return self.max_gap


def throughput(family: str, mode: str, values: int, repeats: int) -> dict[str, Any]:
    """Median GB/s of the receiving side, which says 'go' before each transfer."""
    import arraywire
    from arraywire import aio

    sender, receiver = connected_pair(family)
    data = np.arange(values, dtype=np.float64)
    out = np.empty_like(data)

    def send_blocking() -> None:
        receiver.close()
        for _ in range(repeats + 1):
            sender.recv(1)
            arraywire.send_array(data, sender)

    async def send_async() -> float:
        receiver.close()
        sender.setblocking(False)
        loop = asyncio.get_running_loop()
        gaps = []
        for _ in range(repeats + 1):
            await loop.sock_recv(sender, 1)
            ticker = Ticker()
            ticker.start()
            await aio.send_array(data, sender)
            gaps.append(await ticker.stop())
        return max(gaps[1:])

    child = in_child(send_blocking if mode == "blocking" else lambda: asyncio.run(send_async()))
    sender.close()
    times = []
    gaps = []
    if mode == "blocking":
        for _ in range(repeats + 1):
            start = time.perf_counter()
            receiver.sendall(b"g")
            arraywire.recv_array(receiver, out=out)
            times.append(time.perf_counter() - start)
    else:

        async def receive() -> None:
            receiver.setblocking(False)
            loop = asyncio.get_running_loop()
            for _ in range(repeats + 1):
                ticker = Ticker()
                ticker.start()
                start = time.perf_counter()
                await loop.sock_sendall(receiver, b"g")
                await aio.recv_array(receiver, out=out)
                times.append(time.perf_counter() - start)
                gaps.append(await ticker.stop())

        asyncio.run(receive())
    sender_gap = child()
    receiver.close()
    assert (out == data).all()
    result: dict[str, Any] = {"gbps": data.nbytes / statistics.median(times[1:]) / 1e9}
    if mode == "aio":
        result["max_gap_ms"] = {"recv": max(gaps[1:]) * 1e3, "send": sender_gap * 1e3}
    return result


def round_trip(family: str, mode: str, nbytes: int) -> float:
    """Mean microseconds for a small array to go to an echoing child and back."""
    import arraywire
    from arraywire import aio

    here, there = connected_pair(family)
    data = np.zeros(nbytes, np.uint8)
    header_size = len(arraywire._framing.plan_message([data])[0])

    async def exact_recv(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                         view: memoryview) -> None:
        while view:
            got = await loop.sock_recv_into(sock, view)
            if not got:
                raise EOFError
            view = view[got:]

    # raw: the same bytes as an arraywire message, as one sock_sendall
    raw = bytes(header_size + nbytes)

    async def echo_async(sock: socket.socket, count: int, first: bool) -> None:
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        buf = bytearray(len(raw))
        for _ in range(count):
            if first:
                await send_one(loop, sock)
                await recv_one(loop, sock, buf)
            else:
                await recv_one(loop, sock, buf)
                await send_one(loop, sock)

    async def send_one(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        if mode == "raw":
            await loop.sock_sendall(sock, raw)
        else:
            await aio.send_array(data, sock)

    async def recv_one(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                       buf: bytearray) -> None:
        if mode == "raw":
            await exact_recv(loop, sock, memoryview(buf))
        else:
            await aio.recv_array(sock)

    def echo_blocking(sock: socket.socket, count: int, first: bool) -> None:
        for _ in range(count):
            if first:
                arraywire.send_array(data, sock)
                arraywire.recv_array(sock)
            else:
                arraywire.recv_array(sock)
                arraywire.send_array(data, sock)

    def side(sock: socket.socket, count: int, first: bool) -> None:
        if mode == "blocking":
            echo_blocking(sock, count, first)
        else:
            asyncio.run(echo_async(sock, count, first))

    child = in_child(lambda: (here.close(), side(there, ROUND_TRIPS + 100, False))[1])
    there.close()
    side(here, 100, True)  # warm-up
    start = time.perf_counter()
    side(here, ROUND_TRIPS, True)
    elapsed = time.perf_counter() - start
    child()
    here.close()
    return elapsed / ROUND_TRIPS * 1e6


def run_backend(values: int, repeats: int) -> dict[str, Any]:
    import arraywire

    families = ["tcp", "unix"]
    result: dict[str, Any] = {"backend": arraywire.BACKEND, "throughput": {}, "latency_us": {}}
    for family in families:
        blocking = throughput(family, "blocking", values, repeats)
        asynchronous = throughput(family, "aio", values, repeats)
        result["throughput"][family] = {
            "blocking_gbps": blocking["gbps"],
            "aio_gbps": asynchronous["gbps"],
            "ratio": asynchronous["gbps"] / blocking["gbps"],
            "max_gap_ms": asynchronous["max_gap_ms"],
        }
        result["latency_us"][family] = {
            str(size): {mode: round_trip(family, mode, size) for mode in ("raw", "aio", "blocking")}
            for size in SMALL_SIZES
        }
    return result


def report(results: list[dict[str, Any]], values: int) -> str:
    lines = [
        f"{values:,} float64 values ({values * 8 / 1e6:,.0f} MB) between two processes "
        "over loopback; GB/s is the receiver's median.",
        "",
        "| backend | socket | blocking GB/s | aio GB/s | aio / blocking "
        "| ticker max gap recv / send (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for family, row in result["throughput"].items():
            gap = row["max_gap_ms"]
            lines.append(
                f"| {result['backend']} | {family} | {row['blocking_gbps']:.2f} "
                f"| {row['aio_gbps']:.2f} | {row['ratio']:.2f} "
                f"| {gap['recv']:.1f} / {gap['send']:.1f} |"
            )
    lines += [
        "",
        f"Round trip of a small array, mean of {ROUND_TRIPS} (µs): raw is "
        "loop.sock_sendall + loop.sock_recv_into of the same bytes.",
        "",
        "| backend | socket | payload | raw asyncio | aio | blocking |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for family, sizes in result["latency_us"].items():
            for size, row in sizes.items():
                lines.append(
                    f"| {result['backend']} | {family} | {int(size):,} B | {row['raw']:.0f} "
                    f"| {row['aio']:.0f} | {row['blocking']:.0f} |"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000_000, help="float64 values")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_backend(args.size, args.repeats)))
        return 0
    results = []
    for no_extensions in ("", "1"):
        env = dict(os.environ, ARRAYWIRE_NO_EXTENSIONS=no_extensions)
        command = [sys.executable, __file__, "--child", f"--size={args.size}",
                   f"--repeats={args.repeats}"]
        output = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True)
        result = json.loads(output.stdout)
        if result["backend"] not in {r["backend"] for r in results}:
            results.append(result)
    print(json.dumps(results, indent=2) if args.json else report(results, args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
