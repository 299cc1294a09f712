"""Training throughput on FF++-sized synthetic embeddings, through the real `train()` code path.

About 4,300 training clips of T=32 frames x 384 dimensions per stream (FF++: 720 training identities x
5 videos; here 173 identities x 5 videos x 5 clips), written once as an embed StageCache. Times each
epoch's training pass (validation excluded; history.csv `train_seconds`) for the default model on the CPU
and, when available, on CUDA (bf16 autocast, tensors preloaded on the GPU). Targets: <= 60 s per epoch on
a 2-core CPU, <= 2 s on an H100. Writes bench/results/train.json.

With --ablation it instead trains the full model and each ablation (RGB only, depth only, concatenation
instead of cross-attention) and reports their test AUCs (bench/results/ablation.json), on the synthetic
cache (whose fake signal is in the depth stream only) or on real embeddings given by --index/--embeddings.

    python bench/bench_train.py [--model megatron-base] [--epochs 2] [--threads N] [--compile]
    python bench/bench_train.py --ablation [--index INDEX --embeddings CACHE_DIR] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from common import print_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_utils.datasets import read_index  # noqa: E402
from megatron_utils.datasets.synthetic import SyntheticEmbedConfig, write_synthetic_embed_cache  # noqa: E402
from megatron_utils.models.heads import DEFAULT_MODEL, list_models, model_config  # noqa: E402
from megatron_utils.training.compare import ablation_table  # noqa: E402
from megatron_utils.training.train import TrainConfig, train  # noqa: E402

FFPP_SIZED = SyntheticEmbedConfig(identities=288, clips=5, frames=32, rgb_dim=384, depth_dim=384, seed=0,
                                  methods=("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"))


def bench_device(index: pd.DataFrame, cache_dir: Path, device: str, args: argparse.Namespace, out: Path
                 ) -> dict[str, object]:
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=device,
                            compile=args.compile, patience=args.epochs)
    run_dir = train(index, cache_dir, train_cfg, model_config(args.model), out / f"run-{device}")
    history = pd.read_csv(run_dir / "history.csv")
    clips = json.loads((run_dir / "config.json").read_text())["data"]["train_clips"]
    steady = history["train_seconds"].iloc[-1]  # the first epoch also pays warm-up (allocator, kernels)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    return {"device": name, "model": args.model,
            "batch_size": args.batch_size, "train_clips": clips, "frames": FFPP_SIZED.frames,
            "dim": FFPP_SIZED.rgb_dim, "first_epoch_s": round(history["train_seconds"].iloc[0], 2),
            "epoch_s": round(steady, 2), "clips_per_s": round(clips / steady, 1),
            "final_val_auc": round(history["val_auc"].iloc[-1], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=list_models())
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--skip-cpu", action="store_true", help="time CUDA only")
    parser.add_argument("--ablation", action="store_true", help="report the ablations' test AUCs instead")
    parser.add_argument("--index", type=Path, help="real index for --ablation (default: synthetic)")
    parser.add_argument("--embeddings", type=Path, help="its embed cache folder")
    args = parser.parse_args()
    if (args.index is None) != (args.embeddings is None):
        parser.error("--index and --embeddings go together")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        if args.index is not None:
            index, cache_dir, data = read_index(args.index), args.embeddings, str(args.index)
        else:
            started = time.perf_counter()
            index, cache_dir = write_synthetic_embed_cache(Path(tmp) / "cache", FFPP_SIZED)
            seconds = time.perf_counter() - started
            data = "synthetic FF++-sized embeddings (fake signal in the depth stream only)"
            print(f"{data}: {len(index)} videos written in {seconds:.1f}s")
        if args.ablation:
            train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, compile=args.compile)
            table = ablation_table(index, cache_dir, train_cfg, model_config(args.model),
                                   Path(tmp) / "ablation")
            rows = table.drop(columns="run").to_dict("records")
            print_table(rows, f"ablations, {args.model}, {args.epochs} epochs, {data}")
            write_results("ablation", {"data": data, "model": args.model, "epochs": args.epochs,
                                       "results": rows})
            return
        devices = ([] if args.skip_cpu else ["cpu"]) + (["cuda"] if torch.cuda.is_available() else [])
        rows = [bench_device(index, cache_dir, device, args, Path(tmp)) for device in devices]
    print_table(rows, f"one training epoch, {args.model}, FF++-sized embeddings (targets: CPU <= 60 s, "
                      "H100 <= 2 s)")
    write_results("train", {"compile": args.compile, "results": rows})


if __name__ == "__main__":
    main()
