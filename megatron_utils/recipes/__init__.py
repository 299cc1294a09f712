"""Recipes: every setting of every stage in one YAML file, with the config dataclasses as its schema.

`demo.yaml` is what `megatron demo` runs on a 2-core CPU; `ffpp-c23.yaml` is FaceForensics++ c23 on one
Colab GPU. Notebooks name a recipe in their parameters cell and may override single values inline, so
editing the file changes every notebook at once:

    recipe = load_recipe("ffpp-c23", {"train.epochs": 10, "preprocess.faces.crop_size": 160})

A recipe is a bundled name (a file of this folder) or a path to your own file. Unknown keys are errors
that name the file and the key, so a typo never falls back to a default silently.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from ..models.heads import DEFAULT_MODEL
from ..preprocessing.preprocess import PreprocessConfig
from ..training.finetune import FinetuneConfig, finetuned_checkpoint
from ..training.train import TrainConfig

BUNDLED = Path(__file__).parent


@dataclass
class Recipe:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    model: str = DEFAULT_MODEL  # a named head configuration (models.heads.MODEL_CONFIGS)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str = ""  # the file it was read from, for reports

    def with_finetuned(self, finetune_dir: str | os.PathLike) -> Recipe:
        """The recipe whose RGB embedder is the one fine-tuned in `finetune_dir` (its `best/`); an error
        says how to make it if there is none."""
        best = finetuned_checkpoint(finetune_dir).resolve()
        embed = dataclasses.replace(self.preprocess.embed, rgb_weights=str(best))
        return dataclasses.replace(self, preprocess=dataclasses.replace(self.preprocess, embed=embed))


def list_recipes() -> list[str]:
    return sorted(path.stem for path in BUNDLED.glob("*.yaml"))


def recipe_path(name: str | os.PathLike) -> Path:
    """A bundled recipe's file by name, or the given file."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {path} does not exist")
        return path
    bundled = BUNDLED / f"{name}.yaml"
    if not bundled.is_file():
        raise FileNotFoundError(f"no bundled recipe {str(name)!r}; choose from {', '.join(list_recipes())} "
                                f"or give a .yaml file")
    return bundled


def load_recipe(name: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Recipe:
    """The recipe, with `overrides` ({"train.epochs": 3, ...}) applied on top of the file's values."""
    path = recipe_path(name)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return from_dict(Recipe, {**data, "source": str(path)}, str(path))


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """A dataclass built from nested mappings; an unknown key is an error naming `where` and the key."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} setting(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        kind = _dataclass_in(hints[name])
        values[name] = from_dict(kind, value, f"{where}: {name}") if kind and isinstance(value, dict) else \
            _coerce(hints[name], value)
    return cls(**values)


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as the YAML file would hold it."""
    return {key: value for key, value in dataclasses.asdict(recipe).items() if key != "source"}


def _dataclass_in(hint: Any) -> type | None:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return next((option for option in options if is_dataclass(option)), None)


def _coerce(hint: Any, value: Any) -> Any:
    """YAML lists become tuples where the field is a tuple (e.g. SBI's ranges)."""
    origin = typing.get_origin(hint)
    return tuple(value) if origin is tuple and isinstance(value, list) else value
