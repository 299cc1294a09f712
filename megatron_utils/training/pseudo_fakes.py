"""Self-blended pseudo-fake videos, so the temporal head can learn without (or beside) the dataset's fakes.

Each real video of the chosen splits gets a pseudo-fake twin: every crop of a clip is self-blended
(`sbi.py`) with the same random draw, so the manipulation is consistent over time as a face swap is, then
depth maps and embeddings are computed exactly as the stages compute them. The twins are items
`sbi-<key>/<video_id>` of the same embed cache (the key hashes the SBI settings and seed, so other
settings never reuse them) and join the index as fakes of method `SBI`, with the real video's split and
identities. A crop whose landmarks cannot outline a face stays as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..core.cache import FAILED, OK, StageCache, stable_hash
from ..preprocessing.depth import DepthEstimator
from ..preprocessing.embed import Embedder, to_clips
from ..preprocessing.faces import read_faces
from ..preprocessing.preprocess import PreprocessConfig
from .sbi import SBIConfig, self_blend

log = logging.getLogger(__name__)

SBI_METHOD = "SBI"


def blend_clips(crops: np.ndarray, landmarks: np.ndarray, clip_index: np.ndarray, seed: list[int],
                config: SBIConfig) -> np.ndarray:
    """Every crop self-blended; crops of one clip share one draw of the blending parameters."""
    out = crops.copy()
    for row, (crop, points, clip) in enumerate(zip(crops, landmarks, clip_index, strict=True)):
        with contextlib.suppress(ValueError):  # unusable landmarks: the frame stays real, the clip whole
            out[row] = self_blend(crop, points, np.random.default_rng([*seed, int(clip)]), config)[0]
    return out


def add_pseudo_fakes(index: pd.DataFrame, embed_dir: str | os.PathLike,
                     splits: tuple[str, ...] = ("train", "val"), seed: int = 0,
                     config: SBIConfig | None = None) -> pd.DataFrame:
    """Embed a pseudo-fake twin of every real video of `splits` (cached) and return the index with
    the twins appended as fake rows."""
    config = config or SBIConfig()
    embed_dir = Path(embed_dir)
    embed = StageCache.open(embed_dir, "embed")
    faces = embed.upstream("faces")
    prefix = f"sbi-{stable_hash({'sbi': asdict(config), 'seed': seed}, 8)}"
    reals = index[index["split"].isin(splits) & (index["label"] == "real")]
    todo = [v for v in reals["video_id"] if embed.status(f"{prefix}/{v}") is None and faces.status(v) == OK]
    if todo:
        preprocessing = PreprocessConfig.from_embed_cache(embed_dir)
        depth, embedder = DepthEstimator(preprocessing.depth), Embedder(preprocessing.embed)
        depth_cache = embed.upstream("depth", "depth_maps")
        now = {**embedder.identity(), **{f"depth_{k}": v for k, v in depth.identity().items()}}
        then = {**{k: embed.config.get(k) for k in embedder.identity()},
                **{f"depth_{k}": depth_cache.config.get(k) for k in depth.identity()}}
        if now != then:
            raise ValueError(f"the feature models at hand ({now}) are not those that made {embed_dir} "
                             f"({then})")
        # A twin sounds like its real video (only its pixels are blended): its audio stream is the real's.
        audio = embed.upstream("audio")
        for video_id in tqdm(todo, desc="pseudo-fake twins", unit="video"):
            item = f"{prefix}/{video_id}"
            try:
                entry, _ = read_faces(faces, video_id)
                video_seed = [seed, int(stable_hash(video_id, 8), 16)]
                blended = blend_clips(entry["crops"], entry["landmarks"], entry["clip_index"], video_seed,
                                      config)
                rgb, depth_features = embedder(blended, depth(blended))
                streams = {"rgb": rgb, "depth": depth_features}
                if audio is not None:
                    streams["audio"] = audio.read(video_id, ["audio"])[0]["audio"]
                embed.write(item, to_clips(streams, entry["clip_index"], entry["frame_index"],
                                           preprocessing.embed.frames_per_clip, entry.get("track")),
                            source=video_id)
            except (OSError, KeyError, ValueError) as error:
                embed.record(item, FAILED, error=f"pseudo-fake of {video_id}: {type(error).__name__}: "
                                                 f"{error}")
    failed = [v for v in reals["video_id"] if embed.status(f"{prefix}/{v}") == FAILED]
    if failed:
        log.warning("%d pseudo-fake twins failed (see %s): %s", len(failed), embed.manifest_dir, failed[:5])
    twins = reals.assign(video_id=prefix + "/" + reals["video_id"].astype(str), label="fake",
                         method=SBI_METHOD)
    log.info("added %d self-blended pseudo-fake videos (%s) to the %s splits", len(twins), prefix,
             "/".join(splits))
    return pd.concat([index, twins], ignore_index=True)


TRAINING_FAKES = ("dataset", "sbi", "both")


def training_index(index: pd.DataFrame, embed_dir: str | os.PathLike, fakes: str, seed: int = 0
                   ) -> pd.DataFrame:
    """The index as training sees it. `dataset`: as it is; `both`: plus the pseudo-fake twins of the
    train and val reals; `sbi`: the twins instead of the dataset's fakes in train and val, so no fake
    video of the dataset is seen or selected on. Test rows are never touched."""
    if fakes not in TRAINING_FAKES:
        raise ValueError(f"fakes must be one of {TRAINING_FAKES}, got {fakes!r}")
    if fakes == "dataset":
        return index
    table = add_pseudo_fakes(index, embed_dir, seed=seed)
    if fakes == "sbi":
        seen = table["split"].isin(("train", "val")) & (table["label"] == "fake")
        table = table[~seen | (table["method"] == SBI_METHOD)].reset_index(drop=True)
    return table
