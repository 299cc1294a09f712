"""`megatron finetune`: fine-tune the RGB embedder on real crops and self-blended pseudo-fakes."""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path

from ..models.backbones import AUTO, list_backbones
from ..training.attacks import ADVERSARIAL_TRAINING
from ..training.finetune import FAKES_MODES, FinetuneConfig, finetune

OPTIONS = ("epochs", "batch_size", "lr", "crops_per_video", "patience", "max_minutes", "seed", "input_size",
           "device")


def fraction(text: str) -> float:
    """"4/255" or "0.0157" as a float."""
    return float(Fraction(text))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("finetune", help="fine-tune the RGB embedder (self-blended pseudo-fakes)")
    parser.add_argument("--index", type=Path, required=True, help="index table with train/val splits")
    parser.add_argument("--faces", type=Path, required=True, help="faces cache folder (cache/faces/<key>)")
    parser.add_argument("--backbone", default=AUTO, choices=[AUTO, *list_backbones()])
    parser.add_argument("--weights", help="start from this local weights file or folder")
    parser.add_argument("--fakes", default="none", choices=FAKES_MODES,
                        help="none: reals and self-blended pseudo-fakes only (default); dataset: plus the "
                             "dataset's own fake crops")
    parser.add_argument("--adversarial", default="none", choices=ADVERSARIAL_TRAINING,
                        help="fgsm-rs: adversarial fine-tuning on FGSM-with-random-start images")
    parser.add_argument("--eps", type=fraction, default=FinetuneConfig.adversarial_eps, metavar="EPS",
                        help="its L-infinity budget on pixels in [0, 1]: 0.0157 or 4/255 (the default)")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/finetune-<backbone>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last/")
    defaults = FinetuneConfig()
    for name in OPTIONS:
        value = getattr(defaults, name)
        kind = float if name == "max_minutes" else int if name == "input_size" else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"default {value}")
    parser.set_defaults(handler=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    config = FinetuneConfig(backbone=args.backbone, weights=args.weights, fakes=args.fakes,
                            adversarial=args.adversarial, adversarial_eps=args.eps, **overrides)
    out = args.out or Path("runs") / f"finetune-{args.backbone}-{time.strftime('%Y%m%d-%H%M%S')}"
    best = finetune(args.index, args.faces, config, out, resume=args.resume)
    print(f"fine-tuned embedder: {best} (history: {out / 'history.csv'})")
    print(f"use it with: megatron preprocess INDEX --rgb-weights {best}")
    return 0
