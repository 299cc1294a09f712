"""The main job on the embedded dataset: build it, index it, preprocess, train, evaluate, report.

Every step resumes from its cache or output folder, so running the demo twice redoes nothing. On a
machine that reaches the Hugging Face hub it uses the real pretrained Depth Anything V2 and RepViT
weights; offline it says loudly what it used instead, and the report records it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .backbones import (
    AUTO,
    DEFAULT_DEPTH_MODEL,
    RANDOM_INIT_PREFIX,
    WeightsUnavailableError,
    locate_depth_model,
)
from .cache import write_json_atomic
from .datasets import build_index, summarize, write_index
from .depth import DepthConfig
from .embed import EmbedConfig
from .evaluate import evaluate_run
from .faces import FaceConfig
from .frames import FramesConfig
from .mini import build_mini
from .model import model_config
from .preprocess import PreprocessConfig, preprocess
from .train import TrainConfig, train

logger = logging.getLogger(__name__)

OFFLINE_DEPTH_MODEL = f"{RANDOM_INIT_PREFIX}depth-anything-v2-small"


def demo_preprocess_config() -> PreprocessConfig:
    """Sized for a 2-core CPU (the whole demo in about 15 minutes): 2 clips of 8 frames per video,
    128 px crops, depth at 70 px (Depth Anything V2 Small costs ~0.25 s per crop at 126 px there)."""
    return PreprocessConfig(
        frames=FramesConfig(frames_per_clip=8, clips_per_video=2),
        faces=FaceConfig(crop_size=128, min_faces=6),
        depth=DepthConfig(model=DEFAULT_DEPTH_MODEL, input_size=70, output_size=128),
        embed=EmbedConfig(rgb_backbone=AUTO, depth_backbone=AUTO, input_size=128),
    )


@dataclass
class DemoConfig:
    preset: str = "demo"
    data_dir: Path = Path("data/mini-demo")
    run_dir: Path = Path("runs/demo")
    cache_root: Path | None = None  # None: $MEGATRON_CACHE or ./cache
    seed: int = 0
    preprocess: PreprocessConfig = field(default_factory=demo_preprocess_config)
    model: str = "megatron-small"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, batch_size=32, patience=12))
    workers: int | None = None


def resolve_depth_model(config: PreprocessConfig) -> tuple[PreprocessConfig, str]:
    """The configured depth model if its weights can be had; offline, the same architecture with random
    weights, announced as such (the notice also goes into the demo's summary)."""
    if config.depth.model.startswith(RANDOM_INIT_PREFIX):
        return config, config.depth.model
    try:
        locate_depth_model(config.depth.model)  # only finds the weights; preprocessing builds the model
        return config, f"{config.depth.model} (pretrained)"
    except WeightsUnavailableError as error:
        notice = (f"Depth Anything weights {config.depth.model!r} are not reachable ({error}); the demo "
                  f"uses {OFFLINE_DEPTH_MODEL} instead: the real V2-Small architecture with RANDOM "
                  f"weights, so the depth stream carries no real depth information")
        logger.warning(notice)
        return replace(config, depth=replace(config.depth, model=OFFLINE_DEPTH_MODEL)), notice


def run_demo(config: DemoConfig) -> dict[str, object]:
    """Run every step; returns (and writes to <run_dir>/demo_summary.json) timings, counts and metrics."""
    timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - start, 1)

    with step("build the mini dataset"):
        built = build_mini(config.preset, config.data_dir, seed=config.seed)
        print(built.summary())

    with step("index"):
        indexed = build_index(config.data_dir)
        index_path = write_index(indexed.table, config.data_dir / "index.csv")
        print(summarize(indexed.table))

    with step("preprocess (faces, depth, embeddings)"):
        preprocess_config, depth_notice = resolve_depth_model(config.preprocess)
        result = preprocess(indexed.table, preprocess_config, cache_root=config.cache_root,
                            workers=config.workers)
        print(result.summary())
        backbones = {stream: result.embed.config[stream] for stream in ("rgb", "depth")}
        weights = {"depth_model": depth_notice, **{f"{stream}_backbone": f"{b['backbone']} ({b['weights']})"
                                                   for stream, b in backbones.items()}}

    with step("train"):
        run_dir = config.run_dir
        if not (run_dir / "best" / "config.json").exists():
            train(index_path, result.embed.dir, config.train, model_config(config.model), run_dir)
        else:
            print(f"{run_dir} already holds a trained model; delete it to train again")

    with step("evaluate on the held-out identities (test split)"):
        evaluation = evaluate_run(run_dir, split="test")
        print(evaluation.metrics.to_string(index=False))

    summary = {
        "data": str(config.data_dir.resolve()), "index": str(index_path.resolve()),
        "videos": len(indexed.table), "preprocess_failures": result.failures(),
        "weights": weights, "run": str(run_dir.resolve()), "report": str(evaluation.out_dir / "report.md"),
        "test_metrics": evaluation.overall(), "seconds": timings,
        "config": {"preset": config.preset, "model": config.model, "train": asdict(config.train),
                   "preprocess": preprocess_config.to_dict()},
    }
    write_json_atomic(run_dir / "demo_summary.json", summary)
    print(f"\nweights used: {json.dumps(weights, indent=2)}")
    print(f"report: {summary['report']}")
    return summary
