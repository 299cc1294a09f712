"""Memory at DFDC scale (about 120,000 videos): the index, the stage manifests and the training set.

    .venv/bin/python bench/bench_scale.py [--videos 120000] [--embedded 12000]

- index: a synthetic FF++/DFDC-like index of `--videos` rows, written as Parquet and CSV and read back;
- manifest: a stage cache whose manifests (8 writers' files) record every one of those videos, read back;
- training set: a synthetic embed cache of `--embedded` videos at the real model's sizes (RepViT-M0.9's
  384-dimensional RGB and depth embeddings, T = 32, one clip per video), loaded in memory and from disk
  (memory-mapped, as `load_clips` does past its preload limit), and one pass of training batches over it.

Each step reports seconds and the growth of the process's own memory (RssAnon: not counting the file pages
the kernel may reclaim) and of its whole resident size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, environment, print_table, write_results  # noqa: E402
from megatron_utils.core.cache import StageCache  # noqa: E402
from megatron_utils.core.memory import rss_mb  # noqa: E402
from megatron_utils.datasets import read_index, write_index  # noqa: E402
from megatron_utils.datasets.index import COLUMNS  # noqa: E402
from megatron_utils.datasets.synthetic import SyntheticEmbedConfig, write_synthetic_embed_cache  # noqa: E402
from megatron_utils.training.clips import iterate_batches, load_clips  # noqa: E402

METHODS = ("original", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")


class Step:
    """Seconds and memory growth of one `with` block."""

    def __init__(self, rows: list[dict], name: str, **facts: object):
        self.rows, self.name, self.facts = rows, name, facts

    def __enter__(self) -> Step:
        self.anon, self.rss, self.started = rss_mb(field="RssAnon"), rss_mb(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.rows.append({"step": self.name, **self.facts,
                          "seconds": round(time.perf_counter() - self.started, 2),
                          "own_memory_growth_mb": round(rss_mb(field="RssAnon") - self.anon),
                          "resident_growth_mb": round(rss_mb() - self.rss)})


def synthetic_index(videos: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    number = np.arange(videos)
    method = np.array(METHODS)[number % len(METHODS)]
    split = rng.choice(["train", "val", "test"], size=videos, p=[0.72, 0.14, 0.14])
    return pd.DataFrame({
        "video_id": [f"dfdc/part_{n // 2400:02d}/{n:06d}" for n in number],
        "path": [f"/data/dfdc/dfdc_train_part_{n // 2400:02d}/{n:06d}.mp4" for n in number],
        "label": np.where(method == "original", "real", "fake"), "method": method, "split": split,
        "source_id": [f"{n // 12:05d}" for n in number], "target_id": "", "dataset": "dfdc",
        "compression": "c23", "media": "video"})[COLUMNS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=120_000)
    parser.add_argument("--embedded", type=int, default=12_000)
    parser.add_argument("--work", type=Path, default=REPO / "cache" / "bench" / "scale")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    table = synthetic_index(args.videos)
    with Step(rows, "index: write Parquet", items=args.videos):
        write_index(table, args.work / "index.parquet")
    with Step(rows, "index: write CSV", items=args.videos):
        write_index(table, args.work / "index.csv")
    del table
    with Step(rows, "index: read Parquet", items=args.videos):
        table = read_index(args.work / "index.parquet")
    with Step(rows, "index: read CSV", items=args.videos):
        read_index(args.work / "index.csv")

    manifest_cache = StageCache("faces", {"bench": "scale", "videos": args.videos}, root=args.work / "cache")
    manifest_cache.manifest_dir.mkdir(exist_ok=True)
    for writer in range(8):  # as 8 workers would leave them
        with open(manifest_cache.manifest_dir / f"node{writer}.{1000 + writer}.jsonl", "w") as handle:
            for n, video_id in enumerate(table["video_id"].iloc[writer::8]):
                handle.write(json.dumps({"item": video_id, "status": "ok", "error": None,
                                         "time": 1.0e9 + n, "fingerprint": "1234:5678", "frames": 32,
                                         "path": table["path"].iat[writer + 8 * n]}) + "\n")
    with Step(rows, "manifest: read 8 writers' files", items=args.videos):
        records = StageCache.open(manifest_cache.dir, "faces").records()
    assert len(records) == args.videos
    del records

    reals = args.embedded // 2
    config = SyntheticEmbedConfig(identities=reals, methods=("Deepfakes",), clips=1, frames=32, rgb_dim=384,
                                  depth_dim=384, padded_fraction=0.0)
    embed_index_path = args.work / f"embed-index-{args.embedded}.csv"
    if not embed_index_path.exists():
        print(f"writing a synthetic embed cache of {2 * reals} videos (once)")
        index, embed_dir = write_synthetic_embed_cache(args.work / "cache", config)
        index.to_csv(embed_index_path, index=False)
    embed_dir = next((args.work / "cache" / "embed").iterdir())
    index = pd.read_csv(embed_index_path)
    videos = int((index["split"] == "train").sum())
    size_mb = videos * 32 * 768 * 2 / 2**20
    with Step(rows, "training set: load into memory", items=videos, size_mb=round(size_mb)):
        clips = load_clips(index, embed_dir, "train")
    del clips
    with Step(rows, "training set: load onto disk (memory-mapped)", items=videos, size_mb=round(size_mb)):
        clips = load_clips(index, embed_dir, "train", preload_limit_gb=0)
    with Step(rows, "training set: one epoch of batches from disk", items=videos, size_mb=round(size_mb)):
        for _batch in iterate_batches(clips, 256, shuffle=True, generator=torch.Generator()):
            pass
    full_scale_gb = args.videos * 0.72 * 32 * 768 * 2 / 2**30
    print_table(rows, f"Memory at DFDC scale ({args.videos} indexed videos, {videos} embedded train videos)")
    print(f"a {args.videos}-video DFDC train split at these sizes holds {full_scale_gb:.1f} GB of "
          "embeddings: past the preload limit (8 GB by default) it trains from disk")
    print(f"results: {write_results('scale', {'environment': environment(), 'rows': rows})}")


if __name__ == "__main__":
    main()
