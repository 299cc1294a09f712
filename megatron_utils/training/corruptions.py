"""Real-world corruptions, applied to a video before preprocessing, and how the detector holds up.

`CORRUPTIONS` registers each as a function of (RGB uint8 frames [N, H, W, 3], severity 1-5): H.264 at a
rising CRF (what re-uploading to a social network does), JPEG per frame, downscale then upscale, Gaussian
blur, Gaussian noise, brightness and contrast. `corrupt_split` writes corrupted copies of a split's videos
and photos (atomically; a rerun reuses them) and returns their index; `robustness_table` preprocesses each
copy with the run's own preprocessing (cached) and evaluates the run on it, beside the clean split.
Frames other than the H.264 ones are stored near-losslessly (CRF 12), so the corruption measured is the
one named.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..core.cache import atomic_path
from ..core.registry import Registry
from ..datasets import write_index
from ..preprocessing.video import is_image, iter_frames, probe, read_image, write_mp4
from ..visualization.plots import plot_robustness
from .evaluate import evaluate_on_data, evaluate_run

log = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3, 4, 5)
LOSSLESS_CRF = 12
H264_CRF = {1: 23, 2: 28, 3: 33, 4: 38, 5: 43}
JPEG_QUALITY = {1: 80, 2: 60, 3: 40, 4: 25, 5: 10}
RESIZE_SCALE = {1: 0.75, 2: 0.5, 3: 0.35, 4: 0.25, 5: 0.15}
BLUR_SIGMA = {1: 0.5, 2: 1.0, 3: 1.5, 4: 2.0, 5: 3.0}
NOISE_STD = {1: 2.0, 2: 5.0, 3: 10.0, 4: 15.0, 5: 25.0}  # in 0-255 pixel units
BRIGHTNESS = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5}  # added, as a share of the range
CONTRAST = {1: 0.8, 2: 0.65, 3: 0.5, 4: 0.35, 5: 0.2}  # factor around the mean

Corruption = Callable[[np.ndarray, int], np.ndarray]
CORRUPTIONS: Registry[Corruption] = Registry("corruption")


@CORRUPTIONS.register
def h264(frames: np.ndarray, severity: int) -> np.ndarray:
    return frames  # applied when the video is written, at H264_CRF[severity]


@CORRUPTIONS.register
def jpeg(frames: np.ndarray, severity: int) -> np.ndarray:
    quality = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY[severity]]
    return np.stack([cv2.cvtColor(cv2.imdecode(cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                                            quality)[1], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                     for frame in frames])


@CORRUPTIONS.register
def resize(frames: np.ndarray, severity: int) -> np.ndarray:
    height, width = frames.shape[1:3]
    scale = RESIZE_SCALE[severity]
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack([cv2.resize(cv2.resize(frame, small, interpolation=cv2.INTER_AREA), (width, height),
                                interpolation=cv2.INTER_LINEAR) for frame in frames])


@CORRUPTIONS.register
def blur(frames: np.ndarray, severity: int) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(frame, (0, 0), BLUR_SIGMA[severity]) for frame in frames])


@CORRUPTIONS.register
def noise(frames: np.ndarray, severity: int) -> np.ndarray:
    rng = np.random.default_rng(severity)  # the same noise on every run
    noisy = frames + rng.normal(0.0, NOISE_STD[severity], frames.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


@CORRUPTIONS.register
def brightness(frames: np.ndarray, severity: int) -> np.ndarray:
    return np.clip(frames + 255.0 * BRIGHTNESS[severity], 0, 255).astype(np.uint8)


@CORRUPTIONS.register
def contrast(frames: np.ndarray, severity: int) -> np.ndarray:
    mean = frames.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip((frames - mean) * CONTRAST[severity] + mean, 0, 255).astype(np.uint8)


list_corruptions = CORRUPTIONS.names


def corrupt_file(source: Path, target: Path, corruption: str, severity: int) -> Path:
    """A corrupted copy of one video (H.264 MP4) or photo (PNG); reused when it exists."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    apply = CORRUPTIONS.entry(corruption)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_image(source):
        image = apply(read_image(source)[None], severity)[0]
        with atomic_path(target) as tmp:  # the temporary name keeps the suffix that picks the format
            if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise ValueError(f"{target}: cannot write the corrupted image")
        return target
    frames = np.stack([frame for _, frame in iter_frames(source)])
    fps = probe(source).fps or 25.0
    if corruption == "h264":
        return write_mp4(target, frames, fps=fps, crf=H264_CRF[severity])
    # a near-lossless carrier: the corruption measured is the one named, not the encoder's
    return write_mp4(target, apply(frames, severity), fps=fps, crf=LOSSLESS_CRF, preset="veryfast")


def corrupt_split(table: pd.DataFrame, corruption: str, severity: int, out_dir: str | os.PathLike
                  ) -> Path:
    """Corrupted copies of the videos of `table` in `out_dir/<corruption>-<severity>/` and their index."""
    folder = Path(out_dir) / f"{corruption}-{severity}"

    def copy(row: tuple) -> dict | None:
        source = Path(row.path)
        target = folder / (row.video_id.replace("/", "__") + (".png" if is_image(source) else ".mp4"))
        try:
            corrupt_file(source, target, corruption, severity)
        except Exception as error:  # noqa: BLE001 - one bad video is reported, never fatal
            log.warning("%s: cannot corrupt (%s); left out", source, error)
            return None
        # Its own id: caches key entries by video id, and the clean entry must stay the clean one.
        return {**row._asdict(), "video_id": f"{row.video_id}@{corruption}-{severity}", "path": str(target)}

    # Decoding, OpenCV and x264 release the GIL: threads use the cores.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        rows = list(tqdm(pool.map(copy, table.itertuples(index=False)), total=len(table),
                         desc=f"{corruption} {severity}", unit="video", leave=False))
    return write_index(pd.DataFrame([row for row in rows if row is not None]), folder / "index.csv")


def robustness_table(run_dir: str | os.PathLike, corruptions: list[str], severities: list[int],
                     split: str = "test", out_dir: str | os.PathLike | None = None,
                     cache_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Video AUC (with interval) and balanced accuracy of the run on its clean split and on each corrupted
    copy; one row per (corruption, severity), the clean split first."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "eval" / "robustness"
    table = pd.read_csv(run_dir / "index.csv")
    table = table[table["split"] == split].reset_index(drop=True)
    if table.empty:
        raise ValueError(f"{run_dir / 'index.csv'} has no {split!r} videos")
    for name in corruptions:
        CORRUPTIONS.entry(name)  # an unknown name fails before any work
    rows = [{"corruption": "none", "severity": 0,
             **pick(evaluate_run(run_dir, split=split, out_dir=out_dir / "clean").overall())}]
    for name in corruptions:
        for severity in severities:
            index_path = corrupt_split(table, name, severity, out_dir / "videos")
            evaluation = evaluate_on_data(run_dir, index_path, split=split, cache_root=cache_root,
                                          out_dir=out_dir / f"{name}-{severity}")
            rows.append({"corruption": name, "severity": severity, **pick(evaluation.overall())})
    result = pd.DataFrame(rows)
    with atomic_path(out_dir / "robustness.csv") as tmp:
        result.to_csv(tmp, index=False)
    plot_robustness(result, out_dir / "robustness.png")
    return result


def pick(overall: dict) -> dict:
    return {key: overall[key] for key in ("videos", "auc", "auc_low", "auc_high", "balanced_accuracy")}
