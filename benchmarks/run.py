"""Run arraywire's benchmark suite (issue 4); see benchmarks/README.md.

    python benchmarks/run.py                 # everything, ~20 minutes on 2 cores
    python benchmarks/run.py --only latency  # one scenario, report rebuilt
    python benchmarks/run.py --quick         # a short check, in results/quick/

Each scenario's medians are kept in results/<scenario>.json; the report
(results/latest.md, the PNGs and the README block) is rebuilt from all of
them after every run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import report
import scenarios
import zmq

import arraywire

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"


def environment() -> dict[str, object]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "arraywire": arraywire.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(scenarios.SCENARIOS), metavar="SCENARIO",
                        help="run these scenarios only: " + ", ".join(scenarios.SCENARIOS))
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes and repetitions; results go to results/quick/, README untouched")
    args = parser.parse_args()
    if arraywire.BACKEND != "c":
        print("arraywire's compiled backend is not built; install with a C compiler first", file=sys.stderr)
        return 1

    out = HERE / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    settings = scenarios.Settings.quick() if args.quick else scenarios.Settings()
    for name in args.only or scenarios.SCENARIOS:
        print(f"{name} ...", end=" ", flush=True)
        started, load = time.monotonic(), os.getloadavg()[0]
        result = scenarios.SCENARIOS[name](settings)
        result["meta"] = {
            **environment(),
            "seconds": time.monotonic() - started,
            "load": [load, os.getloadavg()[0]],
        }
        (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"{time.monotonic() - started:.0f} s", flush=True)

    data = {
        name: json.loads((out / f"{name}.json").read_text())
        for name in scenarios.SCENARIOS
        if (out / f"{name}.json").exists()
    }
    images = report.plots(data, out)
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    (out / "latest.md").write_text(report.latest_markdown(data, command, images))
    if not args.quick:
        report.update_readme(README, report.readme_block(data, out.relative_to(README.parent).as_posix()))
    print(f"wrote {out / 'latest.md'}")
    for line in report.targets(data):
        print(" | ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
