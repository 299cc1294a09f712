"""Preprocessing throughput: each stage and the whole chain in sampled frames per second, against a naive
baseline that mirrors the original design (one video at a time, every frame decoded with OpenCV, HOG on
the full frame, a batch of that video's frames through depth and RepViT, RepViT in training mode without
ImageNet normalisation), and peak memory when the number of videos grows.

Models: Depth Anything V2 Small and RepViT-M0.9 architectures. Offline their weights are random (the
arithmetic, and so the speed, is that of the real models); with --depth-model/--rgb-weights you can
point at real weights.

    python bench/bench_preprocess.py                    # speed table, 2 sizes x 4 videos
    python bench/bench_preprocess.py --videos 32        # more videos (GPU)
    python bench/bench_preprocess.py memory --items 100 # peak RSS for 100 (then 1000) items
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import dlib
import numpy as np
import timm
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, bench_video, peak_rss_mb, print_table, write_results  # noqa: E402
from megatron_utils.core.precision import resolve_device  # noqa: E402
from megatron_utils.models.backbones import load_depth_model  # noqa: E402
from megatron_utils.preprocessing.depth import DepthConfig  # noqa: E402
from megatron_utils.preprocessing.embed import EmbedConfig  # noqa: E402
from megatron_utils.preprocessing.faces import FaceConfig  # noqa: E402
from megatron_utils.preprocessing.frames import FramesConfig, sample_indices  # noqa: E402
from megatron_utils.preprocessing.preprocess import PreprocessConfig, preprocess  # noqa: E402

SIZES = {"640x480": (640, 480), "1280x720": (1280, 720)}


def random_repvit_weights() -> Path:
    """RepViT-M0.9 with random weights saved locally, loaded through the normal local-weights path."""
    path = REPO / "cache" / "bench" / "repvit_m0_9_random.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        save_file(timm.create_model("repvit_m0_9", num_classes=0).state_dict(), str(path))
    return path


def chain_config(args: argparse.Namespace) -> PreprocessConfig:
    weights = args.rgb_weights or str(random_repvit_weights())
    return PreprocessConfig(
        frames=FramesConfig(frames_per_clip=args.frames),
        faces=FaceConfig(),
        depth=DepthConfig(model=args.depth_model, input_size=args.depth_input, batch_size=args.depth_batch),
        embed=EmbedConfig(rgb_backbone="repvit_m0_9", depth_backbone="repvit_m0_9", rgb_weights=weights,
                          depth_weights=weights, batch_size=args.embed_batch),
    )


def run_chain(paths: list[Path], config: PreprocessConfig, workers: int | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache_root:
        items = [(f"video{i:04d}", path) for i, path in enumerate(paths)]
        start = time.perf_counter()
        result = preprocess(items, config, cache_root=cache_root, workers=workers)
        total = time.perf_counter() - start
    if result.failures():
        raise RuntimeError(f"benchmark videos failed: {result.failures()}")
    frames = sum(report.units for report in result.reports[:1])
    seconds = {report.stage: report.seconds for report in result.reports}
    return {"frames": frames, **{f"{stage}_s": s for stage, s in seconds.items()}, "total_s": total}


def naive_chain(paths: list[Path], config: PreprocessConfig) -> dict[str, float]:
    """The original design: sequential per video, everything decoded, full-frame HOG, per-video batches."""
    device = resolve_device("auto")
    depth = load_depth_model(config.depth.model)
    depth_model = depth.model.to(device)
    rgb_net = timm.create_model("repvit_m0_9", num_classes=0).to(device).train()
    depth_net = timm.create_model("repvit_m0_9", num_classes=0).to(device).train()
    detector = dlib.get_frontal_face_detector()
    size, depth_size = config.faces.crop_size, config.depth.input_size or depth.data_config.input_size
    frames_done = 0
    start = time.perf_counter()
    for path in paths:
        capture = cv2.VideoCapture(str(path))
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        capture.release()
        crops = []
        for index in sample_indices(len(frames), config.frames)[0]:
            found = detector(frames[index], 1)
            if not found:
                crops = []  # the original lost the whole clip when one frame had no face
                break
            box = max(found, key=lambda r: r.area())
            x0, y0 = max(box.left(), 0), max(box.top(), 0)
            crops.append(cv2.resize(frames[index][y0:box.bottom(), x0:box.right()], (size, size)))
        if not crops:
            continue
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255).to(device)
        with torch.no_grad():
            depth_in = torch.nn.functional.interpolate(batch, size=(depth_size, depth_size), mode="bicubic")
            maps = depth_model(pixel_values=depth_in).predicted_depth.unsqueeze(1)
            maps = torch.nn.functional.interpolate(maps, size=(size, size)).repeat(1, 3, 1, 1)
            rgb_net(batch), depth_net(maps / maps.amax())
        frames_done += len(crops)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"frames": frames_done, "total_s": time.perf_counter() - start}


def speed(args: argparse.Namespace) -> None:
    config = chain_config(args)
    rows = []
    for name in args.sizes:
        width, height = SIZES[name]
        source = bench_video(width, height, frames=400)
        with tempfile.TemporaryDirectory() as folder:
            paths = []
            for i in range(args.videos):  # distinct files, as a dataset has
                copy = Path(folder) / f"v{i}.mp4"
                shutil.copyfile(source, copy)
                paths.append(copy)
            chain = run_chain(paths, config, args.workers)
            row = {"input": name, "videos": args.videos, "T": args.frames}
            for stage in ("faces", "depth", "embed"):
                row[f"{stage} frames/s"] = chain["frames"] / chain[f"{stage}_s"]
            row["chain frames/s"] = chain["frames"] / chain["total_s"]
            if not args.skip_naive:
                naive = naive_chain(paths[: args.naive_videos], config)
                row["naive frames/s"] = naive["frames"] / naive["total_s"]
                row["speed-up"] = row["chain frames/s"] / row["naive frames/s"]
            rows.append(row)
    print_table(rows, f"Preprocessing throughput (sampled frames/s), depth {args.depth_model} at "
                      f"{args.depth_input}px, RepViT-M0.9 x2")
    write_results("preprocess", {"rows": rows, "config": config.to_dict()})


def memory(args: argparse.Namespace) -> None:
    """Peak RSS of the chain over N items, each count in a fresh process so peaks do not mix."""
    if args.child:
        config = PreprocessConfig(
            frames=FramesConfig(frames_per_clip=4),
            faces=FaceConfig(crop_size=112, min_faces=1),
            depth=DepthConfig(model="random-init:depth-anything-tiny", output_size=56),
            embed=EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random"),
        )
        source = bench_video(640, 480, frames=40)  # short, so 1,000 videos take minutes, not hours
        with tempfile.TemporaryDirectory() as cache_root:
            items = [(f"video{i:05d}", source) for i in range(args.items)]
            result = preprocess(items, config, cache_root=cache_root, workers=args.workers)
            embedded = len(result.embed.done_items())  # before the temporary cache is deleted
        print(f"RESULT {args.items} {embedded} {peak_rss_mb():.1f}")
        return
    rows = []
    for count in args.counts:
        output = subprocess.run([sys.executable, __file__, "memory", "--child", "--items", str(count),
                                 "--workers", str(args.workers or 2)], capture_output=True, text=True,
                                check=True).stdout
        _, items, done, rss = next(line for line in output.splitlines() if line.startswith("RESULT")).split()
        rows.append({"videos": int(items), "embedded": int(done), "peak RSS MiB (main process)": float(rss)})
    print_table(rows, "Peak memory of the preprocessing chain (tiny models, T=4, 640x480 x 40 frames)")
    write_results("preprocess_memory", {"rows": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["speed", "memory"], default="speed")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--naive-videos", type=int, default=2, help="videos for the (slow) naive baseline")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--depth-model", default="random-init:depth-anything-v2-small")
    parser.add_argument("--depth-input", type=int, default=252)
    parser.add_argument("--depth-batch", type=int, default=64)
    parser.add_argument("--embed-batch", type=int, default=128)
    parser.add_argument("--rgb-weights", help="local RepViT weights (default: random, saved locally)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    speed(args) if args.mode == "speed" else memory(args)


if __name__ == "__main__":
    main()
