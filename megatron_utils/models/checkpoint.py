"""A self-contained checkpoint folder: everything `predict` needs, nothing that unpickles code.

    best/
      model.safetensors, config.json   the temporal head (config names its architecture)
      preprocess.json                  the preprocessing, with the fingerprint of every weight file it uses
      embedders/rgb/, embedders/depth/ fine-tuned embedders (when the run used them), referenced relatively
      decision.json                    the decision threshold chosen on validation, with the selected epoch
      README.md                        the model card: data, metrics with their split, intended use, limits

`train` writes it once, for the selected epoch; `evaluate` adds test metrics to the card. A folder can be
uploaded to the Hugging Face hub (`push_to_hub`), and `resolve_checkpoint` accepts a hub repo id too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..core.cache import PREPROCESS_FILE, write_json_atomic
from ..core.templates import render
from .backbones import hub_download
from .heads import CONFIG_NAME, WEIGHTS_NAME

log = logging.getLogger(__name__)

DECISION_FILE = "decision.json"
CARD_FILE = "README.md"
EMBEDDERS = "embedders"
DEFAULT_CHECKPOINT = "best"


def is_checkpoint(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) for a run folder (its best/), a checkpoint folder, or a hub repo id
    (`owner/name`, downloaded or taken from the local hub cache)."""
    given = str(path)
    path = Path(path).expanduser()
    if not path.exists() and given.count("/") == 1 and not given.startswith((".", "/", "~")):
        path = hub_download(given)
    if not path.exists():
        raise FileNotFoundError(f"run folder, checkpoint or hub repo {given} does not exist")
    if is_checkpoint(path):
        return path.parent, path
    if is_checkpoint(path / DEFAULT_CHECKPOINT):
        return path, path / DEFAULT_CHECKPOINT
    raise FileNotFoundError(f"{path} is neither a run folder with a {DEFAULT_CHECKPOINT}/ checkpoint nor a "
                            f"checkpoint folder ({CONFIG_NAME} + {WEIGHTS_NAME})")


def load_recipe(checkpoint: Path) -> dict[str, Any]:
    """preprocess.json with the checkpoint's relative embedder paths made absolute."""
    path = checkpoint / PREPROCESS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run was trained on embeddings not made by "
                                f"`megatron preprocess`, so how to preprocess new media is unknown")
    recipe = json.loads(path.read_text())
    embed = recipe.get("config", {}).get("embed", {})
    for stream in ("rgb", "depth"):
        weights = embed.get(f"{stream}_weights")
        if weights and not Path(weights).is_absolute():
            embed[f"{stream}_weights"] = str((path.parent / weights).resolve())
    return recipe


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


def load_decision(checkpoint: Path) -> Decision:
    """The decision rule chosen on validation when the checkpoint was selected."""
    path = checkpoint / DECISION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the checkpoint has no decision rule (train it with "
                                f"`megatron train`)")
    saved = json.loads(path.read_text())
    return Decision(**{f.name: float(saved[f.name]) for f in fields(Decision)})


def complete_checkpoint(checkpoint: Path, run_dir: Path, selected: dict[str, Any]) -> None:
    """Make `checkpoint` self-contained: the preprocessing with its fine-tuned embedders copied in, the
    decision threshold of the selected epoch, and the model card."""
    source = run_dir / PREPROCESS_FILE
    if source.is_file():
        recipe = json.loads(source.read_text())
        embed = recipe.get("config", {}).get("embed", {})
        for stream in ("rgb", "depth"):
            weights = embed.get(f"{stream}_weights")
            if weights and Path(weights).is_dir():
                target = checkpoint / EMBEDDERS / stream
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(weights, target, ignore=shutil.ignore_patterns("training_state*"))
                embed[f"{stream}_weights"] = f"{EMBEDDERS}/{stream}"
        write_json_atomic(checkpoint / PREPROCESS_FILE, recipe)
    write_json_atomic(checkpoint / DECISION_FILE, {"chosen_on": "val", **selected})
    write_model_card(checkpoint)


def write_model_card(checkpoint: Path, test_metrics: dict[str, Any] | None = None) -> Path:
    """README.md from what the folder holds (and the test metrics, once evaluated)."""
    decision = json.loads((checkpoint / DECISION_FILE).read_text())
    config = json.loads((checkpoint / CONFIG_NAME).read_text())
    recipe_file = checkpoint / PREPROCESS_FILE
    recipe = json.loads(recipe_file.read_text()) if recipe_file.is_file() else {}
    weights = {key: value for key, value in recipe.get("weights", {}).items() if value}
    text = render("model_card.md", decision=decision, config=config, weights=weights,
                  sources=recipe.get("sources", {}), meaning=load_decision(checkpoint).meaning(),
                  test=test_metrics)
    path = checkpoint / CARD_FILE
    path.write_text(text)
    return path


def push_to_hub(checkpoint: str | os.PathLike, repo_id: str, token: str | None = None,
                private: bool = True) -> str:
    """Upload a checkpoint folder to the Hugging Face hub; returns the repo URL."""
    from huggingface_hub import HfApi

    folder = Path(checkpoint)
    if not is_checkpoint(folder):
        raise FileNotFoundError(f"{folder} is not a checkpoint folder ({CONFIG_NAME} + {WEIGHTS_NAME})")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload Megatron checkpoint")
    return str(url)
