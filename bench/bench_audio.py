"""The audio stream on the demo with its audio-visual family: the same model with and without hearing.

Builds the `demo-av` mini set (the demo plus VoiceSwap fakes: an original's frames with another identity's
voice; every original speaks, with its own voice or its identity's synthetic one) and runs the demo on it
twice from the same data, faces and fine-tuned embedder: once with the audio stream (`--audio
resemblyzer`) and once without. Prints video AUC per family on the held-out test identities. Run alone:

    python bench/bench_audio.py
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
from common import REPO, print_table, write_results

from megatron_utils.demo import DemoConfig, run_demo
from megatron_utils.preprocessing.audio import AudioConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "mini-demo-av")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "demo-av")
    args = parser.parse_args()
    os.chdir(REPO)  # the demo's cache folder is relative to the repository, as in scripts/demo.sh
    base = DemoConfig(preset="demo-av", data_dir=args.data)
    variants = {"video only": base.recipe.preprocess,
                "with audio": replace(base.recipe.preprocess, audio=AudioConfig(encoder="resemblyzer"))}
    rows, summaries = [], {}
    for name, preprocess in variants.items():
        run_dir = args.runs / name.replace(" ", "-")
        shared = args.runs / "finetune"  # one fine-tuned embedder for both: only the hearing differs
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "finetune").exists():
            (run_dir / "finetune").symlink_to(shared.resolve(), target_is_directory=True)
        shared.mkdir(parents=True, exist_ok=True)
        recipe = replace(base.recipe, preprocess=preprocess)
        summaries[name] = run_demo(replace(base, run_dir=run_dir, recipe=recipe))
        metrics = pd.read_csv(run_dir / "eval" / "index-test" / "metrics.csv")
        for row in metrics[metrics["group"].isin(["overall", "method"])].itertuples():
            rows.append({"model": name, "videos": f"{row.name} ({row.real} real, {row.fake} fake)",
                         "auc": round(row.auc, 3), "auc_95": f"[{row.auc_low:.2f}, {row.auc_high:.2f}]"})
    print_table(rows, "demo-av test split: video AUC without and with the audio stream")
    write_results("audio", {"rows": rows, "seconds": {k: v["seconds"] for k, v in summaries.items()},
                            "weights": {k: v["weights"] for k, v in summaries.items()}})


if __name__ == "__main__":
    main()
