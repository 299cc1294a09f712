"""Clips from the embed cache: every cached clip of a video is one sample, labelled from the index.

A clip's features are a dict from stream name to tensor [T, D]. The streams are whatever the cache holds
(every [C, T, D] tensor of an entry beside `valid`: today "rgb" and "depth"), so a new stream reaches the
model (`model(**features, valid=valid)`) without a change here or in the trainer.

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

from ..core.cache import StageCache
from ..preprocessing.preprocess import PREPROCESS_FILE

log = logging.getLogger(__name__)



def preprocessing_config(cache_dir: str | os.PathLike) -> dict:
    """The embed cache's {"stage", "key", "config"} plus "pipeline": the full preprocessing configuration
    that `megatron preprocess` writes beside the embeddings (preprocess.json), or None without one."""
    stored = json.loads((Path(cache_dir) / "config.json").read_text())
    pipeline = Path(cache_dir) / PREPROCESS_FILE
    return {**stored, "pipeline": json.loads(pipeline.read_text())["config"] if pipeline.is_file() else None}


@dataclass
class ClipSet:
    """All clips of some videos. `videos` holds their index rows; `video` maps each clip to its row."""

    features: dict[str, torch.Tensor]  # stream name -> float16 [N, T, D_stream]
    valid: torch.Tensor  # bool [N, T]
    label: torch.Tensor  # float32 [N], 1 = fake
    video: torch.Tensor  # int64 [N], row of `videos`
    videos: pd.DataFrame
    missing: dict[str, str] = field(default_factory=dict)  # video_id -> why it has no clips

    def __len__(self) -> int:
        return len(self.label)

    @property
    def streams(self) -> list[str]:
        return list(self.features)

    @property
    def video_labels(self) -> np.ndarray:
        return (self.videos["label"] == "fake").to_numpy(dtype=np.int64)

    def to(self, device: torch.device) -> ClipSet:
        """Move the tensors to `device` once (the whole FF++ embed set is a few hundred MB)."""
        return ClipSet({name: value.to(device) for name, value in self.features.items()},
                       *(tensor.to(device) for tensor in (self.valid, self.label, self.video)),
                       videos=self.videos, missing=self.missing)

    def subset(self, picked: slice | torch.Tensor) -> ClipSet:
        """These clips only; the videos table is kept whole, so `video` still indexes it."""
        return ClipSet({name: value[picked] for name, value in self.features.items()},
                       *(tensor[picked] for tensor in (self.valid, self.label, self.video)),
                       videos=self.videos, missing=self.missing)

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
    arrays: dict[str, list[np.ndarray]] = {}
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
            streams = entry_streams(tensors)
        except (OSError, ValueError, SafetensorError) as error:
            missing[video_id] = f"unreadable embed entry {cache.entry_path(video_id)}: {error}"
            continue
        if arrays and set(streams) != set(arrays) - {"valid"}:
            missing[video_id] = f"holds streams {streams}, the others {sorted(set(arrays) - {'valid'})}"
            continue
        keep = tensors["valid"].any(axis=1)
        empty_clips += int((~keep).sum())
        if not keep.any():
            missing[video_id] = "no clip has a valid frame"
            continue
        for name in [*streams, "valid"]:
            arrays.setdefault(name, []).append(tensors[name][keep])
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
    valid = stacked.pop("valid")
    label = torch.from_numpy((videos["label"] == "fake").to_numpy(np.float32))[video]
    clips = ClipSet(stacked, valid, label, video, videos=videos, missing=missing)
    log.info("loaded %d clips of %d %s videos (%d real, %d fake clips) from %s", len(clips), len(videos),
             split or "indexed", *clips.class_counts(), cache.dir)
    return clips


def entry_streams(tensors: dict[str, np.ndarray]) -> list[str]:
    """The streams of an embed entry: its [C, T, D] tensors, which must agree with `valid` [C, T]."""
    if "valid" not in tensors or tensors["valid"].ndim != 2:
        raise ValueError("lacks a valid [C, T] mask")
    streams = sorted(name for name, value in tensors.items() if value.ndim == 3)
    shapes = {name: tensors[name].shape for name in [*streams, "valid"]}
    if not streams or any(shapes[name][:2] != shapes["valid"] for name in streams):
        raise ValueError(f"no feature stream, or shapes that disagree with valid: {shapes}")
    return streams


def pad_frames(array: np.ndarray, frames: int) -> np.ndarray:
    """Pad axis 1 (time) to `frames` with zeros (False for `valid`), so caches with ragged T stack."""
    extra = frames - array.shape[1]
    return np.pad(array, [(0, 0), (0, extra)] + [(0, 0)] * (array.ndim - 2)) if extra else array


@dataclass
class Augmentation:
    min_crop_fraction: float = 0.75  # a temporal crop keeps at least this fraction of the frames
    frame_dropout: float = 0.1  # probability of masking each frame (one valid frame always survives)


def augment(features: dict[str, torch.Tensor], valid: torch.Tensor, config: Augmentation,
            generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random temporal crop (a window moved to the start of the clip) and frame dropout, per clip; every
    stream gets the same frames."""
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
    moved = {name: value.gather(1, index.expand(-1, -1, value.shape[-1])) for name, value in features.items()}
    return moved, kept


def iterate_batches(clips: ClipSet, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, augmentation: Augmentation | None = None):
    """Yield (features {stream: float32 [B, T, D]}, valid [B, T], label [B]) sliced from the preloaded
    tensors."""
    if (shuffle or augmentation) and generator is None:
        raise ValueError("shuffling or augmenting needs a torch.Generator (for reproducible runs)")
    order = torch.randperm(len(clips), generator=generator) if shuffle else torch.arange(len(clips))
    order = order.to(clips.label.device)
    for start in range(0, len(clips), batch_size):
        picked = order[start:start + batch_size]
        features = {name: value[picked].float() for name, value in clips.features.items()}
        valid = clips.valid[picked]
        if augmentation is not None:
            features, valid = augment(features, valid, augmentation, generator)
        yield features, valid, clips.label[picked]
