"""Scoring new videos and images with a trained run: `Detector.from_pretrained(run).predict(path)`.

The run's `preprocess.json` (copied there by `train`) rebuilds exactly the training preprocessing: face
detector, crop margin and size, depth model and input size, both backbones and their input sizes, T. The
weights actually loaded must be the ones recorded at training (by content fingerprint), so local copies of
the models may replace hub ids, but other weights are refused. The model runs in eval mode under
`torch.inference_mode`, with no augmentation: the same file always gets the same scores.

Frame sampling is the run's own, by construction: `FramesConfig` from `preprocess.json`, so a new video
gets exactly the clips `evaluate` scores for an indexed one (same T, same frame spacing, same sampling).
- `clips_per_video` may be raised (`--clips`) to cover a video more densely; it keeps the training
  spacing (uniform clips interleave, consecutive windows spread evenly).
- Every tracked person (`track="all"`; track 0 has the largest summed face area) is scored on each clip
  in which the face has a crop in at least half of the clip's frames. A face's probability is the mean of
  its clips (as `evaluate` averages a video's clips); the video's probability is the highest face's, and
  the prediction names that face. Each frame of a face gets the mean of the clips spanning it (uniform
  clips span the whole video, so their timeline is flat; consecutive windows localise it).
- A still image is one clip of one frame. A video with fewer than `min_frames` frames (default
  max(2, T // 2)) is not scored.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .annotate import annotate_image, annotate_video, plot_timeline
from .cache import atomic_path
from .checkpoint import decision_threshold, load_recipe, resolve_checkpoint
from .depth import DepthEstimator
from .embed import Embedder, to_clips
from .evaluate import autocast
from .faces import FaceDetector, VideoFaces, extract_video_faces
from .frames import FramesConfig, sample_indices
from .inference import resolve_device
from .model import MegatronDetector, load_head
from .preprocess import PREPROCESS_FILE, PreprocessConfig
from .results import FAILED, OK, FaceScore, Prediction, WindowScore
from .video import MediaError, is_image, probe

__all__ = ["Detector", "FaceScore", "PredictConfig", "Prediction", "WindowScore", "annotate_image",
           "annotate_video", "plot_timeline", "write_csv", "write_jsonl"]

logger = logging.getLogger(__name__)



@dataclass
class PredictConfig:
    """How a new video is covered; None picks the run's own value (see the module docstring)."""

    clips_per_video: int | None = None  # clips scored per video; default: the run's training clips
    min_frames: int | None = None  # shorter videos fail; default max(2, T // 2)
    batch_size: int | None = None  # crops per depth and embedding batch; default: the training ones

    def resolved(self, frames: FramesConfig) -> PredictConfig:
        config = replace(self, clips_per_video=self.clips_per_video or frames.clips_per_video,
                         min_frames=self.min_frames or max(2, frames.frames_per_clip // 2))
        for name in ("clips_per_video", "min_frames", "batch_size"):
            value = getattr(config, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        return config


def check_weights(recorded: dict[str, Any], depth: DepthEstimator, embedder: Embedder) -> None:
    """Refuse weights other than those the run was trained on (compared by content fingerprint)."""
    loaded = {"depth model": (depth.fingerprint, depth.weights),
              "rgb backbone": (embedder.rgb.fingerprint, f"{embedder.rgb.name}: {embedder.rgb.weights}"),
              "depth backbone": (embedder.depth.fingerprint,
                                 f"{embedder.depth.name}: {embedder.depth.weights}")}
    expected = {"depth model": recorded.get("depth"),
                "rgb backbone": (recorded.get("rgb") or {}).get("weights"),
                "depth backbone": (recorded.get("depth_backbone") or {}).get("weights")}
    for name, (fingerprint, source) in loaded.items():
        if expected[name] is None:
            raise ValueError(f"the run's {PREPROCESS_FILE} does not record the {name} weights it was trained "
                             f"with, so the loaded ones ({source}) cannot be checked")
        if fingerprint != expected[name]:
            raise ValueError(f"{name} weights {source} (fingerprint {fingerprint}) are not the ones the run "
                             f"was trained with (fingerprint {expected[name]}); give the same weights "
                             f"(a local copy of them is fine)")


class Detector:
    """A trained run ready to score new media; build it with `Detector.from_pretrained`."""

    def __init__(self, model: MegatronDetector, preprocessing: PreprocessConfig, config: PredictConfig,
                 checkpoint: Path, device: torch.device):
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.frames_per_clip = preprocessing.frames.frames_per_clip
        self.config = config.resolved(preprocessing.frames)
        self.checkpoint = checkpoint
        self.device = device
        self.threshold = decision_threshold(checkpoint, float(model.config.threshold))
        self.face_detector = FaceDetector(preprocessing.faces)
        self.depth = DepthEstimator(preprocessing.depth)
        self.embedder = Embedder(preprocessing.embed)
        dims = (self.embedder.rgb.num_features, self.embedder.depth.num_features)
        if dims != (model.config.rgb_dim, model.config.depth_dim):
            raise ValueError(f"the backbones give (rgb, depth) features of sizes {dims}, but {checkpoint} "
                             f"expects {(model.config.rgb_dim, model.config.depth_dim)}")
        self.weights = {
            "checkpoint": f"{checkpoint.resolve()} (threshold {self.threshold:.4f})",
            "depth_model": self.depth.weights,
            "rgb_backbone": f"{self.embedder.rgb.name}: {self.embedder.rgb.weights}",
            "depth_backbone": f"{self.embedder.depth.name}: {self.embedder.depth.weights}",
        }

    @classmethod
    def from_pretrained(cls, run_dir_or_checkpoint: str | os.PathLike, device: str = "auto",
                        depth_model: str | None = None, rgb_weights: str | None = None,
                        depth_weights: str | None = None, **overrides: Any) -> Detector:
        """Load a run's checkpoint (its best/ by default, or a checkpoint folder inside the run), its decision
        threshold and its preprocessing. `depth_model`, `rgb_weights` and `depth_weights` point at local
        copies of the training weights; `overrides` are `PredictConfig` fields."""
        known = {f.name for f in fields(PredictConfig)}
        if set(overrides) - known:
            raise ValueError(f"unknown option(s) {sorted(set(overrides) - known)}; known: {sorted(known)}")
        config = PredictConfig(**overrides)
        run_dir, checkpoint = resolve_checkpoint(run_dir_or_checkpoint)
        stored = load_recipe(run_dir, checkpoint)
        recorded = stored.get("weights") or {}
        preprocessing = PreprocessConfig.from_dict(stored["config"])
        torch_device = resolve_device(device)
        batch = {"batch_size": config.batch_size} if config.batch_size else {}
        embed = preprocessing.embed
        # The backbones the run really used (not "auto", which could resolve differently here).
        backbones = {f"{stream}_backbone": (recorded.get(key) or {}).get("backbone")
                     or getattr(embed, f"{stream}_backbone")
                     for stream, key in (("rgb", "rgb"), ("depth", "depth_backbone"))}
        preprocessing = replace(
            preprocessing,
            faces=replace(preprocessing.faces, track="all"),
            depth=replace(preprocessing.depth, model=depth_model or preprocessing.depth.model,
                          device=str(torch_device), **batch),
            embed=replace(embed, **backbones, rgb_weights=rgb_weights or embed.rgb_weights,
                          depth_weights=depth_weights or embed.depth_weights, device=str(torch_device),
                          **batch),
        )
        model = load_head(checkpoint, map_location=torch_device)
        detector = cls(model, preprocessing, config, checkpoint, torch_device)
        check_weights(recorded, detector.depth, detector.embedder)
        logger.info("predict with %s", "; ".join(f"{k}: {v}" for k, v in detector.weights.items()))
        return detector

    # Sampling ----------------------------------------------------------------------------------------
    def frames_config(self, path: Path) -> tuple[FramesConfig, int | None]:
        """The run's own sampling for one file (more clips when asked), and the typical gap between the
        frames of a clip (None for a still image)."""
        if is_image(path):
            return FramesConfig(frames_per_clip=1), None
        info = probe(path)
        if info.frame_count < self.config.min_frames:
            raise MediaError(path, f"video too short: {info.frame_count} frame(s), scoring needs at least "
                                   f"{self.config.min_frames} (give a still image as an image file)")
        frames = replace(self.preprocessing.frames, clips_per_video=self.config.clips_per_video)
        first = sample_indices(info.frame_count, frames)[0]
        return frames, max(1, round(float(np.diff(first).mean()))) if len(first) > 1 else 1

    # Scoring -----------------------------------------------------------------------------------------
    def predict(self, path: str | os.PathLike) -> Prediction:
        """Score one video or image; any failure becomes a record with status "failed" and the reason."""
        path = Path(path)
        try:
            return self._predict(path)
        except MediaError as error:
            return Prediction(str(path), FAILED, error=str(error), threshold=self.threshold,
                              weights=self.weights)
        except Exception as error:  # noqa: BLE001 - one bad file never stops a batch
            logger.debug("predict %s failed", path, exc_info=True)
            return Prediction(str(path), FAILED, error=f"{path}: {type(error).__name__}: {error}",
                              threshold=self.threshold, weights=self.weights)

    def predict_many(self, paths: Iterable[str | os.PathLike]) -> Iterator[Prediction]:
        paths = list(paths)
        for path in tqdm(paths, desc="predict", unit="file", disable=len(paths) < 2):
            yield self.predict(path)

    def _predict(self, path: Path) -> Prediction:
        timings: dict[str, float] = {}
        started = tic = time.perf_counter()
        frames_config, step = self.frames_config(path)
        video = extract_video_faces(path, frames_config, self.preprocessing.faces, self.face_detector)
        timings["decode_faces"] = time.perf_counter() - tic

        tic = time.perf_counter()
        crops = np.concatenate([track.crops for track in video.tracks])  # all people in shared batches
        depth_maps = self.depth(crops)
        timings["depth"] = time.perf_counter() - tic
        tic = time.perf_counter()
        rgb, depth = self.embedder(crops, depth_maps)
        timings["embed"] = time.perf_counter() - tic

        tic = time.perf_counter()
        faces = self.score_tracks(video, rgb, depth)
        timings["classify"] = time.perf_counter() - tic
        if not faces:
            raise MediaError(path, "no face has crops in at least half of the frames of any clip")
        best = max(faces, key=lambda face: face.probability)
        timings["total"] = time.perf_counter() - started
        return Prediction(
            str(path), OK, fake_probability=best.probability,
            verdict="fake" if best.probability >= self.threshold else "real", threshold=self.threshold,
            face=best.track, face_box=best.boxes[0], faces=faces, frames_used=video.frames_decoded,
            sample_every=step, frame_count=video.frame_count, fps=video.fps,
            media="image" if step is None else "video", weights=self.weights,
            timings={name: round(seconds, 4) for name, seconds in timings.items()})

    def score_tracks(self, video: VideoFaces, rgb: np.ndarray, depth: np.ndarray) -> list[FaceScore]:
        """Every face scored on its windows; `rgb`/`depth` hold the features of all tracks' crops in order."""
        windows = video.clips
        length = self.frames_per_clip
        rows, clip_index, frame_index, owners = [], [], [], []  # one entry per (window, crop)
        offset = 0
        for track_id, track in enumerate(video.tracks):
            row_of = {int(frame): offset + row for row, frame in enumerate(track.frame_index)}
            for window_id, window in enumerate(windows):
                members = [frame for frame in window if frame in row_of]
                if 2 * len(members) >= len(window):
                    owners.append((track_id, window_id, len(members)))
                    rows += [row_of[frame] for frame in members]
                    clip_index += [len(owners) - 1] * len(members)
                    frame_index += members
            offset += len(track)
        if not owners:
            return []
        # The embed stage's layout (float16, present frames first, padding masked), as in training.
        clips = to_clips({"rgb": rgb[rows], "depth": depth[rows]}, np.array(clip_index),
                         np.array(frame_index), length)
        probabilities = self.classify(clips["rgb"], clips["depth"], clips["valid"])

        faces = []
        for track_id, track in enumerate(video.tracks):
            scored = [(windows[w], count, float(p))
                      for (t, w, count), p in zip(owners, probabilities, strict=True) if t == track_id]
            if not scored:
                continue
            in_windows = {int(f) for window, _, _ in scored for f in window}
            used = sorted(in_windows & set(track.frame_index.tolist()))
            box_of = {int(f): box for f, box in zip(track.frame_index, track.boxes, strict=True)}
            timeline = [float(np.mean([p for window, _, p in scored if window[0] <= frame <= window[-1]]))
                        for frame in used]
            faces.append(FaceScore(
                track=track_id, probability=float(np.mean([p for _, _, p in scored])), frames_used=len(used),
                windows=[WindowScore(int(w[0]), int(w[-1]), p, count) for w, count, p in scored],
                frame_index=used, boxes=[[round(float(v), 2) for v in box_of[f]] for f in used],
                timeline=timeline))
        return faces

    @torch.inference_mode()
    def classify(self, rgb: np.ndarray, depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """P(fake) of clips [N, T, D] of each stream, in eval mode: no dropout and no augmentation."""
        device = self.device
        with autocast(device):
            logits = self.model(rgb=torch.from_numpy(rgb).to(device).float(),
                                depth=torch.from_numpy(depth).to(device).float(),
                                valid=torch.from_numpy(valid).to(device))
        return torch.sigmoid(logits.float()[:, 0]).cpu().numpy()


# Outputs ---------------------------------------------------------------------------------------------
CSV_COLUMNS = ["path", "status", "verdict", "fake_probability", "threshold", "face", "face_box", "faces",
               "frames_used", "seconds", "error"]


def write_jsonl(predictions: Iterable[Prediction], path: str | os.PathLike) -> Path:
    """One JSON object per prediction (`Prediction.to_dict`), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        for prediction in predictions:
            handle.write(json.dumps(prediction.to_dict()) + "\n")
    return path


def write_csv(predictions: Iterable[Prediction], path: str | os.PathLike) -> Path:
    """One row per input: verdict, probability, deciding face and its box, or the failure reason."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS)
        writer.writeheader()
        for p in predictions:
            writer.writerow({
                "path": p.path, "status": p.status, "verdict": p.verdict or "",
                "fake_probability": "" if p.fake_probability is None else f"{p.fake_probability:.6f}",
                "threshold": "" if p.threshold is None else f"{p.threshold:.6f}",
                "face": "" if p.face is None else p.face,
                "face_box": "" if p.face_box is None else " ".join(f"{v:.1f}" for v in p.face_box),
                "faces": len(p.faces), "frames_used": p.frames_used,
                "seconds": f"{p.timings.get('total', 0.0):.3f}", "error": p.error or ""})
    return path
