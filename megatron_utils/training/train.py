"""Training the detector's temporal head on cached embeddings, through the one training loop (`loop.py`).

One run is one folder (runs/<name>/): config.json (model, training, the embed cache's preprocessing
config and the data used), index.csv (a copy of the index), history.csv, train.log, best/ (the checkpoint
with the highest validation video AUC, never chosen on test) and last/ (the latest epoch, plus the
optimizer, schedule, epoch and RNG state for `resume`). last/ is the head's hub-mixin folder; best/ is the
whole detector, a `models.checkpoint.Checkpoint`.

Class imbalance (FF++ has four or five fakes per real) is handled by `pos_weight = reals / fakes` in the
loss rather than by a weighted sampler: every clip is seen once per epoch and the loss weighs both classes
equally. The decision rule (`models.checkpoint.Decision`: a threshold at a target false-positive rate on
validation reals, and an uncertain band) is written once per selected checkpoint, into best/decision.json,
beside the preprocessing, its local models and the model card (`checkpoint.py`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..core.cache import PREPROCESS_FILE, write_json_atomic
from ..core.precision import resolve_device
from ..datasets import read_index
from ..models.checkpoint import Checkpoint, Decision
from ..models.heads import MegatronConfig, TemporalHead
from .clips import Augmentation, ClipSet, iterate_batches, load_clips, preprocessing_config
from .distributed import Distributed, distributed
from .evaluate import binary_metrics, choose_decision, clip_logits, fit_platt, video_probabilities
from .loop import STATE_JSON, Batch, check_same_run, fit, log_to_file, shares
from .pseudo_fakes import training_index

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-4
    min_lr: float = 3e-5  # the cosine decay ends here
    warmup_fraction: float = 0.05  # of all steps, with a linear warmup from zero
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    patience: int = 6  # stop after this many epochs without a better validation AUC
    max_minutes: float | None = None  # wall-clock budget; stops after the epoch that crosses it
    seed: int = 0
    min_crop_fraction: float = 0.75  # training augmentation, see clips.Augmentation
    frame_dropout: float = 0.1
    device: str = "auto"
    amp: bool = True  # autocast on CUDA at the device's precision (core.precision)
    compile: bool = False  # torch.compile the model (CUDA, long runs)
    eval_batch_size: int = 512
    preload_limit_gb: float = 8.0  # larger splits are memory-mapped from disk instead (clips.load_clips)
    # Fakes seen in training and selection: "dataset", "sbi" (self-blended twins of the train/val reals
    # instead: no dataset fake is seen) or "both"
    fakes: str = "dataset"
    # The decision rule chosen on validation (models.checkpoint.Decision): the threshold flags at most
    # target_fpr of the real videos; below the uncertain band, at most target_fnr of the fakes.
    target_fpr: float = 0.05
    target_fnr: float = 0.05


def describe_data(videos: pd.DataFrame, split: str) -> str:
    """A split named by its datasets and counts (never by a machine path), for model cards."""
    counts = videos["label"].value_counts()
    return (f"{', '.join(sorted(videos['dataset'].astype(str).unique()))} ({split} split: "
            f"{counts.get('real', 0)} real and {counts.get('fake', 0)} fake videos)")


def train(index: str | os.PathLike | pd.DataFrame, embed_cache_dir: str | os.PathLike, train_cfg: TrainConfig,
          model_cfg: MegatronConfig, out_dir: str | os.PathLike, resume: bool = False) -> Path:
    """Train on the index's train split, select on its val split; returns the run folder. The embedding
    sizes (and max_len, if shorter than the clips) of `model_cfg` are taken from the embed cache. Under
    torchrun, each process trains on its share of every batch (see `distributed.py`).

    `resume=True` continues the run in `out_dir` from its last/ checkpoint (a finished run returns at once)
    or starts it there if the folder holds none, so running the same call again never trains twice; a run
    there with other settings is refused."""
    run_dir = Path(out_dir)
    started = (run_dir / "config.json").exists()
    if started and not resume:
        raise ValueError(f"{run_dir} already holds a run; resume it or choose another output folder")
    device = resolve_device(train_cfg.device)
    with distributed(device) as world:
        if world.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        with log_to_file(run_dir / "train.log") if world.main else nullcontext():
            return _train(index, Path(embed_cache_dir), train_cfg, model_cfg, run_dir, started,
                          world.device(device), world)


class HeadTask:
    """The temporal head on cached clip embeddings: clip-level BCE weighted so both classes count alike,
    selected on validation video AUC, its decision rule chosen on validation videos."""

    name = "train"

    def __init__(self, model: TemporalHead, train_clips: ClipSet, val_clips: ClipSet, config: TrainConfig,
                 run_dir: Path, selected: dict[str, Any], device: torch.device):
        self.model, self.train_clips, self.val_clips, self.config = model, train_clips, val_clips, config
        self.run_dir, self.selected, self.device = run_dir, selected, device
        reals, fakes = train_clips.class_counts()
        if not reals or not fakes:
            raise ValueError(f"the train split needs real and fake clips, got {reals} real and {fakes} fake")
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(reals / fakes, device=device),
                                              reduction="sum")
        self.augmentation = Augmentation(config.min_crop_fraction, config.frame_dropout)

    def param_groups(self) -> list[dict[str, Any]]:
        # Weight decay on weight matrices only: not on biases, norms, CLS tokens and learned positions.
        named = list(self.model.named_parameters())
        exempt = {name for name, p in named if p.dim() < 2 or name.endswith((".cls", ".position"))}
        return [{"params": [p for name, p in named if name not in exempt]},
                {"params": [p for name, p in named if name in exempt], "weight_decay": 0.0}]

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_clips) / self.config.batch_size)

    def batches(self, epoch: int, generator: torch.Generator, world: Distributed) -> Iterator[Batch]:
        clips = iterate_batches(self.train_clips, self.config.batch_size, shuffle=True, generator=generator,
                                augmentation=self.augmentation, device=self.device)
        return shares((({**features, "valid": valid}, label) for features, valid, label in clips), world)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits[:, 0], targets)

    def validate(self, world: Distributed) -> dict[str, float]:
        """Validation loss (clip level, unweighted) and video-level metrics under the decision rule chosen
        here. Each rank scores its share of the clips; every rank gets the same metrics."""
        clips, config = self.val_clips, self.config
        share = clips.subset(world.share(len(clips)))
        logits = torch.from_numpy(world.gather(clip_logits(self.model, share, config.eval_batch_size,
                                                           config.amp)))
        clip_labels = clips.label.cpu()
        loss = nn.functional.binary_cross_entropy_with_logits(logits.double(), clip_labels.double())
        self.model.calibration.copy_(torch.tensor(fit_platt(logits.numpy(), clip_labels.numpy())))
        labels = clips.video_labels
        probs = video_probabilities(clips, self.model.probability(logits).numpy())
        decision = choose_decision(labels, probs, config.target_fpr, config.target_fnr)
        metrics = binary_metrics(labels, probs, decision.threshold, decision.uncertain_below)
        return {"val_loss": float(loss), "val_auc": metrics["auc"], "score": metrics["auc"],
                "val_balanced_accuracy": metrics["balanced_accuracy"], "val_tpr": metrics["tpr"],
                "val_uncertain": metrics["uncertain"], **decision.to_dict()}

    def save_selected(self, folder: Path, row: dict[str, Any]) -> None:
        chosen = (*(f.name for f in fields(Decision)), "val_auc", "val_balanced_accuracy", "val_tpr",
                  "val_uncertain", "epoch")
        decision = {"chosen_on": "val", **{name: row[name] for name in chosen}, **self.selected}
        Checkpoint.of_run(self.model, self.run_dir, decision).save_pretrained(folder)

    def load(self, folder: Path) -> None:
        self.model.load_state_dict(TemporalHead.from_pretrained(folder).state_dict())


def _train(index: str | os.PathLike | pd.DataFrame, embed_cache_dir: Path, train_cfg: TrainConfig,
           model_cfg: MegatronConfig, run_dir: Path, resume: bool, device: torch.device,
           world: Distributed) -> Path:
    torch.manual_seed(train_cfg.seed)
    index_table = index if isinstance(index, pd.DataFrame) else read_index(index)
    seen = training_index(index_table, embed_cache_dir, train_cfg.fakes, train_cfg.seed)
    train_clips = load_clips(seen, embed_cache_dir, "train", train_cfg.preload_limit_gb).to(device)
    val_clips = load_clips(seen, embed_cache_dir, "val", train_cfg.preload_limit_gb).to(device)
    if train_clips.streams != val_clips.streams:
        raise ValueError(f"the train and val embeddings hold different streams: {train_clips.streams} and "
                         f"{val_clips.streams}")
    unknown = [stream for stream in train_clips.streams if not hasattr(model_cfg, f"{stream}_dim")]
    if unknown:
        raise ValueError(f"the embed cache holds stream(s) {unknown} that the {model_cfg.architecture!r} "
                         f"head has no input for (no {[f'{s}_dim' for s in unknown]} in its config)")
    # The head's input sizes come from the cache: one `<stream>_dim` per stream it holds.
    model_cfg = replace(model_cfg, **{f"{stream}_dim": value.shape[-1]
                                      for stream, value in train_clips.features.items()},
                        max_len=max(model_cfg.max_len, train_clips.valid.shape[1]))
    index_source = "<DataFrame>" if isinstance(index, pd.DataFrame) else str(Path(index).resolve())
    if resume:
        saved = json.loads((run_dir / "config.json").read_text())
        check_same_run(run_dir, {"model": saved["model"], "train": saved["train"],
                                 "embed_key": saved["data"]["embed_key"]},
                       {"model": model_cfg.to_dict(), "train": asdict(train_cfg),
                        "embed_key": embed_cache_dir.name})
    elif world.main:
        index_table.to_csv(run_dir / "index.csv", index=False)
        preprocessing = preprocessing_config(embed_cache_dir)
        if preprocessing["pipeline"] is None:
            log.warning("%s has no %s (not made by `megatron preprocess`): this run cannot tell `megatron "
                        "predict` how to preprocess new videos", embed_cache_dir, PREPROCESS_FILE)
        else:
            shutil.copyfile(embed_cache_dir / PREPROCESS_FILE, run_dir / PREPROCESS_FILE)
        write_json_atomic(run_dir / "config.json", {
            "model": model_cfg.to_dict(), "train": asdict(train_cfg),
            "preprocessing": preprocessing,
            "data": {"index": index_source,
                     "index_copy": "index.csv", "embed_cache": str(embed_cache_dir.resolve()),
                     "embed_key": embed_cache_dir.name, "train_videos": len(train_clips.videos),
                     "val_videos": len(val_clips.videos), "train_clips": len(train_clips),
                     "val_clips": len(val_clips),
                     "missing_videos": {**train_clips.missing, **val_clips.missing}},
            "torch": torch.__version__,
        })
    model = TemporalHead.build(model_cfg).to(device)
    selected = {"train_data": describe_data(train_clips.videos, "train"),
                "val_data": describe_data(val_clips.videos, "val"), "train_videos": len(train_clips.videos),
                "fakes": train_cfg.fakes}
    task = HeadTask(model, train_clips, val_clips, train_cfg, run_dir, selected, device)
    log.info("training %s (%d parameters) on %s: %d train clips (%d real, %d fake), %d val clips; "
             "embeddings %s", model_cfg, model.num_parameters(), device, len(train_clips),
             *train_clips.class_counts(), len(val_clips), embed_cache_dir)
    fit(task, train_cfg, run_dir, device, world, resume)
    return run_dir


def resume(run_dir: str | os.PathLike, epochs: int | None = None) -> Path:
    """Continue a run from last/ (optionally to a new number of epochs) with its own config and data."""
    run_dir = Path(run_dir)
    if not (run_dir / "last" / STATE_JSON).exists():
        raise FileNotFoundError(f"{run_dir} has no last/ checkpoint with training state to resume from "
                                "(a run killed in its first epoch must start again)")
    config = json.loads((run_dir / "config.json").read_text())
    train_cfg = TrainConfig(**config["train"])
    if epochs is not None and epochs != train_cfg.epochs:
        train_cfg = replace(train_cfg, epochs=epochs)
        write_json_atomic(run_dir / "config.json", {**config, "train": asdict(train_cfg)})
    return train(run_dir / config["data"]["index_copy"], config["data"]["embed_cache"], train_cfg,
                 MegatronConfig.from_dict(config["model"]), run_dir, resume=True)
