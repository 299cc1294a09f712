"""The one training loop, for every model Megatron trains (nanoGPT's `train.py`, as a function).

What is learned differs by `Task`: the temporal head on cached clip embeddings (`train.py`), or the RGB
embedder as a frame classifier on real crops and their self-blended pseudo-fakes (`finetune.py`). The
loop is the same for both:

- AdamW with per-group learning-rate scales, linear warmup and cosine decay, gradient clipping;
- autocast at the device's precision (`core.precision`), with a loss scaler for float16;
- DistributedDataParallel under torchrun: each rank trains on its share of every global batch, and the
  loss is scaled so that N processes take the step one process would;
- after every epoch: validation, selection of `best/` on the task's `score` (validation only, never test),
  `last/` with the optimizer and RNG state so that a killed run resumes as if never stopped, history.csv,
  TensorBoard when installed, early stopping (`patience`) and a wall-clock budget (`max_minutes`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..core.cache import write_json_atomic
from ..core.precision import autocast, grad_scaler, training_dtype
from .distributed import Distributed

log = logging.getLogger(__name__)

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
HISTORY = "history.csv"

Batch = tuple[dict[str, torch.Tensor], torch.Tensor, int]  # (model inputs, targets, global batch size)


class Task(Protocol):
    """What a run learns: its model, its data and how it is judged."""

    name: str  # "train" or "finetune": names the progress bar and the log lines
    model: nn.Module  # a hub mixin model (`models.hub`): `save_pretrained(folder)` writes last/

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW's parameter groups; each may carry an `lr_scale` and its own `weight_decay`."""

    def steps_per_epoch(self) -> int: ...

    def batches(self, epoch: int, generator: torch.Generator, world: Distributed) -> Iterable[Batch]:
        """This rank's share of every global batch of the epoch, on the training device."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The summed (not averaged) loss of a share; the loop divides by the global batch size."""

    def validate(self, world: Distributed) -> dict[str, float]:
        """Validation metrics on every rank; `score` selects the checkpoint (higher is better)."""

    def save_selected(self, folder: Path, row: dict[str, Any]) -> None:
        """Write the selected checkpoint (best/): the model and what it needs beside it (`row`: the epoch's
        history)."""

    def load(self, folder: Path) -> None:
        """Load the model's weights from a checkpoint folder (to resume)."""


def learning_rate(step: int, total_steps: int, lr: float, min_lr: float, warmup_fraction: float) -> float:
    """Linear warmup, then cosine decay from `lr` to `min_lr`."""
    warmup = max(1, int(warmup_fraction * total_steps))
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


# Checkpoints ---------------------------------------------------------------------------------------------
def save_checkpoint(directory: Path, save: Callable[[Path], None],
                    optimizer: torch.optim.Optimizer | None = None, state: dict | None = None,
                    generator: torch.Generator | None = None) -> None:
    """The folder `save` writes, plus the training state when given; replaced as a whole, never half."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
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
def log_to_file(path: Path) -> Iterator[None]:
    """Also write this package's log records to `path` while the block runs."""
    package_log = logging.getLogger(__package__.rsplit(".", 1)[0])
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
        log.info("TensorBoard is not installed; the history is in %s only", run_dir / HISTORY)
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def check_same_run(folder: Path, saved: dict[str, Any], wanted: dict[str, Any],
                   defaults: dict[str, Any] | None = None) -> None:
    """A run folder is resumed only with the settings it was started with: a rerun with other settings
    would otherwise continue under the new ones and mix two runs in one history. `defaults` (shaped like
    `saved`) stand in for settings the saved run predates: a new setting's default is the old behaviour."""
    def as_read(side: dict[str, Any]) -> dict[str, Any]:  # JSON's view (tuples as lists), as saved was read
        return _flatten(json.loads(json.dumps(side)))

    before, after = {**as_read(defaults or {}), **as_read(saved)}, as_read(wanted)
    changed = [f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
               for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]
    if changed:
        raise ValueError(f"{folder} holds a run with other settings, so it cannot be resumed with these "
                         f"({'; '.join(changed)}); choose another folder, or go back to its settings")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {key: value for name, child in node.items()
            for key, value in _flatten(child, f"{prefix}.{name}" if prefix else name).items()}


# The loop ------------------------------------------------------------------------------------------------
def fit(task: Task, config: Any, out_dir: Path, device: torch.device, world: Distributed,
        resume: bool = False) -> Path:
    """Train `task.model` for `config.epochs` (any config with the fields read below: `TrainConfig`,
    `FinetuneConfig`); returns `out_dir / "best"`."""
    # Shuffling and augmentation: the same seed on every rank, so all ranks draw the same global batches.
    # (The caller seeds torch before it builds the model, so initial weights are reproducible too.)
    generator = torch.Generator().manual_seed(config.seed)
    model = task.model
    groups = task.param_groups()
    for group in groups:
        group.setdefault("lr_scale", 1.0)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type == "cuda")
    state = {"epoch": 0, "step": 0, "best_score": -1.0, "best_epoch": -1, "bad_epochs": 0,
             "seconds": 0.0}
    history: list[dict[str, Any]] = []
    if resume and (out_dir / "last" / STATE_JSON).is_file():
        task.load(out_dir / "last")
        state = load_training_state(out_dir / "last", optimizer, generator)
        history = pd.read_csv(out_dir / HISTORY).to_dict("records")[: state["epoch"]]
        log.info("resuming %s at epoch %d (step %d)", out_dir, state["epoch"], state["step"])
    step_model = world.wrap(model, device)
    step_model = torch.compile(step_model) if getattr(config, "compile", False) else step_model
    dtype = training_dtype(device, config.amp)
    scaler = grad_scaler(device, dtype)
    total_steps = config.epochs * task.steps_per_epoch()
    writer = tensorboard_writer(out_dir) if world.main else None
    log.info("%s on %s, %s autocast", task.name, world, str(dtype).removeprefix("torch."))

    while state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
        if config.max_minutes is not None and state["seconds"] >= 60 * config.max_minutes:
            log.info("time budget of %.1f minutes reached", config.max_minutes)
            break
        started = time.perf_counter()
        model.train()
        loss_sum, samples = torch.zeros((), dtype=torch.float64, device=device), 0
        progress = tqdm(task.batches(state["epoch"], generator, world), total=task.steps_per_epoch(),
                        desc=f"{task.name} epoch {state['epoch'] + 1}", leave=False, unit="step",
                        disable=not world.main)
        lr = config.lr
        for inputs, targets, global_size in progress:
            lr = learning_rate(state["step"], total_steps, config.lr, config.min_lr, config.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            with autocast(device, dtype):
                logits = step_model(**inputs)
            share_loss = task.loss(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks: scaled so the step is that of the global batch's mean loss.
            scaler.scale(share_loss * world.world_size / global_size).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += share_loss.detach().double()
            samples += len(targets)
            state["step"] += 1
        # waits for the device: the pass is done
        total_loss, samples = world.sum(torch.stack([loss_sum, loss_sum.new_tensor(samples)])).tolist()
        train_seconds = time.perf_counter() - started
        row = {"epoch": state["epoch"] + 1, "step": state["step"], "lr": lr,
               "train_loss": total_loss / max(samples, 1), "samples_per_second": samples / train_seconds,
               **task.validate(world), "train_seconds": train_seconds}
        state["epoch"] += 1
        state["seconds"] += time.perf_counter() - started
        row["seconds"] = state["seconds"]
        history.append(row)
        if row["score"] > state["best_score"]:
            state.update(best_score=row["score"], best_epoch=state["epoch"], bad_epochs=0)
            if world.main:
                save_checkpoint(out_dir / "best", functools.partial(task.save_selected, row=row))
        else:
            state["bad_epochs"] += 1
        if world.main:
            save_checkpoint(out_dir / "last", model.save_pretrained, optimizer, state, generator)
            pd.DataFrame(history).to_csv(out_dir / HISTORY, index=False)
        if writer is not None:
            for name, value in row.items():
                writer.add_scalar(name, value, state["epoch"])
        log.info("%s epoch %d: train loss %.4f, %.1f samples/s, validation %s", task.name, state["epoch"],
                 row["train_loss"], row["samples_per_second"],
                 {k: round(v, 4) for k, v in row.items() if k.startswith("val_") or k == "score"})
    if writer is not None:
        writer.close()
    if state["bad_epochs"] >= config.patience:
        log.info("early stop: no better validation score for %d epochs", config.patience)
    log.info("best validation score %.4f at epoch %d -> %s", state["best_score"], state["best_epoch"],
             out_dir / "best")
    return out_dir / "best"


def shares(batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]], world: Distributed
           ) -> Iterator[Batch]:
    """This rank's contiguous share of (inputs, targets) global batches that every rank drew alike."""
    for inputs, targets in batches:
        share = world.share(len(targets))
        yield {name: value[share] for name, value in inputs.items()}, targets[share], len(targets)
