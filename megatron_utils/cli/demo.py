"""`megatron demo`: the main job on the embedded dataset (build, index, preprocess, train, evaluate)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo
    from ..recipes import load_recipe

    summary = run_demo(DemoConfig(preset=args.preset, data_dir=Path(args.data), run_dir=Path(args.run),
                                  cache_root=args.cache, seed=args.seed, workers=args.workers,
                                  recipe=load_recipe(args.recipe)))
    metrics = summary["test_metrics"]
    interval = f"[{metrics['auc_low']:.2f}, {metrics['auc_high']:.2f}]"
    print(f"test split: video AUC {metrics['auc']:.3f} {interval}; at the shipped threshold "
          f"{metrics['fpr']:.0%} of reals called fake, {metrics['tpr']:.0%} of fakes caught; "
          f"{metrics['tpr_at_5fpr']:.0%} of fakes caught at 5% false positives")
    return 1 if summary["preprocess_failures"] else 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="build the embedded mini dataset, then preprocess, train and "
                                              "evaluate on it")
    parser.add_argument("--preset", default="demo", help="mini dataset preset (tiny or demo)")
    parser.add_argument("--data", default="data/mini-demo", help="where the mini dataset is built")
    parser.add_argument("--run", default="runs/demo", help="the training run's folder")
    parser.add_argument("--cache", default=None, help="cache root (default: $MEGATRON_CACHE or ./cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default="demo", help="a bundled recipe's name (demo, ffpp-c23) or a "
                        ".yaml file: every stage's settings")
    parser.add_argument("--workers", type=int, default=None, help="face-extraction processes")
    parser.set_defaults(handler=run)
