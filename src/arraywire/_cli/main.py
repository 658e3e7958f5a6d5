"""The ``arraywire`` command line: one sub-command per job."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from arraywire import __version__
from arraywire._cli import bench, transfer
from arraywire._core.transport import BACKEND, NO_EXTENSIONS

EXAMPLES = """\
examples:
  arraywire recv 5000 -o weights.npy              listen on port 5000 (IPv4 and IPv6)
  arraywire send weights.npy receiver-host:5000   send to it; either may start first
  arraywire send weights.npy '[fd00::2]:5000'     an IPv6 address goes in brackets
  arraywire bench                                 loopback throughput of both backends

'arraywire COMMAND --help' describes a command's options.

exit status: 0 done, 1 failed (one line on stderr says why), 2 bad command
line, 130 interrupted (Ctrl-C or SIGTERM)
"""

BENCH_EXAMPLES = """\
examples:
  arraywire bench                                 both backends, loopback TCP and AF_UNIX
  arraywire bench --family tcp --size 1000000     8 MB transfers, TCP only
"""


def version() -> str:
    """The version and the transport backend this process uses, with why."""
    if BACKEND == "c":
        why = "compiled"
    elif NO_EXTENSIONS:
        why = "pure Python: ARRAYWIRE_NO_EXTENSIONS is set"
    else:
        why = "pure Python: the compiled extension is not built"
    return f"arraywire {__version__}, backend {BACKEND} ({why})"


def build_parser() -> argparse.ArgumentParser:
    examples = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="arraywire", description="Move large numpy arrays over sockets.",
        epilog=EXAMPLES, formatter_class=examples,
    )
    parser.add_argument(
        "--version", action="version", version=version(),
        help="print the version and the backend in use (c: compiled, python: pure Python)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    bench.add_arguments(
        commands.add_parser(
            "bench", help="loopback throughput of both backends",
            description="Loopback throughput of both backends, one process to another.",
            epilog=BENCH_EXAMPLES, formatter_class=examples,
        )
    )
    transfer.add_send_arguments(
        commands.add_parser(
            "send", help="send a .npy file to arraywire recv",
            description=transfer.SEND_DESCRIPTION, epilog=transfer.SEND_EXAMPLES,
            formatter_class=examples,
        )
    )
    transfer.add_recv_arguments(
        commands.add_parser(
            "recv", help="receive an array into a .npy file",
            description=transfer.RECV_DESCRIPTION, epilog=transfer.RECV_EXAMPLES,
            formatter_class=examples,
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))
