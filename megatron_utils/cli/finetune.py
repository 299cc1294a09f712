"""`megatron finetune`: fine-tune the RGB embedder on real crops and self-blended pseudo-fakes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..models.backbones import AUTO, list_backbones
from ..training.attacks import ADVERSARIAL_TRAINING
from ..training.finetune import FAKES_MODES, FinetuneConfig, finetune
from .options import add_config_options, add_recipe_option, recipe_from


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("finetune", help="fine-tune the RGB embedder (self-blended pseudo-fakes)")
    parser.add_argument("--index", type=Path, required=True, help="index table with train/val splits")
    parser.add_argument("--faces", type=Path, required=True, help="faces cache folder (cache/faces/<key>)")
    add_recipe_option(parser)
    settings = parser.add_argument_group("fine-tuning (FinetuneConfig; fakes none: reals and their "
                                         "self-blended pseudo-fakes only; adversarial fgsm-rs: train on "
                                         "FGSM-with-random-start images within --adversarial-eps, on pixels "
                                         "in [0, 1]: 0.0157 or 4/255)")
    options = add_config_options(settings, FinetuneConfig, choices={
        "backbone": [AUTO, *list_backbones()], "fakes": FAKES_MODES, "adversarial": ADVERSARIAL_TRAINING})
    parser.add_argument("--out", type=Path, help="run folder (default: runs/finetune-<backbone>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last/")
    parser.set_defaults(handler=run_finetune, options=options)


def run_finetune(args: argparse.Namespace) -> int:
    config = args.options.apply(args, recipe_from(args).finetune)
    out = args.out or Path("runs") / f"finetune-{config.backbone}-{time.strftime('%Y%m%d-%H%M%S')}"
    best = finetune(args.index, args.faces, config, out, resume=args.resume)
    print(f"fine-tuned embedder: {best} (history: {out / 'history.csv'})")
    print(f"use it with: megatron preprocess INDEX --embed-rgb-weights {best}")
    return 0
