"""The `megatron` command. Each submodule registers one command group and holds no logic of its own:
handlers parse arguments, call `megatron_utils`, and print what came back."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# One module per command group; each defines `register(subparsers)`.
COMMAND_MODULES = ["data", "extract", "features", "finetune", "preprocess", "train", "compare", "predict",
                   "serve", "demo", "doctor"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron", description="Deepfake-video detection toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when everything asked for succeeded, 1 when some items failed, 2 for usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.handler(args) or 0)
    except (FileNotFoundError, ValueError) as error:
        print(f"megatron {args.command}: error: {error}", file=sys.stderr)
        return 2
