"""The ``arraywire`` command line: one sub-command per job."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arraywire", description="Move large numpy arrays over sockets."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    from arraywire import _bench, _transfer_cli

    _bench.add_arguments(
        commands.add_parser("bench", help="loopback throughput of both backends")
    )
    _transfer_cli.add_send_arguments(
        commands.add_parser("send", help="send a .npy file to arraywire recv")
    )
    _transfer_cli.add_recv_arguments(
        commands.add_parser("recv", help="receive an array into a .npy file")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))
