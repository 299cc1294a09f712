"""Shared helpers for the benchmarks: realistic input videos, environment facts, table and JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def environment() -> dict[str, object]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu, "machine": platform.machine()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_video(width: int, height: int, frames: int = 400, out_dir: Path | None = None) -> Path:
    """A real face video at the given size: the WolfgangLanger clip resized (cropped to the aspect
    ratio), H.264 at crf 23 with the encoder's default keyframe interval. Cached between runs."""
    from megatron_utils.core.assets import fetch
    from megatron_utils.preprocessing.video import iter_frames, write_mp4

    out_dir = out_dir or REPO / "cache" / "bench"
    path = out_dir / f"wolfgang_{width}x{height}_{frames}.mp4"
    if path.exists():
        return path

    source = iter_frames(fetch("wolfgang_langer"), range(frames))
    resized = (fit_frame(frame, width, height) for _, frame in source)
    return write_mp4(path, resized, fps=23.976, crf=23, preset="veryfast")


def fit_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """The frame's centre cropped to the aspect ratio of `width` x `height`, resized to it."""
    h, w = frame.shape[:2]
    keep_w, keep_h = min(w, round(h * width / height)), min(h, round(w * height / width))
    top, left = (h - keep_h) // 2, (w - keep_w) // 2
    return cv2.resize(frame[top:top + keep_h, left:left + keep_w], (width, height),
                      interpolation=cv2.INTER_CUBIC)


def print_table(rows: list[dict[str, object]], title: str) -> None:
    if not rows:
        print(f"{title}: no rows")
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_format(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(row[i]) for row in cells)) for i, column in enumerate(columns)]
    print(f"\n{title}")
    print(" | ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)))
    print("-+-".join("-" * width for width in widths))
    for row in cells:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _format(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_results(name: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2, default=str))
    print(f"\nwrote {path}")
    return path
