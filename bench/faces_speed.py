"""Frames/s of face extraction (decode + detect + crop) on the real WolfgangLanger video (640x360, 472
frames), T=32 uniform, for a few detector settings; prints a table and writes bench/results/faces_speed.json.

Run from the repository root: PYTHONPATH=. python bench/faces_speed.py
"""

import json
import time
from dataclasses import asdict
from pathlib import Path

from megatron_utils.core.assets import fetch
from megatron_utils.preprocessing.faces import FaceConfig, FaceDetector, extract_video_faces
from megatron_utils.preprocessing.frames import FramesConfig, sample_video

SETTINGS = {
    "dlib_hog upsample=1 (default)": FaceConfig(),
    "dlib_hog upsample=0": FaceConfig(upsample=0),
    "opencv_haar": FaceConfig(detector="opencv_haar", fallback=None),
}


def main() -> None:
    path = fetch("wolfgang_langer")
    frames = FramesConfig(frames_per_clip=32)
    start = time.perf_counter()
    decoded = len(list(sample_video(path, frames).frames()))
    decode_seconds = time.perf_counter() - start
    rows = [{"setting": "decode only", "frames": decoded, "seconds": decode_seconds}]
    for name, config in SETTINGS.items():
        detector = FaceDetector(config)  # built once per worker in a batch, so not timed
        start = time.perf_counter()
        result = extract_video_faces(path, frames, config, detector)
        seconds = time.perf_counter() - start
        rows.append({"setting": name, "frames": result.frames_decoded, "seconds": seconds,
                     "faces": int(sum(len(t) for t in result.tracks)), "config": asdict(config)})
    print(f"{'setting':34} {'frames':>6} {'faces':>5} {'seconds':>8} {'frames/s':>9}")
    for row in rows:
        print(f"{row['setting']:34} {row['frames']:6d} {row.get('faces', '-'):>5} {row['seconds']:8.2f} "
              f"{row['frames'] / row['seconds']:9.1f}")
    out = Path(__file__).parent / "results" / "faces_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"video": str(path), "frames_per_clip": 32, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
