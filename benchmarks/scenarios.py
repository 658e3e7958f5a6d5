"""The benchmark scenarios of issue 4. Each returns a JSON-able dict of rows
with the measured medians; report.py turns them into tables, plots and the
target check.

Every case runs in fresh sender/receiver process pairs from
``harness.run_pair``. The cases of one scenario are run in
interleaved rounds (each case once per round, a new process pair each time)
and the repetitions of all rounds pooled, so a slow moment of the machine or
an unlucky placement of one process pair does not decide a ratio.
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netlink
import numpy as np
import trustme
from harness import HERE, run_pair

from arraywire._cli.bench import FAMILIES, median_gbps, median_seconds

MB = 1_000_000
ARRAY_400MB = 400 * MB  # the seed scenario's 50,000,000 float64 values
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass
class Settings:
    rounds: int = 4
    repeats: int = 3
    sizes: tuple[int, ...] = (64, KiB, 16 * KiB, 256 * KiB, 4 * MiB, 64 * MiB, ARRAY_400MB, GiB)
    thread_bytes: int = 200 * MB
    same_host_sizes: tuple[int, ...] = (64 * KiB, MiB, 16 * MiB, ARRAY_400MB, GiB)

    @classmethod
    def quick(cls) -> Settings:
        return cls(rounds=1, repeats=2, sizes=(64, 64 * KiB, 4 * MiB, ARRAY_400MB),
                   thread_bytes=100 * MB, same_host_sizes=(64 * KiB, MiB, 16 * MiB, ARRAY_400MB))


# label -> (contender, backend, extra job keys)
STREAM_CONTENDERS = {
    "arraywire compiled": ("harness:Raw", "c", {}),
    "arraywire pure": ("harness:Raw", "python", {}),
    "memoryview recipe": ("contenders:Recipe", "c", {}),
    "sendall + recv_into": ("contenders:Sendall", "c", {}),
    "pickle 5 + sendall": ("contenders:Pickle", "c", {}),
    "pyzmq PUSH/PULL": ("contenders:ZmqPushPull", "c", {"copy": False}),
    "pyzmq REQ/REP": ("contenders:ZmqReqRep", "c", {"copy": False}),
    "multiprocessing.connection": ("contenders:MpConnection", "c", {}),
}
ARRAYWIRE = {label: STREAM_CONTENDERS[label] for label in ("arraywire compiled", "arraywire pure")}
FRAMED = {
    "arraywire compiled": ("harness:Framed", "c", {}),
    "arraywire pure": ("harness:Framed", "python", {}),
}
CHANNEL = {
    "arraywire Channel compiled": ("harness:ChannelMessages", "c", {}),
    "arraywire Channel pure": ("harness:ChannelMessages", "python", {}),
}
PINGPONG_CONTENDERS = {
    **FRAMED,
    **CHANNEL,
    "arraywire raw compiled": ("harness:Raw", "c", {}),
    "pyzmq REQ/REP copy=False": ("contenders:ZmqReqRep", "c", {"copy": False}),
    "pyzmq REQ/REP copy=True": ("contenders:ZmqReqRep", "c", {"copy": True}),
}
RATE_CONTENDERS = {
    **FRAMED,
    "arraywire raw compiled": ("harness:Raw", "c", {}),
    "arraywire Channel send loop": CHANNEL["arraywire Channel compiled"],
    "arraywire Channel send_many": ("harness:ChannelBatched", "c", {}),
    "pyzmq PUSH/PULL copy=False": ("contenders:ZmqPushPull", "c", {"copy": False}),
    "pyzmq PUSH/PULL copy=True": ("contenders:ZmqPushPull", "c", {"copy": True}),
}
ASYNCIO_CONTENDERS = {
    "arraywire compiled, blocking": STREAM_CONTENDERS["arraywire compiled"],
    "arraywire.aio, compiled": ("contenders:Aio", "c", {}),
    "arraywire Channel compiled, blocking": ("harness:ChannelMessages", "c", {}),
    "arraywire.aio Channel, compiled": ("contenders:AioChannel", "c", {}),
}
CONNECTED = {
    "arraywire Channel compiled": ("harness:Connected", "c", {}),
    "arraywire Channel pure": ("harness:Connected", "python", {}),
}
# destination -> contender: fresh arrays from recv(), or recv(out=) into a reused one
SAME_HOST = {
    "fresh": ("harness:Connected", "c", {}),
    "out=": ("harness:ConnectedInto", "c", {}),
}
MEMCPY = ("contenders:Memcpy", "c", {})
STREAM_COUNTS = (1, 2, 4)
# Per stream through the shaped link: about 2.7 s at its 100 Mbit/s.
LINK_BYTES_PER_STREAM = 32 * MB
CLI_BYTES = 1_000_000_000
CLI_STREAMS = 4
PLACEMENTS = {"any CPU": None, "one CPU": [0]}
# The copying contenders take seconds per GiB; 400 MB shows them well enough.
NO_GIB = {"pickle 5 + sendall", "pyzmq REQ/REP", "multiprocessing.connection"}
BUSY = {None: "none", "recv": "receiver", "send": "sender"}


def job(contender: tuple[str, str, dict[str, Any]], **keys: Any) -> dict[str, Any]:
    spec, backend, extra = contender
    return {"contender": spec, "backend": backend, "path": [HERE], "kind": "stream", **extra, **keys}


def run_rounds(cases: dict[Any, dict[str, Any]], settings: Settings) -> dict[Any, dict[str, Any]]:
    """Run every case once per round; pool each case's repetitions."""
    pooled: dict[Any, dict[str, Any]] = {}
    for _ in range(settings.rounds):
        for key, case in cases.items():
            result = run_pair({"repeats": settings.repeats, **case})
            if key not in pooled:
                pooled[key] = result
            else:
                for size, times in result["seconds"].items():
                    pooled[key]["seconds"][size] += times
    return pooled


def throughput(settings: Settings) -> dict[str, Any]:
    """1. Throughput vs message size, every contender, TCP and AF_UNIX."""
    cases = {
        (family, label): job(
            contender, family=family,
            sizes=[s for s in settings.sizes if s <= ARRAY_400MB or label not in NO_GIB],
        )
        for family in FAMILIES
        for label, contender in STREAM_CONTENDERS.items()
    }
    results = run_rounds(cases, settings)
    rows = [
        {"family": family, "contender": label, "size": int(size), "gbps": median_gbps(result, int(size))}
        for (family, label), result in results.items()
        for size in result["seconds"]
    ]
    rows += iperf3(settings)
    return {"rows": rows}


def iperf3(settings: Settings) -> list[dict[str, Any]]:
    """The kernel's TCP loopback ceiling, where iperf3 is installed."""
    if shutil.which("iperf3") is None:
        return []
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = str(probe.getsockname()[1])
    server = subprocess.Popen(
        ["iperf3", "--server", "--bind", "127.0.0.1", "--port", port],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    speeds = []
    try:
        time.sleep(0.5)  # the server's first client must not find it still starting
        for _ in range(settings.rounds * settings.repeats):
            report = subprocess.run(
                ["iperf3", "--client", "127.0.0.1", "--port", port,
                 "--bytes", str(ARRAY_400MB), "--length", "1M", "--json"],  # its largest writes
                capture_output=True, text=True, check=True,
            )
            speeds.append(json.loads(report.stdout)["end"]["sum_received"]["bits_per_second"] / 8e9)
    finally:
        server.terminate()
        server.wait()
    row = {"family": "tcp", "contender": "iperf3", "size": ARRAY_400MB, "gbps": statistics.median(speeds)}
    return [row]


def contention(settings: Settings) -> dict[str, Any]:
    """2. One CPU-bound Python thread in the receiving or the sending process."""
    cases = {
        (family, label, busy): job(contender, family=family, sizes=[ARRAY_400MB], busy=busy)
        for family in FAMILIES
        for label, contender in ARRAYWIRE.items()
        for busy in BUSY
    }
    results = run_rounds(cases, settings)
    rows = [
        {"family": family, "contender": label, "busy": BUSY[busy], "gbps": median_gbps(result, ARRAY_400MB)}
        for (family, label, busy), result in results.items()
    ]
    return {"rows": rows}


def threads(settings: Settings) -> dict[str, Any]:
    """3. 1, 2 and 4 connections, one thread each, in one process per side."""
    size = settings.thread_bytes
    cases = {
        (family, label, count): job(contender, family=family, sizes=[size], connections=count)
        for family in FAMILIES
        for label, contender in ARRAYWIRE.items()
        for count in (1, 2, 4)
    }
    results = run_rounds(cases, settings)
    rows = [
        {"family": family, "contender": label, "connections": count, "gbps": median_gbps(result, size)}
        for (family, label, count), result in results.items()
    ]
    return {"rows": rows, "bytes_per_connection": size}


def latency(settings: Settings) -> dict[str, Any]:
    """4. Ping-pong round trips of framed arrays, and a one-way message rate.

    Round trips are measured twice: with the processes where the scheduler
    puts them, and with both on one CPU, which takes the cost of waking an
    idle CPU (large in virtual machines) out and leaves the software's own.
    """
    sizes = [64, 4 * KiB, 64 * KiB]
    cases = {
        ("rtt", placement, family, label): job(
            contender, family=family, sizes=sizes, kind="pingpong", cpus=cpus
        )
        for placement, cpus in PLACEMENTS.items()
        for family in FAMILIES
        for label, contender in PINGPONG_CONTENDERS.items()
    }
    cases.update(
        {
            ("rate", None, family, label): job(contender, family=family, sizes=[64])
            for family in FAMILIES
            for label, contender in RATE_CONTENDERS.items()
        }
    )
    results = run_rounds(cases, settings)
    rtt = [
        {"placement": placement, "family": family, "contender": label, "size": size,
         "us": median_seconds(result, size) * 1e6}
        for (kind, placement, family, label), result in results.items()
        if kind == "rtt"
        for size in sizes
    ]
    rate = [
        {"family": family, "contender": label, "per_s": 1 / median_seconds(result, 64)}
        for (kind, _, family, label), result in results.items()
        if kind == "rate"
    ]
    return {"rtt": rtt, "rate": rate}


def memory(settings: Settings) -> dict[str, Any]:
    """5. Peak RSS added by receiving a 400 MB array with recv_array, and
    with Channel.recv (through its read-ahead buffer)."""
    cases = {
        (family, label): job(contender, family=family, sizes=[ARRAY_400MB], repeats=1)
        for family in FAMILIES
        for label, contender in {**FRAMED, **CHANNEL}.items()
    }
    results = run_rounds(cases, Settings(rounds=1))
    rows = [
        {
            "family": family,
            "contender": label,
            "baseline_bytes": result["rss_before_kib"] * 1024,
            "added_bytes": (result["max_rss_after_kib"] - result["rss_before_kib"]) * 1024,
            "payload": ARRAY_400MB,
        }
        for (family, label), result in results.items()
    ]
    return {"rows": rows}


def asyncio_vs_blocking(settings: Settings) -> dict[str, Any]:
    """arraywire.aio's awaitable send_from / recv_into and its Channel against
    the blocking calls and Channel."""
    if importlib.util.find_spec("arraywire.aio") is None:
        return {"rows": [], "skipped": "arraywire.aio is not available"}
    sizes = [64, 64 * KiB, MiB, 4 * MiB, 64 * MiB, ARRAY_400MB]
    cases = {
        (family, label): job(contender, family=family, sizes=sizes)
        for family in FAMILIES
        for label, contender in ASYNCIO_CONTENDERS.items()
    }
    results = run_rounds(cases, settings)
    rows = [
        {"family": family, "contender": label, "size": size, "gbps": median_gbps(result, size)}
        for (family, label), result in results.items()
        for size in sizes
    ]
    return {"rows": rows}


def dask_comms(settings: Settings) -> dict[str, Any]:
    """7. Dask comms: aw:// against tcp:// (benchmarks/dask_comms.py)."""
    if importlib.util.find_spec("distributed") is None:
        return {"comm": [], "skipped": "distributed is not installed (pip install '.[dask]')"}
    import dask_comms as dask_benchmark

    return dask_benchmark.run(rounds=max(1, settings.rounds // 2), repeats=settings.repeats)


def tls(settings: Settings) -> dict[str, Any]:
    """8. Channels opened by arraywire.listen / connect over loopback TCP,
    plain and TLS: 64 B round trips, and 400 MB one way (timed by the
    receiver, as every stream)."""
    with tempfile.TemporaryDirectory() as directory:
        certs = certificates(Path(directory))
        cases = {
            (label, connection, kind): job(
                contender, family="tcp", kind=kind, sizes=[64 if kind == "pingpong" else ARRAY_400MB],
                **({"certs": certs} if connection == "TLS" else {}),
            )
            for label, contender in CONNECTED.items()
            for connection in ("plain", "TLS")
            for kind in ("pingpong", "stream")
        }
        results = run_rounds(cases, settings)
    rtt = [
        {"contender": label, "connection": connection, "size": 64, "us": median_seconds(result, 64) * 1e6}
        for (label, connection, kind), result in results.items()
        if kind == "pingpong"
    ]
    transfer = [
        {"contender": label, "connection": connection, "size": ARRAY_400MB,
         "gbps": median_gbps(result, ARRAY_400MB)}
        for (label, connection, kind), result in results.items()
        if kind == "stream"
    ]
    return {"rtt": rtt, "transfer": transfer,
            "tls": sorted({result["tls"] for result in results.values() if "tls" in result})}


def certificates(directory: Path) -> dict[str, str]:
    """A CA and its certificate for 127.0.0.1, as PEM files the children load."""
    ca = trustme.CA()
    paths = {"cert": str(directory / "cert.pem"), "ca": str(directory / "ca.pem")}
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(paths["cert"])
    ca.cert_pem.write_to_path(paths["ca"])
    return paths


def streams(settings: Settings) -> dict[str, Any]:
    """9. Parallel streams: one Channel over N TCP connections, on loopback
    and through a shaped link (100 Mbit/s per flow, 1 Gbit/s in all, see
    netlink.py), and the command line's 1 GB --streams 4 through that link.
    """
    counts = STREAM_COUNTS
    compiled = CONNECTED["arraywire Channel compiled"]
    loopback = run_rounds(
        {count: job(compiled, family="tcp", sizes=[ARRAY_400MB], streams=count) for count in counts},
        settings,
    )
    result: dict[str, Any] = {
        "loopback": [
            {"streams": count, "size": ARRAY_400MB, "gbps": median_gbps(r, ARRAY_400MB), "sockets": r["sockets"]}
            for count, r in loopback.items()
        ],
        "link": [],
        "bytes_per_stream": LINK_BYTES_PER_STREAM,
        "cli": None,
    }
    reason = netlink.unavailable()
    if reason:
        result["link_skipped"] = reason
        return result
    with netlink.shaped_link() as link:
        result["link"] = shaped_link_rows(link, counts, settings)
        result["cli"] = cli_transfer(link, CLI_BYTES, ["--streams", str(CLI_STREAMS)])
    return result


def shaped_link_rows(link: netlink.ShapedLink, counts: tuple[int, ...], settings: Settings) -> list[dict[str, Any]]:
    """Mbit/s of plain TCP flows (the link's own ceiling, measured for every
    count) and of a Channel over each of counts streams, from the sender's
    namespace to the receiver's."""
    rows = []
    for count in STREAM_COUNTS:
        speeds = [netlink.plain_flows(link, count, LINK_BYTES_PER_STREAM)
                  for _ in range(settings.repeats)]
        rows.append({"contender": "plain TCP flows", "streams": count, "mbps": statistics.median(speeds)})
    # The shaper, not the CPU, sets these figures: fewer rounds do.
    rounds = Settings(rounds=max(1, settings.rounds // 2), repeats=settings.repeats)
    cases = {
        count: job(CONNECTED["arraywire Channel compiled"], family="tcp",
                   sizes=[count * LINK_BYTES_PER_STREAM], streams=count, host=link.receiver_address,
                   netns={"measure": link.receiver_ns, "peer": link.sender_ns})
        for count in counts
    }
    for count, r in run_rounds(cases, rounds).items():
        size = count * LINK_BYTES_PER_STREAM
        rows.append({"contender": "arraywire Channel compiled", "streams": count,
                     "mbps": median_gbps(r, size) * 8000, "sockets": r["sockets"]})
    for row in rows:
        row["target_mbps"] = 0.8 * row["streams"] * netlink.FLOW_MBIT
    return rows


def cli_transfer(link: netlink.ShapedLink, nbytes: int, options: list[str]) -> dict[str, Any]:
    """`arraywire send` of an nbytes .npy from the sender's namespace to
    `arraywire recv` in the receiver's; timed from starting the sender to its
    exit (which waits for the receiver's confirmation), compared byte by byte."""
    with tempfile.TemporaryDirectory() as directory:
        sent, received = Path(directory, "big.npy"), Path(directory, "received.npy")
        array = np.lib.format.open_memmap(sent, mode="w+", dtype=np.uint8, shape=(nbytes,))
        array[:] = np.random.default_rng(9).integers(0, 256, nbytes, dtype=np.uint8)
        array.flush()
        del array
        command = [sys.executable, "-m", "arraywire"]
        receiver = subprocess.Popen(
            [*link.prefix("receiver"), *command, "recv", f"{link.receiver_address}:0", "-o", str(received), "-q"],
            stderr=subprocess.PIPE, text=True,
        )
        try:
            assert receiver.stderr is not None
            port = receiver.stderr.readline().strip().rsplit(":", 1)[1]
            started = time.monotonic()
            subprocess.run(
                [*link.prefix("sender"), *command, "send", str(sent), f"{link.receiver_address}:{port}",
                 "-q", *options],
                check=True, timeout=1200,
            )
            seconds = time.monotonic() - started
            if receiver.wait(60):
                raise RuntimeError(f"arraywire recv failed: {receiver.stderr.read()}")
        finally:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait()
        return {"bytes": os.path.getsize(sent), "options": options, "seconds": seconds,
                "mbps": os.path.getsize(sent) * 8 / seconds / 1e6,
                "identical": filecmp.cmp(sent, received, shallow=False)}


def same_host(settings: Settings) -> dict[str, Any]:
    """10. Same-host copies: Channels from arraywire.listen / connect with
    ``same_host`` on and off at both ends, AF_UNIX and loopback TCP, into
    fresh arrays and with ``recv(out=)``; a memcpy of each size in one
    process, in the same rounds; aw:// against tcp:// between the two workers
    of a LocalCluster."""
    sizes = list(settings.same_host_sizes)
    cases: dict[Any, dict[str, Any]] = {
        (family, destination, on): job(contender, family=family, sizes=sizes, same_host=on)
        for family in FAMILIES
        for destination, contender in SAME_HOST.items()
        for on in (True, False)
    }
    cases["memcpy"] = job(MEMCPY, family="unix", sizes=sizes)
    results = run_rounds(cases, settings)
    memcpy = results.pop("memcpy")
    rows = [
        {"family": family, "destination": destination, "same_host": on, "copies": result["same_host"],
         "size": size, "gbps": median_gbps(result, size)}
        for (family, destination, on), result in results.items()
        for size in sizes
    ]
    return {"rows": rows, "memcpy": [{"size": size, "gbps": median_gbps(memcpy, size)} for size in sizes],
            **worker_to_worker(settings)}


def worker_to_worker(settings: Settings) -> dict[str, Any]:
    """400 MB from one worker of a two-process LocalCluster to the other,
    aw:// and tcp://, a new cluster of each per round (dask_comms.py)."""
    if importlib.util.find_spec("distributed") is None:
        return {"cluster": [], "cluster_skipped": "distributed is not installed (pip install '.[dask]')"}
    import dask_comms as dask_benchmark

    bandwidths: dict[str, list[float]] = {scheme: [] for scheme in dask_benchmark.SCHEMES}
    for _ in range(settings.rounds):
        for scheme, pooled in bandwidths.items():
            with dask_benchmark.two_workers(scheme) as (client, first, second):
                pooled += dask_benchmark.transfers(client, first, second, ARRAY_400MB, busy=False,
                                                 repeats=settings.repeats)
    return {"cluster": [{"scheme": scheme, "size": ARRAY_400MB, "gbps": statistics.median(pooled) / 1e9}
                        for scheme, pooled in bandwidths.items()]}


SCENARIOS = {
    "throughput": throughput,
    "contention": contention,
    "threads": threads,
    "latency": latency,
    "memory": memory,
    "asyncio": asyncio_vs_blocking,
    "dask": dask_comms,
    "tls": tls,
    "streams": streams,
    "same-host": same_host,
}
