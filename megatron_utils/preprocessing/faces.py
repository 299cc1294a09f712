"""Stage 2: detect, track and crop faces in the sampled frames of each video.

`extract_video_faces` handles one video (or still image) and needs no cache; `predict` calls its second
half, `track_faces`, on media it has sampled itself. `extract_faces` runs it over a batch in a process
pool and stores one `faces` cache entry per video. A frame with no detection borrows its box from the nearest
detected frames of the same person (at most `max_gap` frames away) instead of losing the clip; frames that
cannot be filled are dropped and their reason is recorded.

A batch detector (MTCNN, `detectors.py`) runs on `FaceConfig.device` and, on a GPU, takes a video's
sampled frames `DETECT_BATCH` at a time. It runs inside the same spawned pool workers as the CPU
detectors: each worker decodes a video, detects its frames in one batch (its own CUDA context; spawned,
so CUDA never meets a fork) and fits landmarks, so decoding and landmarks stay parallel on the CPU cores
while the GPU serves the workers' batches in turn. Batching across videos instead would ship full frames
between processes to speed up what is not the bottleneck: decoding the 32 frames of a 480p-1080p video
costs a core 0.6-4.4 s (`bench/bench_faces_gpu.py --stage`), whichever detector runs.

`detector="auto"` resolves before the cache key (`resolve_face_config`): the batch detector on the GPU
where CUDA is, dlib HOG on the CPU without; the run logs the choice and the key records it.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple, TypeVar

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..core.cache import FAILED, StageCache, StageReport, file_fingerprint
from ..core.image_codec import ImageCodec, decode_image_row, decode_images, encode_images, encoded_names
from ..core.registry import Registry
from ..core.threads import per_thread
from .frames import FramesConfig, Media, SampledVideo, sample_video
from .landmarks import fit_landmarks
from .video import MediaError

logger = logging.getLogger(__name__)
T = TypeVar("T")

TRACK_MODES = ("largest", "all")
# A detection continues a track when its centre lies within this many box sides of the track's last
# box and its size is within a factor of 2; neighbouring people sit further apart than that.
MAX_TRACK_SHIFT = 0.75
MAX_TRACK_SCALE = 2.0


# Bumped whenever a code change alters the crops for the same configuration, so old caches are not reused.
FACES_VERSION = 3  # 3: 68-point landmarks per crop
# Crops are stored losslessly, one WebP file per crop, a quarter of their raw size on FF++ c23 faces;
# effort 2 of libwebp's 0-6 is within 2% of the default 4's size at a quarter of its time
# (bench/bench_cache_size.py). Part of the cache key.
CROPS_CODEC = ImageCodec("WEBP", "uint8", 3, (("lossless", True), ("method", 2), ("quality", 25)))


class NoFaceError(MediaError):
    """A video or image in which too few sampled frames show a usable face."""


AUTO = "auto"
# What `detector="auto"` becomes on each device type: MTCNN in batches where there is a GPU (dlib HOG runs
# 9-25 frames/s on a CPU core, so FF++'s 160k sampled frames would take hours while the GPU idles).
AUTO_DETECTORS = {"cuda": "mtcnn", "cpu": "dlib_hog"}
# Frames a batch detector takes at once on a GPU: a video's 32 sampled frames at the FF++ recipe. It bounds
# the full-size frames a worker holds (200 MB at 1080p); the CPU detectors hold one.
DETECT_BATCH = 32


@dataclass
class FaceConfig:
    detector: str = "dlib_hog"  # a registered detector, or "auto" (resolve_face_config)
    fallback: str | None = "opencv_haar"  # tried on frames where `detector` finds nothing
    detect_max_side: int = 640  # frames are shrunk to this longer side for detection; boxes map back
    upsample: int = 1  # dlib: most image doublings before HOG (1 finds faces down to ~40 px at detect size)
    margin: float = 1.3  # crop side = margin x the longer side of the box, centred on the box
    crop_size: int = 224
    min_faces: int = 8  # usable face frames a video needs (capped at the number of sampled frames)
    max_gap: int = 30  # frames (original numbering) a detection may lie away to fill a missing box
    track: str = "largest"  # "largest": one person per video; "all": every tracked person
    device: str = AUTO  # where a batch detector runs (auto: cuda where there is one); the others use the CPU

    def __post_init__(self) -> None:
        if self.track not in TRACK_MODES:
            raise ValueError(f"track must be one of {TRACK_MODES}, got {self.track!r}")
        for name in filter(None, (self.detector if self.detector != AUTO else None, self.fallback)):
            DETECTORS.entry(name)  # an unknown name fails here, with the known ones


# Face detector registry -------------------------------------------------------------------------------
# A detector maps an RGB uint8 image to boxes float32 [K, 4] (x0, y0, x1, y1) and scores float32 [K]; each
# entry is a factory `fn(FaceConfig) -> DetectFn`, registered under its function name (timm style). A batch
# detector's factory gives a `BatchDetector`: a DetectFn that also takes equal-size images at once.
Found = tuple[np.ndarray, np.ndarray]
DetectFn = Callable[[np.ndarray], Found]
DETECTORS: Registry[Callable[[FaceConfig], DetectFn]] = Registry("face detector")
register_detector = DETECTORS.register
list_detectors = DETECTORS.names
BATCH_DETECTORS: set[str] = set()  # run on `FaceConfig.device`, `DETECT_BATCH` frames at a time


def register_batch_detector(factory: Callable[[FaceConfig], BatchDetector]
                            ) -> Callable[[FaceConfig], BatchDetector]:
    BATCH_DETECTORS.add(factory.__name__)
    return register_detector(factory)


class BatchDetector:
    """`detect_batch` maps equal-size RGB uint8 images [B, H, W, 3] to one (boxes, scores) pair per image in
    one pass on its device; called with one image, it is a DetectFn like the others."""

    def __init__(self, detect_batch: Callable[[np.ndarray], list[Found]]):
        self.detect_batch = detect_batch

    def __call__(self, image: np.ndarray) -> Found:
        return self.batch([image])[0]

    def batch(self, images: np.ndarray | Sequence[np.ndarray]) -> list[Found]:
        sizes = sorted({image.shape for image in images})
        if len(sizes) > 1:
            raise ValueError(f"a detector batch needs images of one size, got {sizes}; "
                             f"FaceDetector.detect_frames groups frames by size")
        return self.detect_batch(np.stack(images)) if len(images) else []


def create_detector(name: str, config: FaceConfig) -> DetectFn:
    return DETECTORS.entry(name)(config)


def resolve_face_config(config: FaceConfig, auto_device: str) -> FaceConfig:
    """`config` with no "auto" left, given what device "auto" means here (`auto_device`: "cuda" or "cpu"):
    `detector="auto"` picks AUTO_DETECTORS' entry for the device, and the device becomes the one the
    detector really runs on (the CPU for all but the batch detectors). Pure, so it is tested without a GPU."""
    device = auto_device if config.device == AUTO else config.device
    detector = AUTO_DETECTORS["cuda" if device.startswith("cuda") else "cpu"] if config.detector == AUTO \
        else config.detector
    if detector not in BATCH_DETECTORS:
        if config.device not in (AUTO, "cpu"):
            raise ValueError(f"face detector {detector!r} runs on the CPU only, not on device "
                             f"{config.device!r}; the batch detectors ({', '.join(sorted(BATCH_DETECTORS))}) "
                             f"run on a GPU")
        device = "cpu"
    return replace(config, detector=detector, device=device)


def resolved_here(config: FaceConfig) -> FaceConfig:
    """`resolve_face_config` with "auto" meaning this machine's device (the GPU when there is one)."""
    if config.device != AUTO:  # resolved already (as in the pool's workers): no need to import torch
        return resolve_face_config(config, config.device)
    from ..core.precision import resolve_device

    return resolve_face_config(config, str(resolve_device(AUTO)))


def _new_hog_detector() -> Any:
    import dlib

    return dlib.get_frontal_face_detector()


_hog_detector = per_thread(_new_hog_detector)


def dlib_boxes(image: np.ndarray, upsample: int) -> tuple[np.ndarray, np.ndarray]:
    """dlib HOG boxes float32 [K, 4] (x0, y0, x1, y1) and scores [K] at one upsampling (the mini-dataset
    builder calls it too)."""
    # dlib misreads arrays with padded rows (PyAV returns such frames for some widths, e.g. 312 px):
    # the same frame would give a face on one call and none on the next.
    rects, scores, _ = _hog_detector().run(np.ascontiguousarray(image), upsample, 0.0)
    boxes = [[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects]
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)


@register_detector
def dlib_hog(config: FaceConfig) -> DetectFn:
    """dlib's frontal HOG + linear SVM detector (built into dlib, no weights file)."""

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Most faces are found without upsampling, which is ~3x cheaper; upsample only frames where none is.
        for upsample in range(config.upsample + 1):
            boxes, scores = dlib_boxes(image, upsample)
            if len(boxes):
                break
        return boxes, scores

    return detect


# Haar boxes are ~1.16x larger than dlib HOG boxes and centred ~0.11 side higher (measured on 28 real
# faces from the asset photos and videos where both found one face); mapping them onto HOG's convention
# keeps crops of one clip at the same scale when the fallback fills in a frame.
HAAR_TO_HOG_SCALE = 1 / 1.16
HAAR_TO_HOG_SHIFT_DOWN = 0.11


@register_detector
def opencv_haar(config: FaceConfig) -> DetectFn:
    """OpenCV's frontal-face Haar cascade (shipped in `cv2.data`), boxes mapped to dlib HOG's convention."""
    cascade_path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")

    def load() -> cv2.CascadeClassifier:
        cascade = cv2.CascadeClassifier(cascade_path)
        if cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {cascade_path}")
        return cascade

    cascade = per_thread(load)
    cascade()  # a missing cascade fails here, not on the first frame

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        rects, _, weights = cascade().detectMultiScale3(gray, scaleFactor=1.1, minNeighbors=5,
                                                        minSize=(24, 24), outputRejectLevels=True)
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        side = rects[:, 2] * HAAR_TO_HOG_SCALE
        cx = rects[:, 0] + rects[:, 2] / 2
        cy = rects[:, 1] + rects[:, 3] / 2 + HAAR_TO_HOG_SHIFT_DOWN * side
        boxes = np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)
        return boxes.astype(np.float32), np.asarray(weights, np.float32).reshape(-1)

    return detect


class FaceDetector:
    """The configured detector with its fallback, run on a downscaled copy of each frame."""

    def __init__(self, config: FaceConfig):
        self.config = resolved_here(config)
        names = [self.config.detector] + ([self.config.fallback] if self.config.fallback else [])
        self.detectors = {name: create_detector(name, self.config) for name in dict.fromkeys(names)}
        # Frames handed over at once, and held in memory until they are cropped: a batch on a GPU; on the CPU
        # a batch is no faster (bench/bench_faces_gpu.py), so one frame, as for the per-frame detectors.
        on_gpu = self.config.detector in BATCH_DETECTORS and self.config.device != "cpu"
        self.batch_size = DETECT_BATCH if on_gpu else 1

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, str | None]:
        """Boxes [K, 4] in `frame` pixels, scores [K], and the name of the detector that found them."""
        return self.detect_frames([frame])[0]

    def detect_frames(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, str | None]]:
        """`__call__` for each frame; a batch detector sees the frames of one size together."""
        scales = [min(1.0, self.config.detect_max_side / max(frame.shape[:2])) for frame in frames]
        smalls = [_scaled(frame, scale) for frame, scale in zip(frames, scales, strict=True)]
        results = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), None)] * len(frames)
        pending = list(range(len(frames)))
        for name, detect in self.detectors.items():
            found = self._detect(detect, [smalls[i] for i in pending])
            for i, (boxes, scores) in zip(pending, found, strict=True):
                if len(boxes):
                    height, width = frames[i].shape[:2]
                    boxes = np.clip(boxes / scales[i], 0, [width, height, width, height]).astype(np.float32)
                    results[i] = (boxes, scores, name)
            pending = [i for i in pending if results[i][2] is None]
        return results

    @staticmethod
    def _detect(detect: DetectFn, images: list[np.ndarray]) -> list[Found]:
        if not isinstance(detect, BatchDetector):
            return [detect(image) for image in images]
        found: list[Found | None] = [None] * len(images)
        for size in dict.fromkeys(image.shape for image in images):
            same = [i for i, image in enumerate(images) if image.shape == size]
            for i, result in zip(same, detect.batch([images[i] for i in same]), strict=True):
                found[i] = result
        return found


def _scaled(frame: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return frame
    size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


# Cropping ---------------------------------------------------------------------------------------------
def _span_start(centre: float, side: int, limit: int) -> int:
    """Start of a `side`-long span centred on `centre`, shifted to lie inside [0, limit) when it fits;
    a span longer than the frame is centred on the frame (and padded by the caller)."""
    if side >= limit:
        return (limit - side) // 2
    return int(min(max(round(centre - side / 2), 0), limit - side))


def crop_window(frame_shape: tuple[int, ...], box: np.ndarray, margin: float) -> tuple[int, int, int]:
    """(left, top, side) of the square that `square_crop` cuts around `box` from a frame of this shape."""
    height, width = frame_shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(1, round(margin * max(x1 - x0, y1 - y0)))
    return _span_start((x0 + x1) / 2, side, width), _span_start((y0 + y1) / 2, side, height), side


def box_in_crop(frame_shape: tuple[int, ...], box: np.ndarray, margin: float, size: int) -> np.ndarray:
    """`box` in the pixel coordinates of its `square_crop` (float32 [4])."""
    left, top, side = crop_window(frame_shape, box, margin)
    return ((np.asarray(box, np.float32) - [left, top, left, top]) * (size / side)).astype(np.float32)


def square_crop(frame: np.ndarray, box: np.ndarray, margin: float, size: int) -> np.ndarray:
    """A square of side margin x box side around the box, kept inside the frame, resized to `size`."""
    left, top, side = crop_window(frame.shape, box, margin)
    region = frame[max(top, 0): top + side, max(left, 0): left + side]
    if region.shape[:2] != (side, side):  # only when the frame is smaller than the square
        pad_top, pad_left = max(-top, 0), max(-left, 0)
        region = np.pad(region, ((pad_top, side - region.shape[0] - pad_top),
                                 (pad_left, side - region.shape[1] - pad_left), (0, 0)))
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(region), (size, size), interpolation=interpolation)


# Tracking ---------------------------------------------------------------------------------------------
@dataclass
class _Detection:
    box: np.ndarray
    score: float
    crop: np.ndarray


@dataclass
class _Track:
    detections: dict[int, _Detection] = field(default_factory=dict)  # frame index -> detection
    area: float = 0.0  # summed box area: how large and how persistent this face is

    @property
    def last_box(self) -> np.ndarray:
        return self.detections[max(self.detections)].box

    def accepts(self, box: np.ndarray) -> float | None:
        """Centre distance to the last box in box sides, or None when the box is not this face."""
        last = self.last_box
        last_side, side = _side(last), _side(box)
        shift = np.linalg.norm(_centre(box) - _centre(last)) / last_side
        scale = max(side, last_side) / max(min(side, last_side), 1e-6)
        return shift if shift <= MAX_TRACK_SHIFT and scale <= MAX_TRACK_SCALE else None

    def add(self, index: int, detection: _Detection) -> None:
        self.detections[index] = detection
        self.area += _side(detection.box) ** 2


def _side(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _assign(tracks: list[_Track], index: int, detections: list[_Detection]) -> None:
    """Greedy association, largest face first: each detection continues the nearest free track."""
    taken: set[int] = set()
    for detection in sorted(detections, key=lambda d: -_side(d.box)):
        candidates = [(shift, t) for t, track in enumerate(tracks)
                      if t not in taken and (shift := track.accepts(detection.box)) is not None]
        if candidates:
            chosen = min(candidates, key=lambda c: c[0])[1]
        else:
            tracks.append(_Track())
            chosen = len(tracks) - 1
        tracks[chosen].add(index, detection)
        taken.add(chosen)


def fill_boxes(detected: dict[int, np.ndarray], indices: list[int], max_gap: int
               ) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Boxes for undetected `indices`: linear interpolation between the nearest detected frames on both
    sides when both lie within `max_gap` frames, else the nearer one's box when it does (video ends and
    longer gaps on one side). Returns the filled boxes and a reason for each frame left without one."""
    known = sorted(detected)
    filled: dict[int, np.ndarray] = {}
    reasons: dict[int, str] = {}
    for index in indices:
        if index in detected:
            continue
        before = max((k for k in known if k < index), default=None)
        after = min((k for k in known if k > index), default=None)
        near_before = before is not None and index - before <= max_gap
        near_after = after is not None and after - index <= max_gap
        if near_before and near_after:
            weight = (index - before) / (after - before)
            filled[index] = (1 - weight) * detected[before] + weight * detected[after]
        elif near_before or near_after:
            filled[index] = detected[before if near_before else after].copy()
        else:
            reasons[index] = f"no face detected within {max_gap} frames"
    return filled, reasons


# One video --------------------------------------------------------------------------------------------
@dataclass
class FaceTrack:
    """The crops of one person, one row per (clip, frame) with a usable box, ordered by clip and frame."""

    crops: np.ndarray  # uint8 [N, S, S, 3] RGB
    frame_index: np.ndarray  # int32 [N]
    clip_index: np.ndarray  # int32 [N]
    boxes: np.ndarray  # float32 [N, 4] (x0, y0, x1, y1) in original frame pixels
    scores: np.ndarray  # float32 [N]; 0 for interpolated boxes
    detected: np.ndarray  # bool [N]; False: box interpolated from neighbouring frames
    landmarks: np.ndarray  # float32 [N, 68, 2]: dlib's 68 points in crop pixels (x, y)
    dropped: dict[int, str]  # sampled frame index -> why it has no crop in this track

    def __len__(self) -> int:
        return len(self.frame_index)


@dataclass
class VideoFaces:
    """Everything `track_faces` found in one video."""

    path: str
    width: int
    height: int
    rotation: int
    fps: float
    frame_count: int
    clips: list[list[int]]
    tracks: list[FaceTrack]  # largest (summed face area) first
    detectors_used: dict[str, int]  # detector name -> frames whose faces it found
    frames_decoded: int
    still: bool = False  # a photo (a one-frame video file is refused or scored as a video)

    def tensors(self) -> dict[str, np.ndarray]:
        """All tracks concatenated, `track` telling them apart: the `faces` cache entry before
        `encode_faces`."""
        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(track, name) for track in self.tracks])

        return {"crops": cat("crops"), "frame_index": cat("frame_index"), "clip_index": cat("clip_index"),
                "boxes": cat("boxes"), "scores": cat("scores"), "detected": cat("detected"),
                "landmarks": cat("landmarks"),
                "track": np.concatenate([np.full(len(t), i, np.int32) for i, t in enumerate(self.tracks)])}

    def metadata(self) -> dict:
        return {"source": self.path, "width": self.width, "height": self.height, "rotation": self.rotation,
                "fps": self.fps, "frame_count": self.frame_count, "clips": self.clips,
                "detectors_used": self.detectors_used,
                "dropped": [{str(k): v for k, v in track.dropped.items()} for track in self.tracks]}


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def extract_video_faces(media: Media, frames_config: FramesConfig, face_config: FaceConfig,
                        detector: FaceDetector | None = None, name: str | None = None) -> VideoFaces:
    """Sample the frames of a video, image or array of frames (`name` names an array), then `track_faces`."""
    return track_faces(sample_video(media, frames_config, name), face_config, detector)


def track_faces(video: SampledVideo, face_config: FaceConfig, detector: FaceDetector | None = None
                ) -> VideoFaces:
    """Detect and track faces in the sampled frames, fill short gaps, and crop every tracked person.

    Raises `MediaError` for unreadable input and `NoFaceError` when fewer than `min_faces` sampled frames
    (at most all of them) have a usable face. `track="largest"` keeps only the person with the largest
    summed face area; `"all"` keeps every person with enough usable frames.
    """
    detector = detector or FaceDetector(face_config)
    path = video.name
    wanted = video.wanted
    tracks: list[_Track] = []
    detectors_used: dict[str, int] = {}
    decoded: list[int] = []
    margin, size = face_config.margin, face_config.crop_size
    for chunk in _chunks(video.frames(), detector.batch_size):
        for (index, frame), (boxes, scores, name) in zip(chunk, detector.detect_frames([f for _, f in chunk]),
                                                         strict=True):
            decoded.append(index)
            if name is None:
                continue
            detectors_used[name] = detectors_used.get(name, 0) + 1
            found = [_Detection(box, float(score), square_crop(frame, box, margin, size))
                     for box, score in zip(boxes, scores, strict=True)]
            _assign(tracks, index, found)
    if not decoded:
        raise MediaError(path, "no frame could be decoded")
    if not tracks:
        raise NoFaceError(path, f"no face found in any of the {len(decoded)} sampled frames "
                                f"(detectors: {', '.join(detector.detectors)})")

    required = min(face_config.min_faces, len(wanted))
    tracks.sort(key=lambda t: -t.area)
    candidates = tracks[:1] if face_config.track == "largest" else tracks
    filled = [fill_boxes({i: d.box for i, d in t.detections.items()}, decoded, face_config.max_gap)
              for t in candidates]
    kept = [k for k, (track, (boxes, _)) in enumerate(zip(candidates, filled, strict=True))
            if len(track.detections) + len(boxes) >= required]
    if not kept:
        usable = len(candidates[0].detections) + len(filled[0][0])
        lost = len(wanted) - len(decoded)
        undecodable = f"; {lost} could not be decoded" if lost else ""
        raise NoFaceError(path, f"only {usable} of {len(wanted)} sampled frames have a usable face "
                                f"(min_faces {required}{undecodable})")

    # Crops for filled boxes need their frames again: decode just those (rare, so not kept in memory).
    refill = sorted({i for k in kept for i in filled[k][0]})
    frames_again = dict(video.frames(refill)) if refill else {}
    undecoded = {i: "frame could not be decoded (stream ends early)" for i in wanted if i not in set(decoded)}
    results = []
    for k in kept:
        track, (boxes, reasons) = candidates[k], filled[k]
        rows = []
        for clip_number, clip in enumerate(video.clips):
            for index in clip:
                if index in track.detections:
                    d = track.detections[index]
                    rows.append((index, clip_number, d.box, d.score, True, d.crop))
                elif index in boxes:
                    crop = square_crop(frames_again[index], boxes[index], margin, size)
                    rows.append((index, clip_number, boxes[index], 0.0, False, crop))
        shape = (video.info.height, video.info.width)  # as displayed, like the decoded frames
        crops = np.stack([r[5] for r in rows])
        results.append(FaceTrack(
            crops=crops,
            frame_index=np.array([r[0] for r in rows], np.int32),
            clip_index=np.array([r[1] for r in rows], np.int32),
            boxes=np.stack([r[2] for r in rows]).astype(np.float32),
            scores=np.array([r[3] for r in rows], np.float32),
            detected=np.array([r[4] for r in rows], bool),
            landmarks=np.stack([fit_landmarks(crop, box_in_crop(shape, r[2], margin, size))
                                for crop, r in zip(crops, rows, strict=True)]),
            dropped={**undecoded, **reasons},
        ))
    info = video.info
    return VideoFaces(str(path), info.width, info.height, info.rotation, info.fps, info.frame_count,
                      video.clips, results, detectors_used, len(decoded), still=info.codec == "image")


# Batch with the stage cache ---------------------------------------------------------------------------
def faces_cache(frames_config: FramesConfig, face_config: FaceConfig,
                cache_root: str | os.PathLike | None = None) -> StageCache:
    """The `faces` stage cache; its key hashes both configs, since either changes the crops (with the
    detector and device "auto" resolved to the ones that run here), and the crops' storage format."""
    return StageCache("faces", {"frames": asdict(frames_config), "faces": asdict(resolved_here(face_config)),
                                "version": FACES_VERSION, "crops": CROPS_CODEC.identity()}, cache_root)


def encode_faces(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A faces entry as stored: `crops` uint8 [N, S, S, 3] become the encoded stack `crops_bytes`,
    `crops_offsets` (`core/image_codec.py`); the other tensors stay as they are."""
    return {**{k: v for k, v in tensors.items() if k != "crops"},
            **encode_images("crops", tensors["crops"], CROPS_CODEC)}


def _entry_name(cache: StageCache, item_id: str) -> str:
    return f"faces entry {item_id!r} ({cache.entry_path(item_id)})"


def read_faces(cache: StageCache, item_id: str, names: Sequence[str] | None = None
               ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A faces entry (only `names` when given) with its crops decoded to uint8 [N, S, S, 3], and its
    metadata: the one way to read a faces cache. A crop that cannot be decoded raises ValueError naming
    the item."""
    encoded = encoded_names("crops")
    stored = None if names is None else [part for name in names
                                         for part in (encoded if name == "crops" else (name,))]
    tensors, metadata = cache.read(item_id, stored)
    if names is None or "crops" in names:
        crops = decode_images("crops", tensors, CROPS_CODEC, _entry_name(cache, item_id))
        tensors = {"crops": crops, **{k: v for k, v in tensors.items() if k not in encoded}}
    return tensors, metadata


def read_face_row(cache: StageCache, item_id: str, names: Sequence[str], row: int) -> dict[str, np.ndarray]:
    """Row `row` of each named tensor of a faces entry, reading nothing else: one crop of a video without
    its other crops, so training streams from the cache instead of preloading it."""
    with cache.entry(item_id) as handle:
        return {name: decode_image_row(handle, name, CROPS_CODEC, row, _entry_name(cache, item_id))
                if name == "crops" else handle.get_slice(name)[row:row + 1][0] for name in names}


class _Extracted(NamedTuple):
    """One video's faces entry, encoded where it was extracted (a worker process), and its counts."""

    tensors: dict[str, np.ndarray]
    metadata: dict[str, Any]
    tracks: int
    frames_decoded: int


_worker_detector: FaceDetector | None = None


def _init_worker(face_config: FaceConfig) -> None:
    global _worker_detector
    cv2.setNumThreads(1)  # parallelism comes from the pool; nested OpenCV threads only oversubscribe
    if face_config.detector in BATCH_DETECTORS:
        import torch  # only batch detectors need it in the workers

        torch.set_num_threads(1)  # the same, for a batch detector on the CPU
    _worker_detector = FaceDetector(face_config)


def _extract_one(video_id: str, path: str, frames_config: FramesConfig, face_config: FaceConfig,
                 detector: FaceDetector | None = None) -> tuple[str, _Extracted | None, str | None, float]:
    """Never raises: a failure comes back as its message, so one bad video cannot stop the batch."""
    start = time.perf_counter()
    try:
        result = extract_video_faces(path, frames_config, face_config, detector or _worker_detector)
        extracted = _Extracted(encode_faces(result.tensors()), result.metadata(), len(result.tracks),
                               result.frames_decoded)
        return video_id, extracted, None, time.perf_counter() - start
    except MediaError as error:
        return video_id, None, str(error), time.perf_counter() - start
    except Exception as error:  # noqa: BLE001 - any other crash is recorded against this item only
        return video_id, None, f"{path}: {type(error).__name__}: {error}", time.perf_counter() - start


def _fingerprint(path: str) -> str | None:
    try:
        return file_fingerprint(path)
    except OSError:
        return None  # a missing file fails in extraction, with its reason


def _as_items(items: Iterable[tuple[str, str | os.PathLike]] | pd.DataFrame) -> list[tuple[str, str]]:
    if isinstance(items, pd.DataFrame):
        missing = {"video_id", "path"} - set(items.columns)
        if missing:
            raise ValueError(f"the index needs columns video_id and path; missing {sorted(missing)}")
        items = zip(items["video_id"], items["path"], strict=True)
    pairs = [(str(video_id), str(path)) for video_id, path in items]
    ids = [video_id for video_id, _ in pairs]
    if len(set(ids)) != len(ids):
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate video_id values: {duplicated[:5]}")
    return pairs


def extract_faces(items: Iterable[tuple[str, str | os.PathLike]] | pd.DataFrame,
                  frames_config: FramesConfig | None = None, face_config: FaceConfig | None = None,
                  force: bool = False, cache_root: str | os.PathLike | None = None,
                  workers: int | None = None) -> tuple[StageCache, StageReport]:
    """Extract faces for `(video_id, path)` pairs (or an index with those columns) into the cache.

    Items already done for the same source file (same size and mtime) are skipped, failed ones included
    (their recorded errors are reported again); `force` redoes everything. `workers` processes decode
    and detect in parallel (default: all CPU cores; 0 or 1: in this process); only this process writes
    the cache, each entry atomically before its manifest record, so a killed run leaves no partial entry.
    """
    frames_config = frames_config or FramesConfig()
    asked = face_config or FaceConfig()
    face_config = resolved_here(asked)
    if (asked.detector, asked.device) != (face_config.detector, face_config.device):
        logger.info("faces: detector %s on %s resolved to %s on %s", asked.detector, asked.device,
                    face_config.detector, face_config.device)
    cache = faces_cache(frames_config, face_config, cache_root)
    report = StageReport(stage="faces", cache_dir=str(cache.dir))
    start = time.perf_counter()
    todo = []
    for video_id, path in _as_items(items):
        fingerprint = _fingerprint(path)
        status = None if force else cache.status(video_id, fingerprint)
        if status is None:
            todo.append((video_id, path, fingerprint))
        elif status == FAILED:
            report.failures[video_id] = cache.records()[video_id].get("error") or ""
        else:
            report.skipped += 1
    logger.info("faces: %d to extract, %d cached (%s, detector %s on %s, fallback %s)", len(todo),
                report.skipped + len(report.failures), cache.dir, face_config.detector, face_config.device,
                face_config.fallback)

    def store(video_id: str, result: _Extracted | None, error: str | None, seconds: float) -> None:
        path, fingerprint = paths[video_id]
        if result is None:
            cache.record(video_id, FAILED, error, fingerprint=fingerprint, seconds=seconds, path=path)
            report.failures[video_id] = error or ""
            return
        cache.write(video_id, result.tensors, result.metadata, fingerprint=fingerprint, seconds=seconds,
                    path=path, faces=len(result.tensors["frame_index"]), tracks=result.tracks)
        report.done += 1
        report.units += result.frames_decoded

    paths = {video_id: (path, fingerprint) for video_id, path, fingerprint in todo}
    workers = (os.cpu_count() or 1) if workers is None else workers
    progress = tqdm(total=len(todo), desc="faces", unit="video", disable=not todo)
    if workers <= 1 or len(todo) <= 1:
        detector = FaceDetector(face_config) if todo else None  # a GPU detector only where there is work
        for video_id, path, _ in todo:
            store(*_extract_one(video_id, path, frames_config, face_config, detector))
            progress.update()
    else:
        # Spawned, not forked: forking a parent whose OpenCV/FFmpeg threads hold locks deadlocks workers.
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(face_config,)) as pool:
            futures = {pool.submit(_extract_one, video_id, path, frames_config, face_config): video_id
                       for video_id, path, _ in todo}
            for future in as_completed(futures):
                try:
                    store(*future.result())
                except BrokenProcessPool as error:  # a worker died (e.g. out of memory): not the
                    # item's fault, so it is reported but left unrecorded, to be retried next run
                    report.failures[futures[future]] = f"worker process died: {error}"
                progress.update()
    progress.close()
    report.seconds = time.perf_counter() - start
    return cache, report
