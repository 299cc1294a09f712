"""How separable are real and fake videos in cached embeddings, before any transformer? A linear probe:
each video's clip embeddings averaged over valid frames, a logistic regression fitted on the train split,
video AUC on val and test, per stream and for a few regularisation strengths.

    python bench/bench_probe.py --index data/mini-demo/index.csv --embeddings cache/embed/<key>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402
from megatron_utils.core.cache import StageCache  # noqa: E402
from megatron_utils.datasets import read_index  # noqa: E402


def video_features(index, cache: StageCache) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    streams: dict[str, list[np.ndarray]] = {"rgb": [], "depth": []}
    labels, splits = [], []
    for row in index.itertuples():
        if cache.status(row.video_id) != "ok":
            continue
        tensors, _ = cache.read(row.video_id)
        valid = tensors["valid"].reshape(-1)
        for stream in streams:
            frames = tensors[stream].reshape(valid.size, -1)[valid].astype(np.float32)
            streams[stream].append(frames.mean(axis=0))
        labels.append(row.label == "fake")
        splits.append(row.split)
    features = {name: np.stack(values) for name, values in streams.items()}
    features["rgb+depth"] = np.concatenate([features["rgb"], features["depth"]], axis=1)
    return features, np.array(labels), np.array(splits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--embeddings", required=True, help="an embed cache folder")
    args = parser.parse_args()
    cache = StageCache.open(args.embeddings, "embed")
    features, labels, splits = video_features(read_index(args.index), cache)
    train = splits == "train"
    rows = []
    for stream, values in features.items():
        scaler = StandardScaler().fit(values[train])
        for strength in (0.01, 0.1, 1.0):
            probe = LogisticRegression(C=strength, max_iter=5000, class_weight="balanced")
            probs = probe.fit(scaler.transform(values[train]), labels[train]).predict_proba(
                scaler.transform(values))[:, 1]
            rows.append({"stream": stream, "C": strength,
                         **{f"{split} AUC": roc_auc_score(labels[splits == split], probs[splits == split])
                            for split in ("val", "test")}})
    print_table(rows, f"Linear probe of video-averaged embeddings ({args.embeddings})")
    write_results("probe", {"index": args.index, "embeddings": args.embeddings, "rows": rows})


if __name__ == "__main__":
    main()
