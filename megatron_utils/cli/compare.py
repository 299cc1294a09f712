"""`megatron compare`: train several temporal heads on the same embeddings and rank them on one split."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.heads import list_models, model_config
from ..training.pseudo_fakes import TRAINING_FAKES
from ..training.train import TrainConfig
from .options import add_config_options, add_recipe_option, recipe_from

DEFAULT_MODELS = ["megatron-small", "lstm", "frame-cnn"]


def run(args: argparse.Namespace) -> int:
    from ..training.compare import compare_models, write_leaderboard

    train_cfg = args.train_options.apply(args, recipe_from(args).train)
    models = {name: model_config(name) for name in args.models}
    table = compare_models(args.index, args.embeddings, models, train_cfg, args.out, args.split,
                           args.predict_video)
    title = f"{args.split} split of {args.index} ({train_cfg.epochs} epochs, seed {train_cfg.seed})"
    csv_path, md_path = write_leaderboard(table, args.out, title, args.split)
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("compare", help="train several models on the same embeddings; leaderboard")
    parser.add_argument("--index", type=Path, required=True, help="index table with train/val/test splits")
    parser.add_argument("--embeddings", type=Path, required=True, help="embed cache folder "
                        "(cache/embed/<key>)")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list_models(), metavar="MODEL",
                        help=f"registered models (default: {' '.join(DEFAULT_MODELS)}; known: "
                             f"{', '.join(list_models())})")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="a run folder per model, "
                        "and leaderboard.csv/.md (default: runs/compare)")
    parser.add_argument("--split", default="test", help="split to rank on (default: test)")
    parser.add_argument("--predict-video", type=Path, metavar="VIDEO", help="also time `predict` on this "
                        "video with each model (preprocessing included; needs embeddings made by "
                        "`megatron preprocess`)")
    add_recipe_option(parser)
    training = parser.add_argument_group("training, the same for every model (TrainConfig)")
    parser.set_defaults(handler=run, train_options=add_config_options(training, TrainConfig,
                                                                      choices={"fakes": TRAINING_FAKES}))
