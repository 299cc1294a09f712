"""`megatron extract`: sample frames and crop faces of videos or images into the `faces` stage cache."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..preprocessing.faces import extract_faces
from .options import add_recipe_option, add_stage_options, preprocess_config

INDEX_SUFFIXES = {".csv", ".parquet"}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("extract", help="detect, track and crop faces into the faces cache")
    parser.add_argument("inputs", nargs="+", metavar="INDEX_OR_PATHS",
                        help="an index CSV/Parquet with video_id and path columns, or video/image files")
    add_recipe_option(parser)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    parser.add_argument("--force", action="store_true", help="redo items already in the cache")
    parser.add_argument("--cache", default=None, help="cache root (default: $MEGATRON_CACHE or ./cache)")
    parser.set_defaults(handler=run, options=add_stage_options(parser, ("frames", "faces")))


def read_items(inputs: list[str]) -> list[tuple[str, str]]:
    """(video_id, path) pairs from index files (video_id, path columns) and media paths (id = stem)."""
    items: list[tuple[str, str]] = []
    for text in inputs:
        path = Path(text)
        if path.suffix.lower() in INDEX_SUFFIXES:
            if not path.exists():
                raise FileNotFoundError(f"index {path} does not exist")
            parquet = path.suffix.lower() == ".parquet"
            index = pd.read_parquet(path) if parquet else pd.read_csv(path, dtype=str, keep_default_na=False)
            missing = {"video_id", "path"} - set(index.columns)
            if missing:
                raise ValueError(f"index {path} lacks columns {sorted(missing)}")
            items += zip(index["video_id"].astype(str), index["path"].astype(str), strict=True)
        else:
            items.append((path.stem, str(path.resolve())))
    return items


def run(args: argparse.Namespace) -> int:
    config = preprocess_config(args, args.options)
    cache, report = extract_faces(read_items(args.inputs), config.frames, config.faces, force=args.force,
                                  cache_root=args.cache, workers=args.workers)
    print(report.summary())
    print(f"cache: {cache.dir}")
    return 1 if report.failures else 0
