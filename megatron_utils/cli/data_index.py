"""`megatron data index ROOT`: index a dataset folder into one table and print what it holds."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..datasets import ADAPTERS, build_index, summarize, write_index

SHOWN = 50  # list at most this many unmatched files or problems; the counts are always printed


def _print_list(title: str, items: list[str]) -> None:
    if not items:
        return
    print(f"\n{len(items)} {title}:")
    for item in items[:SHOWN]:
        print(f"  {item}")
    if len(items) > SHOWN:
        print(f"  ... and {len(items) - SHOWN} more")


def run_index(args: argparse.Namespace) -> int:
    root = Path(args.root)
    out = Path(args.out) if args.out else root / "index.csv"
    options = {}
    if args.splits:
        options["splits_dir"] = args.splits
    if args.val_fraction:
        options["val_fraction"] = args.val_fraction
    # Neither this run's output nor an index left by an earlier default run is part of the dataset.
    result = build_index(root, args.dataset, ignore=[out, root / "index.csv"], **options)
    write_index(result.table, out)
    print(summarize(result.table))
    for note in result.notes:
        print(f"note: {note}")
    _print_list("files fit no rule of the layout (unmatched, not indexed)", result.unmatched)
    _print_list("problems", result.problems)
    print(f"\nwrote {len(result.table)} rows to {out}")
    return 1 if result.problems else 0


def register(data_commands: argparse._SubParsersAction) -> None:
    parser = data_commands.add_parser("index", help="index a dataset folder into a CSV or Parquet table")
    parser.add_argument("root", help="dataset root folder")
    parser.add_argument("--dataset", default="auto", choices=["auto", *ADAPTERS],
                        help="dataset layout (default: recognise it)")
    parser.add_argument("--out", help="index file, .csv or .parquet (default: ROOT/index.csv)")
    parser.add_argument("--splits", help="ffpp: folder with train.json, val.json, test.json of [a, b] id "
                                         "pairs (default: ROOT/splits/ if present, else the official lists)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="celebdf: carve this fraction of train identities out as a val split")
    parser.set_defaults(handler=run_index)
