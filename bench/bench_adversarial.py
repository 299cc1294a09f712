"""Standard against adversarial fine-tuning on the demo: clean and robust video AUC side by side.

`runs/demo` is the main job's run (`bash scripts/demo.sh`: its RGB embedder fine-tuned on reals and
self-blended pseudo-fakes). This runs the same demo again into `runs/demo-adv`, from the same data and
caches, with one change: the embedder is fine-tuned with FGSM and a random start (`megatron finetune
--adversarial fgsm-rs --adversarial-eps 4/255`). Then both runs are attacked through the whole pixel path
(white-box FGSM and PGD, as `megatron evaluate RUN --attack`) on the same test videos. Run alone (it
trains):

    python bench/bench_adversarial.py [--eps 1 2 4 8] [--attack-videos 16] [--attack-steps 3]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
from common import REPO, print_table, write_results

from megatron_utils.demo import DemoConfig, run_demo
from megatron_utils.training.attacks import AttackConfig, adversarial_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standard", type=Path, default=REPO / "runs" / "demo", help="the main job's run")
    parser.add_argument("--adversarial", type=Path, default=REPO / "runs" / "demo-adv")
    parser.add_argument("--train-eps", type=float, default=4.0, help="fine-tuning eps in 1/255")
    parser.add_argument("--attacks", nargs="+", default=["fgsm", "pgd"])
    parser.add_argument("--eps", nargs="+", type=float, default=[1, 2, 4, 8], help="attack eps in 1/255")
    parser.add_argument("--attack-steps", type=int, default=3)
    parser.add_argument("--attack-videos", type=int, default=16)
    args = parser.parse_args()
    if not (args.standard / "best" / "config.json").exists():
        raise SystemExit(f"{args.standard} holds no trained run: run `bash scripts/demo.sh` first")

    os.chdir(REPO)  # the demo's data and cache folders are relative to the repository, as in scripts/demo.sh
    started = time.perf_counter()
    base = DemoConfig()
    tuning = replace(base.recipe.finetune, adversarial="fgsm-rs", adversarial_eps=args.train_eps / 255)
    adversarial = replace(base, run_dir=args.adversarial, recipe=replace(base.recipe, finetune=tuning))
    summary = run_demo(adversarial)
    demo_seconds = time.perf_counter() - started

    attack = AttackConfig(steps=args.attack_steps)
    tables = []
    for name, run in (("standard", args.standard), (f"fgsm-rs {args.train_eps:g}/255", args.adversarial)):
        table = adversarial_table(run, args.attacks, args.eps, config=attack, max_videos=args.attack_videos)
        tables.append(table.assign(fine_tuning=name))
    result = pd.concat(tables, ignore_index=True)
    wide = result.pivot_table(index=["attack", "eps"], columns="fine_tuning", values="auc", sort=False)
    rows = [{"attack": attack_name, "eps (1/255)": eps, **{f"AUC {k}": v for k, v in row.items()}}
            for (attack_name, eps), row in wide.iterrows()]
    print_table(rows, f"Video AUC on {args.attack_videos} demo test videos: standard vs adversarial "
                      f"fine-tuning")
    write_results("adversarial_training", {
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": result.to_dict(orient="records"), "adversarial_demo_test": summary["test_metrics"],
        "adversarial_demo_seconds": round(demo_seconds, 1)})


if __name__ == "__main__":
    main()
