"""Stage 4: per-frame embeddings of the RGB face crops and of their depth maps.

Two separate backbones (own weights each) run in eval mode under `torch.inference_mode`, on inputs
prepared exactly as their training data was (the backbone's data config: size and ImageNet
normalisation); a depth map is fed as three identical channels. Features of every crop are then laid
out by clip as float16 [C, T, D] with a `valid` mask for clips shorter than T. With an `audio` stage
cache (`audio.py`), its per-crop audio features are laid out beside them as a third stream.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.cache import FAILED, StageCache, StageReport, file_fingerprint
from ..core.precision import autocast, resolve_device, resolve_dtype
from ..models.backbones import AUTO, Backbone, create_backbone, prepare_pixels
from .batching import done_upstream, run_batched_stage, to_unit_tensor
from .depth import read_depth
from .faces import read_faces

logger = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    rgb_backbone: str = AUTO  # a registered backbone name, or auto (RepViT-M0.9, else offline MobileNetV2)
    depth_backbone: str = AUTO
    rgb_weights: str | None = None  # local weights file or folder instead of the default weights
    depth_weights: str | None = None
    input_size: int | None = None  # None: each backbone's own input size
    batch_size: int = 64
    frames_per_clip: int = 32  # T; match the frames stage's frames_per_clip
    dtype: str = "auto"  # auto: bfloat16/float16 autocast on GPU, float32 on CPU
    device: str = "auto"

    def __post_init__(self) -> None:
        if min(self.batch_size, self.frames_per_clip, self.input_size or 1) < 1:
            raise ValueError(f"input_size, batch_size and frames_per_clip must be >= 1: {self}")


class Embedder:
    """Crops and their depth maps in, one feature vector per crop out:
    (uint8 [N, S, S, 3], float [N, S', S'] in [0, 1]) -> (float32 [N, D_rgb], float32 [N, D_depth])."""

    def __init__(self, config: EmbedConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.rgb = create_backbone(config.rgb_backbone, weights=config.rgb_weights)
        self.depth = create_backbone(config.depth_backbone, weights=config.depth_weights)
        for backbone in (self.rgb, self.depth):
            backbone.model.to(self.device)

    def identity(self) -> dict[str, object]:
        """Everything that changes the features: which networks and weights (by content), sizes, dtype."""
        return {
            stream: {"backbone": b.name, "weights": b.fingerprint, "input_size": self.input_size(b)}
            for stream, b in (("rgb", self.rgb), ("depth", self.depth))
        } | {"dtype": str(self.dtype).removeprefix("torch.")}

    def input_size(self, backbone: Backbone) -> int:
        return self.config.input_size or backbone.data_config.input_size

    def backbone(self, stream: str) -> Backbone:
        return {"rgb": self.rgb, "depth": self.depth}[stream]

    def embed_pixels(self, stream: str, pixels: torch.Tensor, model: torch.nn.Module | None = None
                     ) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] (a depth map repeated to 3 channels) -> float32 [N, D]; differentiable.
        `model` replaces the stream's network (a private copy, e.g. one carrying Grad-CAM's hooks)."""
        backbone = self.backbone(stream)
        data = backbone.data_config
        inputs = prepare_pixels(pixels, self.input_size(backbone), data.mean, data.std, data.interpolation)
        with autocast(self.device, self.dtype):
            return (model or backbone.model)(inputs).float()

    @torch.inference_mode()
    def embed_batch(self, crops: np.ndarray, depth_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tuple(self.embed_pixels(stream, to_unit_tensor(images, self.device)).cpu().numpy()
                     for stream, images in (("rgb", crops), ("depth", depth_maps)))

    def __call__(self, crops: np.ndarray, depth_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(crops) != len(depth_maps):
            raise ValueError(f"{len(crops)} crops but {len(depth_maps)} depth maps")
        step = self.config.batch_size
        batches = [self.embed_batch(crops[i:i + step], depth_maps[i:i + step])
                   for i in range(0, len(crops), step)]
        rgb = [np.zeros((0, self.rgb.num_features), np.float32)] + [b[0] for b in batches]
        depth = [np.zeros((0, self.depth.num_features), np.float32)] + [b[1] for b in batches]
        return np.concatenate(rgb), np.concatenate(depth)


def to_clips(features: dict[str, np.ndarray], clip_index: np.ndarray, frame_index: np.ndarray,
             frames_per_clip: int, track: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-crop features [N, D] to per-clip float16 [C, T, D] in frame order, one row per (person, clip)
    present, so two people's crops never share a clip; `track` [C] says whose each row is.

    Clips with fewer than T crops are zero-padded and marked in `valid`; padded `frame_index` is -1.
    """
    track = np.zeros(len(clip_index), np.int32) if track is None else np.asarray(track, np.int32)
    groups = np.unique(np.stack([track, clip_index], axis=1), axis=0)  # sorted by person, then clip
    count, length = len(groups), frames_per_clip
    out = {name: np.zeros((count, length, array.shape[1]), np.float16) for name, array in features.items()}
    valid = np.zeros((count, length), bool)
    frames = np.full((count, length), -1, np.int32)
    for row, (person, clip) in enumerate(groups):
        members = np.flatnonzero((clip_index == clip) & (track == person))
        members = members[np.argsort(frame_index[members], kind="stable")]
        if len(members) > length:
            logger.warning("clip %d of person %d has %d crops but frames_per_clip is %d: the last %d are "
                           "dropped", clip, person, len(members), length, len(members) - length)
            members = members[:length]
        for name, array in features.items():
            out[name][row, :len(members)] = array[members]
        valid[row, :len(members)] = True
        frames[row, :len(members)] = frame_index[members]
    return {**out, "valid": valid, "frame_index": frames, "track": groups[:, 0].astype(np.int32)}


def compute_embeddings(faces_cache: StageCache, depth_cache: StageCache, embed_cfg: EmbedConfig,
                       force: bool = False, cache_root: str | os.PathLike | None = None,
                       item_ids: Sequence[str] | None = None, embedder: Embedder | None = None,
                       audio_cache: StageCache | None = None) -> tuple[StageCache, StageReport]:
    """RGB and depth embeddings for every video (or only `item_ids`) with a faces entry, into the
    `embed` stage cache: `rgb` [C, T, D_rgb], `depth` [C, T, D_depth] (float16), `valid` [C, T],
    `frame_index` [C, T], and `audio` [C, T, D_audio] when an `audio_cache` is given. `embedder`: one a
    caller keeps loaded (built from `embed_cfg`)."""
    upstream = [("depth", depth_cache)] + ([("audio", audio_cache)] if audio_cache is not None else [])
    for name, stage in upstream:
        if stage.config.get("faces") != faces_cache.key:
            raise ValueError(f"{name} cache {stage.dir} was computed from faces cache "
                             f"{stage.config.get('faces')}, not from {faces_cache.key} ({faces_cache.dir})")
    embedder = embedder or Embedder(embed_cfg)
    audio_key = {"audio": audio_cache.key} if audio_cache is not None else {}
    cache = StageCache("embed", {"faces": faces_cache.key, "depth_maps": depth_cache.key, **audio_key,
                                 "frames_per_clip": embed_cfg.frames_per_clip, **embedder.identity()},
                       root=cache_root)
    items = done_upstream(faces_cache, item_ids)

    def fingerprint(item_id: str) -> str:
        paths = [faces_cache.entry_path(item_id)] + [stage.entry_path(item_id) for _, stage in upstream]
        return "|".join(file_fingerprint(p) if p.exists() else "missing" for p in paths)

    def read_upstream(item_id: str, name: str, stage: StageCache, faces: dict[str, np.ndarray]) -> np.ndarray:
        if stage.status(item_id) == FAILED:
            raise ValueError(f"{name} stage failed: {stage.records()[item_id].get('error')}")
        tensors = read_depth(stage, item_id) if name == "depth" else stage.read(item_id)[0]
        if len(tensors[name]) != len(faces["crops"]) or not np.array_equal(tensors["frame_index"],
                                                                            faces["frame_index"]):
            raise ValueError(f"{name} entry {list(tensors[name].shape)} does not match the faces entry "
                             f"{list(faces['crops'].shape)}")
        return tensors[name]

    def load(item_id: str) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        faces, _ = read_faces(faces_cache, item_id)
        crops = faces["crops"]
        if crops.ndim != 4 or crops.shape[-1] != 3 or len(crops) == 0:
            raise ValueError(f"faces entry has crops {list(crops.shape)}, expected [N>0, S, S, 3]")
        maps, *audio = (read_upstream(item_id, name, stage, faces) for name, stage in upstream)
        if maps.ndim != 3:
            raise ValueError(f"depth entry has maps {list(maps.shape)}, expected [N, S, S]")
        return (crops, maps), (faces["clip_index"], faces["frame_index"], faces.get("track"), *audio)

    def save(context: tuple[np.ndarray, ...], features: tuple[np.ndarray, ...]) -> dict:
        clip_index, frame_index, track, *audio = context
        streams = {"rgb": features[0], "depth": features[1]} | ({"audio": audio[0]} if audio else {})
        return to_clips(streams, clip_index, frame_index, embed_cfg.frames_per_clip, track)

    report = run_batched_stage(cache, items, fingerprint, load, embedder.embed_batch, save,
                               embed_cfg.batch_size, force, rgb_weights=embedder.rgb.weights,
                               depth_weights=embedder.depth.weights)
    return cache, report
