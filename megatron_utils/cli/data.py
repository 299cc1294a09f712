"""`megatron data ...`: dataset indexes, the FaceForensics++ download and the embedded mini dataset."""

from __future__ import annotations

import argparse
import importlib

# Each module defines `register(data_subparsers)` for its own `megatron data <name>` commands.
DATA_COMMAND_MODULES = ["data_index", "data_download", "data_mini"]


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("data", help="build, download and index datasets")
    data_commands = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    for name in DATA_COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(data_commands)
