"""Scoring new videos and images with a trained run: `Detector.from_pretrained(run)(media)`.

A pipeline in the style of transformers' pipelines: `preprocess` (decode the run's own frame sampling, find
and crop faces) -> `forward` (depth maps, embeddings, temporal head) -> `postprocess` (verdict, per-face
timelines). `media` is a path, the file's bytes (an upload, no temporary file) or decoded RGB frames.

The run's `preprocess.json` (copied there by `train`) rebuilds exactly the training preprocessing: face
detector, crop margin and size, depth model and input size, both backbones and their input sizes, T. The
weights actually loaded must be the ones recorded at training (by content fingerprint), so local copies of
the models may replace hub ids, but other weights are refused. The model runs in eval mode under
`torch.inference_mode`, with no augmentation: the same file always gets the same scores.

Frame sampling is the run's own, by construction: `FramesConfig` from `preprocess.json`, so a new video
gets exactly the clips `evaluate` scores for an indexed one (same T, same frame spacing, same sampling).
- `clips_per_video` may be raised (`--clips-per-video`) to cover a video more densely; it keeps the training
  spacing (uniform clips interleave, consecutive windows spread evenly).
- Every tracked person (`track="all"`; track 0 has the largest summed face area) is scored on each clip
  in which the face has a crop in at least half of the clip's frames. A face's probability is the mean of
  its clips (as `evaluate` averages a video's clips); the video's probability is the highest face's, and
  the prediction names that face. Each frame of a face gets the mean of the clips spanning it (uniform
  clips span the whole video, so their timeline is flat; consecutive windows localise it).
- A still image is one clip of one frame. A video with fewer than `min_frames` frames (default
  max(2, T // 2)) is not scored.
- A run trained with the audio stream hears each sampled frame's audio window too; frames given as an
  array, stills and videos without an audio track are scored with the stream masked.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.cache import PREPROCESS_FILE, atomic_path
from ..core.precision import autocast, resolve_device, training_dtype
from ..models.checkpoint import Checkpoint, Decision, resolve_checkpoint
from ..models.heads import TemporalHead
from ..preprocessing.audio import AudioEmbedder
from ..preprocessing.depth import DepthEstimator
from ..preprocessing.embed import Embedder, to_clips
from ..preprocessing.faces import AUTO, FaceDetector, VideoFaces, resolve_face_config, track_faces
from ..preprocessing.frames import FramesConfig, Media, media_name, media_source, sample_video
from ..preprocessing.preprocess import PreprocessConfig
from ..preprocessing.video import Encoded, MediaError
from ..visualization.annotate import annotate_image, annotate_video, load_heatmaps, plot_timeline
from .results import FAILED, OK, ExplainConfig, FaceScore, Prediction, WindowScore

__all__ = ["Detector", "ExplainConfig", "FaceScore", "PredictConfig", "Prediction", "WindowScore",
           "annotate_image", "annotate_video", "load_heatmaps", "plot_timeline", "write_csv", "write_jsonl"]

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


def check_weights(recorded: dict[str, Any], depth: DepthEstimator, embedder: Embedder,
                  audio: AudioEmbedder | None = None) -> None:
    """Refuse weights other than those the run was trained on (compared by content fingerprint)."""
    loaded = {"depth model": (depth.fingerprint, depth.weights),
              "rgb backbone": (embedder.rgb.fingerprint, f"{embedder.rgb.name}: {embedder.rgb.weights}"),
              "depth backbone": (embedder.depth.fingerprint,
                                 f"{embedder.depth.name}: {embedder.depth.weights}")}
    expected = {"depth model": recorded.get("depth"),
                "rgb backbone": (recorded.get("rgb") or {}).get("weights"),
                "depth backbone": (recorded.get("depth_backbone") or {}).get("weights")}
    if audio is not None:
        loaded["audio encoder"] = (audio.encoder.fingerprint, audio.weights)
        expected["audio encoder"] = (recorded.get("audio") or {}).get("weights")
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

    def __init__(self, model: TemporalHead, decision: Decision, preprocessing: PreprocessConfig,
                 config: PredictConfig, checkpoint: Path, device: torch.device):
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.frames_per_clip = preprocessing.frames.frames_per_clip
        self.config = config.resolved(preprocessing.frames)
        # The run's own sampling, by construction: only the number of clips may grow.
        self.frames = replace(preprocessing.frames, clips_per_video=self.config.clips_per_video)
        self.checkpoint = checkpoint
        self.device = device
        self.decision = decision
        self.threshold = self.decision.threshold
        self.explain_config = ExplainConfig()
        self.face_detector = FaceDetector(preprocessing.faces)
        self.depth = DepthEstimator(preprocessing.depth)
        self.embedder = Embedder(preprocessing.embed)
        self.audio = AudioEmbedder(preprocessing.audio) if preprocessing.audio.enabled else None
        dims = (self.embedder.rgb.num_features, self.embedder.depth.num_features,
                self.audio.num_features if self.audio else 0)
        expected = (model.config.rgb_dim, model.config.depth_dim, model.config.audio_dim)
        if dims != expected:
            raise ValueError(f"the encoders give (rgb, depth, audio) features of sizes {dims}, but "
                             f"{checkpoint} expects {expected}")
        self.weights = {
            "checkpoint": f"{checkpoint.resolve()} (threshold {self.threshold:.4f})",
            "depth_model": self.depth.weights,
            "rgb_backbone": f"{self.embedder.rgb.name}: {self.embedder.rgb.weights}",
            "depth_backbone": f"{self.embedder.depth.name}: {self.embedder.depth.weights}",
        } | ({"audio_encoder": self.audio.weights} if self.audio else {})

    @classmethod
    def from_pretrained(cls, run_dir_or_checkpoint: str | os.PathLike, device: str = "auto",
                        depth_model: str | None = None, rgb_weights: str | None = None,
                        depth_weights: str | None = None, **overrides: Any) -> Detector:
        """Load a run's checkpoint (its best/ by default, a checkpoint folder, or a hub repo id): its head,
        decision threshold and preprocessing (`models.checkpoint.Checkpoint`). `depth_model`, `rgb_weights`
        and `depth_weights` point at local copies of the training weights; `overrides` are `PredictConfig`
        fields."""
        known = {f.name for f in fields(PredictConfig)}
        if set(overrides) - known:
            raise ValueError(f"unknown option(s) {sorted(set(overrides) - known)}; known: {sorted(known)}")
        config = PredictConfig(**overrides)
        _, folder = resolve_checkpoint(run_dir_or_checkpoint)
        torch_device = resolve_device(device)
        saved = Checkpoint.from_pretrained(folder, map_location=torch_device)
        stored = saved.preprocessing
        if stored is None:
            raise FileNotFoundError(f"{folder / PREPROCESS_FILE} does not exist: the run was trained on "
                                    f"embeddings not made by `megatron preprocess`, so how to preprocess new "
                                    f"media is unknown")
        recorded = stored.get("weights") or {}
        preprocessing = PreprocessConfig.from_dict(stored["config"])
        batch = {"batch_size": config.batch_size} if config.batch_size else {}
        embed = preprocessing.embed
        # The backbones the run really used (not "auto", which could resolve differently here).
        backbones = {f"{stream}_backbone": (recorded.get(key) or {}).get("backbone")
                     or getattr(embed, f"{stream}_backbone")
                     for stream, key in (("rgb", "rgb"), ("depth", "depth_backbone"))}
        preprocessing = replace(
            preprocessing,
            # the run's detector ("auto" resolved by the device given here), on this device where it can
            faces=resolve_face_config(replace(preprocessing.faces, track="all", device=AUTO),
                                      str(torch_device)),
            depth=replace(preprocessing.depth, model=depth_model or preprocessing.depth.model,
                          device=str(torch_device), **batch),
            embed=replace(embed, **backbones, rgb_weights=rgb_weights or embed.rgb_weights,
                          depth_weights=depth_weights or embed.depth_weights, device=str(torch_device),
                          **batch),
            audio=replace(preprocessing.audio, device=str(torch_device), **batch),
        )
        detector = cls(saved.head, Decision.from_dict(saved.decision), preprocessing, config, folder,
                       torch_device)
        check_weights(recorded, detector.depth, detector.embedder, detector.audio)
        logger.info("predict with %s", "; ".join(f"{k}: {v}" for k, v in detector.weights.items()))
        return detector

    # The pipeline: preprocess -> forward -> postprocess -------------------------------------------------
    def preprocess(self, media: Media, name: str | None = None) -> VideoFaces:
        """Decode the run's own frame sampling (more clips when asked) and crop every tracked face.

        `media` is a path, an `Encoded` upload or decoded RGB frames; `name` names bytes or an array."""
        video = sample_video(media, self.frames, name)
        if video.info.codec != "image" and video.info.frame_count < self.config.min_frames:
            raise MediaError(video.name, f"video too short: {video.info.frame_count} frame(s), scoring "
                                         f"needs at least {self.config.min_frames} (give a still image as "
                                         f"an image)")
        return track_faces(video, self.preprocessing.faces, self.face_detector)

    def forward(self, video: VideoFaces, timings: dict[str, float] | None = None, media: Media | None = None
                ) -> tuple[list[FaceScore], dict[str, np.ndarray]]:
        """Depth maps, embeddings, the audio stream when the run has one (heard from `media`, a path or
        bytes; none from frames) and the temporal head for every face's clips (seconds into `timings`): the
        faces' scores, and the per-crop features of all tracks in order."""
        timings = {} if timings is None else timings
        tic = time.perf_counter()
        crops = np.concatenate([track.crops for track in video.tracks])  # all people in shared batches
        depth_maps = self.depth(crops)
        timings["depth"] = time.perf_counter() - tic
        tic = time.perf_counter()
        rgb, depth = self.embedder(crops, depth_maps)
        features = {"rgb": rgb, "depth": depth}
        timings["embed"] = time.perf_counter() - tic
        if self.audio is not None:
            tic = time.perf_counter()
            times = np.concatenate([track.frame_index for track in video.tracks]) / max(video.fps, 1e-9)
            source = Encoded(media, video.path) if isinstance(media, bytes) else media
            heard = None if isinstance(source, np.ndarray) or video.still else source
            features["audio"] = self.audio(heard, times)
            timings["audio"] = time.perf_counter() - tic
        tic = time.perf_counter()
        faces = self.score_tracks(video, features)
        timings["classify"] = time.perf_counter() - tic
        return faces, features

    def postprocess(self, video: VideoFaces, faces: list[FaceScore], timings: dict[str, float],
                    source: str = "file") -> Prediction:
        """The verdict of the most fake-looking face under the run's threshold, with every face's timeline."""
        if not faces:
            raise MediaError(video.path, "no face has crops in at least half of the frames of any clip")
        best = max(faces, key=lambda face: face.probability)
        first = video.clips[0]
        still = video.still
        step = None if still else max(1, round(float(np.diff(first).mean()))) if len(first) > 1 else 1
        return Prediction(
            video.path, OK, fake_probability=best.probability,
            verdict=self.decision.verdict(best.probability), threshold=self.threshold,
            uncertain_below=self.decision.uncertain_below, decision=self.decision.meaning(),
            face=best.track, face_box=best.boxes[0], faces=faces, frames_used=video.frames_decoded,
            sample_every=step, frame_count=video.frame_count, fps=video.fps,
            media="image" if still else "video", source=source, weights=self.weights,
            timings={name: round(seconds, 4) for name, seconds in timings.items()})

    def predict(self, media: Media, name: str | None = None,
                progress: Callable[[str], None] | None = None,
                explain: str | os.PathLike | None = None) -> Prediction:
        """Score one video or image (a path, its bytes, or decoded frames, which `name` names); any failure
        becomes a record with status "failed" and the reason, so one bad input never stops a batch.
        `progress` is told each step as it starts: "preprocess", "forward", then "explain" when `explain`
        names a folder for the explanation (`explain.py`), which `Prediction.explanation` then describes."""
        label, source = media_name(media, name), media_source(media)
        report = progress or (lambda step: None)
        try:
            timings: dict[str, float] = {}
            started = time.perf_counter()
            report("preprocess")
            video = self.preprocess(media, name)
            timings["decode_faces"] = time.perf_counter() - started
            report("forward")
            faces, features = self.forward(video, timings, media)
            prediction = self.postprocess(video, faces, timings, source)
            if explain is not None:
                report("explain")
                tic = time.perf_counter()
                from .explain import explain as explain_verdict  # the explain extra: only when asked

                clips = self.track_clips(video, features, track_ids=[prediction.face])
                prediction.explanation = explain_verdict(self.model, self.embedder, video, prediction, clips,
                                                         self.preprocessing.faces.margin, explain,
                                                         self.explain_config)
                prediction.timings["explain"] = round(time.perf_counter() - tic, 4)
            prediction.timings["total"] = round(time.perf_counter() - started, 4)
            return prediction
        except MediaError as error:
            return Prediction(label, FAILED, error=str(error), threshold=self.threshold, weights=self.weights,
                              source=source)
        except Exception as error:  # noqa: BLE001 - one bad file never stops a batch
            logger.debug("predict %s failed", label, exc_info=True)
            return Prediction(label, FAILED, error=f"{label}: {type(error).__name__}: {error}",
                              threshold=self.threshold, weights=self.weights, source=source)

    __call__ = predict

    def predict_many(self, inputs: Iterable[Media], explain: Iterable[str | os.PathLike] | None = None
                     ) -> Iterator[Prediction]:
        """Score each input in turn; `explain` gives each its own explanation folder."""
        inputs = list(inputs)
        folders = [None] * len(inputs) if explain is None else list(explain)
        for media, folder in tqdm(zip(inputs, folders, strict=True), total=len(inputs), desc="predict",
                                  unit="file", disable=len(inputs) < 2):
            yield self.predict(media, explain=folder)

    def track_clips(self, video: VideoFaces, features: dict[str, np.ndarray],
                    track_ids: Iterable[int] | None = None) -> dict[str, np.ndarray]:
        """The embed stage's clip layout (float16 [C, T, D] per stream, `valid`, `frame_index`; present frames
        first, padding masked, as in training) of the faces' scored windows: a window counts for a face with
        crops in at least half of its frames. `features` hold all tracks' crops in order; `owner` [C, 3]
        says (track, window, crops) of each row."""
        wanted = set(range(len(video.tracks)) if track_ids is None else track_ids)
        rows, clip_index, frame_index, owners = [], [], [], []  # one entry per (window, crop)
        offset = 0
        for track_id, track in enumerate(video.tracks):
            row_of = {int(frame): offset + row for row, frame in enumerate(track.frame_index)}
            offset += len(track)
            if track_id not in wanted:
                continue
            for window_id, window in enumerate(video.clips):
                members = [frame for frame in window if frame in row_of]
                if 2 * len(members) >= len(window):
                    owners.append((track_id, window_id, len(members)))
                    rows += [row_of[frame] for frame in members]
                    clip_index += [len(owners) - 1] * len(members)
                    frame_index += members
        clips = to_clips({name: array[rows] for name, array in features.items()}, np.array(clip_index, int),
                         np.array(frame_index, int), self.frames_per_clip)
        return {**clips, "owner": np.array(owners, np.int64).reshape(-1, 3)}

    def score_tracks(self, video: VideoFaces, features: dict[str, np.ndarray]) -> list[FaceScore]:
        """Every face scored on its windows; `features` hold all tracks' crops in order."""
        clips = self.track_clips(video, features)
        if not len(clips["owner"]):
            return []
        probabilities = self.classify({name: clips[name] for name in features}, clips["valid"])
        windows = video.clips
        faces = []
        for track_id, track in enumerate(video.tracks):
            scored = [(windows[w], count, float(p)) for (t, w, count), p
                      in zip(clips["owner"], probabilities, strict=True) if t == track_id]
            if not scored:
                continue
            in_windows = {int(f) for window, _, _ in scored for f in window}
            used = sorted(in_windows & set(track.frame_index.tolist()))
            box_of = {int(f): box for f, box in zip(track.frame_index, track.boxes, strict=True)}
            timeline = [float(np.mean([p for window, _, p in scored if window[0] <= frame <= window[-1]]))
                        for frame in used]
            faces.append(FaceScore(
                track=track_id, probability=float(np.mean([p for _, _, p in scored])), frames_used=len(used),
                windows=[WindowScore(int(w[0]), int(w[-1]), p, int(count)) for w, count, p in scored],
                frame_index=used, boxes=[[round(float(v), 2) for v in box_of[f]] for f in used],
                timeline=timeline))
        return faces

    @torch.inference_mode()
    def classify(self, features: dict[str, np.ndarray], valid: np.ndarray) -> np.ndarray:
        """P(fake) of clips ({stream: [N, T, D]}, valid [N, T]), in eval mode: no dropout, no augmentation."""
        device = self.device
        with autocast(device, training_dtype(device, amp=True)):
            logits = self.model(**{name: torch.from_numpy(value).to(device).float()
                                   for name, value in features.items()},
                                valid=torch.from_numpy(valid).to(device))
        return self.model.probability(logits[:, 0]).cpu().numpy()


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
