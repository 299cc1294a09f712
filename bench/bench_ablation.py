"""The ablation table of a trained run's design, on its own test split and on real deepfakes.

For the run (the demo's by default) the embed caches are made twice, with the fine-tuned RGB embedder the
run used and with the frozen ImageNet one (everything else the run's own preprocessing, cached), for the
run's dataset and for realfakes-dev (`bench_run_on_realfakes.py` says how it is indexed; research-only,
never copied into the project). On each, the temporal head is trained per variant (full cross-attention,
concatenation, RGB only, depth only) over several seeds and scored on the run's test split and on every
realfakes-dev video; the table gives mean video AUC (min-max over seeds). RGB only is the run without
its depth provider. Run alone (it trains):

    python bench/bench_ablation.py [--run runs/demo] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_realfakes import DEFAULT_DATA, realfakes_index
from common import REPO, print_table, write_results

from megatron_utils.datasets import read_index, write_index
from megatron_utils.models.heads import MegatronConfig
from megatron_utils.preprocessing.preprocess import PreprocessConfig, preprocess
from megatron_utils.training.compare import ABLATIONS
from megatron_utils.training.evaluate import evaluate_run
from megatron_utils.training.train import TrainConfig, train


def embed_caches(run: Path, index: Path, realfakes: Path) -> dict[str, tuple[Path, Path]]:
    """{embedder: (run's data embed cache, realfakes embed cache)}, fine-tuned and frozen RGB embedder."""
    tuned = PreprocessConfig.from_embed_cache(run)
    frozen = replace(tuned, embed=replace(tuned.embed, rgb_weights=None))
    caches = {}
    for name, config in (("fine-tuned", tuned), ("frozen ImageNet", frozen)):
        caches[name] = tuple(preprocess(read_index(path), config).embed.dir for path in (index, realfakes))
    return caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fakes", default="dataset", help="the fakes the head trains on (train --fakes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run_config = json.loads((args.run / "config.json").read_text())
    index = Path(run_config["data"]["index"])
    realfakes = write_index(realfakes_index(args.data), REPO / "cache" / "realfakes-index.csv")
    train_cfg = replace(TrainConfig(**run_config["train"]), fakes=args.fakes)
    model_cfg = MegatronConfig.from_dict(run_config["model"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for embedder, (own, other) in embed_caches(args.run, index, realfakes).items():
            for variant, overrides in ABLATIONS.items():
                scores: dict[str, list[float]] = {"test": [], "realfakes": []}
                for seed in args.seeds:
                    run = train(index, own, replace(train_cfg, seed=seed), replace(model_cfg, **overrides),
                                Path(tmp) / f"{embedder}-{variant}-{seed}")
                    scores["test"].append(evaluate_run(run).overall()["auc"])
                    on_realfakes = evaluate_run(run, realfakes, other, split=None)
                    scores["realfakes"].append(on_realfakes.overall()["auc"])
                summary = {f"{name} AUC": f"{np.mean(v):.3f} ({min(v):.2f}-{max(v):.2f})"
                           for name, v in scores.items()}
                rows.append({"embedder": embedder, "variant": variant, **summary})
                print(rows[-1], flush=True)
    print_table(rows, f"ablations of {args.run} (head: {model_cfg.d_model}-d, {len(args.seeds)} seeds); "
                      f"test: the run's test split; realfakes: all 83 realfakes-dev videos")
    write_results(f"ablation-{args.run.name}", {"run": str(args.run), "seeds": args.seeds, "rows": rows})


if __name__ == "__main__":
    main()
