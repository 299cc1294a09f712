"""Stage between faces and embeddings: fine-tune the RGB embedder as a frame-level real/fake classifier.

Frozen ImageNet features carry almost no evidence of manipulation; every strong detector trains its image
backbone. The training signal is self-blended images (Shiohara and Yamasaki, CVPR 2022): each real crop
is paired with a pseudo-fake blended from a jittered copy of itself inside a landmark mask (`sbi.py`), so
the network learns blending boundaries and statistical mismatches instead of one method's fingerprints.
`fakes="dataset"` also shows it the dataset's own fake crops; `fakes="none"` (the default) never sees a
fake video, which is how a model trained on FF++ originals generalises to manipulations it never saw.

One run is one folder: `best/` (the checkpoint with the best validation score, never chosen on test),
`last/` (plus optimizer and RNG state, so a killed run resumes), `history.csv` and `finetune.json`.
`best/` is what the embed stage loads (`EmbedConfig.rgb_weights`); the embed cache key changes with its
fingerprint.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from ..core.cache import StageCache, write_json_atomic
from ..core.precision import autocast, grad_scaler, resolve_device, training_dtype
from ..datasets import read_index
from ..models.backbones import (
    AUTO,
    FINETUNED_MARKER,
    WEIGHTS_NAME,
    Backbone,
    create_backbone,
    load_finetuned_state,
)
from ..preprocessing.batching import prepare_pixels, to_unit_tensor
from .attacks import ADVERSARIAL_TRAINING, fgsm_rs
from .distributed import Distributed, distributed
from .sbi import AugmentConfig, SBIConfig, augment, self_blend
from .train import learning_rate, load_training_state, log_to_file, save_checkpoint

log = logging.getLogger(__name__)

FAKES_MODES = ("none", "dataset")


@dataclass
class FinetuneConfig:
    backbone: str = AUTO  # a registered backbone, or auto (RepViT-M0.9, else offline MobileNetV2)
    weights: str | None = None  # start from this local weights file instead of the default weights
    input_size: int | None = None  # None: the backbone's own input size
    fakes: str = "none"  # "none": reals + self-blended pseudo-fakes only; "dataset": plus the dataset's fakes
    crops_per_video: int = 16  # evenly spaced crops taken from each video's faces entry
    epochs: int = 8
    batch_size: int = 32  # images per step: half real crops, half their pseudo-fakes (or dataset fakes)
    lr: float = 3e-4  # backbone; the new linear head learns 10x faster
    min_lr: float = 1e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    patience: int = 4  # epochs without a better validation score before stopping
    max_minutes: float | None = None  # wall-clock budget; stops after the epoch that crosses it
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # autocast on CUDA at the device's precision (core.precision)
    adversarial: str = "none"  # "fgsm-rs": train on FGSM-with-random-start images (attacks.fgsm_rs)
    adversarial_eps: float = 4 / 255
    sbi: SBIConfig = field(default_factory=SBIConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.fakes not in FAKES_MODES:
            raise ValueError(f"fakes must be one of {FAKES_MODES}, got {self.fakes!r}")
        if self.adversarial not in ADVERSARIAL_TRAINING:
            raise ValueError(f"adversarial must be one of {ADVERSARIAL_TRAINING}, got {self.adversarial!r}")
        if self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"batch_size must be even and >= 2 (half real, half fake), "
                             f"got {self.batch_size}")


# Data ----------------------------------------------------------------------------------------------------
@dataclass
class FrameSet:
    """Face crops of one split with their landmarks, one row per crop."""

    crops: np.ndarray  # uint8 [N, S, S, 3]
    landmarks: np.ndarray  # float32 [N, 68, 2] in crop pixels
    label: np.ndarray  # int64 [N]: 1 fake
    video: np.ndarray  # int64 [N]: row of `videos`
    videos: pd.DataFrame  # the index rows these crops come from

    def __len__(self) -> int:
        return len(self.label)


def load_frames(index: pd.DataFrame, faces_cache: StageCache, split: str | None, crops_per_video: int
                ) -> FrameSet:
    """The first (largest) person's crops of every video of `split` (all videos if None) that the faces
    stage handled."""
    rows = (index if split is None else index[index["split"] == split]).reset_index(drop=True)
    done, failures = set(faces_cache.done_items()), faces_cache.failures()
    crops, landmarks, labels, videos = [], [], [], []
    skipped: dict[str, str] = {}
    for row, (video_id, label) in enumerate(zip(rows["video_id"], rows["label"], strict=True)):
        if video_id not in done:
            skipped[video_id] = failures.get(video_id) or "not in the faces cache"
            continue
        tensors, _ = faces_cache.read(video_id)
        person = np.flatnonzero(tensors.get("track", np.zeros(len(tensors["crops"]), np.int32)) == 0)
        chosen = person[np.unique(np.linspace(0, len(person) - 1, crops_per_video).round().astype(int))]
        crops.append(tensors["crops"][chosen])
        landmarks.append(tensors["landmarks"][chosen])
        labels.append(np.full(len(chosen), int(label == "fake")))
        videos.append(np.full(len(chosen), row))
    if skipped:
        log.warning("%d %s videos have no faces and are skipped: %s", len(skipped), split or "indexed",
                    ", ".join(f"{v} ({why})" for v, why in list(skipped.items())[:5]))
    if not crops:
        raise ValueError(f"no {split or 'indexed'} video of the index has face crops in {faces_cache.dir}")
    return FrameSet(np.concatenate(crops), np.concatenate(landmarks).astype(np.float32),
                    np.concatenate(labels), np.concatenate(videos), rows)


def pseudo_fake(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, config: SBIConfig
                ) -> np.ndarray | None:
    """A self-blended version of `crop`, or None where its landmarks are unusable."""
    try:
        return self_blend(crop, landmarks, rng, config)[0]
    except ValueError:
        return None


def training_batches(frames: FrameSet, config: FinetuneConfig, rng: np.random.Generator):
    """One epoch of (images uint8 [B, S, S, 3], labels [B]): each real crop once, paired with its own
    pseudo-fake (with `fakes="dataset"`, half of the pairs take a dataset fake crop instead), all
    augmented alike so compression, blur and colour cannot tell the classes apart."""
    reals = np.flatnonzero(frames.label == 0)
    fakes = np.flatnonzero(frames.label == 1) if config.fakes == "dataset" else np.zeros(0, int)
    order = rng.permutation(reals)
    half = config.batch_size // 2
    for start in range(0, len(order), half):
        images, labels = [], []
        for i in order[start:start + half]:
            if len(fakes) and rng.random() < 0.5:
                fake = frames.crops[rng.choice(fakes)]
            else:
                fake = pseudo_fake(frames.crops[i], frames.landmarks[i], rng, config.sbi)
            images.append(augment(frames.crops[i], rng, config.augment))
            labels.append(0)
            if fake is not None:
                images.append(augment(fake, rng, config.augment))
                labels.append(1)
        yield np.stack(images), np.array(labels, np.float32)


def validation_set(frames: FrameSet, config: FinetuneConfig, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
    """Fixed validation images: every crop as it is, plus one pseudo-fake per real crop (same seed every
    epoch). Returns images, labels and `source` (0 real, 1 dataset fake, 2 pseudo-fake)."""
    rng = np.random.default_rng(seed)
    fakes = [(i, pseudo_fake(frames.crops[i], frames.landmarks[i], rng, config.sbi))
             for i in np.flatnonzero(frames.label == 0)]
    fakes = [(i, image) for i, image in fakes if image is not None]
    images = np.concatenate([frames.crops, np.stack([image for _, image in fakes])])
    source = np.concatenate([frames.label, np.full(len(fakes), 2)])
    return images, (source > 0).astype(np.float32), source


# Model ---------------------------------------------------------------------------------------------------
class FrameClassifier(nn.Module):
    """A registered image backbone plus a linear real/fake head: pixels [N, 3, H, W] in [0, 1] -> logits
    [N]."""

    def __init__(self, backbone: Backbone, input_size: int | None = None):
        super().__init__()
        self.name, self.base_weights = backbone.name, backbone.weights
        self.data_config = backbone.data_config
        self.input_size = input_size or backbone.data_config.input_size
        self.backbone = backbone.model.requires_grad_(True)
        self.head = nn.Linear(backbone.num_features, 1)
        self.selected: dict | None = None

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        data = self.data_config
        return self.backbone(prepare_pixels(pixels, self.input_size, data.mean, data.std, data.interpolation))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))[:, 0]

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """model.safetensors (backbone.* and head.*) and finetune.json, which the backbone loader reads;
        `selected` (set by the trainer) records the validation row the checkpoint was chosen on."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        write_json_atomic(directory / FINETUNED_MARKER, {"backbone": self.name, "input_size": self.input_size,
                                                        "base_weights": self.base_weights,
                                                        "selected": self.selected})
        return directory


def finetuned_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The selected checkpoint (`best/`) of a fine-tuning run, or an error saying how to make one."""
    best = Path(run_dir) / "best"
    if not (best / FINETUNED_MARKER).is_file():
        raise FileNotFoundError(f"{best} holds no fine-tuned embedder: run `megatron finetune` (notebook "
                                f"02_finetune) first, or embed with the frozen ImageNet weights")
    return best


def load_frame_classifier(folder: str | os.PathLike, device: str = "auto") -> FrameClassifier:
    """A fine-tuned checkpoint folder as the frame classifier it was trained as (backbone and head)."""
    backbone = create_backbone(AUTO, weights=folder)  # the tuned backbone, its input size included
    model = FrameClassifier(backbone)
    model.head.load_state_dict(load_finetuned_state(Path(folder))[2])
    return model.to(resolve_device(device)).eval()


def score_videos(model: FrameClassifier, index: pd.DataFrame, faces: StageCache, split: str | None,
                 crops_per_video: int = 16, amp: bool = True) -> pd.DataFrame:
    """The frame classifier as a video detector: the split's index rows with `probability`, the mean
    P(fake) of up to `crops_per_video` crops of the video's main face."""
    frames = load_frames(index, faces, split, crops_per_video)
    device = next(model.parameters()).device
    probs = frame_probabilities(model, frames.crops, device, amp)
    per_video = pd.Series(probs).groupby(frames.video).mean()
    scores = frames.videos.iloc[per_video.index].reset_index(drop=True)
    return scores.assign(probability=per_video.to_numpy(), crops=np.bincount(frames.video)[per_video.index])


# Training ------------------------------------------------------------------------------------------------
@torch.inference_mode()
def frame_probabilities(model: FrameClassifier, images: np.ndarray, device: torch.device, amp: bool,
                        batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        with autocast(device, training_dtype(device, amp)):
            out.append(torch.sigmoid(model(to_unit_tensor(images[start:start + batch_size], device)).float())
                       .cpu().numpy())
    return np.concatenate(out)


def validation_metrics(probs: np.ndarray, source: np.ndarray, video: np.ndarray) -> dict[str, float]:
    """Pseudo-fake AUC (reals vs their self-blends), and frame and video AUC of reals vs dataset fakes
    where the split has fakes. `score` selects the checkpoint: the mean of the video AUC on the dataset's
    fakes (transfer to real manipulations, but few videos: noisy) and the pseudo-fake AUC (the learned
    cue on unseen identities, over every frame: steady); the pseudo-fake AUC alone without fakes."""
    real, dataset_fake, pseudo = source == 0, source == 1, source == 2
    metrics = {"val_sbi_auc": float(roc_auc_score(np.r_[np.zeros(real.sum()), np.ones(pseudo.sum())],
                                                  np.r_[probs[real], probs[pseudo]]))}
    if dataset_fake.any():
        known = ~pseudo
        metrics["val_frame_auc"] = float(roc_auc_score(source[known], probs[known]))
        per_video = pd.DataFrame({"video": video[known], "fake": source[known], "p": probs[known]})
        per_video = per_video.groupby("video").mean()
        metrics["val_video_auc"] = float(roc_auc_score(per_video["fake"], per_video["p"]))
    metrics["score"] = float(np.mean([metrics[k] for k in ("val_video_auc", "val_sbi_auc") if k in metrics]))
    return metrics


def finetune(index: str | os.PathLike | pd.DataFrame, faces_cache_dir: str | os.PathLike,
             config: FinetuneConfig, out_dir: str | os.PathLike, resume: bool = False) -> Path:
    """Fine-tune on the index's train split, select on its val split; returns `<out_dir>/best`. Under
    torchrun, each process trains on its share of every batch (see `distributed.py`)."""
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    with distributed(device) as world:
        if world.main:
            if (out_dir / "best" / FINETUNED_MARKER).exists() and not resume:
                raise ValueError(f"{out_dir} already holds a fine-tuning run; resume it or choose another "
                                 "folder")
            out_dir.mkdir(parents=True, exist_ok=True)
        with log_to_file(out_dir / "finetune.log") if world.main else nullcontext():
            return _finetune(index, StageCache.open(faces_cache_dir, "faces"), config, out_dir, resume,
                             world.device(device), world)


def _finetune(index: str | os.PathLike | pd.DataFrame, faces: StageCache, config: FinetuneConfig,
              out_dir: Path, resume: bool, device: torch.device, world: Distributed) -> Path:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)  # kept for save_checkpoint's RNG state
    table = index if isinstance(index, pd.DataFrame) else read_index(index)
    train_frames = load_frames(table, faces, "train", config.crops_per_video)
    val_frames = load_frames(table, faces, "val", config.crops_per_video)
    if not (train_frames.label == 0).any():
        raise ValueError("the train split has no real video with face crops: self-blending needs reals")
    val_images, val_labels, val_source = validation_set(val_frames, config, config.seed + 1)
    val_video = np.r_[val_frames.video, np.full((val_source == 2).sum(), -1)]

    backbone = create_backbone(config.backbone, weights=config.weights)
    model = FrameClassifier(backbone, config.input_size)
    if world.enabled and device.type == "cuda":  # batch statistics over the global batch, as one GPU sees
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    log.info("fine-tuning on %s", world)
    log.info("fine-tuning %s (%s) at %d px on %s: %d train crops (%d real), %d val images; fakes=%s",
             model.name, model.base_weights, model.input_size, device, len(train_frames),
             int((train_frames.label == 0).sum()), len(val_images), config.fakes)
    optimizer = torch.optim.AdamW([
        {"params": model.backbone.parameters(), "lr_scale": 1.0},
        {"params": model.head.parameters(), "lr_scale": 10.0},
    ], lr=config.lr, weight_decay=config.weight_decay)
    state = {"epoch": 0, "step": 0, "best_score": -1.0, "best_epoch": -1, "bad_epochs": 0, "seconds": 0.0}
    history: list[dict] = []
    if resume and (out_dir / "last" / FINETUNED_MARKER).exists():
        _, backbone_state, head_state = load_finetuned_state(out_dir / "last")
        model.backbone.load_state_dict(backbone_state)
        model.head.load_state_dict(head_state)
        state = load_training_state(out_dir / "last", optimizer, generator)
        history = pd.read_csv(out_dir / "history.csv").to_dict("records")[: state["epoch"]]
        log.info("resuming %s at epoch %d", out_dir, state["epoch"])
    if world.main:
        write_json_atomic(out_dir / "finetune.json", {
            "config": asdict(config), "train_crops": len(train_frames), "val_images": len(val_images),
            "device": str(device), "processes": world.world_size})
    step_model = world.wrap(model, device)

    reals = int((train_frames.label == 0).sum())
    steps_per_epoch = math.ceil(reals / (config.batch_size // 2))
    total_steps = config.epochs * steps_per_epoch
    criterion = nn.BCEWithLogitsLoss(reduction="sum")
    dtype = training_dtype(device, config.amp)
    scaler = grad_scaler(device, dtype)
    while state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
        if config.max_minutes is not None and state["seconds"] >= 60 * config.max_minutes:
            log.info("time budget of %.1f minutes reached", config.max_minutes)
            break
        started = time.perf_counter()
        rng = np.random.default_rng([config.seed, state["epoch"]])  # per epoch, so a resumed run is identical
        model.train()
        loss_sum, seen = torch.zeros(2, dtype=torch.float64), 0
        progress = tqdm(training_batches(train_frames, config, rng), total=steps_per_epoch,
                        desc=f"finetune epoch {state['epoch'] + 1}", leave=False, unit="step",
                        disable=not world.main)
        for images, labels in progress:
            batch_size, share = len(labels), world.share(len(labels))
            images, labels = images[share], labels[share]
            lr = learning_rate(state["step"], total_steps, config.lr, config.min_lr, config.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            pixels, targets = to_unit_tensor(images, device), torch.from_numpy(labels).to(device)
            if config.adversarial == "fgsm-rs":
                pixels = fgsm_rs(model, pixels, targets, config.adversarial_eps)
            with autocast(device, dtype):
                logits = step_model(pixels)
            share_loss = criterion(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks: scaled so the step is that of the global batch's mean loss.
            scaler.scale(share_loss * world.world_size / batch_size).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += torch.tensor([share_loss.item(), len(labels)], dtype=torch.float64)
            seen += batch_size
            state["step"] += 1
            progress.set_postfix(loss=f"{loss_sum[0] / loss_sum[1]:.3f}",
                                 crops_per_s=f"{seen / (time.perf_counter() - started):.1f}")
        train_seconds = time.perf_counter() - started
        total_loss, crops = world.sum(loss_sum.to(device)).tolist()
        share = world.share(len(val_images))
        probs = world.gather(frame_probabilities(model, val_images[share], device, config.amp))
        row = {"epoch": state["epoch"] + 1, "lr": lr, "train_loss": total_loss / crops,
               "crops_per_second": seen / train_seconds,
               **validation_metrics(probs, val_source, val_video)}
        state["epoch"] += 1
        state["seconds"] += time.perf_counter() - started
        row["seconds"] = state["seconds"]
        history.append(row)
        if row["score"] > state["best_score"]:
            state.update(best_score=row["score"], best_epoch=state["epoch"], bad_epochs=0)
            model.selected = row
            if world.main:
                save_checkpoint(out_dir / "best", model)
        else:
            state["bad_epochs"] += 1
        if world.main:
            save_checkpoint(out_dir / "last", model, optimizer, state, generator)
            pd.DataFrame(history).to_csv(out_dir / "history.csv", index=False)
        log.info("finetune epoch %d: loss %.4f, %.1f crops/s, val %s", state["epoch"], row["train_loss"],
                 row["crops_per_second"], {k: round(v, 4) for k, v in row.items() if k.startswith("val_")})
    log.info("best validation score %.4f at epoch %d -> %s", state["best_score"], state["best_epoch"],
             out_dir / "best")
    return out_dir / "best"
