"""Megatron: deepfake-video detection from RGB and depth face streams meeting in cross-attention.

The names a notebook or a script needs, imported on first use (so `import megatron_utils` stays fast):

    import megatron_utils as mg

    recipe = mg.load_recipe("recipes/demo.yaml")          # every stage's settings
    table = mg.build_index("data/ffpp").table             # any supported dataset as one table
    result = mg.preprocess(table, recipe.preprocess)      # faces, depth maps, embeddings (cached)
    best = mg.finetune(table, result.faces.dir, recipe.finetune, "runs/ft")
    run = mg.train(table, result.embed.dir, recipe.train, mg.model_config("megatron-base"), "runs/x")
    mg.evaluate_run(run)                                  # metrics, report, model card
    detector = mg.Detector.from_pretrained(run)           # score new media
    print(detector.predict("video.mp4").verdict)
    mg.Checkpoint.from_pretrained(f"{run}/best").push_to_hub("you/megatron")  # publish the detector
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_recipe": "megatron_utils.recipes", "Recipe": "megatron_utils.recipes",
    "build_index": "megatron_utils.datasets", "read_index": "megatron_utils.datasets",
    "write_index": "megatron_utils.datasets",
    "PreprocessConfig": "megatron_utils.preprocessing.preprocess",
    "preprocess": "megatron_utils.preprocessing.preprocess",
    "FinetuneConfig": "megatron_utils.training.finetune", "finetune": "megatron_utils.training.finetune",
    "TrainConfig": "megatron_utils.training.train", "train": "megatron_utils.training.train",
    "resume": "megatron_utils.training.train",
    "model_config": "megatron_utils.models.heads", "TemporalHead": "megatron_utils.models.heads",
    "Checkpoint": "megatron_utils.models.checkpoint", "FrameClassifier": "megatron_utils.models.backbones",
    "evaluate_run": "megatron_utils.training.evaluate",
    "evaluate_on_data": "megatron_utils.training.evaluate",
    "Detector": "megatron_utils.inference.predict", "PredictConfig": "megatron_utils.inference.predict",
    "Prediction": "megatron_utils.inference.results",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'megatron_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
