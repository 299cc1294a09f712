"""`megatron data build-mini`: build the embedded mini FF++-style dataset from real faces."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..datasets.mini import MINI_PRESETS, build_mini


def register(data_commands: argparse._SubParsersAction) -> None:
    parser = data_commands.add_parser(
        "build-mini", help="build the mini FF++-style dataset (real faces, real manipulations)",
        description="Build a small dataset in the FaceForensics++ layout from real faces shipped in registry "
                    "packages: originals, FaceSwap / MouthReenact / SelfBlend fakes, identity-disjoint "
                    "splits, mini_manifest.json and contact_sheet.png. Finished videos are reused.")
    parser.add_argument("--preset", choices=sorted(MINI_PRESETS), default="tiny")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create or complete")
    parser.add_argument("--seed", type=int, default=0, help="seed for camera motion, splits and fakes")
    parser.add_argument("--force", action="store_true", help="delete what an earlier build left and rebuild")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    report = build_mini(args.preset, args.out, seed=args.seed, force=args.force)
    print(report.summary())
    print(f"manifest: {report.manifest}\ncontact sheet: {report.contact_sheet}")
    return 0
