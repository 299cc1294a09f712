"""End-to-end scoring speed of `megatron predict` on a 10-second 640x360 video (the real WolfgangLanger clip,
its first 240 frames at 23.976 fps), model loading timed on its own. Target: <= 10 s per video on 2 CPU cores.

The checkpoint is a freshly initialised detector (`megatron-base` by default) saved with save_pretrained, next
to a preprocess.json written here: scoring speed does not depend on trained weights, only on the
architectures and sizes. The depth model is `random-init:depth-anything-v2-small` (the real V2-Small
architecture, so the same compute as the real weights); the backbones are the offline ImageNet MobileNetV2
(real weights; RepViT-M0.9 needs the hub).

Each setting is one row: the project's default preprocessing (T = 32, 224 px crops, depth at the model's
518 px) and the demo's (T = 8, 128 px crops, depth at 70 px), then variations that isolate
the cost drivers (frames sampled, dlib upsampling, depth input size). Each row is the fastest of --repeats
predictions of the same file after a warm-up one (allocators, kernels); load_avg_1min shows other load on the
machine. With CUDA, also videos per second over a folder of 100 videos. Writes bench/results/predict.json.

    python bench/bench_predict.py [--threads 2] [--model megatron-base] [--skip-cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from common import bench_video, print_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_utils.core.cache import PREPROCESS_FILE  # noqa: E402
from megatron_utils.inference.predict import Detector  # noqa: E402
from megatron_utils.models.checkpoint import Checkpoint  # noqa: E402
from megatron_utils.models.heads import DEFAULT_MODEL, MegatronHead, list_models, model_config  # noqa: E402
from megatron_utils.preprocessing.depth import DepthEstimator  # noqa: E402
from megatron_utils.preprocessing.embed import Embedder  # noqa: E402
from megatron_utils.preprocessing.preprocess import PreprocessConfig  # noqa: E402
from megatron_utils.recipes import load_recipe  # noqa: E402

DEPTH_MODEL = "random-init:depth-anything-v2-small"
BACKBONE = "mobilenetv2_offline"


@dataclass
class Setting:
    name: str
    preprocessing: PreprocessConfig
    options: dict  # PredictConfig overrides


def with_models(config: PreprocessConfig, device: str) -> PreprocessConfig:
    return replace(config, depth=replace(config.depth, model=DEPTH_MODEL, device=device),
                   embed=replace(config.embed, rgb_backbone=BACKBONE, depth_backbone=BACKBONE, device=device))


def settings(device: str) -> list[Setting]:
    default = with_models(PreprocessConfig(), device)
    demo = with_models(load_recipe("demo").preprocess, device)
    return [
        Setting("project default (T=32, crop 224, depth 518)", default, {}),
        Setting("default, depth 252", replace(default, depth=replace(default.depth, input_size=252)), {}),
        Setting("demo (T=8, crop 128, depth 70)", demo, {}),
        Setting("demo, 6 clips", demo, {"clips_per_video": 6}),
        Setting("demo, dlib upsample 0", replace(demo, faces=replace(demo.faces, upsample=0)), {}),
        Setting("demo, depth 252", replace(demo, depth=replace(demo.depth, input_size=252)), {}),
    ]


def write_run(folder: Path, config: PreprocessConfig, model_name: str) -> Path:
    """A run folder holding a freshly initialised checkpoint made from the preprocess.json describing
    `config`, with the weight fingerprints `megatron preprocess` would record."""
    depth, embedder = DepthEstimator(config.depth), Embedder(config.embed)
    folder.mkdir(parents=True)
    (folder / PREPROCESS_FILE).write_text(json.dumps({
        "config": config.to_dict(),
        "weights": {"depth": depth.fingerprint, **{key: {"backbone": b.name, "weights": b.fingerprint}
                                                   for key, b in (("rgb", embedder.rgb),
                                                                  ("depth_backbone", embedder.depth))}},
        "sources": {"depth": depth.weights, "rgb": embedder.rgb.weights,
                    "depth_backbone": embedder.depth.weights},
    }))
    torch.manual_seed(0)
    model_cfg = model_config(model_name, rgb_dim=embedder.rgb.num_features,
                             depth_dim=embedder.depth.num_features,
                             max_len=max(64, config.frames.frames_per_clip))
    untrained = "none (a freshly initialised head, for timing)"
    decision = {"threshold": 0.5, "uncertain_below": 0.5, "target_fpr": 0.05, "target_fnr": 0.05, "epoch": 0,
                "val_auc": 0.5, "val_tpr": 0.0,
                "val_uncertain": 0.0, "train_data": untrained, "val_data": untrained, "fakes": "none"}
    Checkpoint.of_run(MegatronHead(model_cfg), folder, decision).save_pretrained(folder / "best")
    return folder


def measure(setting: Setting, video: Path, root: Path, model_name: str, device: str, repeats: int
            ) -> dict[str, object]:
    run = write_run(root / setting.name.replace(" ", "_").replace(",", ""), setting.preprocessing, model_name)
    started = time.perf_counter()
    detector = Detector.from_pretrained(run, device=device, **setting.options)
    load = time.perf_counter() - started
    detector.predict(video)  # warm-up
    # The fastest of a few runs: other processes on a shared 2-core machine only ever add time.
    prediction = min((detector.predict(video) for _ in range(repeats)),
                     key=lambda p: p.timings.get("total", float("inf")))
    if not prediction.ok:
        raise RuntimeError(prediction.error)
    face = prediction.deciding_face()
    return {"setting": setting.name, "load_s": round(load, 2),
            **{f"{stage}_s": round(seconds, 2) for stage, seconds in prediction.timings.items()},
            "frames": prediction.frames_used, "step": prediction.sample_every, "windows": len(face.windows),
            "faces": len(prediction.faces), "load_avg_1min": round(os.getloadavg()[0], 1)}


def videos_per_second(setting: Setting, video: Path, root: Path, model_name: str, count: int) -> dict:
    """CUDA throughput over a folder of `count` distinct copies of the video."""
    folder = root / "videos"
    folder.mkdir()
    paths = [shutil.copyfile(video, folder / f"v{i:03d}.mp4") for i in range(count)]
    run = write_run(root / "cuda-run", setting.preprocessing, model_name)
    detector = Detector.from_pretrained(run, device="cuda", **setting.options)
    detector.predict(paths[0])
    started = time.perf_counter()
    failed = sum(not p.ok for p in detector.predict_many(paths))
    seconds = time.perf_counter() - started
    return {"setting": setting.name, "device": torch.cuda.get_device_name(), "videos": count,
            "failed": failed, "seconds": round(seconds, 1), "videos_per_s": round(count / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the target is for 2 cores)")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=list_models())
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting; the fastest is kept")
    parser.add_argument("--skip-cuda", action="store_true")
    parser.add_argument("--cuda-videos", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    video = bench_video(640, 360, frames=240)
    rows, cuda_rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        for setting in settings("cpu"):
            rows.append(measure(setting, video, Path(tmp) / "cpu", args.model, "cpu", args.repeats))
            print_table(rows[-1:], f"{setting.name} on {args.threads} CPU threads")
        if torch.cuda.is_available() and not args.skip_cuda:
            for setting in settings("cuda")[:2]:
                cuda_rows.append(videos_per_second(setting, video, Path(tmp) / f"cuda{len(cuda_rows)}",
                                                   args.model, args.cuda_videos))
    note = ("checkpoint: freshly initialised " + args.model + " (scoring speed does not depend on trained "
            f"weights); depth model {DEPTH_MODEL} (real architecture, random weights); backbones {BACKBONE}")
    print_table(rows, f"predict, one 10 s 640x360 video ({video.name}), {args.threads} CPU threads; "
                      "stage columns in seconds, load excluded from total")
    if cuda_rows:
        print_table(cuda_rows, "CUDA throughput")
    print(note)
    write_results("predict", {"video": str(video), "threads": args.threads, "note": note, "cpu": rows,
                              "cuda": cuda_rows, "target_s": 10})


if __name__ == "__main__":
    main()
