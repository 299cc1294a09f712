"""`megatron train` and `megatron evaluate`: train the detector on cached embeddings, evaluate a run."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from ..models.heads import DEFAULT_MODEL, POOLINGS, MegatronConfig, list_models, model_config
from ..training.attacks import AttackConfig, list_attacks
from ..training.corruptions import list_corruptions
from ..training.evaluate import evaluate_on_data, evaluate_run
from ..training.pseudo_fakes import TRAINING_FAKES
from ..training.train import TrainConfig, resume, train
from .options import add_config_options, add_recipe_option, recipe_from

# Head settings that come from the embed cache or the architecture's name, not from flags.
FIXED_MODEL_FIELDS = ("rgb_dim", "depth_dim", "audio_dim", "max_len", "num_classes", "architecture")
MODEL_CHOICES = {"streams": ["both", "rgb", "depth"], "fusion": ["cross_attention", "concat"],
                 "pooling": sorted({p for poolings in POOLINGS.values() for p in poolings}),
                 "positional": ["learned", "sinusoidal"]}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train the detector on an embed cache")
    parser.add_argument("--index", type=Path, help="index table (.csv or .parquet) with train/val splits")
    parser.add_argument("--embeddings", type=Path, help="embed cache folder (cache/embed/<key>)")
    parser.add_argument("--model", choices=list_models(), help="named model size (default: the recipe's, "
                        f"else {DEFAULT_MODEL})")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<model>-<streams>-<time>)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run from its last/ "
                        "checkpoint (with its own data and config; --epochs may extend it)")
    add_recipe_option(parser)
    training = parser.add_argument_group("training (TrainConfig; fakes: the dataset's, sbi twins, or both)")
    model = parser.add_argument_group("head (MegatronConfig; overrides the named size)")
    parser.set_defaults(handler=run_train,
                        train_options=add_config_options(training, TrainConfig,
                                                         choices={"fakes": TRAINING_FAKES}),
                        model_options=add_config_options(model, MegatronConfig, skip=FIXED_MODEL_FIELDS,
                                                         choices=MODEL_CHOICES))

    parser = commands.add_parser("evaluate", help="evaluate a trained run (also on another dataset)")
    parser.add_argument("run_dir", type=Path, help="run folder written by `megatron train`")
    parser.add_argument("--data", type=Path, help="another dataset (folder or index file): preprocessed with "
                        "the run's own preprocessing (cached) and evaluated; replaces --index/--embeddings")
    parser.add_argument("--index", type=Path, help="index to evaluate on (default: the run's own)")
    parser.add_argument("--embeddings", type=Path, help="embed cache of that index (default: the run's own)")
    parser.add_argument("--split", default="test", help="split of the index to evaluate, or `all` "
                        "(default: test)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--out", type=Path, help="report folder (default: RUN_DIR/eval/<index>-<split>)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--corrupt", nargs="+", metavar="CORRUPTION", help="also evaluate on corrupted "
                        f"copies of the split's videos: {', '.join(list_corruptions())} (writes "
                        "RUN_DIR/eval/robustness/robustness.csv and .png)")
    parser.add_argument("--severities", nargs="+", type=int, default=[1, 3, 5], metavar="N",
                        help="corruption severities 1-5 (default: 1 3 5)")
    parser.add_argument("--attack", nargs="+", choices=list_attacks(), help="also attack the split's "
                        "clips through the whole pixel path (writes RUN_DIR/eval/adversarial/adversarial.csv "
                        "and .png)")
    parser.add_argument("--eps", nargs="+", type=float, default=[1, 2, 4, 8], metavar="N",
                        help="L-infinity budgets in 1/255 (default: 1 2 4 8)")
    parser.add_argument("--attack-videos", type=int, metavar="N", help="attack only N videos of the split, "
                        "half real and half fake (attacks through the whole pixel path are slow on a CPU)")
    attack = parser.add_argument_group("attacks (AttackConfig: PGD steps and step size on pixels in [0, 1], "
                                       "e.g. 1/255, default eps / 4; Square's queries per clip)")
    parser.set_defaults(handler=run_evaluate, attack_options=add_config_options(attack, AttackConfig,
                                                                                section="attack"))


def run_train(args: argparse.Namespace) -> int:
    training = args.train_options.given(args)
    if args.resume is not None:
        named = [*training, *args.model_options.given(args)]
        named += [name for name in ("index", "embeddings", "out", "recipe", "model") if getattr(args, name)]
        others = [name for name in named if name != "epochs"]
        if others:
            raise ValueError(f"--resume continues the run with its own data and config; only --epochs may "
                             f"change (got --{', --'.join(n.replace('_', '-') for n in others)})")
        run_dir = resume(args.resume, epochs=training.get("epochs"))
    else:
        if args.index is None or args.embeddings is None:
            raise ValueError("--index and --embeddings are required (or --resume RUN_DIR)")
        recipe = recipe_from(args)
        train_cfg = replace(recipe.train, **training)
        name = args.model or recipe.model
        model_cfg = model_config(name, **args.model_options.given(args))
        out = args.out or Path("runs") / f"{name}-{model_cfg.streams}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = train(args.index, args.embeddings, train_cfg, model_cfg, out)
    print(f"run: {run_dir} (best checkpoint: {run_dir / 'best'}, history: {run_dir / 'history.csv'})")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    split = None if args.split == "all" else args.split
    if args.attack:
        from ..training.attacks import adversarial_table

        config = args.attack_options.apply(args, AttackConfig())
        device = "cpu" if args.device == "auto" else args.device
        table = adversarial_table(args.run_dir, args.attack, args.eps, args.split or "test", args.out, config,
                                  args.checkpoint, device, args.attack_videos)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"adversarial: {(args.out or args.run_dir / 'eval' / 'adversarial') / 'adversarial.csv'}")
        return 0
    if args.corrupt:
        from ..training.corruptions import robustness_table

        table = robustness_table(args.run_dir, args.corrupt, args.severities, args.split or "test",
                                 args.out)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"robustness: {(args.out or args.run_dir / 'eval' / 'robustness') / 'robustness.csv'}")
        return 0
    options = {"out_dir": args.out, "checkpoint": args.checkpoint, "device": args.device}
    if args.data is not None:
        if args.index is not None or args.embeddings is not None:
            raise ValueError("--data replaces --index and --embeddings; give one or the other")
        evaluation = evaluate_on_data(args.run_dir, args.data, split, **options)
    else:
        evaluation = evaluate_run(args.run_dir, args.index, args.embeddings, split, **options)
    print(evaluation.metrics.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"report: {evaluation.out_dir / 'report.md'}")
    return 0
