"""The detector as it is published: a self-contained checkpoint folder, saved and loaded by the hub library.

    best/
      config.json, model.safetensors  the temporal head (config names its architecture)
      preprocess.json                 the preprocessing, with the fingerprint of every weight file it uses
      models/<name>/                  the local models the preprocessing names, referenced relatively: a
                                      fine-tuned embedder (a `FrameClassifier` folder), a local depth model
      decision.json                   the decision rule chosen on validation, with the selected epoch
      evaluation.json                 the test metrics, once `evaluate` ran
      README.md                       the model card: every model in words, data by name and split, metrics

`Checkpoint` is `huggingface_hub`'s `ModelHubMixin`: `save_pretrained`, `push_to_hub` and `from_pretrained`
(a folder or a hub repo id) are the library's. `train` writes best/ once, for the selected epoch;
`evaluate` adds the test metrics. Nothing in the folder holds a machine path: the stage caches are not
named, local models are copied in.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelHubMixin

from ..core.cache import PREPROCESS_FILE, sha256_file, write_json_atomic
from .backbones import FrameClassifier, is_frame_classifier
from .heads import TemporalHead
from .hub import CARD_FILE, CONFIG_NAME, LIBRARY, TAGS, WEIGHTS_NAME, HubModule, local_folder, model_card

DECISION_FILE = "decision.json"
EVALUATION_FILE = "evaluation.json"
MODELS = "models"
DEFAULT_CHECKPOINT = "best"

# The preprocessing's models by the key preprocess.json records their weights under: the config field that
# names each, and its role in words.
PREPROCESSING_MODELS = {"depth": (("depth", "model"), "depth map"),
                        "rgb": (("embed", "rgb_weights"), "RGB embedder"),
                        "depth_backbone": (("embed", "depth_weights"), "depth embedder"),
                        "audio": (("audio", "weights"), "audio encoder")}


def is_checkpoint(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) for a run folder (its best/), a checkpoint folder, or a hub repo id
    (`owner/name`, downloaded or taken from the local hub cache)."""
    try:
        folder = local_folder(path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"run folder, checkpoint or hub repo {path} does not exist ({error})"
                                ) from error
    if is_checkpoint(folder):
        return folder.parent, folder
    if is_checkpoint(folder / DEFAULT_CHECKPOINT):
        return folder, folder / DEFAULT_CHECKPOINT
    raise FileNotFoundError(f"{folder} is neither a run folder with a {DEFAULT_CHECKPOINT}/ checkpoint nor a "
                            f"checkpoint folder ({CONFIG_NAME} + {WEIGHTS_NAME})")


def distinct_decimals(a: float, b: float, least: int = 2, most: int = 8) -> tuple[str, str]:
    """`a` and `b` with the fewest decimals (at least `least`) that tell them apart."""
    for decimals in range(least, most + 1):
        if f"{a:.{decimals}f}" != f"{b:.{decimals}f}" or a == b:
            break
    return f"{a:.{decimals}f}", f"{b:.{decimals}f}"


@dataclass(frozen=True)
class Decision:
    """How a P(fake) becomes a verdict, chosen on validation videos (never on test): `fake` at or above
    `threshold`, which at most `target_fpr` of the real validation videos reached; `real` below
    `uncertain_below`, which at most `target_fnr` of the fake validation videos fell under; `uncertain`
    between the two, for a person to look at. The band is empty where validation separates the classes."""

    threshold: float
    uncertain_below: float
    target_fpr: float = 0.05
    target_fnr: float = 0.05

    def verdict(self, probability: float) -> str:
        if probability >= self.threshold:
            return "fake"
        return "uncertain" if probability >= self.uncertain_below else "real"

    def meaning(self) -> str:
        """The threshold and the band in words, as predict, the page and the model card state them."""
        threshold, edge = distinct_decimals(self.threshold, self.uncertain_below)
        text = (f"fake at P(fake) >= {threshold}: at most {self.target_fpr:.0%} of real validation "
                f"videos scored this high")
        if self.uncertain_below < self.threshold:
            text += (f"; uncertain from {edge}: at most {self.target_fnr:.0%} of fake "
                     f"validation videos scored lower; real below")
        return text

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Decision:
        return cls(**{f.name: float(saved[f.name]) for f in fields(cls)})


def load_decision(checkpoint: Path) -> Decision:
    """The decision rule chosen on validation when the checkpoint was selected."""
    return Decision.from_dict(read_decision(checkpoint))


def read_decision(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / DECISION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the checkpoint has no decision rule (train it with "
                                f"`megatron train`)")
    return json.loads(path.read_text())


def local_models(preprocessing: dict[str, Any], base: Path) -> Iterator[tuple[str, Path]]:
    """(key, path) of every model the preprocessing names by a local path (relative ones from `base`)."""
    for key, ((section, name), _) in PREPROCESSING_MODELS.items():
        value = preprocessing["config"].get(section, {}).get(name)
        if value and (base / value).expanduser().exists():
            yield key, (base / value).expanduser().resolve()


def copy_model(source: Path, folder: Path) -> Path:
    """A weights file or model folder copied into `folder` (as it, for a folder); returns the copy. A
    checkpoint saved where it was loaded from keeps its models where they are."""
    copy = folder if source.is_dir() else folder / source.name
    if copy.resolve() != source.resolve():
        shutil.rmtree(folder, ignore_errors=True)
        if source.is_dir():
            shutil.copytree(source, folder)
        else:
            folder.mkdir(parents=True)
            shutil.copy2(source, copy)
    return copy


class Checkpoint(ModelHubMixin, library_name=LIBRARY, tags=list(TAGS)):  # the mixin appends to it
    """A trained detector: its temporal head, the preprocessing that makes its inputs (with the local models
    that preprocessing names), its decision rule and, once evaluated, its test metrics.

    `preprocessing` is preprocess.json with every local model's path as it is on this machine; `models`
    holds those models by the key of `PREPROCESSING_MODELS`: a fine-tuned embedder as the `FrameClassifier`
    it is (saved through the mixin), any other local weights as the file or folder to copy."""

    def __init__(self, head: TemporalHead, decision: dict[str, Any],
                 preprocessing: dict[str, Any] | None = None,
                 models: dict[str, FrameClassifier | Path] | None = None,
                 evaluation: dict[str, Any] | None = None):
        self.head, self.decision, self.preprocessing = head, decision, preprocessing
        self.models = models or {}
        self.evaluation = evaluation

    @classmethod
    def of_run(cls, head: TemporalHead, run_dir: Path, decision: dict[str, Any]) -> Checkpoint:
        """The checkpoint of a training run's head: the run's preprocessing (copied there by `train`, absent
        for embeddings not made by `megatron preprocess`) with the local models it names."""
        source = run_dir / PREPROCESS_FILE
        if not source.is_file():
            return cls(head, decision)
        recorded = json.loads(source.read_text())
        preprocessing = {key: value for key, value in recorded.items() if key != "caches"}  # machine paths
        models = {key: FrameClassifier.from_pretrained(path) if is_frame_classifier(path) else path
                  for key, path in local_models(preprocessing, Path.cwd())}
        return cls(head, decision, preprocessing, models)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu"
                        ) -> Checkpoint:  # type: ignore[override]
        """The checkpoint in a folder or a hub repo (`owner/name`); the head on `map_location`."""
        folder = local_folder(name_or_path)
        if not is_checkpoint(folder):
            raise FileNotFoundError(f"{folder} is not a checkpoint folder ({CONFIG_NAME} + {WEIGHTS_NAME})")
        return super().from_pretrained(folder, map_location=str(map_location))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", **_: Any) -> Checkpoint:
        folder = Path(model_id)
        recipe = folder / PREPROCESS_FILE
        preprocessing = json.loads(recipe.read_text()) if recipe.is_file() else None
        models: dict[str, FrameClassifier | Path] = {}
        for key, path in local_models(preprocessing, folder) if preprocessing else ():
            (section, name), _ = PREPROCESSING_MODELS[key]
            preprocessing["config"][section][name] = str(path)
            models[key] = FrameClassifier.from_pretrained(path) if is_frame_classifier(path) else path
        evaluation = folder / EVALUATION_FILE
        return cls(TemporalHead.from_pretrained(folder, map_location), read_decision(folder), preprocessing,
                   models, json.loads(evaluation.read_text()) if evaluation.is_file() else None)

    def _save_pretrained(self, save_directory: Path) -> None:
        self.head.save_pretrained(save_directory)
        if self.preprocessing is not None:
            recipe = copy.deepcopy(self.preprocessing)
            for key, model in self.models.items():
                (section, name), _ = PREPROCESSING_MODELS[key]
                target = save_directory / MODELS / key
                if isinstance(model, FrameClassifier):
                    shutil.rmtree(target, ignore_errors=True)
                    model.save_pretrained(target)
                else:
                    target = copy_model(model, target)
                recipe["config"][section][name] = target.relative_to(save_directory).as_posix()
            write_json_atomic(save_directory / PREPROCESS_FILE, recipe)
        write_json_atomic(save_directory / DECISION_FILE, self.decision)
        if self.evaluation is not None:
            write_json_atomic(save_directory / EVALUATION_FILE, self.evaluation)
        self.generate_model_card(sha256_file(save_directory / WEIGHTS_NAME)).save(save_directory / CARD_FILE)

    def record_evaluation(self, folder: Path, metrics: dict[str, Any]) -> None:
        """Add the test metrics to this checkpoint, saved in `folder`: evaluation.json and the card."""
        self.evaluation = metrics
        write_json_atomic(folder / EVALUATION_FILE, metrics)
        self.generate_model_card(sha256_file(folder / WEIGHTS_NAME)).save(folder / CARD_FILE)

    def models_in_words(self, head_sha256: str) -> list[dict[str, str]]:
        """Every model of the detector: its role, architecture, source and content fingerprint."""
        config = self.head.config
        described = [{"role": "temporal head", "architecture": config.architecture,
                      "source": f"trained by megatron train ({config.d_model}-d, streams {config.streams}, "
                                f"fusion {config.fusion})", "fingerprint": f"sha256:{head_sha256}"}]
        recipe = self.preprocessing or {"config": {}, "weights": {}, "sources": {}}
        for key, ((section, name), role) in PREPROCESSING_MODELS.items():
            recorded = recipe["weights"].get(key)
            if not recorded:
                continue
            identity = recorded if isinstance(recorded, dict) else {"weights": recorded}
            described.append({"role": role, "source": recipe["sources"].get(key) or "source not recorded",
                              "architecture": self.architecture(key, recipe["config"][section][name]),
                              "fingerprint": identity["weights"]})
        return described

    def architecture(self, key: str, named: str | None) -> str:
        """A preprocessing model's architecture in words: the backbone or encoder the preprocessing recorded,
        the depth model's hub id or provider, or a local model's own config."""
        recorded = self.preprocessing["weights"][key]
        if isinstance(recorded, dict):
            return recorded.get("backbone") or recorded["encoder"]
        local = self.models.get(key)
        if isinstance(local, Path):
            config = HubModule.read_config(local) or {}
            return config.get("model_type") or local.name
        return str(named)

    def generate_model_card(self, head_sha256: str) -> ModelCard:  # type: ignore[override]
        return model_card("model_card.md", decision=self.decision, models=self.models_in_words(head_sha256),
                          meaning=Decision.from_dict(self.decision).meaning(), test=self.evaluation,
                          head=self.head.config)
