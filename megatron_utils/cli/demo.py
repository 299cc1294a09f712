"""`megatron demo`: the main job on the embedded dataset (build, index, preprocess, train, evaluate)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo

    summary = run_demo(DemoConfig(preset=args.preset, data_dir=Path(args.data), run_dir=Path(args.run),
                                  cache_root=args.cache, seed=args.seed, workers=args.workers))
    metrics = summary["test_metrics"]
    print(f"test split: video AUC {metrics['auc']:.3f}, balanced accuracy {metrics['balanced_accuracy']:.3f}")
    return 1 if summary["preprocess_failures"] else 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="build the embedded mini dataset, then preprocess, train and "
                                              "evaluate on it")
    parser.add_argument("--preset", default="demo", help="mini dataset preset (tiny or demo)")
    parser.add_argument("--data", default="data/mini-demo", help="where the mini dataset is built")
    parser.add_argument("--run", default="runs/demo", help="the training run's folder")
    parser.add_argument("--cache", default=None, help="cache root (default: $MEGATRON_CACHE or ./cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="face-extraction processes")
    parser.set_defaults(handler=run)
