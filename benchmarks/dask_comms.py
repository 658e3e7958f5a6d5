"""Dask comms, aw:// against tcp:// (the `dask` scenario of run.py).

Comm level: a receiving process listens through Dask's ``listen`` and a
sending process connects through Dask's ``connect``, so both comms have done
Dask's handshake (same-host: no compression). The sender times batches of
messages ``{"x": to_serialize(array)}`` up to the receiver's acknowledgement;
the receiver deserializes each message, with or without a CPU-bound Python
thread running beside its event loop. A ping-pong of a 64-byte message gives
the round trip, and a message of two 200 MB arrays the receiver's peak RSS.

Cluster level: ``LocalCluster(n_workers=2, processes=True)``; an array of each
size made on one worker is needed by a task on the other, and the bandwidth is the
receiving worker's ``transfer_incoming_log`` entry, with and without a
GIL-holding task running on the receiving worker meanwhile.

    python benchmarks/dask_comms.py          # prints the rows as JSON
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

KiB, MiB, MB = 1 << 10, 1 << 20, 1_000_000
SCHEMES = ("tcp", "aw")
SIZES = (MiB, 16 * MiB, 400 * MB)
BATCH_BYTES = 64 * MiB  # messages per timed batch: this many bytes, at least one
RSS_ARRAY = 200 * MB


def busy_thread(stop: threading.Event) -> threading.Thread:
    """A thread of pure Python work: it wants the GIL all the time."""

    def spin() -> None:
        count = 0
        while not stop.is_set():
            for _ in range(1000):
                count += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return thread


def rss_kib() -> tuple[int, int]:
    """(current, peak) resident set size in KiB (Linux). VmHWM, unlike
    ru_maxrss, starts afresh at exec: the sending parent's peak is not ours."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def receiver(scheme: str, busy: bool) -> None:
    """Serve one connection: acknowledge batches, echo pings, report RSS."""
    from distributed.comm import listen

    done = asyncio.Event()
    stop = threading.Event()

    async def handle(comm: Any) -> None:
        baseline = rss_kib()[0]
        try:
            while True:
                message = await comm.read()
                op = message.get("op")
                if op == "ping":
                    await comm.write(message)
                elif op == "ack":
                    await comm.write({"op": "ack"})
                elif op == "rss":
                    baseline = rss_kib()[0]
                    await comm.write({"op": "rss"})
                elif op == "rss-data":
                    added = (rss_kib()[1] - baseline) * 1024
                    ok = all(float(message[k][-1]) == 1.0 for k in ("a", "b"))
                    await comm.write({"op": "rss-data", "added": added, "ok": ok})
                elif op == "bye":
                    break
                elif op is None:  # a data message: touch it as a user would
                    assert float(message["x"][-1]) == 1.0
                message = None  # not held while the next one arrives
        finally:
            await comm.close()
            done.set()

    async with listen(f"{scheme}://127.0.0.1:0", handle) as listener:
        print(listener.contact_address, flush=True)
        if busy:
            busy_thread(stop)
        await done.wait()
        stop.set()


async def sender(address: str, repeats: int, busy: bool) -> dict[str, Any]:
    from distributed.comm import connect
    from distributed.protocol import to_serialize

    comm = await connect(address)
    # RSS first, while the receiver's peak is still its baseline
    await comm.write({"op": "rss"})
    await comm.read()
    big = np.ones(RSS_ARRAY // 8)
    await comm.write({"op": "rss-data", "a": to_serialize(big), "b": to_serialize(big.copy())})
    rss = await comm.read()
    del big
    seconds: dict[str, float] = {}
    for size in SIZES:
        array = np.ones(size // 8)
        count = max(1, BATCH_BYTES // size)
        times = []
        for repeat in range(repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            for _ in range(count):
                await comm.write({"x": to_serialize(array)})
            await comm.write({"op": "ack"})
            await comm.read()
            if repeat:
                times.append((time.perf_counter() - start) / count)
        seconds[str(size)] = statistics.median(times)
        del array
    ping = {"op": "ping", "data": b"p" * 64}
    rtts = []
    for _ in range(0 if busy else repeats * 5 + 1):
        start = time.perf_counter()
        for _ in range(200):
            await comm.write(ping)
            await comm.read()
        rtts.append((time.perf_counter() - start) / 200)
    await comm.write({"op": "bye"})
    await comm.close()
    assert rss["ok"], "the two 200 MB arrays arrived wrong"
    return {"seconds": seconds, "rtt": statistics.median(rtts[1:]) if rtts else None, "rss_added": rss["added"]}


def comm_pair(scheme: str, busy: bool, repeats: int) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, __file__, "receiver", scheme, "1" if busy else "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        address = child.stdout.readline().strip()
        return asyncio.run(sender(address, repeats, busy))
    finally:
        child.wait(timeout=120)


def hold_gil(seconds: float) -> int:
    """A task of pure Python work: it holds the GIL but for the interpreter's
    switch interval."""
    end = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < end:
        for _ in range(1000):
            count += 1
    return count


def make_array(size: int, tag: int) -> np.ndarray:
    return np.full(size // 8, float(tag))


def last_incoming_bandwidth(dask_worker: Any) -> float:
    return float(dask_worker.transfer_incoming_log[-1]["bandwidth"])


def spin_seconds(size: int) -> float:
    """How long the receiving worker's GIL-holding task runs: longer than
    the slowest transfer of size bytes under it."""
    return 1.0 + size / (100 * MB)


@contextmanager
def two_workers(scheme: str) -> Iterator[tuple[Any, str, str]]:
    """A Client of a ``LocalCluster`` of two worker processes whose comms are
    scheme, and the two workers' addresses."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, protocol=f"{scheme}://",
        dashboard_address=None, memory_limit=0,
    ) as local, Client(local) as client:
        first, second = sorted(client.scheduler_info()["workers"])
        yield client, first, second


def transfers(client: Any, first: str, second: str, size: int, busy: bool, repeats: int) -> list[float]:
    """Bandwidths (bytes/s) of repeats transfers of a size-byte array made on
    first to a task on second, after a warm-up; with busy, a GIL-holding task
    runs on second meanwhile."""
    bandwidths = []
    for tag in range(repeats + 1):  # the first is a warm-up
        made = client.submit(make_array, size, tag, workers=[first], pure=False)
        made.result()
        spinner = (client.submit(hold_gil, spin_seconds(size), workers=[second], pure=False)
                   if busy else None)
        if spinner is not None:
            time.sleep(0.5)  # the spinner is running before the transfer starts
        total = client.submit(np.sum, made, workers=[second], pure=False)
        assert total.result() == tag * (size // 8)
        if tag:
            bandwidths.append(client.run(last_incoming_bandwidth, workers=[second])[second])
        if spinner is not None:
            spinner.result()
        del made, total
    return bandwidths


def cluster(scheme: str, repeats: int) -> list[dict[str, Any]]:
    """Rows of worker-to-worker bandwidth for every size, with and without a
    GIL-holding task on the receiving worker; one cluster."""
    rows = []
    with two_workers(scheme) as (client, first, second):
        for busy in (False, True):
            for size in SIZES:
                bandwidths = transfers(client, first, second, size, busy, repeats)
                rows.append({"scheme": scheme, "busy": busy, "size": size,
                             "gbps": statistics.median(bandwidths) / 1e9})
    return rows


def run(rounds: int = 2, repeats: int = 3, cluster_repeats: int = 3) -> dict[str, Any]:
    """Rows for report.py. The comm pairs of both schemes run in interleaved
    rounds; a figure is the median over the rounds' medians."""
    pooled: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for busy in (False, True):
            for scheme in SCHEMES:
                pooled.setdefault((scheme, busy), []).append(comm_pair(scheme, busy, repeats))
    comm, rtt, memory = [], [], []
    for (scheme, busy), results in pooled.items():
        for size in SIZES:
            seconds = statistics.median(r["seconds"][str(size)] for r in results)
            comm.append({"scheme": scheme, "busy": busy, "size": size, "gbps": size / seconds / 1e9})
        if not busy:
            rtt.append({"scheme": scheme, "us": statistics.median(r["rtt"] for r in results) * 1e6})
            memory.append({
                "scheme": scheme, "payload": 2 * RSS_ARRAY,
                "added_bytes": max(r["rss_added"] for r in results),
            })
    cluster_rows = [row for scheme in SCHEMES for row in cluster(scheme, cluster_repeats)]
    return {"comm": comm, "rtt": rtt, "memory": memory, "cluster": cluster_rows}


if __name__ == "__main__":
    if sys.argv[1:2] == ["receiver"]:
        asyncio.run(receiver(sys.argv[2], sys.argv[3] == "1"))
    else:
        print(json.dumps(run(), indent=1))
