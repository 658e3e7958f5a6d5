"""Turn the scenario results into latest.md, PNG plots and the README block."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from arraywire._cli.bench import FAMILIES, FAMILY_NAMES, markdown_table

COMPILED, PURE = "arraywire compiled", "arraywire pure"
CHANNEL = "arraywire Channel compiled"
README_BLOCK = re.compile(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", re.S)


def size_label(size: int) -> str:
    if size % 1_000_000 == 0:
        return f"{size // 1_000_000} MB"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def pick(rows: Iterable[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _grid(rows: list[dict[str, Any]], row_keys: tuple[str, ...], column: str, value: Callable[[dict[str, Any]], str]) -> tuple[list[str], list[list[str]]]:
    """Pivot rows: one line per distinct row_keys, one column per distinct column value."""
    columns = list(dict.fromkeys(r[column] for r in rows))
    lines: dict[tuple[Any, ...], dict[Any, str]] = {}
    for r in rows:
        lines.setdefault(tuple(r[k] for k in row_keys), {})[r[column]] = value(r)
    table = [
        [FAMILY_NAMES.get(k, k) for k in key] + [cells.get(c, "") for c in columns]
        for key, cells in lines.items()
    ]
    return columns, table


# --- targets -------------------------------------------------------------------


def targets(data: dict[str, dict[str, Any]]) -> list[list[str]]:
    """[target, measured, met?] for each target that has results."""
    checks: list[list[str]] = []

    def add(target: str, measured: float | None, ok: Callable[[float], bool], unit: str = "x") -> None:
        if measured is None:
            checks.append([target, "not measured", "-"])
        else:
            checks.append([target, f"{measured:.2f}{unit}", "met" if ok(measured) else "**missed**"])

    def ratio(rows: list[dict[str, Any]], field: str, top: dict[str, Any], bottom: list[dict[str, Any]]) -> float | None:
        a = pick(rows, **top)
        bs = [b for b in (pick(rows, **m) for m in bottom) if b]
        return a[field] / max(b[field] for b in bs) if a and bs else None

    if "throughput" in data:
        rows = data["throughput"]["rows"]
        for family in FAMILIES:
            name = FAMILY_NAMES[family]
            at = {"family": family, "size": 400_000_000}
            me = {"contender": COMPILED, **at}
            add(f"400 MB, {name}: compiled / sendall >= 0.95",
                ratio(rows, "gbps", me, [{"contender": "sendall + recv_into", **at}]), lambda x: x >= 0.95)
            add(f"400 MB, {name}: compiled / best pyzmq >= 1.5",
                ratio(rows, "gbps", me, [{"contender": c, **at} for c in ("pyzmq PUSH/PULL", "pyzmq REQ/REP")]),
                lambda x: x >= 1.5)
            add(f"400 MB, {name}: compiled / pickle >= 5",
                ratio(rows, "gbps", me, [{"contender": "pickle 5 + sendall", **at}]), lambda x: x >= 5)
    if "throughput" in data:
        rows = data["throughput"]["rows"]
        for family in FAMILIES:
            for size in sorted({r["size"] for r in rows if r["family"] == family}):
                at = {"family": family, "size": size}
                add(f"{size_label(size)}, {FAMILY_NAMES[family]}: compiled / memoryview recipe >= 0.95",
                    ratio(rows, "gbps", {"contender": COMPILED, **at}, [{"contender": "memoryview recipe", **at}]),
                    lambda x: x >= 0.95)
    if "contention" in data:
        rows = data["contention"]["rows"]
        for family, floor in (("tcp", 4), ("unix", 30)):
            name = FAMILY_NAMES[family]
            busy = {"family": family, "busy": "receiver"}
            add(f"busy receiver, {name}: compiled / pure >= {floor}",
                ratio(rows, "gbps", {"contender": COMPILED, **busy}, [{"contender": PURE, **busy}]),
                lambda x, floor=floor: x >= floor)
        for family in FAMILIES:
            add(f"busy receiver, {FAMILY_NAMES[family]}: compiled / its own idle >= 0.65",
                ratio(rows, "gbps", {"contender": COMPILED, "family": family, "busy": "receiver"},
                      [{"contender": COMPILED, "family": family, "busy": "none"}]),
                lambda x: x >= 0.65)
    if "threads" in data:
        rows = data["threads"]["rows"]
        for family in FAMILIES:
            for contender, wanted, ok in ((COMPILED, ">= 1.5", lambda x: x >= 1.5), (PURE, "< 1.5", lambda x: x < 1.5)):
                add(f"2 connections / 1, {FAMILY_NAMES[family]}, {contender.split()[1]}: {wanted}",
                    ratio(rows, "gbps", {"contender": contender, "family": family, "connections": 2},
                          [{"contender": contender, "family": family, "connections": 1}]), ok)
    if "latency" in data:
        for placement in dict.fromkeys(r["placement"] for r in data["latency"]["rtt"]):
            rows = [r for r in data["latency"]["rtt"] if r["size"] == 64 and r["placement"] == placement]
            for family in FAMILIES:
                name = f"{FAMILY_NAMES[family]}, {placement}"
                me = {"contender": COMPILED, "family": family}
                zmq = [r for r in rows if r["family"] == family and r["contender"].startswith("pyzmq")]
                mine = pick(rows, **me)
                add(f"64 B round trip, {name}: compiled / fastest pyzmq REQ/REP <= 0.6",
                    mine["us"] / min(r["us"] for r in zmq) if mine and zmq else None, lambda x: x <= 0.6)
                add(f"64 B round trip, {name}: compiled / pure <= 1",
                    ratio(rows, "us", me, [{"contender": PURE, "family": family}]), lambda x: x <= 1)
    if "latency" in data:
        channel_targets(data["latency"], add)
    if data.get("dask", {}).get("comm"):
        dask_targets(data["dask"], add)
    if "streams" in data:
        streams_targets(data["streams"], add, checks)
    if "same-host" in data:
        same_host_targets(data["same-host"], add, checks)
    if "memory" in data:
        for r in data["memory"]["rows"]:
            if r["contender"] in (COMPILED, CHANNEL):
                how = "recv_array" if r["contender"] == COMPILED else "Channel.recv"
                add(f"peak RSS added by {how} of 400 MB, {FAMILY_NAMES[r['family']]} <= 1.05x payload",
                    r["added_bytes"] / r["payload"], lambda x: x <= 1.05)
    return checks


def same_host_targets(same: dict[str, Any], add: Callable[..., None], checks: list[list[str]]) -> None:
    """The targets of the same-host issue. A row that asked for copies on a
    Channel whose opening left them off (``channel.same_host`` false) misses
    the targets that need copies."""
    rows = same["rows"]

    def versus(target: str, on: dict[str, Any] | None, base: dict[str, Any] | None, least: float) -> None:
        if on and not on["copies"]:
            checks.append([target, "copies off (channel.same_host false)", "**missed**"])
        else:
            add(target, on["gbps"] / base["gbps"] if on and base else None, lambda x: x >= least)

    for family in FAMILIES:
        name = FAMILY_NAMES[family]

        def row(destination: str, size: int, on: bool, family: str = family) -> dict[str, Any] | None:
            return pick(rows, family=family, destination=destination, size=size, same_host=on)

        versus(f"400 MB fresh, {name}: same_host on / off >= 2.5",
               row("fresh", 400_000_000, True), row("fresh", 400_000_000, False), 2.5)
        versus(f"400 MB recv(out=), {name}: same_host on / memcpy >= 0.8",
               row("out=", 400_000_000, True), pick(same["memcpy"], size=400_000_000), 0.8)
        for destination in ("fresh", "out="):
            versus(f"1 MiB {destination}, {name}: same_host on / off >= 1.3",
                   row(destination, 1 << 20, True), row(destination, 1 << 20, False), 1.3)
        for destination in ("fresh", "out="):
            target = f"every size {destination}, {name}: same_host on / off >= 0.95"
            ratios = {r["size"]: r["gbps"] / off["gbps"]
                      for r in rows if r["family"] == family and r["destination"] == destination and r["same_host"]
                      for off in [row(destination, r["size"], False)] if off}
            if not ratios:
                add(target, None, lambda x: x >= 0.95)
                continue
            worst = min(ratios, key=ratios.__getitem__)
            checks.append([target, f"{ratios[worst]:.2f}x at {size_label(worst)} (the lowest)",
                           "met" if ratios[worst] >= 0.95 else "**missed**"])
    aw, tcp = pick(same["cluster"], scheme="aw"), pick(same["cluster"], scheme="tcp")
    add("Dask cluster 400 MB worker to worker, idle: aw:// / tcp:// >= 2",
        aw["gbps"] / tcp["gbps"] if aw and tcp else None, lambda x: x >= 2)


def streams_targets(streams: dict[str, Any], add: Callable[..., None], checks: list[list[str]]) -> None:
    """The targets of the parallel streams issue. A figure of N streams where
    the receiver joined fewer connections misses its target."""
    def check(target: str, rows: list[dict[str, Any] | None], measured: Callable[[], float],
              ok: Callable[[float], bool]) -> None:
        short = [r for r in rows if r and r["sockets"] != r["streams"]]
        if short:
            checks.append([target, f"{short[0]['streams']} streams asked, {short[0]['sockets']} joined",
                           "**missed**"])
        else:
            add(target, measured() if all(rows) else None, ok)

    loopback = [pick(streams["loopback"], streams=n) for n in (1, 2)]
    check("400 MB, TCP loopback, compiled: 2 streams / 1 >= 1.4", loopback,
          lambda: loopback[1]["gbps"] / loopback[0]["gbps"], lambda x: x >= 1.4)
    for count in (1, 2, 4):
        row = pick(streams["link"], contender=CHANNEL, streams=count)
        check(f"shaped link, {count} stream(s): Mbit/s / (0.8 x {count} x 100) >= 1", [row],
              lambda row=row: row["mbps"] / row["target_mbps"], lambda x: x >= 1)
    cli = streams["cli"]
    target = "1 GB .npy, `arraywire send --streams 4` through the shaped link: received bytes identical"
    if cli is None:
        checks.append([target, "not measured", "-"])
    else:
        checks.append([target, f"{'identical' if cli['identical'] else 'differ'}, {cli['seconds']:.1f} s",
                       "met" if cli["identical"] else "**missed**"])


def dask_targets(dask: dict[str, Any], add: Callable[..., None]) -> None:
    """The targets of the Dask backend issue: aw:// against tcp:// in one run."""
    def aw_over_tcp(rows: list[dict[str, Any]], field: str, **match: Any) -> float | None:
        aw, tcp = pick(rows, scheme="aw", **match), pick(rows, scheme="tcp", **match)
        return aw[field] / tcp[field] if aw and tcp else None

    for size in sorted({r["size"] for r in dask["comm"]}):
        add(f"Dask comm {size_label(size)}: aw:// / tcp:// >= 1.0",
            aw_over_tcp(dask["comm"], "gbps", size=size, busy=False), lambda x: x >= 1.0)
        least = 3.0 if size >= 100_000_000 else 1.5
        add(f"Dask comm {size_label(size)}, busy receiver: aw:// / tcp:// >= {least:g}",
            aw_over_tcp(dask["comm"], "gbps", size=size, busy=True), lambda x, least=least: x >= least)
    add("Dask comm 64 B round trip: aw:// / tcp:// <= 0.9", aw_over_tcp(dask["rtt"], "us"),
        lambda x: x <= 0.9)
    aw = pick(dask["memory"], scheme="aw")
    add("Dask comm: peak RSS added by aw:// receiving 2 x 200 MB <= 1.05x payload",
        aw["added_bytes"] / aw["payload"] if aw else None, lambda x: x <= 1.05)
    add("Dask cluster 400 MB worker to worker, busy receiver: aw:// / tcp:// >= 2",
        aw_over_tcp(dask["cluster"], "gbps", busy=True, size=400_000_000), lambda x: x >= 2)


def channel_targets(latency: dict[str, Any], add: Callable[..., None]) -> None:
    """The targets of the connection issue: Channel round trips against
    pyzmq REQ/REP copy=True and a raw ping-pong, and one-way rates."""
    rtt = latency["rtt"]
    for placement, zmq_ceiling in (("one CPU", 0.7), ("any CPU", 1.0)):
        for family in FAMILIES:
            for size in (64, 4096):
                where = {"placement": placement, "family": family, "size": size}
                mine = pick(rtt, contender=CHANNEL, **where)
                if mine is None:
                    continue
                zmq = pick(rtt, contender="pyzmq REQ/REP copy=True", **where)
                raw = pick(rtt, contender="arraywire raw compiled", **where)
                name = f"{size_label(size)} round trip, {FAMILY_NAMES[family]}, {placement}"
                add(f"{name}: Channel / pyzmq REQ/REP copy=True <= {zmq_ceiling}",
                    mine["us"] / zmq["us"] if zmq else None, lambda x, c=zmq_ceiling: x <= c)
                add(f"{name}: Channel / raw ping-pong <= 1.15",
                    mine["us"] / raw["us"] if raw else None, lambda x: x <= 1.15)
    rate = latency["rate"]
    for family in FAMILIES:
        name = FAMILY_NAMES[family]
        batched = pick(rate, family=family, contender="arraywire Channel send_many")
        loop = pick(rate, family=family, contender="arraywire Channel send loop")
        zmq = pick(rate, family=family, contender="pyzmq PUSH/PULL copy=True")
        framed = pick(rate, family=family, contender=COMPILED)
        if batched and zmq:
            add(f"one-way 64 B, {name}: send_many / pyzmq PUSH/PULL copy=True >= 1",
                batched["per_s"] / zmq["per_s"], lambda x: x >= 1)
        if loop and framed:
            add(f"one-way 64 B, {name}: Channel.send loop / send_array loop >= 3",
                loop["per_s"] / framed["per_s"], lambda x: x >= 3)


# --- tables ----------------------------------------------------------------------


def sections(data: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    if "throughput" in data:
        rows = data["throughput"]["rows"]
        columns, table = _grid(rows, ("family", "contender"), "size", lambda r: f"{r['gbps']:.3g}")
        out.append("### 1. Throughput vs message size (GB/s, 1 GB = 10^9 bytes)\n\n"
                   + markdown_table(["socket", "contender", *map(size_label, columns)], table))
    if "contention" in data:
        rows = data["contention"]["rows"]
        columns, table = _grid(rows, ("family", "contender"), "busy", lambda r: f"{r['gbps']:.3g}")
        out.append("### 2. One CPU-bound Python thread in the receiving or sending process "
                   "(400 MB, GB/s)\n\n"
                   + markdown_table(["socket", "contender", *(f"busy: {c}" for c in columns)], table))
    if "threads" in data:
        rows = data["threads"]["rows"]
        size = size_label(data["threads"]["bytes_per_connection"])
        columns, table = _grid(rows, ("family", "contender"), "connections", lambda r: f"{r['gbps']:.3g}")
        out.append(f"### 3. Connections in threads of one process ({size} each, total GB/s)\n\n"
                   + markdown_table(["socket", "contender", *(f"{c} conn." for c in columns)], table))
    if "latency" in data:
        rtt = data["latency"]["rtt"]
        columns, table = _grid(rtt, ("placement", "family", "contender"), "size", lambda r: f"{r['us']:.1f}")
        rate = data["latency"]["rate"]
        out.append("### 4. Framed ping-pong round trip (µs, median)\n\n"
                   "*any CPU*: the processes run where the scheduler puts them; *one CPU*: both "
                   "are pinned to one CPU, which leaves out the cost of waking an idle CPU "
                   "(large in virtual machines) and shows the software's own.\n\n"
                   + markdown_table(["processes on", "socket", "contender", *map(size_label, columns)], table)
                   + "\n\nOne-way rate of framed 64 B arrays (messages/s):\n\n"
                   + markdown_table(["socket", "contender", "messages/s"],
                                    [[FAMILY_NAMES[r["family"]], r["contender"], f"{r['per_s']:,.0f}"] for r in rate]))
    if "memory" in data:
        rows = data["memory"]["rows"]
        out.append("### 5. Peak RSS added by receiving a 400 MB array\n\n"
                   + markdown_table(["socket", "contender", "added MB", "x payload"],
                                    [[FAMILY_NAMES[r["family"]], r["contender"], f"{r['added_bytes'] / 1e6:.1f}",
                                      f"{r['added_bytes'] / r['payload']:.3f}"] for r in rows]))
    if "asyncio" in data:
        title = "### 6. asyncio vs blocking (arraywire.aio, GB/s)\n\n"
        rows = data["asyncio"]["rows"]
        if rows:
            columns, table = _grid(rows, ("family", "contender"), "size", lambda r: f"{r['gbps']:.3g}")
            out.append(title + markdown_table(["socket", "contender", *map(size_label, columns)], table))
        else:
            out.append(title + f"Not measured: {data['asyncio']['skipped']}.")
    if "dask" in data:
        out.append(dask_section(data["dask"]))
    if "tls" in data:
        out.append(tls_section(data["tls"]))
    if "streams" in data:
        out.append(streams_section(data["streams"]))
    if "same-host" in data:
        out.append(same_host_section(data["same-host"]))
    return out


def dask_section(dask: dict[str, Any]) -> str:
    title = "### 7. Dask comms: aw:// against tcp:// (GB/s; round trip µs)\n\n"
    if not dask.get("comm"):
        return title + f"Not measured: {dask['skipped']}."
    busy = {False: "idle", True: "CPU-bound thread in the receiver"}
    columns, table = _grid(dask["comm"], ("busy", "scheme"), "size", lambda r: f"{r['gbps']:.3g}")
    table = [[busy[row[0]], f"{row[1].lower()}://", *row[2:]] for row in table]
    cluster_columns, cluster_table = _grid(dask["cluster"], ("busy", "scheme"), "size",
                                           lambda r: f"{r['gbps']:.3g}")
    return (title + "Comm level, two processes, `{\"x\": to_serialize(array)}`:\n\n"
            + markdown_table(["receiver", "scheme", *map(size_label, columns)], table)
            + "\n\n" + markdown_table(
                ["scheme", "64 B round trip (µs)", "peak RSS added, 2 x 200 MB (x payload)"],
                [[f"{r['scheme']}://", f"{r['us']:.1f}",
                  f"{pick(dask['memory'], scheme=r['scheme'])['added_bytes'] / (2 * 200e6):.3f}"]
                 for r in dask["rtt"]])
            + "\n\nCluster level, `LocalCluster(n_workers=2, processes=True)`, from one "
            "worker to the other (the receiving worker's `transfer_incoming_log`, GB/s):\n\n"
            + markdown_table(["receiving worker", "scheme", *map(size_label, cluster_columns)],
                             [[busy[row[0]].replace("CPU-bound thread", "GIL-holding task"),
                               f"{row[1].lower()}://", *row[2:]] for row in cluster_table]))


def tls_section(tls: dict[str, Any]) -> str:
    table = []
    for contender in dict.fromkeys(r["contender"] for r in tls["rtt"]):
        rtt = {c: pick(tls["rtt"], contender=contender, connection=c)["us"] for c in ("plain", "TLS")}
        speed = {c: pick(tls["transfer"], contender=contender, connection=c)["gbps"] for c in ("plain", "TLS")}
        table.append([contender, f"{rtt['plain']:.1f}", f"{rtt['TLS']:.1f}", f"{rtt['TLS'] / rtt['plain']:.2f}",
                      f"{speed['plain']:.3g}", f"{speed['TLS']:.3g}", f"{speed['TLS'] / speed['plain']:.2f}"])
    return ("### 8. TLS against plain TCP (Channels from `listen` / `connect`)\n\n"
            "Loopback TCP, connections opened by `arraywire.listen` / `connect` (the handshake "
            "is not timed); 400 MB one way, timed by the receiver. "
            f"TLS: {'; '.join(tls['tls'])}.\n\n"
            + markdown_table(["contender", "64 B round trip, plain (µs)", "64 B round trip, TLS (µs)",
                              "TLS / plain", "400 MB, plain (GB/s)", "400 MB, TLS (GB/s)", "TLS / plain"],
                             table))


def streams_section(streams: dict[str, Any]) -> str:
    out = ["### 9. Parallel streams: one Channel over N TCP connections"]
    one = pick(streams["loopback"], streams=1)
    out.append("Loopback TCP, 400 MB one way, compiled backend, from `arraywire.listen` / "
               "`connect(..., streams=N)`, timed by the receiver:\n\n"
               + markdown_table(["streams", "connections joined", "GB/s", "/ 1 stream"],
                                [[r["streams"], r["sockets"], f"{r['gbps']:.3g}", f"{r['gbps'] / one['gbps']:.2f}"]
                                 for r in streams["loopback"]]))
    if streams["link"]:
        out.append("Through the shaped link of `benchmarks/netlink.py` (two network namespaces, a veth "
                   "pair, HTB: 100 Mbit/s per TCP source port bucket, 1 Gbit/s in all), "
                   f"{size_label(streams['bytes_per_stream'])} per stream; plain TCP flows (one thread each, "
                   "`sendall` / `recv_into`) are the link's ceiling:\n\n"
                   + markdown_table(["contender", "streams", "connections joined", "Mbit/s", "target 0.8 x N x 100",
                                     "/ target"],
                                    [[r["contender"], r["streams"], r.get("sockets", r["streams"]), f"{r['mbps']:.1f}",
                                      f"{r['target_mbps']:.0f}", f"{r['mbps'] / r['target_mbps']:.2f}"]
                                     for r in streams["link"]]))
    else:
        out.append(f"Shaped link not measured: {streams['link_skipped']}.")
    cli = streams["cli"]
    if cli:
        out.append(f"Command line, `arraywire send big.npy HOST:PORT {' '.join(cli['options'])}` to `arraywire recv` "
                   f"through the shaped link, {cli['bytes'] / 1e9:.2f} GB, timed from starting the sender to its "
                   f"exit (after the receiver's confirmation): {cli['seconds']:.1f} s, {cli['mbps']:.0f} Mbit/s; "
                   f"received file {'byte-identical' if cli['identical'] else '**differs**'}.")
    return "\n\n".join(out)


def same_host_section(same: dict[str, Any]) -> str:
    rows = same["rows"]
    onoff = {True: "on", False: "off"}
    columns, table = _grid(rows, ("family", "destination", "same_host", "copies"), "size",
                           lambda r: f"{r['gbps']:.3g}")
    table = [[family, destination, onoff[asked], str(copies).lower(), *cells]
             for family, destination, asked, copies, *cells in table]
    memcpy = {r["size"]: r["gbps"] for r in same["memcpy"]}
    table.append(["one process", "memcpy (`np.copyto`, prefaulted)", "", "",
                  *(f"{memcpy[c]:.3g}" if c in memcpy else "" for c in columns)])
    ratios = []
    for family in FAMILIES:
        for destination in ("fresh", "out="):
            cells = []
            for size in columns:
                on, off = (pick(rows, family=family, destination=destination, size=size, same_host=x)
                           for x in (True, False))
                cells.append(f"{on['gbps'] / off['gbps']:.2f}" if on and off else "")
            ratios.append([FAMILY_NAMES[family], destination, *cells])
    out = ["### 10. Same host: `same_host` on and off (GB/s)",
           "A Channel from `arraywire.listen` / `connect` with `same_host=True` or `False` at both "
           "ends, compiled backend, one way, timed by the receiver; *fresh*: `channel.recv()`, "
           "*out=*: `channel.recv(out=)` into a reused array; `channel.same_host` is what the "
           "receiver's Channel said (whether the opening turned copies on):\n\n"
           + markdown_table(["socket", "destination", "same_host", "channel.same_host",
                             *map(size_label, columns)], table),
           "on / off:\n\n" + markdown_table(["socket", "destination", *map(size_label, columns)], ratios)]
    if same["cluster"]:
        out.append("`LocalCluster(n_workers=2, processes=True)`, 400 MB from one worker to the other, "
                   "receiving worker idle (its `transfer_incoming_log`, GB/s):\n\n"
                   + markdown_table(["scheme", "GB/s"],
                                    [[f"{r['scheme']}://", f"{r['gbps']:.3g}"] for r in same["cluster"]]))
    else:
        out.append(f"Dask cluster not measured: {same['cluster_skipped']}.")
    return "\n\n".join(out)


def environment(meta: dict[str, Any]) -> str:
    return (f"{meta['cpus']} CPUs ({meta['cpu']}), Linux {meta['kernel']}, "
            f"Python {meta['python']}, numpy {meta['numpy']}, pyzmq {meta['pyzmq']}, "
            f"arraywire {meta['arraywire']}")


def runs(data: dict[str, dict[str, Any]]) -> str:
    """When and on what each scenario ran, with the machine's load around it
    (other work on the machine makes the figures noisier)."""
    rows = [
        [name, d["meta"]["date"], f"{d['meta']['seconds']:.0f} s",
         "{:.2f} / {:.2f}".format(*d["meta"]["load"])]
        for name, d in data.items()
    ]
    machines = "; ".join(dict.fromkeys(environment(d["meta"]) for d in data.values()))
    return (f"Machine: {machines}.\n\n"
            + markdown_table(["scenario", "date", "took", "load average before / after"], rows))


def latest_markdown(data: dict[str, dict[str, Any]], command: str, images: list[str]) -> str:
    parts = [
        "# arraywire benchmark results",
        f"Command: `{command}`. Sender and receiver are separate processes; every figure is "
        "the median of all repetitions in all rounds, and ratios compare figures of one run.",
        runs(data),
        "## Targets\n\n" + markdown_table(["target", "measured", "met?"], targets(data)),
        "## Results",
        *sections(data),
        *(f"![{name}]({name})" for name in images),
    ]
    return "\n\n".join(parts) + "\n"


def readme_block(data: dict[str, dict[str, Any]], results_link: str) -> str:
    newest = max((d["meta"] for d in data.values()), key=lambda m: m["date"])
    parts = [
        "## Benchmarks",
        f"Latest run of `python benchmarks/run.py` ([full results]({results_link}/latest.md), "
        f"[how to run](benchmarks/README.md)): {newest['date']}, {environment(newest)}.",
    ]
    if "throughput" in data:
        rows = [r for r in data["throughput"]["rows"] if r["size"] == 400_000_000]
        columns, table = _grid(rows, ("contender",), "family", lambda r: f"{r['gbps']:.2f}")
        parts.append("One 400 MB array between two processes (GB/s, median):\n\n"
                     + markdown_table(["contender", *(FAMILY_NAMES[c] for c in columns)], table))
    if "latency" in data:
        rows = [r for r in data["latency"]["rtt"] if r["size"] == 64 and r["family"] == "tcp"]
        columns, table = _grid(
            [r for r in rows if r["contender"] in (CHANNEL, "pyzmq REQ/REP copy=True", "arraywire raw compiled")],
            ("contender",), "placement", lambda r: f"{r['us']:.1f}",
        )
        parts.append("64 B round trip over TCP (µs, median):\n\n"
                     + markdown_table(["contender", *columns], table))
    checks = targets(data)
    met = sum(1 for check in checks if check[2] == "met")
    parts.append(f"{met} of {len(checks)} targets met in the latest runs; the table of targets "
                 f"and every figure are in [latest.md]({results_link}/latest.md).")
    if "throughput" in data:
        parts.append(f"![throughput vs message size]({results_link}/throughput.png)")
    return "\n\n".join(parts) + "\n"


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    if not README_BLOCK.search(text):
        raise SystemExit(f"{readme} has no <!-- bench:start --> / <!-- bench:end --> block")
    readme.write_text(README_BLOCK.sub(lambda m: m.group(1) + block + m.group(2), text, count=1))


# --- plots -----------------------------------------------------------------------

def _bars(ax: Any, groups: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=label)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)


def plots(data: dict[str, dict[str, Any]], out: Path) -> list[str]:
    """Write a PNG for each scenario that has a plot; return their names."""
    written = []
    if "throughput" in data:
        rows = data["throughput"]["rows"]
        fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
        for ax, family in zip(axes, FAMILIES, strict=True):
            for contender in dict.fromkeys(r["contender"] for r in rows if r["contender"] != "iperf3"):
                points = [(r["size"], r["gbps"]) for r in rows if r["family"] == family and r["contender"] == contender]
                ax.plot(*zip(*points, strict=True), marker="o", label=contender,
                        linewidth=2.5 if contender.startswith("arraywire") else 1.2)
            ceiling = pick(rows, family=family, contender="iperf3")
            if ceiling:
                ax.axhline(ceiling["gbps"], color="grey", linestyle="--", label="iperf3 (kernel ceiling)")
            ax.set(xscale="log", yscale="log", title=FAMILY_NAMES[family], xlabel="message size (bytes)")
            ax.grid(True, which="major", alpha=0.3)
        axes[0].set_ylabel("GB/s")
        axes[1].legend(fontsize=8)
        _save(fig, out / "throughput.png")
        written.append("throughput.png")
    if "contention" in data:
        rows = data["contention"]["rows"]
        groups = list(dict.fromkeys((r["family"], r["busy"]) for r in rows))
        series = {c: [pick(rows, contender=c, family=f, busy=b)["gbps"] for f, b in groups]
                  for c in dict.fromkeys(r["contender"] for r in rows)}
        fig, ax = plt.subplots(figsize=(10, 4.5))
        _bars(ax, [f"{FAMILY_NAMES[f]}\nbusy: {b}" for f, b in groups], series)
        ax.set(ylabel="GB/s", title="400 MB with one CPU-bound Python thread")
        ax.legend()
        _save(fig, out / "contention.png")
        written.append("contention.png")
    if "threads" in data:
        rows = data["threads"]["rows"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for family in FAMILIES:
            for contender in dict.fromkeys(r["contender"] for r in rows):
                points = [(r["connections"], r["gbps"]) for r in rows
                          if r["family"] == family and r["contender"] == contender]
                ax.plot(*zip(*points, strict=True), marker="o", label=f"{contender}, {FAMILY_NAMES[family]}")
        ax.set(xlabel="connections (one thread each)", ylabel="total GB/s", xticks=[1, 2, 4],
               title="Thread scaling in one process")
        ax.legend(fontsize=8)
        _save(fig, out / "threads.png")
        written.append("threads.png")
    if "latency" in data:
        rows = data["latency"]["rtt"]
        placements = list(dict.fromkeys(r["placement"] for r in rows))
        fig, axes = plt.subplots(len(placements), 2, figsize=(12, 4 * len(placements)),
                                 sharey=True, squeeze=False)
        for placement, line in zip(placements, axes, strict=True):
            for ax, family in zip(line, FAMILIES, strict=True):
                mine = [r for r in rows if r["family"] == family and r["placement"] == placement]
                sizes = list(dict.fromkeys(r["size"] for r in mine))
                series = {c: [pick(mine, contender=c, size=s)["us"] for s in sizes]
                          for c in dict.fromkeys(r["contender"] for r in mine)}
                _bars(ax, [size_label(s) for s in sizes], series)
                ax.set(title=f"{FAMILY_NAMES[family]}, processes on {placement}")
            line[0].set_ylabel("round trip, µs (median)")
        axes[0][1].legend(fontsize=8)
        _save(fig, out / "latency.png")
        written.append("latency.png")
    return written


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
