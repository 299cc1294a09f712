"""Training the detector on cached embeddings.

One run is one folder (runs/<name>/): config.json (model, training, the embed cache's preprocessing
config and the data used), index.csv (a copy of the index), history.csv, train.log, best/ (the checkpoint
with the highest validation video AUC, never chosen on test) and last/ (the latest epoch, plus the
optimizer, schedule, epoch and RNG state for `resume`), each a `save_pretrained` folder.

Class imbalance (FF++ has four or five fakes per real) is handled by `pos_weight = reals / fakes` in the
loss rather than by a weighted sampler: every clip is seen once per epoch and the loss weighs both classes
equally. The decision threshold maximises validation balanced accuracy; it is written once per selected
checkpoint, into best/decision.json, beside the preprocessing and the model card (`checkpoint.py`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..core.cache import PREPROCESS_FILE, write_json_atomic
from ..core.precision import autocast, grad_scaler, resolve_device, training_dtype
from ..datasets import read_index
from ..models.checkpoint import complete_checkpoint
from ..models.heads import MegatronConfig, TemporalHead, create_head, load_head
from .clips import Augmentation, ClipSet, iterate_batches, load_clips, preprocessing_config
from .distributed import ONE_PROCESS, Distributed, distributed
from .evaluate import (
    binary_metrics,
    choose_decision,
    clip_probabilities,
    video_probabilities,
)
from .pseudo_fakes import training_index

log = logging.getLogger(__name__)

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


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


def learning_rate(step: int, total_steps: int, lr: float, min_lr: float, warmup_fraction: float) -> float:
    """Linear warmup, then cosine decay from `lr` to `min_lr`."""
    warmup = max(1, int(warmup_fraction * total_steps))
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def validate(model: TemporalHead, clips: ClipSet, config: TrainConfig, world: Distributed = ONE_PROCESS
             ) -> dict[str, float]:
    """Validation loss (clip level, unweighted) and video-level metrics at the threshold chosen here. Each
    rank scores its share of the clips; every rank gets the same metrics."""
    share = clips.subset(world.share(len(clips)))
    clip_probs = world.gather(clip_probabilities(model, share, config.eval_batch_size, config.amp))
    loss = nn.functional.binary_cross_entropy(torch.from_numpy(clip_probs).double().clamp(1e-7, 1 - 1e-7),
                                              clips.label.cpu().double())
    labels, probs = clips.video_labels, video_probabilities(clips, clip_probs)
    decision = choose_decision(labels, probs, config.target_fpr, config.target_fnr)
    metrics = binary_metrics(labels, probs, decision.threshold, decision.uncertain_below)
    return {"val_loss": float(loss), "val_auc": metrics["auc"],
            "val_balanced_accuracy": metrics["balanced_accuracy"], "val_tpr": metrics["tpr"],
            "val_uncertain": metrics["uncertain"], **decision.to_dict()}


# Checkpoints -------------------------------------------------------------------------------------------
def save_checkpoint(directory: Path, model: TemporalHead, optimizer: torch.optim.Optimizer | None = None,
                    state: dict | None = None, generator: torch.Generator | None = None,
                    complete: Callable[[Path], None] | None = None) -> None:
    """A save_pretrained folder, plus the training state when given and whatever `complete` adds to the
    folder; replaced as a whole, never half."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if complete is not None:
        complete(tmp)
    if optimizer is not None:
        optimizer_state = optimizer.state_dict()
        tensors = {f"optimizer.{param}.{name}": value.detach().cpu().contiguous()
                   for param, values in optimizer_state["state"].items() for name, value in values.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.data"] = generator.get_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, str(tmp / STATE_TENSORS))
        write_json_atomic(tmp / STATE_JSON, {**state, "param_groups": optimizer_state["param_groups"]})
    old = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_training_state(directory: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator
                        ) -> dict:
    tensors = load_file(str(directory / STATE_TENSORS))
    state = json.loads((directory / STATE_JSON).read_text())
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param, name = key.split(".", 2)
            per_param.setdefault(int(param), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.data"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


@contextmanager
def log_to_file(path: Path):
    """Also write this package's log records to `path` while the block runs."""
    package_log = logging.getLogger(__package__)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous_level = package_log.level
    package_log.addHandler(handler)
    package_log.setLevel(min(previous_level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        package_log.removeHandler(handler)
        package_log.setLevel(previous_level)
        handler.close()


def tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("TensorBoard is not installed; the history is in %s only", run_dir / "history.csv")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# Training ----------------------------------------------------------------------------------------------
def train(index: str | os.PathLike | pd.DataFrame, embed_cache_dir: str | os.PathLike, train_cfg: TrainConfig,
          model_cfg: MegatronConfig, out_dir: str | os.PathLike, resume: bool = False) -> Path:
    """Train on the index's train split, select on its val split; returns the run folder. The embedding
    sizes (and max_len, if shorter than the clips) of `model_cfg` are taken from the embed cache. Under
    torchrun, each process trains on its share of every batch (see `distributed.py`)."""
    run_dir = Path(out_dir)
    device = resolve_device(train_cfg.device)
    with distributed(device) as world:
        if world.main:
            if (run_dir / "config.json").exists() and not resume:
                raise ValueError(f"{run_dir} already holds a run; resume it or choose another output folder")
            run_dir.mkdir(parents=True, exist_ok=True)
        with log_to_file(run_dir / "train.log") if world.main else nullcontext():
            return _train(index, Path(embed_cache_dir), train_cfg, model_cfg, run_dir, resume,
                          world.device(device), world)


def _train(index: str | os.PathLike | pd.DataFrame, embed_cache_dir: Path, train_cfg: TrainConfig,
           model_cfg: MegatronConfig, run_dir: Path, resume: bool, device: torch.device,
           world: Distributed) -> Path:
    torch.manual_seed(train_cfg.seed)
    # Shuffling and augmentation: the same seed on every rank, so all ranks draw the same global batches.
    generator = torch.Generator().manual_seed(train_cfg.seed)
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
    if world.main and not resume:
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

    model = create_head(model_cfg).to(device)
    # Weight decay on weight matrices only: not on biases, norms, CLS tokens and learned positions.
    exempt = {name for name, p in model.named_parameters()
              if p.dim() < 2 or name.endswith((".cls", ".position"))}
    decay = [p for name, p in model.named_parameters() if name not in exempt]
    no_decay = [p for name, p in model.named_parameters() if name in exempt]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": train_cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=train_cfg.lr,
                                  fused=device.type == "cuda")
    state = {"epoch": 0, "step": 0, "best_val_auc": -1.0, "best_epoch": -1, "bad_epochs": 0,
             "stopped_early": False}
    history: list[dict] = []
    if resume:
        last = run_dir / "last"
        model.load_state_dict(load_head(last).state_dict())
        state = load_training_state(last, optimizer, generator)
        history = pd.read_csv(run_dir / "history.csv").to_dict("records")[: state["epoch"]]
        log.info("resuming %s at epoch %d (step %d)", run_dir, state["epoch"], state["step"])
    step_model = world.wrap(model, device)
    step_model = torch.compile(step_model) if train_cfg.compile else step_model

    reals, fakes = train_clips.class_counts()
    if not reals or not fakes:
        raise ValueError(f"the train split needs real and fake clips, got {reals} real and {fakes} fake")
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(reals / fakes, device=device), reduction="sum")
    augmentation = Augmentation(train_cfg.min_crop_fraction, train_cfg.frame_dropout)
    dtype = training_dtype(device, train_cfg.amp)
    scaler = grad_scaler(device, dtype)
    steps_per_epoch = math.ceil(len(train_clips) / train_cfg.batch_size)
    total_steps = train_cfg.epochs * steps_per_epoch
    writer = tensorboard_writer(run_dir) if world.main else None
    log.info("training on %s", world)
    log.info("training %s (%d parameters) on %s: %d train clips (%d real, %d fake), %d val clips; "
             "embeddings %s; pos_weight %.3f", model_cfg, model.num_parameters(), device, len(train_clips),
             reals, fakes, len(val_clips), embed_cache_dir, reals / fakes)

    while state["epoch"] < train_cfg.epochs and not state["stopped_early"]:
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        batches = iterate_batches(train_clips, train_cfg.batch_size, shuffle=True, generator=generator,
                                  augmentation=augmentation, device=device)
        progress = tqdm(batches, total=steps_per_epoch, desc=f"epoch {state['epoch'] + 1}", leave=False,
                        disable=not world.main)
        for features, valid, label in progress:
            batch_size, share = len(label), world.share(len(label))
            features = {name: value[share] for name, value in features.items()}
            valid, label = valid[share], label[share]
            lr = learning_rate(state["step"], total_steps, train_cfg.lr, train_cfg.min_lr,
                               train_cfg.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device, dtype):
                logits = step_model(**features, valid=valid)[:, 0]
            share_loss = criterion(logits.float(), label)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks: scaled so the step is that of the global batch's mean loss.
            scaler.scale(share_loss * world.world_size / batch_size).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += share_loss.detach()
            state["step"] += 1
        state["epoch"] += 1
        train_loss = float(world.sum(loss_sum)) / len(train_clips)  # waits for the device: the pass is done
        train_seconds = time.perf_counter() - started
        row = {"epoch": state["epoch"], "step": state["step"], "lr": lr, "train_loss": train_loss,
               **validate(model, val_clips, train_cfg, world), "train_seconds": train_seconds,
               "seconds": time.perf_counter() - started}
        history.append(row)
        if row["val_auc"] > state["best_val_auc"]:
            state.update(best_val_auc=row["val_auc"], best_epoch=state["epoch"], bad_epochs=0)
            selected = {**{name: row[name] for name in ("threshold", "uncertain_below", "target_fpr",
                                                         "target_fnr", "val_auc", "val_balanced_accuracy",
                                                         "val_tpr", "val_uncertain")},
                        "epoch": state["epoch"], "train_data": describe_data(train_clips.videos, "train"),
                        "val_data": describe_data(val_clips.videos, "val"),
                        "train_videos": len(train_clips.videos), "fakes": train_cfg.fakes}
            complete = functools.partial(complete_checkpoint, run_dir=run_dir, selected=selected)
            if world.main:
                save_checkpoint(run_dir / "best", model, complete=complete)
        else:
            state["bad_epochs"] += 1
            state["stopped_early"] = state["bad_epochs"] >= train_cfg.patience
        if world.main:
            save_checkpoint(run_dir / "last", model, optimizer, state, generator)
            pd.DataFrame(history).to_csv(run_dir / "history.csv", index=False)
        if writer is not None:
            for name, value in row.items():
                writer.add_scalar(name, value, state["epoch"])
        log.info("epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f, val balanced accuracy %.4f "
                 "(threshold %.3f), %.1fs", state["epoch"], row["train_loss"], row["val_loss"],
                 row["val_auc"], row["val_balanced_accuracy"], row["threshold"], row["seconds"])
    if writer is not None:
        writer.close()
    if state["stopped_early"]:
        log.info("early stop: no better validation AUC for %d epochs", train_cfg.patience)
    log.info("best validation AUC %.4f at epoch %d -> %s", state["best_val_auc"], state["best_epoch"],
             run_dir / "best")
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
