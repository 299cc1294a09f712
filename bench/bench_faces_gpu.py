"""Sampled frames per second of face detection: dlib HOG, MTCNN frame by frame (facenet-pytorch's own
`detect`, what the `mtcnn` detector did before it took batches) and the batched `mtcnn` detector at batch
sizes 1, 8 and 32, on the CPU and, where CUDA is, on the GPU.

Frames: T = 32 sampled uniformly from each of three real face videos (the WolfgangLanger clip re-encoded at
854x480, 1280x720 and 1920x1080, FF++'s sizes, by `bench/common.py`), shrunk to the faces stage's
`detect_max_side` (640 px) as the stage does; the detectors are timed on those frames (decoding, shrinking,
crops and landmarks excluded), each setting the best of `--repeats` passes after one warm-up batch. On the
CPU each detector gets one core (torch and OpenCV at one thread), as in the faces stage's pool workers.
`--stage` also times the whole faces stage (`extract_faces`: decoding, detection, crops, landmarks, cache
writes) per detector, with the pool's default workers, and decoding alone on one core.

    python bench/bench_faces_gpu.py [--repeats 3] [--stage [--copies 1]]

Writes bench/results/faces_gpu.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from common import bench_video, print_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_utils.preprocessing.detectors import MTCNN_MIN_FACE  # noqa: E402
from megatron_utils.preprocessing.faces import (  # noqa: E402
    FaceConfig,
    Found,
    create_detector,
    extract_faces,
)
from megatron_utils.preprocessing.frames import FramesConfig, sample_video  # noqa: E402

SIZES = [(854, 480), (1280, 720), (1920, 1080)]
FRAMES = FramesConfig(frames_per_clip=32)
BATCHES = (1, 8, 32)


def detection_frames(videos: list[Path], max_side: int) -> list[list[np.ndarray]]:
    """Each video's sampled frames, shrunk to the detection size."""
    def shrunk(frame: np.ndarray) -> np.ndarray:
        scale = min(1.0, max_side / max(frame.shape[:2]))
        return cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    return [[shrunk(frame) for _, frame in sample_video(video, FRAMES).frames()] for video in videos]


def frame_by_frame(detect: Callable[[np.ndarray], Found]) -> Callable[[list[np.ndarray]], list[Found]]:
    return lambda frames: [detect(frame) for frame in frames]


def facenet_per_frame(device: str) -> Callable[[np.ndarray], Found]:
    """facenet-pytorch's MTCNN.detect on one frame, the way the `mtcnn` detector called it before batches."""
    from facenet_pytorch import MTCNN

    library = MTCNN(keep_all=True, device=device, min_face_size=MTCNN_MIN_FACE).eval()

    def detect(frame: np.ndarray) -> Found:
        boxes, scores = library.detect(frame)
        return (np.zeros((0, 4)), np.zeros(0)) if boxes is None else (boxes, np.asarray(scores, float))

    return detect


def time_detection(detect: Callable[[list[np.ndarray]], list[Found]], videos: list[list[np.ndarray]],
                   batch: int, repeats: int) -> tuple[float, int]:
    """Best seconds over `repeats` passes through every video's frames in batches of `batch` (frames of one
    video share a size), and the faces found in a pass."""
    detect(videos[0][:batch])  # warm-up: lazy initialisation, cuDNN's choice of kernels
    best, faces = float("inf"), 0
    for _ in range(repeats):
        started, faces = time.perf_counter(), 0
        for frames in videos:
            for start in range(0, len(frames), batch):
                faces += sum(len(boxes) for boxes, _ in detect(frames[start:start + batch]))
        best = min(best, time.perf_counter() - started)
    return best, faces


def settings(device: str) -> list[tuple[str, int, Callable[[list[np.ndarray]], list[Found]]]]:
    """(detector, batch size, detect) for one device."""
    batched = create_detector("mtcnn", FaceConfig(detector="mtcnn", device=device))
    rows = [("mtcnn per frame (facenet-pytorch detect)", 1, frame_by_frame(facenet_per_frame(device)))]
    rows += [("mtcnn batched", batch, batched.batch) for batch in BATCHES]
    if device == "cpu":
        dlib = frame_by_frame(create_detector("dlib_hog", FaceConfig()))
        rows.insert(0, ("dlib_hog (upsample 1)", 1, dlib))
    return rows


def stage_rows(videos: list[Path], devices: list[str], copies: int) -> list[dict[str, object]]:
    """The whole faces stage per detector (decoding, detection, crops, landmarks, cache writes), after
    decoding alone on one core: the part no detector can speed up."""
    started = time.perf_counter()
    decoded = sum(len(list(sample_video(video, FRAMES).frames())) for video in videos)
    seconds = time.perf_counter() - started
    rows: list[dict[str, object]] = [{"stage": "decode only (one core)", "videos": len(videos),
                                      "frames": decoded, "seconds": seconds, "frames/s": decoded / seconds,
                                      "failures": 0}]
    configs = [("dlib_hog", FaceConfig(fallback=None))]
    configs += [(f"mtcnn on {device}", FaceConfig(detector="mtcnn", device=device, fallback=None))
                for device in devices]
    for name, config in configs:
        with tempfile.TemporaryDirectory() as root:
            items = [(f"{video.stem}-{copy}", str(video)) for video in videos for copy in range(copies)]
            started = time.perf_counter()
            _, report = extract_faces(items, FRAMES, config, cache_root=root)
            seconds = time.perf_counter() - started
        rows.append({"stage": name, "videos": report.done, "frames": report.units, "seconds": seconds,
                     "frames/s": report.units / seconds, "failures": len(report.failures)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stage", action="store_true", help="also time the whole faces stage")
    parser.add_argument("--copies", type=int, default=1,
                        help="--stage: each video this many times, so every core has videos to work on")
    args = parser.parse_args()
    videos = [bench_video(width, height) for width, height in SIZES]
    frames = detection_frames(videos, FaceConfig().detect_max_side)
    count = sum(len(video) for video in frames)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        threads = torch.get_num_threads()
        if device == "cpu":  # one core per detector, as in the stage's workers
            torch.set_num_threads(1)
            cv2.setNumThreads(1)
        for name, batch, detect in settings(device):
            seconds, faces = time_detection(detect, frames, batch, args.repeats)
            rows.append({"detector": name, "device": device, "batch": batch, "frames": count,
                         "faces": faces, "seconds": seconds, "frames/s": count / seconds})
            print(f"{name} on {device}, batch {batch}: {count / seconds:.1f} frames/s", flush=True)
        torch.set_num_threads(threads)
    gpu = torch.cuda.get_device_name(0) if "cuda" in devices else "no GPU"
    print_table(rows, f"sampled frames/s of detection ({len(videos)} videos x {FRAMES.frames_per_clip} "
                      f"frames at 640 px; CPU: one core per detector; {gpu})")
    payload: dict[str, object] = {"videos": [str(video) for video in videos], "rows": rows}
    if args.stage:
        payload["stage"] = stage_rows(videos, devices, args.copies)
        print_table(payload["stage"], "the whole faces stage (decode, detect, crop, landmarks; all cores)")
    write_results("faces_gpu", payload)


if __name__ == "__main__":
    main()
