"""Clips from the embed cache: every cached clip of a video is one sample, labelled from the index.

A clip's features are a dict from stream name to tensor [T, D]. The streams are whatever the cache holds
(every [C, T, D] tensor of an entry beside `valid`: today "rgb" and "depth"), so a new stream reaches the
model (`model(**features, valid=valid)`) without a change here or in the trainer.

All clips of a split are loaded once into contiguous tensors (moved to the GPU once when there is
one) and batches are sliced from them, so training has no per-sample Python work. Augmentation (a random
temporal crop and frame dropout) works on whole batches and only when asked, i.e. only in training.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from ..core.cache import PREPROCESS_FILE, StageCache

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
    on_disk: bool = False  # features and valid are memory-mapped from a file: batches page in, never moved

    def __len__(self) -> int:
        return len(self.label)

    @property
    def streams(self) -> list[str]:
        return list(self.features)

    @property
    def video_labels(self) -> np.ndarray:
        return (self.videos["label"] == "fake").to_numpy(dtype=np.int64)

    def to(self, device: torch.device) -> ClipSet:
        """Move the tensors to `device` once (the whole FF++ embed set is a few hundred MB); a set on disk
        stays there, and `iterate_batches` moves each batch."""
        if self.on_disk:
            return self
        return ClipSet({name: value.to(device) for name, value in self.features.items()},
                       *(tensor.to(device) for tensor in (self.valid, self.label, self.video)),
                       videos=self.videos, missing=self.missing)

    def subset(self, picked: slice | torch.Tensor) -> ClipSet:
        """These clips only; the videos table is kept whole, so `video` still indexes it."""
        return ClipSet({name: value[picked] for name, value in self.features.items()},
                       *(tensor[picked] for tensor in (self.valid, self.label, self.video)),
                       videos=self.videos, missing=self.missing, on_disk=self.on_disk)

    def class_counts(self) -> tuple[int, int]:
        fakes = int(self.label.sum())
        return len(self) - fakes, fakes


def source_paths(embed_cache: StageCache) -> dict[str, str]:
    """The video file each embedded item was made from, as the upstream faces stage recorded it
    (empty for embeddings made without a faces stage, such as synthetic ones)."""
    try:
        faces = embed_cache.upstream("faces")
    except FileNotFoundError:
        return {}
    if faces is None:
        return {}
    return {item: record["path"] for item, record in faces.records().items() if record.get("path")}


def load_clips(index: pd.DataFrame, cache_dir: str | os.PathLike, split: str | None = None,
               preload_limit_gb: float | None = None) -> ClipSet:
    """The clips of the index's videos in `split` (all videos if None). Videos the cache lacks (never
    embedded, or failed) and clips without one valid frame are skipped with a warning, never silently.

    A first pass reads each entry's header and `valid` mask only; the clips then go straight into their
    final arrays, so memory peaks at the split's size. A split larger than `preload_limit_gb` (default
    $MEGATRON_PRELOAD_GB or 8) goes into a memory-mapped temporary file beside the cache instead, and
    batches page in from disk (`ClipSet.on_disk`)."""
    cache = StageCache.open(cache_dir, "embed")
    rows = index if split is None else index[index["split"] == split]
    if rows.empty:
        raise ValueError(f"the index has no videos in split {split!r}")
    failures = cache.failures()
    done = set(cache.done_items())
    sources = source_paths(cache)
    missing: dict[str, str] = {}
    layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}  # stream -> ([C, T, D] of the first, dtype)
    kept: list[tuple[int, str, np.ndarray]] = []  # (row number, video id, clips with a valid frame)
    empty_clips = frames = 0  # frames: the longest T (entries may differ; shorter ones are padded)
    for row_number, (video_id, path) in enumerate(tqdm(zip(rows["video_id"], rows["path"], strict=True),
                                                       total=len(rows), desc=f"scan {split or 'all'} clips",
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
            valid, shapes = entry_layout(cache.entry_path(video_id))
        except (OSError, ValueError, SafetensorError) as error:
            missing[video_id] = f"unreadable embed entry {cache.entry_path(video_id)}: {error}"
            continue
        if layout and set(shapes) != set(layout):
            missing[video_id] = f"holds streams {sorted(shapes)}, the others {sorted(layout)}"
            continue
        for name, shape_and_type in shapes.items():
            layout.setdefault(name, shape_and_type)
        keep = valid.any(axis=1)
        empty_clips += int((~keep).sum())
        if not keep.any():
            missing[video_id] = "no clip has a valid frame"
            continue
        kept.append((row_number, video_id, np.flatnonzero(keep)))
        frames = max(frames, valid.shape[1])
    if missing:
        listed = ", ".join(f"{v} ({why})" for v, why in list(missing.items())[:5])
        log.warning("%d of %d %s videos have no usable embeddings and are skipped: %s%s", len(missing),
                    len(rows), split or "indexed", listed, " ..." if len(missing) > 5 else "")
    if empty_clips:
        log.warning("skipped %d clips without a valid frame", empty_clips)
    if not kept:
        raise ValueError(f"none of the {len(rows)} {split or 'indexed'} videos is in the embed cache "
                         f"{cache.dir}")
    count = sum(len(clips) for _, _, clips in kept)
    sizes = {name: (count, frames, shape[2]) for name, (shape, _) in layout.items()}
    total_gb = (sum(np.prod(size) * np.dtype(dtype).itemsize for size, (_, dtype) in
                    zip(sizes.values(), layout.values(), strict=True)) + count * frames) / 2**30
    limit = float(os.environ.get("MEGATRON_PRELOAD_GB", 8)) if preload_limit_gb is None else preload_limit_gb
    on_disk = total_gb > limit
    allocate = functools.partial(_disk_array, cache.dir) if on_disk else np.zeros
    arrays = {name: allocate(sizes[name], layout[name][1]) for name in layout}
    valid_array = allocate((count, frames), np.bool_)
    clip_video = np.empty(count, np.int64)
    offset = 0
    progress = tqdm(kept, desc=f"load {split or 'all'} clips", leave=False)
    for number, (_, video_id, clips) in enumerate(progress):
        tensors, _ = cache.read(video_id)
        span = slice(offset, offset + len(clips))
        for name in layout:
            value = tensors[name][clips]
            arrays[name][span, : value.shape[1]] = value
        valid_array[span, : tensors["valid"].shape[1]] = tensors["valid"][clips]
        clip_video[span] = number
        offset += len(clips)
    videos = rows.iloc[[row_number for row_number, _, _ in kept]].reset_index(drop=True)
    video = torch.from_numpy(clip_video)
    label = torch.from_numpy((videos["label"] == "fake").to_numpy(np.float32))[video]
    clips = ClipSet({name: torch.from_numpy(value) for name, value in arrays.items()},
                    torch.from_numpy(valid_array), label, video, videos=videos, missing=missing,
                    on_disk=on_disk)
    log.info("loaded %d clips of %d %s videos (%d real, %d fake clips) from %s%s", len(clips), len(videos),
             split or "indexed", *clips.class_counts(), cache.dir,
             f" into a memory-mapped file ({total_gb:.1f} GB > {limit:g} GB)" if on_disk else "")
    return clips


def _disk_array(folder: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    """A zeroed array in an unnamed temporary file in `folder` (gone when closed, even after a kill)."""
    return np.memmap(tempfile.TemporaryFile(dir=folder), dtype=dtype, mode="w+", shape=shape)


SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BOOL": np.bool_}


def entry_layout(path: Path) -> tuple[np.ndarray, dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """An embed entry's `valid` [C, T] and each stream's ([C, T, D], dtype), reading nothing else."""
    with safe_open(str(path), framework="numpy") as handle:
        valid = handle.get_tensor("valid") if "valid" in handle.keys() else None  # noqa: SIM118
        shapes = {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
                  for name in handle.keys()}  # noqa: SIM118
    if valid is None or valid.ndim != 2:
        raise ValueError("lacks a valid [C, T] mask")
    streams = {name: (shape, np.dtype(SAFETENSORS_DTYPES.get(dtype, np.float32)))
               for name, (shape, dtype) in shapes.items() if len(shape) == 3}
    if not streams or any(shape[:2] != valid.shape for shape, _ in streams.values()):
        raise ValueError(f"no feature stream, or shapes that disagree with valid: {shapes}")
    return valid, streams


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
                    generator: torch.Generator | None = None, augmentation: Augmentation | None = None,
                    device: torch.device | str = "cpu"):
    """Yield (features {stream: float32 [B, T, D]}, valid [B, T], label [B]) sliced from the preloaded
    tensors; a set on disk is read batch by batch and each batch moved to `device`."""
    if (shuffle or augmentation) and generator is None:
        raise ValueError("shuffling or augmenting needs a torch.Generator (for reproducible runs)")
    order = torch.randperm(len(clips), generator=generator) if shuffle else torch.arange(len(clips))
    order = order.to(clips.label.device)
    for start in range(0, len(clips), batch_size):
        picked = order[start:start + batch_size]
        if clips.on_disk:  # ascending reads from the mapped file, then the batch's own order again
            ascending, positions = picked.sort()
            back = positions.argsort()
            features = {name: value[ascending][back].to(device).float()
                        for name, value in clips.features.items()}
            valid = clips.valid[ascending][back].to(device)
        else:
            features = {name: value[picked].float() for name, value in clips.features.items()}
            valid = clips.valid[picked]
        if augmentation is not None:
            features, valid = augment(features, valid, augmentation, generator)
        yield features, valid, clips.label[picked].to(valid.device)
