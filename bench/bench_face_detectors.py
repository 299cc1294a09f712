"""The registered face detectors side by side on real faces and hard cases built from them: recall against
landmark-verified boxes, false detections per image, and images/s on this machine's CPU.

Images: every asset photo with a face (one or several people), every 15th frame of the asset face videos,
each at most 640 px. Hard cases are made from the photos: faces scaled down to about 28 px, rotations of 30
and 90 degrees, the lower half of every face blacked out (a mask or a hand), and a no-face set (a landscape
photo and face-free video frames: false detections only). There is no profile face among the assets, so
profiles are not measured.

Ground truth, per original image: every detector's boxes (dlib HOG at upsample 2 included) merged by
centre, and kept where MediaPipe's face mesh, an independent landmark model, finds a face filling the
crop (presence >= 0.5); then moved with the image for each hard case. A detection matches a truth when its
centre lies within half the truth's side and its side is within a factor of 2.

    python bench/bench_face_detectors.py [--detectors dlib_hog opencv_haar mtcnn blazeface] [--calibrate]

--calibrate prints, per detector, the scale and downward shift that take its boxes onto dlib HOG's (the
TO_HOG constants of megatron_utils/preprocessing/detectors.py), from photos where both find one face.
Writes bench/results/face_detectors.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from common import environment, print_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_utils.core.assets import ASSETS, fetch  # noqa: E402
from megatron_utils.preprocessing import detectors as neural  # noqa: E402
from megatron_utils.preprocessing.facemesh import FaceMeshDepth  # noqa: E402
from megatron_utils.preprocessing.faces import (  # noqa: E402
    FaceConfig,
    create_detector,
    dlib_boxes,
    square_crop,
)
from megatron_utils.preprocessing.video import iter_frames, probe, read_image  # noqa: E402

DETECTORS = ["dlib_hog", "opencv_haar", "mtcnn", "blazeface"]
NO_FACE_PHOTOS = {"pyfeat_no_face_image"}
FACE_VIDEOS = ["wolfgang_langer", "single_face_video", "carphone", "face_noface_video"]
NO_FACE_VIDEOS = ["no_face_video"]
MAX_SIDE = 640
SMALL_FACE = 28


def at_most(image: np.ndarray, side: int = MAX_SIDE) -> np.ndarray:
    scale = min(1.0, side / max(image.shape[:2]))
    if scale == 1.0:
        return image
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def video_frames(name: str, every: int = 15) -> list[np.ndarray]:
    path = fetch(name)
    count = probe(path).frame_count
    return [at_most(frame) for _, frame in iter_frames(path, range(0, count, every))]


def centres_and_sides(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (boxes[:, :2] + boxes[:, 2:]) / 2, np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1))


def match(found: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """(truths matched, detections matching no truth), greedy by centre distance."""
    if not len(truth) or not len(found):
        return 0, len(found)
    (found_c, found_s), (true_c, true_s) = centres_and_sides(found), centres_and_sides(truth)
    distance = np.linalg.norm(found_c[:, None] - true_c[None], axis=-1)
    close = (distance < true_s[None] / 2) & (np.abs(np.log(found_s[:, None] / true_s[None])) < np.log(2))
    used_found, matched = set(), 0
    for t in np.argsort(true_s)[::-1]:
        candidates = [f for f in np.flatnonzero(close[:, t]) if f not in used_found]
        if candidates:
            used_found.add(min(candidates, key=lambda f: distance[f, t]))
            matched += 1
    return matched, len(found) - len(used_found)


def merge(boxes: np.ndarray) -> np.ndarray:
    """Boxes that match each other (as `match` does) averaged into one."""
    merged: list[list[np.ndarray]] = []
    for box in boxes:
        for group in merged:
            if match(box[None], np.mean(group, axis=0)[None])[0]:
                group.append(box)
                break
        else:
            merged.append([box])
    return np.asarray([np.mean(group, axis=0) for group in merged], np.float32).reshape(-1, 4)


def verified_truth(image: np.ndarray, detectors: dict, mesh: FaceMeshDepth) -> np.ndarray:
    candidates = [dlib_boxes(image, 2)[0]] + [detect(image)[0] for detect in detectors.values()]
    boxes = merge(np.concatenate(candidates))
    if not len(boxes):
        return boxes
    crops = np.stack([square_crop(image, box, 1.3, 192) for box in boxes])
    return boxes[mesh.detect(crops).score >= 0.5]


def rotate(image: np.ndarray, truth: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(height * sin + width * cos), int(height * cos + width * sin)
    matrix[:, 2] += (new_w - width) / 2, (new_h - height) / 2
    rotated = cv2.warpAffine(image, matrix, (new_w, new_h))
    centres, sides = centres_and_sides(truth)
    moved = np.c_[centres, np.ones(len(centres))] @ matrix.T
    return rotated, np.c_[moved - sides[:, None] / 2, moved + sides[:, None] / 2].astype(np.float32)


def occlude(image: np.ndarray, truth: np.ndarray) -> np.ndarray:
    covered = image.copy()
    for x0, y0, x1, y1 in truth.astype(int):
        covered[max(0, (y0 + y1) // 2): max(0, y1), max(0, x0): max(0, x1)] = 0
    return covered


def shrink(image: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = min(1.0, SMALL_FACE / float(np.median(centres_and_sides(truth)[1])))
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), truth * scale


def build_cases(detectors: dict, mesh: FaceMeshDepth) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    photos = [at_most(read_image(fetch(name))) for name, asset in sorted(ASSETS.items())
              if asset.kind == "image" and name not in NO_FACE_PHOTOS]
    frames = [frame for name in FACE_VIDEOS for frame in video_frames(name)]
    truths = {id(image): verified_truth(image, detectors, mesh) for image in photos + frames}
    photo_cases = [(image, truths[id(image)]) for image in photos if len(truths[id(image)])]
    cases = {
        "photos": photo_cases,
        "video frames": [(image, truths[id(image)]) for image in frames],
        "several people": [(image, truth) for image, truth in photo_cases if len(truth) > 1],
        "small faces": [shrink(image, truth) for image, truth in photo_cases],
        "rotated 30": [rotate(image, truth, 30) for image, truth in photo_cases],
        "rotated 90": [rotate(image, truth, 90) for image, truth in photo_cases],
        "lower face covered": [(occlude(image, truth), truth) for image, truth in photo_cases],
    }
    no_face = [at_most(read_image(fetch(name))) for name in sorted(NO_FACE_PHOTOS)]
    no_face += [frame for name in NO_FACE_VIDEOS for frame in video_frames(name, every=10)]
    cases["no face"] = [(image, np.zeros((0, 4), np.float32)) for image in no_face]
    return cases


def calibrate() -> list[dict]:
    """Median scale and downward shift (in HOG sides) from each detector's boxes to dlib HOG's."""
    saved = dict(neural.TO_HOG)
    neural.TO_HOG.update({name: (1.0, 0.0) for name in neural.TO_HOG})  # the detectors' own boxes
    rows = []
    for name in neural.TO_HOG:
        detect = create_detector(name, FaceConfig())
        scales, shifts = [], []
        for asset in sorted(n for n, a in ASSETS.items() if a.kind == "image" and n not in NO_FACE_PHOTOS):
            image = at_most(read_image(fetch(asset)))
            hog, own = dlib_boxes(image, 1)[0], detect(image)[0]
            if len(hog) == 1 and len(own) == 1 and match(own, hog)[0]:
                (hog_c, hog_s), (own_c, own_s) = centres_and_sides(hog), centres_and_sides(own)
                scales.append(hog_s[0] / own_s[0])
                shifts.append((hog_c[0, 1] - own_c[0, 1]) / hog_s[0])
        rows.append({"detector": name, "faces": len(scales), "scale": round(float(np.median(scales)), 3),
                     "shift_down": round(float(np.median(shifts)), 3)})
    neural.TO_HOG.update(saved)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="+", default=DETECTORS)
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args()
    if args.calibrate:
        print_table(calibrate(), "box scale and shift onto dlib HOG's")
        return
    detectors = {name: create_detector(name, FaceConfig(upsample=1)) for name in args.detectors}
    cases = build_cases(detectors, FaceMeshDepth())
    rows = []
    for case, items in cases.items():
        faces = sum(len(truth) for _, truth in items)
        row = {"case": case, "images": len(items), "faces": faces}
        for name, detect in detectors.items():
            found = false = 0
            started = time.perf_counter()
            for image, truth in items:
                matched, extra = match(detect(image)[0], truth)
                found, false = found + matched, false + extra
            seconds = time.perf_counter() - started
            row[f"{name} recall"] = round(found / faces, 3) if faces else None
            row[f"{name} false/img"] = round(false / len(items), 3)
            row[f"{name} img/s"] = round(len(items) / seconds, 1)
        rows.append(row)
    print_table(rows, "face detectors (recall against face-mesh-verified boxes; 2 CPU cores)")
    write_results("face_detectors", {"environment": environment(), "rows": rows})


if __name__ == "__main__":
    main()
