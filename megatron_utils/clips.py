"""Clips from the embed cache: every cached clip of a video is one sample, labelled from the index.

All clips of a split are loaded once into contiguous tensors (moved to the GPU once when there is
one) and batches are sliced from them, so training has no per-sample Python work. Augmentation (a random
temporal crop and frame dropout) works on whole batches and only when asked, i.e. only in training.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from .cache import StageCache
from .preprocess import PREPROCESS_FILE

log = logging.getLogger(__name__)

ENTRY_TENSORS = ("rgb", "depth", "valid")


def preprocessing_config(cache_dir: str | os.PathLike) -> dict:
    """The embed cache's {"stage", "key", "config"} plus "pipeline": the full preprocessing configuration
    that `megatron preprocess` writes beside the embeddings (preprocess.json), or None without one."""
    stored = json.loads((Path(cache_dir) / "config.json").read_text())
    pipeline = Path(cache_dir) / PREPROCESS_FILE
    return {**stored, "pipeline": json.loads(pipeline.read_text())["config"] if pipeline.is_file() else None}


@dataclass
class ClipSet:
    """All clips of some videos. `videos` holds their index rows; `video` maps each clip to its row."""

    rgb: torch.Tensor  # float16 [N, T, D_rgb]
    depth: torch.Tensor  # float16 [N, T, D_depth]
    valid: torch.Tensor  # bool [N, T]
    label: torch.Tensor  # float32 [N], 1 = fake
    video: torch.Tensor  # int64 [N], row of `videos`
    videos: pd.DataFrame
    missing: dict[str, str] = field(default_factory=dict)  # video_id -> why it has no clips

    def __len__(self) -> int:
        return len(self.label)

    @property
    def video_labels(self) -> np.ndarray:
        return (self.videos["label"] == "fake").to_numpy(dtype=np.int64)

    def to(self, device: torch.device) -> ClipSet:
        """Move the tensors to `device` once (the whole FF++ embed set is a few hundred MB)."""
        moved = {name: getattr(self, name).to(device) for name in ("rgb", "depth", "valid", "label", "video")}
        return ClipSet(**moved, videos=self.videos, missing=self.missing)

    def class_counts(self) -> tuple[int, int]:
        fakes = int(self.label.sum())
        return len(self) - fakes, fakes


def source_paths(embed_cache: StageCache) -> dict[str, str]:
    """The video file each embedded item was made from, as the upstream faces stage recorded it
    (empty for embeddings made without a faces stage, such as synthetic ones)."""
    faces_dir = embed_cache.dir.parent.parent / "faces" / str(embed_cache.config.get("faces"))
    if not (faces_dir / "config.json").is_file():
        return {}
    return {item: record["path"] for item, record in StageCache.open(faces_dir, "faces").records().items()
            if record.get("path")}


def load_clips(index: pd.DataFrame, cache_dir: str | os.PathLike, split: str | None = None) -> ClipSet:
    """The clips of the index's videos in `split` (all videos if None). Videos the cache lacks (never
    embedded, or failed) and clips without one valid frame are skipped with a warning, never silently."""
    cache = StageCache.open(cache_dir, "embed")
    rows = index if split is None else index[index["split"] == split]
    if rows.empty:
        raise ValueError(f"the index has no videos in split {split!r}")
    failures = cache.failures()
    done = set(cache.done_items())
    sources = source_paths(cache)
    missing: dict[str, str] = {}
    arrays: dict[str, list[np.ndarray]] = {"rgb": [], "depth": [], "valid": []}
    clip_video: list[int] = []
    kept_rows: list[int] = []
    empty_clips = 0
    for row_number, (video_id, path) in enumerate(tqdm(zip(rows["video_id"], rows["path"], strict=True),
                                                       total=len(rows), desc=f"load {split or 'all'} clips",
                                                       leave=False)):
        if video_id not in done:
            missing[video_id] = failures.get(video_id) or "not in the embed cache"
            continue
        made_from = sources.get(video_id)
        if made_from is not None and Path(made_from).resolve() != Path(path).resolve():
            # Video ids are unique within one index only: another dataset sharing this cache replaced it.
            missing[video_id] = f"its embeddings were made from {made_from}, not {path}; preprocess again"
            continue
        try:
            tensors, _ = cache.read(video_id)
            check_entry(tensors)
        except (OSError, ValueError, SafetensorError) as error:
            missing[video_id] = f"unreadable embed entry {cache.entry_path(video_id)}: {error}"
            continue
        keep = tensors["valid"].any(axis=1)
        empty_clips += int((~keep).sum())
        if not keep.any():
            missing[video_id] = "no clip has a valid frame"
            continue
        for name in arrays:
            arrays[name].append(tensors[name][keep])
        clip_video += [len(kept_rows)] * int(keep.sum())
        kept_rows.append(row_number)
    if missing:
        listed = ", ".join(f"{v} ({why})" for v, why in list(missing.items())[:5])
        log.warning("%d of %d %s videos have no usable embeddings and are skipped: %s%s", len(missing),
                    len(rows), split or "indexed", listed, " ..." if len(missing) > 5 else "")
    if empty_clips:
        log.warning("skipped %d clips without a valid frame", empty_clips)
    if not kept_rows:
        raise ValueError(f"none of the {len(rows)} {split or 'indexed'} videos is in the embed cache "
                         f"{cache.dir}")
    videos = rows.iloc[kept_rows].reset_index(drop=True)
    video = torch.tensor(clip_video, dtype=torch.int64)
    frames = max(a.shape[1] for a in arrays["valid"])
    stacked = {name: torch.from_numpy(np.concatenate([pad_frames(a, frames) for a in parts]))
               for name, parts in arrays.items()}
    label = torch.from_numpy((videos["label"] == "fake").to_numpy(np.float32))[video]
    clips = ClipSet(**stacked, label=label, video=video, videos=videos, missing=missing)
    log.info("loaded %d clips of %d %s videos (%d real, %d fake clips) from %s", len(clips), len(videos),
             split or "indexed", *clips.class_counts(), cache.dir)
    return clips


def check_entry(tensors: dict[str, np.ndarray]) -> None:
    """An embed entry holds rgb [C, T, D], depth [C, T, D'] and valid [C, T] that agree on C and T."""
    absent = [name for name in ENTRY_TENSORS if name not in tensors]
    if absent:
        raise ValueError(f"lacks {absent}")
    shapes = {name: tensors[name].shape for name in ENTRY_TENSORS}
    if len(shapes["valid"]) != 2 or any(shapes[name][:2] != shapes["valid"] or len(shapes[name]) != 3
                                        for name in ("rgb", "depth")):
        raise ValueError(f"inconsistent shapes {shapes}")


def pad_frames(array: np.ndarray, frames: int) -> np.ndarray:
    """Pad axis 1 (time) to `frames` with zeros (False for `valid`), so caches with ragged T stack."""
    extra = frames - array.shape[1]
    return np.pad(array, [(0, 0), (0, extra)] + [(0, 0)] * (array.ndim - 2)) if extra else array


@dataclass
class Augmentation:
    min_crop_fraction: float = 0.75  # a temporal crop keeps at least this fraction of the frames
    frame_dropout: float = 0.1  # probability of masking each frame (one valid frame always survives)


def augment(rgb: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, config: Augmentation,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random temporal crop (a window moved to the start of the clip) and frame dropout, per clip."""
    batch, frames = valid.shape
    device = valid.device

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(device)

    fraction = config.min_crop_fraction + (1 - config.min_crop_fraction) * draw(batch)
    length = (frames * fraction).ceil().long().clamp(1, frames)
    start = (draw(batch) * (frames - length + 1)).floor().long()
    positions = torch.arange(frames, device=device)
    source = (start[:, None] + positions).clamp(max=frames - 1)
    kept = valid.gather(1, source) & (positions < length[:, None])
    # Fall back to the uncropped clip where the crop window holds no valid frame.
    empty = ~kept.any(dim=1)
    source[empty] = positions
    kept[empty] = valid[empty]
    dropped = kept & (draw(batch, frames) >= config.frame_dropout)
    kept = torch.where(dropped.any(dim=1, keepdim=True), dropped, kept)
    index = source.unsqueeze(-1)
    rgb = rgb.gather(1, index.expand(-1, -1, rgb.shape[-1]))
    depth = depth.gather(1, index.expand(-1, -1, depth.shape[-1]))
    return rgb, depth, kept


def iterate_batches(clips: ClipSet, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, augmentation: Augmentation | None = None):
    """Yield (rgb, depth, valid, label) float32/bool batches sliced from the preloaded tensors."""
    if (shuffle or augmentation) and generator is None:
        raise ValueError("shuffling or augmenting needs a torch.Generator (for reproducible runs)")
    order = torch.randperm(len(clips), generator=generator) if shuffle else torch.arange(len(clips))
    order = order.to(clips.label.device)
    for start in range(0, len(clips), batch_size):
        picked = order[start:start + batch_size]
        rgb, depth, valid = clips.rgb[picked].float(), clips.depth[picked].float(), clips.valid[picked]
        if augmentation is not None:
            rgb, depth, valid = augment(rgb, depth, valid, augmentation, generator)
        yield rgb, depth, valid, clips.label[picked]
