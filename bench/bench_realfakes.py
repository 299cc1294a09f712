"""Real deepfakes, the way a user trains on FF++: SBI-only fine-tuning on real videos, scored on real fakes.

`../shared/data/realfakes-dev/` (83 videos, mostly FF++ c23; research-only terms, never copied into the
project) is arranged in FF++'s layout with symbolic links under `cache/realfakes-ffpp/` and indexed with
the FF++ adapter and the official splits. The videos outside FF++'s layout (DeeperForensics, DFDC,
an FF++ fake of unknown method) are added as the `external` split; DeepFakeDetection has no official
split and joins it. The RGB embedder is fine-tuned on REAL videos only, with self-blended pseudo-fakes:

- `realfakes+installed`: the train-split reals plus the embedded demo's reals (every identity that installs
  here), selected on the val split (reals and real fakes: selection, never training);
- `installed-only`: the embedded demo's reals alone, selected on its own val split; realfakes is only scored.

Scores are the frame classifier's mean P(fake) per video; video AUC with 95% bootstrap intervals on the
test split, on the external videos, on both together, and on every video the variant neither trained nor
selected on (for `installed-only`: all 83). Run alone (it trains):

    python bench/bench_realfakes.py [--variants realfakes+installed installed-only] [--epochs 8]
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from common import REPO, print_table, write_results

from megatron_utils.core.cache import StageCache
from megatron_utils.core.precision import resolve_device
from megatron_utils.datasets import build_index, read_index, write_index
from megatron_utils.datasets.mini import build_mini
from megatron_utils.demo import DemoConfig
from megatron_utils.models.backbones import FrameClassifier, is_frame_classifier
from megatron_utils.preprocessing.faces import extract_faces
from megatron_utils.preprocessing.frames import FramesConfig
from megatron_utils.training.evaluate import binary_metrics
from megatron_utils.training.finetune import FinetuneConfig, finetune, score_videos

log = logging.getLogger("bench_realfakes")
DEFAULT_DATA = REPO.parent / "shared" / "data" / "realfakes-dev"
FFPP_METHODS = {"Deepfakes", "Face2Face", "FaceSwap"}


def arrange(data: Path, root: Path) -> list[dict[str, str]]:
    """Link realfakes-dev's FF++ videos into FF++'s layout under `root`; return the other videos' rows."""
    external = []
    with open(data / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            source = (data / row["file"]).resolve()
            name = Path(row["file"]).name.split("__", 3)[-1]
            if row["dataset"] == "ffpp_c23" and row["method"] == "real":
                link = root / "original_sequences/youtube/c23/videos" / name
            elif row["dataset"] == "ffpp_c23" and row["method"] in FFPP_METHODS:
                link = root / f"manipulated_sequences/{row['method']}/c23/videos" / name
            elif row["dataset"] == "dfd_c23":
                link = root / "manipulated_sequences/DeepFakeDetection/c23/videos" / name
            else:
                external.append({"video_id": f"external/{Path(row['file']).stem}", "path": str(source),
                                 "label": row["label"].lower(), "dataset": row["dataset"],
                                 "method": "original" if row["method"] == "real" else row["method"],
                                 "split": "external", "media": "video"})
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(source)
    return external


def realfakes_index(data: Path) -> pd.DataFrame:
    root = REPO / "cache" / "realfakes-ffpp"
    external = arrange(data, root)
    indexed = build_index(root, dataset="ffpp")
    table = indexed.table
    table.loc[table["split"].isna() | (table["split"] == ""), "split"] = "external"  # DFD: no official split
    table = pd.concat([table, pd.DataFrame(external)], ignore_index=True)
    table["video_id"] = "realfakes/" + table["video_id"].astype(str)
    return table


def installed_index(config: DemoConfig) -> pd.DataFrame:
    """The embedded demo dataset (built when missing): its reals are the identities that install here."""
    index = config.data_dir / "index.csv"
    if not index.exists():
        build_mini(config.preset, config.data_dir, seed=config.seed)
        write_index(build_index(config.data_dir).table, index)
    return read_index(index).assign(video_id=lambda t: "demo/" + t["video_id"].astype(str))


def groups(scores: pd.DataFrame, unseen: pd.Series) -> list[tuple[str, pd.DataFrame]]:
    """The scored groups; `unseen` marks the videos a variant neither trained nor selected on."""
    test, external = scores[scores["split"] == "test"], scores[scores["split"] == "external"]
    both = pd.concat([test, external])
    rows = [("ffpp test split", test), ("external (non-FF++ layout, DFD)", external),
            ("test + external", both), ("every unseen video", scores[unseen])]
    for method in sorted(both.loc[both["label"] == "fake", "method"].unique()):
        chosen = (both["method"] == method) | (both["label"] == "real")
        rows.append((f"  {method} vs all reals", both[chosen]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--variants", nargs="+", default=["realfakes+installed", "installed-only"])
    parser.add_argument("--backbone", default="auto")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (2 clips per video)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-minutes", type=float, default=12.0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-realfakes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    demo = DemoConfig()
    preprocess = demo.recipe.preprocess
    frames = FramesConfig(frames_per_clip=args.frames, clips_per_video=2)
    faces_config = replace(preprocess.faces, crop_size=args.crop)
    realfakes, installed = realfakes_index(args.data), installed_index(demo)
    table = pd.concat([realfakes, installed], ignore_index=True)
    started = time.perf_counter()
    faces, report = extract_faces(table, frames, faces_config)
    faces_seconds = time.perf_counter() - started
    print(report.summary())
    failed = report.failures

    rows, payload = [], {"faces_cache": str(faces.dir), "faces_failures": failed, "variants": {}}
    for variant in args.variants:
        if variant == "realfakes+installed":
            reals = realfakes[(realfakes["split"] == "train") & (realfakes["label"] == "real")]
            train = pd.concat([reals, installed[installed["label"] == "real"].assign(split="train")])
            selection = realfakes[realfakes["split"] == "val"]
        elif variant == "installed-only":
            train = installed[(installed["split"] == "train") & (installed["label"] == "real")]
            selection = installed[installed["split"] == "val"]
        else:
            raise SystemExit(f"unknown variant {variant!r}")
        run = args.out / variant
        config = FinetuneConfig(backbone=args.backbone, input_size=args.crop, epochs=args.epochs,
                                crops_per_video=2 * args.frames, max_minutes=args.max_minutes)
        started = time.perf_counter()
        best = run / "best" if is_frame_classifier(run / "best") else \
            finetune(pd.concat([train, selection], ignore_index=True), faces.dir, config, run)
        seconds = time.perf_counter() - started
        model = FrameClassifier.from_pretrained(best, map_location=resolve_device("auto"))
        scored = score_videos(model, realfakes, StageCache.open(faces.dir), None, 2 * args.frames)
        seen = set(train["video_id"]) | set(selection["video_id"])
        unseen = ~scored["video_id"].isin(seen)
        history = pd.read_csv(run / "history.csv")
        for name, group in groups(scored, unseen):
            labels = (group["label"] == "fake").to_numpy(np.int64)
            metrics = binary_metrics(labels, group["probability"].to_numpy(), 0.5)
            interval = f"[{metrics['auc_low']:.2f}, {metrics['auc_high']:.2f}]"
            rows.append({"variant": variant, "group": name, "real": metrics["real"], "fake": metrics["fake"],
                         "auc": metrics["auc"], "auc_95": interval})
        payload["variants"][variant] = {
            "train_real_videos": int(len(train)), "selection_videos": int(len(selection)),
            "finetune_seconds": round(seconds, 1), "checkpoint": str(best),
            "history": history.to_dict("records"), "scores": scored.to_dict("records")}
    print_table(rows, f"realfakes-dev, video AUC of the SBI-fine-tuned frame classifier "
                      f"({args.backbone}, {args.crop} px, faces {faces_seconds:.0f}s)")
    arguments = {k: str(v) for k, v in vars(args).items()}
    write_results(f"realfakes-{args.crop}px", {"rows": rows, "args": arguments, **payload})


if __name__ == "__main__":
    main()
