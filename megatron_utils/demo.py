"""The main job on the embedded dataset: build it, index it, faces, fine-tune the RGB embedder on reals and
self-blended pseudo-fakes, depth and embeddings, train, evaluate, report.

Every step resumes from its cache or output folder, so running the demo twice redoes nothing. On a
machine that reaches the Hugging Face hub it uses the real pretrained Depth Anything V2 and RepViT
weights; offline it uses the MediaPipe face-mesh depth provider and the packaged ImageNet MobileNetV2, says
so loudly, and the report records it. Random weights are never used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .core.cache import write_json_atomic
from .datasets import build_index, summarize, write_index
from .datasets.mini import build_mini
from .models.backbones import RANDOM_INIT_PREFIX, locate_depth_model
from .models.heads import model_config
from .models.hub import WeightsUnavailableError
from .preprocessing.depth import FACEMESH
from .preprocessing.faces import extract_faces
from .preprocessing.preprocess import PreprocessConfig, preprocess
from .recipes import Recipe, load_recipe
from .training.evaluate import evaluate_run
from .training.finetune import finetune
from .training.train import train

logger = logging.getLogger(__name__)


def demo_recipe() -> Recipe:
    return load_recipe("demo")


@dataclass
class DemoConfig:
    """Where the demo's data, caches and run go; every stage's settings come from `recipes/demo.yaml`."""

    preset: str = "demo"
    data_dir: Path = Path("data/mini-demo")
    run_dir: Path = Path("runs/demo")
    cache_root: Path | None = None  # None: $MEGATRON_CACHE or ./cache
    seed: int = 0
    recipe: Recipe = field(default_factory=demo_recipe)
    workers: int | None = None


def resolve_depth_model(config: PreprocessConfig) -> tuple[PreprocessConfig, str]:
    """The configured depth model if its weights can be had; offline, the MediaPipe face-mesh depth
    provider, announced as such (the notice also goes into the demo's summary)."""
    if config.depth.model == FACEMESH or config.depth.model.startswith(RANDOM_INIT_PREFIX):
        return config, config.depth.model
    try:
        locate_depth_model(config.depth.model)  # only finds the weights; preprocessing builds the model
        return config, f"{config.depth.model} (pretrained)"
    except WeightsUnavailableError as error:
        notice = (f"Depth Anything weights {config.depth.model!r} are not reachable ({error}); the demo "
                  f"uses the offline `{FACEMESH}` provider instead: depth rendered from MediaPipe's 3D face "
                  f"mesh, whose network weights ship in the mediapipe 0.10.14 wheel")
        logger.warning(notice)
        return replace(config, depth=replace(config.depth, model=FACEMESH)), notice


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

    with step("faces"):
        preprocess_config, depth_notice = resolve_depth_model(config.recipe.preprocess)
        recipe = replace(config.recipe, preprocess=preprocess_config)
        faces, faces_report = extract_faces(indexed.table, recipe.preprocess.frames, recipe.preprocess.faces,
                                            cache_root=config.cache_root, workers=config.workers)
        print(faces_report.summary())

    with step("fine-tune the RGB embedder (reals + self-blended pseudo-fakes)"):
        finetune_dir = config.run_dir / "finetune"
        finetune(index_path, faces.dir, recipe.finetune, finetune_dir, resume=True)  # a rerun trains nothing
        recipe = recipe.with_finetuned(finetune_dir)

    with step("preprocess (depth, embeddings)"):
        result = preprocess(indexed.table, recipe.preprocess, cache_root=config.cache_root,
                            workers=config.workers)
        print(result.summary())
        backbones = {stream: result.embed.config[stream] for stream in ("rgb", "depth")}
        weights = {"depth_model": depth_notice, **{f"{stream}_backbone": f"{b['backbone']} ({b['weights']})"
                                                   for stream, b in backbones.items()},
                   "rgb_finetuned": recipe.preprocess.embed.rgb_weights}

    with step("train"):
        run_dir = train(index_path, result.embed.dir, recipe.train, model_config(recipe.model),
                        config.run_dir, resume=True)

    with step("evaluate on the held-out identities (test split)"):
        evaluation = evaluate_run(run_dir, split="test")
        print(evaluation.metrics.to_string(index=False))

    summary = {
        "data": str(config.data_dir.resolve()), "index": str(index_path.resolve()),
        "videos": len(indexed.table), "preprocess_failures": result.failures(),
        "weights": weights, "run": str(run_dir.resolve()), "report": str(evaluation.out_dir / "report.md"),
        "test_metrics": evaluation.overall(), "seconds": timings,
        "config": {"preset": config.preset, "recipe": recipe.source, "model": recipe.model,
                   "train": asdict(recipe.train), "preprocess": recipe.preprocess.to_dict()},
    }
    write_json_atomic(run_dir / "demo_summary.json", summary)
    print(f"\nweights used: {json.dumps(weights, indent=2)}")
    print(f"report: {summary['report']}")
    return summary
