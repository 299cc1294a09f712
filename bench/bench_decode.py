"""Decoding only what is sampled: frames/s of `iter_frames` on a long 1080p video, decoding from the start
(the old way) against seeking to the keyframe before each sampled frame, for the samplings the pipeline
uses and two keyframe intervals (x264's default 250 and a streaming-style 2 s). Checks that both ways give
identical frames.

    .venv/bin/python bench/bench_decode.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, environment, print_table, write_results  # noqa: E402
from megatron_utils.core.assets import fetch  # noqa: E402
from megatron_utils.preprocessing.frames import FramesConfig, sample_indices  # noqa: E402
from megatron_utils.preprocessing.video import iter_frames, probe, seek_plan, write_mp4  # noqa: E402

FPS = 23.976
SAMPLINGS = {
    "uniform 32 (default)": FramesConfig(frames_per_clip=32),
    "uniform 4 x 16": FramesConfig(frames_per_clip=16, clips_per_video=4),
    "consecutive 4 x 8": FramesConfig(frames_per_clip=8, sampling="consecutive", clips_per_video=4),
}


def long_video(seconds: float, gop: int | None) -> Path:
    """The WolfgangLanger clip upscaled to 1080p and played back and forth for `seconds` (cached)."""
    count = int(seconds * FPS)
    path = REPO / "cache" / "bench" / f"wolfgang_1080p_{count}_gop{gop or 'default'}.mp4"
    if path.exists():
        return path
    source = [frame for _, frame in iter_frames(fetch("wolfgang_langer"))]
    cycle = source + source[-2:0:-1]

    def frames():
        for index in range(count):
            yield cv2.resize(cycle[index % len(cycle)], (1920, 1080), interpolation=cv2.INTER_LINEAR)

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_mp4(path, frames(), fps=FPS, crf=23, preset="veryfast", gop=gop)


def timed(path: Path, wanted: list[int], seek: bool) -> tuple[float, dict[int, np.ndarray]]:
    started = time.perf_counter()
    frames = dict(iter_frames(path, wanted, seek=None if seek else False))
    return time.perf_counter() - started, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    rows = []
    for gop in (None, 48):
        path = long_video(args.seconds, gop)
        info = probe(path)
        for name, config in SAMPLINGS.items():
            wanted = sorted({index for clip in sample_indices(info.frame_count, config) for index in clip})
            plan = seek_plan(path, wanted)
            decoded = sum(last - first + 1 for first, last in plan[1]) if plan else wanted[-1] + 1
            before, reference = timed(path, wanted, seek=False)
            after, sought = timed(path, wanted, seek=True)
            identical = sorted(reference) == sorted(sought) == wanted and all(
                np.array_equal(reference[index], sought[index]) for index in wanted)
            rows.append({"video": f"{info.width}x{info.height}, {info.frame_count} frames",
                         "keyframes": f"every {gop}" if gop else "x264 default (250)", "sampling": name,
                         "sampled": len(wanted), "decoded_before": wanted[-1] + 1, "decoded_after": decoded,
                         "seconds_before": round(before, 2), "seconds_after": round(after, 2),
                         "sampled_fps_before": round(len(wanted) / before, 1),
                         "sampled_fps_after": round(len(wanted) / after, 1),
                         "speedup": round(before / after, 2), "identical_frames": identical})
    print_table(rows, "Decoding sampled frames of a long 1080p video (2 CPU cores)")
    print(f"results: {write_results('decode', {'environment': environment(), 'rows': rows})}")
    if not all(row["identical_frames"] for row in rows):
        raise SystemExit("seeking gave different frames from decoding from the start")


if __name__ == "__main__":
    main()
