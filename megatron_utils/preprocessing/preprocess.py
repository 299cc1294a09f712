"""The whole preprocessing chain: frames and faces, depth maps, the optional audio stream, then embeddings.

Each stage keeps its own cache, so an interrupted run resumes where it stopped. The full configuration
is written beside the embeddings (`preprocess.json`), so a model trained on them records exactly how
its inputs were made, and `megatron predict` can rebuild the same preprocessing for a new video.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.cache import OK, PREPROCESS_FILE, StageCache, StageReport, write_json_atomic
from .audio import AudioConfig, AudioEmbedder, compute_audio
from .depth import DepthConfig, DepthEstimator, compute_depth
from .embed import EmbedConfig, Embedder, compute_embeddings
from .faces import FaceConfig, extract_faces, resolved_here
from .frames import FramesConfig

logger = logging.getLogger(__name__)



def model_sources(depth: StageCache, embed: StageCache, audio: StageCache | None) -> dict[str, str]:
    """Where each feature model's weights came from, in words, as the stages recorded it."""
    def recorded(cache: StageCache, field: str) -> str | None:
        return next((r[field] for r in cache.records().values() if r.get("status") == OK and r.get(field)),
                    None)

    sources = {"depth": recorded(depth, "weights"), "rgb": recorded(embed, "rgb_weights"),
               "depth_backbone": recorded(embed, "depth_weights")}
    return sources | ({"audio": recorded(audio, "weights")} if audio else {})


@dataclass
class PreprocessConfig:
    frames: FramesConfig = field(default_factory=FramesConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)  # off unless an encoder is named

    def __post_init__(self) -> None:
        # The embedding stage lays crops out as [clips, T]; T always comes from the frames stage.
        self.embed = replace(self.embed, frames_per_clip=self.frames.frames_per_clip)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        parts = {"frames": FramesConfig, "faces": FaceConfig, "depth": DepthConfig, "embed": EmbedConfig,
                 "audio": AudioConfig}
        unknown = set(data) - set(parts)
        if unknown:
            raise ValueError(f"unknown preprocessing sections {sorted(unknown)}; expected {sorted(parts)}")
        built = {}
        for name, kind in parts.items():
            known = {f.name for f in fields(kind)}
            section = data.get(name, {})
            extra = set(section) - known
            if extra:
                raise ValueError(f"preprocessing section {name!r} has unknown fields {sorted(extra)}")
            built[name] = kind(**section)
        return cls(**built)

    @classmethod
    def from_embed_cache(cls, embed_dir: str | os.PathLike) -> PreprocessConfig:
        path = Path(embed_dir) / PREPROCESS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: these embeddings were not made by "
                                    f"`megatron preprocess`, so how they were made is unknown")
        return cls.from_dict(json.loads(path.read_text())["config"])


@dataclass
class LoadedModels:
    """The depth model, the two embedders and the audio embedder (when the config has an audio stream) of
    one preprocessing config, loaded once and reused."""

    depth: DepthEstimator
    embed: Embedder
    audio: AudioEmbedder | None = None

    @classmethod
    def load(cls, config: PreprocessConfig) -> LoadedModels:
        audio = AudioEmbedder(config.audio) if config.audio.enabled else None
        return cls(DepthEstimator(config.depth), Embedder(config.embed), audio)


@dataclass
class PreprocessResult:
    faces: StageCache
    depth: StageCache
    embed: StageCache
    reports: list[StageReport]
    audio: StageCache | None = None

    def failures(self) -> dict[str, str]:
        """Every item that has no embedding, with the stage and reason it failed at."""
        failed: dict[str, str] = {}
        for report in self.reports:
            for item, error in report.failures.items():
                failed.setdefault(item, f"{report.stage}: {error}")
        return failed

    def summary(self) -> str:
        return "\n".join(report.summary() for report in self.reports)


def item_pairs(items: Iterable[tuple[str, str | os.PathLike]] | pd.DataFrame) -> list[tuple[str, str]]:
    """`(video_id, path)` pairs of an index table or of pairs."""
    if isinstance(items, pd.DataFrame):
        return list(zip(items["video_id"], items["path"], strict=True))
    return [(str(video_id), str(path)) for video_id, path in items]


def preprocess(items: Iterable[tuple[str, str | os.PathLike]] | pd.DataFrame,
               config: PreprocessConfig | None = None, force: bool = False,
               cache_root: str | os.PathLike | None = None, workers: int | None = None,
               models: LoadedModels | None = None) -> PreprocessResult:
    """Run faces -> depth -> embeddings for `(video_id, path)` pairs or an index table; `models`: the
    depth model and embedders already loaded for `config` (a long-lived worker's), else loaded here."""
    config = config or PreprocessConfig()
    config = replace(config, faces=resolved_here(config.faces))  # preprocess.json records the detector used
    pairs = item_pairs(items)
    item_ids = [video_id for video_id, _ in pairs]
    faces, faces_report = extract_faces(pairs, config.frames, config.faces, force, cache_root, workers)
    logger.info(faces_report.summary())
    depth, depth_report = compute_depth(faces, config.depth, force, cache_root, item_ids=item_ids,
                                        estimator=models.depth if models else None)
    logger.info(depth_report.summary())
    reports = [faces_report, depth_report]
    audio = None
    if config.audio.enabled:
        audio, audio_report = compute_audio(faces, config.audio, force, cache_root, item_ids=item_ids,
                                            embedder=models.audio if models else None)
        logger.info(audio_report.summary())
        reports.append(audio_report)
    embed, embed_report = compute_embeddings(faces, depth, config.embed, force, cache_root, item_ids=item_ids,
                                             embedder=models.embed if models else None, audio_cache=audio)
    logger.info(embed_report.summary())
    caches = {"faces": faces, "depth": depth, "embed": embed} | ({"audio": audio} if audio else {})
    write_json_atomic(embed.dir / PREPROCESS_FILE, {
        "config": config.to_dict(),
        "caches": {name: str(stage.dir) for name, stage in caches.items()},
        "weights": {"depth": depth.config.get("weights"),
                    "rgb": embed.config.get("rgb"), "depth_backbone": embed.config.get("depth")}
                   | ({"audio": {key: audio.config.get(key) for key in ("encoder", "weights")}}
                      if audio else {}),
        "sources": model_sources(depth, embed, audio),
    })
    return PreprocessResult(faces, depth, embed, [*reports, embed_report], audio)
