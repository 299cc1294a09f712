"""`megatron doctor`: Python, torch, CUDA, the device and its precision, free memory and disk, where caches
and runs go, and which extras are installed."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("doctor", help="what this machine will run with (device, precision, disk, "
                                                "extras)")
    parser.add_argument("--runs", default="runs", help="the runs folder to check (default: runs)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..core.doctor import report

    print(report(args.runs))
    return 0
