"""Synthetic embed caches for testing and benchmarking the detector without running preprocessing.

Each video has an identity vector (shared by its frames) plus temporally smooth per-frame noise. Fakes
differ from reals by a shift along one fixed random direction, in the streams named by `signal` only, so
a detector must find that direction through identity and frame noise: learnable, but not trivial, and a
stream without the signal carries no information about the label (for ablation checks).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.cache import StageCache

SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


@dataclass
class SyntheticEmbedConfig:
    identities: int = 100  # each identity has one real video and one fake per method
    methods: tuple[str, ...] = ("Deepfakes", "FaceSwap")
    dataset: str = "ffpp"
    clips: int = 2  # C
    frames: int = 8  # T
    rgb_dim: int = 32
    depth_dim: int = 32
    signal: str = "depth"  # stream(s) carrying the fake shift: "depth" | "rgb" | "both"
    strength: float = 2.0  # shift along the direction, in units of per-frame noise
    identity_scale: float = 0.5
    padded_fraction: float = 0.25  # clips whose tail is padding (valid == False)
    seed: int = 0
    direction_seed: int = 1234  # the same manipulation "artifact" across synthetic datasets


def write_synthetic_embed_cache(root: str | os.PathLike, config: SyntheticEmbedConfig
                                ) -> tuple[pd.DataFrame, Path]:
    """Write an `embed` StageCache under `root` and return (index table, cache folder)."""
    rng = np.random.default_rng(config.seed)
    directions = np.random.default_rng(config.direction_seed)
    shift = {}
    for stream, dim in (("rgb", config.rgb_dim), ("depth", config.depth_dim)):
        unit = directions.standard_normal(dim)
        carries = config.signal in (stream, "both")
        shift[stream] = unit / np.linalg.norm(unit) * config.strength * carries
    cache = StageCache("embed", {"synthetic": asdict(config)}, root=root)
    rows = []
    # Identity-disjoint splits: every video of an identity lands in the same split.
    splits = np.array(list(SPLIT_FRACTIONS))[np.searchsorted(
        np.cumsum(list(SPLIT_FRACTIONS.values())), rng.permutation(config.identities) / config.identities,
        side="right")]
    for identity, split in enumerate(splits):
        base = {s: rng.standard_normal(d) * config.identity_scale
                for s, d in (("rgb", config.rgb_dim), ("depth", config.depth_dim))}
        for method in ("original", *config.methods):
            label = "real" if method == "original" else "fake"
            video_id = f"{config.dataset}/{method}/{identity:03d}"
            tensors = synthetic_video(rng, base, shift if label == "fake" else None, config)
            cache.write(video_id, tensors, {"synthetic": True})
            rows.append(dict(video_id=video_id, path=f"/synthetic/{video_id}.mp4", label=label,
                             dataset=config.dataset, method=method, compression="",
                             target_id=f"{identity:03d}", source_id="", split=split, media="video"))
    return pd.DataFrame(rows), cache.dir


def synthetic_video(rng: np.random.Generator, base: dict[str, np.ndarray],
                    shift: dict[str, np.ndarray] | None, config: SyntheticEmbedConfig
                    ) -> dict[str, np.ndarray]:
    clips, frames = config.clips, config.frames
    tensors: dict[str, np.ndarray] = {}
    for stream, vector in base.items():
        noise = rng.standard_normal((clips, frames, vector.size))
        smooth = (noise + np.roll(noise, 1, axis=1)) / np.sqrt(2)  # neighbouring frames correlate
        values = vector + smooth + (shift[stream] if shift is not None else 0.0)
        tensors[stream] = values.astype(np.float16)
    valid = np.ones((clips, frames), dtype=bool)
    for clip in range(clips):
        if rng.random() < config.padded_fraction:
            valid[clip, rng.integers(1, frames):] = False
    for stream in base:
        tensors[stream][~valid] = 0
    tensors["valid"] = valid
    tensors["frame_index"] = (np.arange(clips * frames, dtype=np.int32).reshape(clips, frames) * 3)
    return tensors
