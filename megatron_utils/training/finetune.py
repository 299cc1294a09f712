"""Stage between faces and embeddings: fine-tune the RGB embedder as a frame-level real/fake classifier.

Frozen ImageNet features carry almost no evidence of manipulation; every strong detector trains its image
backbone. The training signal is self-blended images (Shiohara and Yamasaki, CVPR 2022): each real crop
is paired with a pseudo-fake blended from a jittered copy of itself inside a landmark mask (`sbi.py`), so
the network learns blending boundaries and statistical mismatches instead of one method's fingerprints.
`fakes="dataset"` also shows it the dataset's own fake crops; `fakes="none"` (the default) never sees a
fake video, not even to select its checkpoint (which then reads real validation videos and their
pseudo-fakes only): this is how a model trained on FF++ originals generalises to manipulations it never
saw.

Crops stream from the faces cache (one row of an entry at a time) through a `DataLoader` whose workers
make the pseudo-fakes from the stored landmarks, as DeepfakeBench's `sbi_dataset.py` does, so memory does
not grow with the dataset. Each crop's randomness is seeded by (seed, epoch, crop), so a run is the same
with any number of workers and resumes exactly. The loop itself is `loop.fit`.

One run is one folder: `best/` (the checkpoint with the best validation score, never chosen on test),
`last/` (plus optimizer and RNG state, so a killed run resumes), `history.csv` and `finetune.json` (the
run's settings). Both checkpoints are `FrameClassifier` folders of the hub mixin (config.json,
model.safetensors, a model card naming the validation row best/ was chosen on). `best/` is what the embed
stage loads (`EmbedConfig.rgb_weights`); the embed cache key changes with its fingerprint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_model
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.cache import StageCache, write_json_atomic
from ..core.precision import autocast, resolve_device, training_dtype
from ..datasets import read_index
from ..models.backbones import AUTO, FrameClassifier, create_backbone, is_frame_classifier
from ..models.hub import WEIGHTS_NAME
from ..preprocessing.batching import to_unit_tensor
from ..preprocessing.faces import read_face_row, read_faces
from .attacks import ADVERSARIAL_TRAINING, fgsm_rs
from .distributed import Distributed, distributed
from .loop import Batch, check_same_run, fit, log_to_file
from .sbi import AugmentConfig, SBIConfig, augment, self_blend

log = logging.getLogger(__name__)

FAKES_MODES = ("none", "dataset")
RUN_FILE = "finetune.json"  # in the run folder: its settings, faces cache and crop counts
REAL, DATASET_FAKE, PSEUDO_FAKE = 0, 1, 2  # where a validation image comes from


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
    # Share of the backbone's weights, counted back from its output, that are tuned; the earlier layers
    # (edges, textures) keep their pretrained weights, while their BatchNorm statistics still follow the
    # crops. 0: only the new head's weights are trained.
    tune_fraction: float = 1.0
    min_lr: float = 1e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    patience: int = 4  # epochs without a better validation score before stopping
    max_minutes: float | None = None  # wall-clock budget; stops after the epoch that crosses it
    seed: int = 0
    device: str = "auto"
    num_workers: int = 2  # DataLoader processes that read crops and make the pseudo-fakes
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
        if not 0.0 <= self.tune_fraction <= 1.0:
            raise ValueError(f"tune_fraction must lie in [0, 1], got {self.tune_fraction}")
        if self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"batch_size must be even and >= 2 (half real, half fake), "
                             f"got {self.batch_size}")


# Data ----------------------------------------------------------------------------------------------------
@dataclass
class FrameRefs:
    """Which crops of a split train or validate, without their pixels: one row per crop."""

    videos: pd.DataFrame  # the index rows these crops come from
    row: np.ndarray  # int64 [N]: the crop's row in its faces-cache entry
    video: np.ndarray  # int64 [N]: row of `videos`
    label: np.ndarray  # int64 [N]: 1 fake

    def __len__(self) -> int:
        return len(self.label)

    def item(self, crop: int) -> str:
        return self.videos["video_id"].iloc[self.video[crop]]


def frame_refs(index: pd.DataFrame, faces_cache: StageCache, split: str | None, crops_per_video: int,
               fakes: bool = True) -> FrameRefs:
    """Up to `crops_per_video` evenly spaced crops of the first (largest) person of every video of
    `split` (all videos if None; fakes only with `fakes`) that the faces stage handled. Reads only the
    entries' track ids."""
    rows = index if split is None else index[index["split"] == split]
    if not fakes:
        rows = rows[rows["label"] == "real"]
    rows = rows.reset_index(drop=True)
    done, failures = set(faces_cache.done_items()), faces_cache.failures()
    crop_rows, labels, videos = [], [], []
    skipped: dict[str, str] = {}
    for number, (video_id, label) in enumerate(zip(rows["video_id"], rows["label"], strict=True)):
        if video_id not in done:
            skipped[video_id] = failures.get(video_id) or "not in the faces cache"
            continue
        tensors, _ = read_faces(faces_cache, video_id, ["track", "landmarks"])
        if "landmarks" not in tensors:
            raise ValueError(f"faces cache {faces_cache.dir} has no landmarks for {video_id}; run the faces "
                             f"stage again")
        person = np.flatnonzero(tensors["track"] == 0)
        chosen = person[np.unique(np.linspace(0, len(person) - 1, crops_per_video).round().astype(int))]
        crop_rows.append(chosen)
        labels.append(np.full(len(chosen), int(label == "fake")))
        videos.append(np.full(len(chosen), number))
    if skipped:
        log.warning("%d %s videos have no faces and are skipped: %s", len(skipped), split or "indexed",
                    ", ".join(f"{v} ({why})" for v, why in list(skipped.items())[:5]))
    if not crop_rows:
        raise ValueError(f"no {split or 'indexed'} video of the index has face crops in {faces_cache.dir}")
    return FrameRefs(rows, np.concatenate(crop_rows), np.concatenate(videos), np.concatenate(labels))


def read_crop(faces: StageCache, refs: FrameRefs, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """One crop uint8 [S, S, 3] and its landmarks float32 [68, 2], read alone from the cache."""
    tensors = read_face_row(faces, refs.item(crop), ("crops", "landmarks"), int(refs.row[crop]))
    return tensors["crops"], tensors["landmarks"].astype(np.float32)


def pseudo_fake(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, config: SBIConfig
                ) -> np.ndarray | None:
    """A self-blended version of `crop`, or None where its landmarks are unusable."""
    try:
        return self_blend(crop, landmarks, rng, config)[0]
    except ValueError:
        return None


class TrainingPairs(Dataset):
    """Item (epoch, i): the i-th real crop and its own pseudo-fake (with `fakes="dataset"`, half of the
    time a random dataset fake crop instead), both augmented alike, so compression, blur and colour cannot
    tell the classes apart. Returns (images uint8 [1 or 2, S, S, 3], labels [1 or 2])."""

    def __init__(self, faces: StageCache, refs: FrameRefs, config: FinetuneConfig):
        self.faces, self.refs, self.config = faces, refs, config
        self.reals = np.flatnonzero(refs.label == 0)
        self.fakes = np.flatnonzero(refs.label == 1) if config.fakes == "dataset" else np.zeros(0, int)

    def __len__(self) -> int:
        return len(self.reals)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        epoch, i = key
        rng = np.random.default_rng([self.config.seed, epoch, i])
        crop, landmarks = read_crop(self.faces, self.refs, self.reals[i])
        if len(self.fakes) and rng.random() < 0.5:
            fake = read_crop(self.faces, self.refs, rng.choice(self.fakes))[0]
        else:
            fake = pseudo_fake(crop, landmarks, rng, self.config.sbi)
        images = [augment(crop, rng, self.config.augment)]
        if fake is not None:
            images.append(augment(fake, rng, self.config.augment))
        return np.stack(images), np.array([0, 1][: len(images)], np.float32)


class ValidationImages(Dataset):
    """Item i: the i-th crop as it is, and for a real crop also its pseudo-fake (seeded by i alone, so the
    same every epoch). Returns (images uint8 [k, S, S, 3], source [k], video [k]); pseudo-fakes get
    video -1."""

    def __init__(self, faces: StageCache, refs: FrameRefs, config: FinetuneConfig):
        self.faces, self.refs, self.config = faces, refs, config

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        crop, landmarks = read_crop(self.faces, self.refs, i)
        if self.refs.label[i]:
            return crop[None], np.array([DATASET_FAKE]), self.refs.video[i:i + 1]
        fake = pseudo_fake(crop, landmarks, np.random.default_rng([self.config.seed + 1, i]), self.config.sbi)
        if fake is None:
            return crop[None], np.array([REAL]), self.refs.video[i:i + 1]
        return np.stack([crop, fake]), np.array([REAL, PSEUDO_FAKE]), np.array([self.refs.video[i], -1])


class FinetuneImages(Dataset):
    """Training pairs under keys ("train", epoch, i) and validation images under ("val", i): one dataset,
    so one DataLoader and one set of workers serves both."""

    def __init__(self, pairs: TrainingPairs, validation: ValidationImages):
        self.parts = {"train": pairs, "val": validation}

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts.values())

    def __getitem__(self, key: tuple) -> tuple[np.ndarray, ...]:
        part, *index = key
        return self.parts[part][index[0] if len(index) == 1 else tuple(index)]


def concatenate(items: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """A DataLoader batch of items that each hold one or two images."""
    return tuple(np.concatenate(parts) for parts in zip(*items, strict=True))


def single_threaded_worker(_: int) -> None:
    """Workers share the machine with the training process: one thread each for OpenCV and torch."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


class BatchPlan:
    """A batch sampler whose batches the main process sets before each pass, so one DataLoader (and its
    workers) serves every epoch."""

    def __init__(self, batches: list[list[Any]] | None = None) -> None:
        self.batches = batches or []

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def loader(dataset: Dataset, plan: BatchPlan, workers: int) -> DataLoader:
    """Workers are spawned, not forked: a fork copies locks that the parent's threads (face detection, BLAS,
    OpenCV) may hold at that moment, and the child can wait on them forever. They start once and stay."""
    return DataLoader(dataset, batch_sampler=plan, num_workers=workers, collate_fn=concatenate,
                      worker_init_fn=single_threaded_worker if workers else None,
                      multiprocessing_context="spawn" if workers else None, persistent_workers=workers > 0)


def finetuned_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The selected checkpoint (`best/`) of a fine-tuning run, or an error saying how to make one."""
    best = Path(run_dir) / "best"
    if not is_frame_classifier(best):
        raise FileNotFoundError(f"{best} holds no fine-tuned embedder: run `megatron finetune` (notebook "
                                f"02_finetune) first, or embed with the frozen ImageNet weights")
    return best


def score_videos(model: FrameClassifier, index: pd.DataFrame, faces: StageCache, split: str | None,
                 crops_per_video: int = 16, amp: bool = True, workers: int = 0) -> pd.DataFrame:
    """The frame classifier as a video detector: the split's index rows with `probability`, the mean
    P(fake) of up to `crops_per_video` crops of the video's main face."""
    refs = frame_refs(index, faces, split, crops_per_video)
    device = next(model.parameters()).device
    crops = loader(CropsAsTheyAre(faces, refs), BatchPlan(chunks(len(refs), 64)), workers)
    probs = np.concatenate([frame_probabilities(model, images, device, amp) for (images,) in crops])
    per_video = pd.Series(probs).groupby(refs.video).mean()
    scores = refs.videos.iloc[per_video.index].reset_index(drop=True)
    return scores.assign(probability=per_video.to_numpy(), crops=np.bincount(refs.video)[per_video.index])


class CropsAsTheyAre(Dataset):
    def __init__(self, faces: StageCache, refs: FrameRefs):
        self.faces, self.refs = faces, refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[np.ndarray]:
        return (read_crop(self.faces, self.refs, i)[0][None],)


def chunks(count: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


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
    where validation has them (only with `fakes="dataset"`). `score` selects the checkpoint: the
    pseudo-fake AUC (the learned cue on unseen identities, over every frame: steady), averaged with the
    video AUC on the dataset's fakes when training may see them (transfer to real manipulations)."""
    real, dataset_fake, pseudo = source == REAL, source == DATASET_FAKE, source == PSEUDO_FAKE
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


class EmbedderTask:
    """The RGB embedder as a frame classifier on real crops and their pseudo-fakes (`loop.Task`)."""

    name = "finetune"

    def __init__(self, model: FrameClassifier, faces: StageCache, train: FrameRefs, val: FrameRefs,
                 config: FinetuneConfig, device: torch.device):
        self.model, self.config, self.device = model, config, device
        self.pairs = TrainingPairs(faces, train, config)
        self.validation = ValidationImages(faces, val, config)
        self.half = config.batch_size // 2  # real crops per global batch
        self.plan = BatchPlan()
        self.loader = loader(FinetuneImages(self.pairs, self.validation), self.plan, config.num_workers)

    def param_groups(self) -> list[dict[str, Any]]:
        tuned = [parameter for parameter in self.model.backbone.parameters() if parameter.requires_grad]
        return [{"params": tuned},
                {"params": self.model.head.parameters(), "lr_scale": 10.0}]  # the new head learns faster

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.pairs) / self.half)

    def batches(self, epoch: int, generator: torch.Generator, world: Distributed) -> Iterator[Batch]:
        """Every real crop once, in a fresh order, `half` per global batch; each rank loads its share."""
        order = torch.randperm(len(self.pairs), generator=generator).tolist()
        global_batches = [order[start:start + self.half] for start in range(0, len(order), self.half)]
        # Every rank needs a share: a last batch smaller than the world is dropped (DDP steps in lockstep).
        global_batches = [batch for batch in global_batches if len(batch) >= world.world_size]
        self.plan.batches = [[("train", epoch, i) for i in batch[world.share(len(batch))]]
                             for batch in global_batches]
        for images, labels in self.loader:
            pixels, targets = to_unit_tensor(images, self.device), torch.from_numpy(labels).to(self.device)
            if self.config.adversarial == "fgsm-rs":
                pixels = fgsm_rs(self.model, pixels, targets, self.config.adversarial_eps)
            yield {"pixels": pixels}, targets, world.total(len(labels), self.device)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")

    def validate(self, world: Distributed) -> dict[str, float]:
        mine = range(len(self.validation))[world.share(len(self.validation))]
        self.plan.batches = [[("val", mine[i]) for i in chunk] for chunk in chunks(len(mine), 32)]
        probs, sources, videos = [np.zeros(0)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for images, source, video in self.loader:
            probs.append(frame_probabilities(self.model, images, self.device, self.config.amp))
            sources.append(source)
            videos.append(video)
        gathered = (world.gather(np.concatenate(parts)) for parts in (probs, sources, videos))
        return validation_metrics(*gathered)

    def save_selected(self, folder: Path, row: dict[str, Any]) -> None:
        self.model.save_pretrained(folder, model_card_kwargs={"selected": row})

    def load(self, folder: Path) -> None:
        load_model(self.model, folder / WEIGHTS_NAME, device=str(self.device))


def freeze_early_layers(backbone: nn.Module, tune_fraction: float) -> tuple[int, int]:
    """Freezes every parameter tensor of `backbone` that lies before its last `tune_fraction` of weights,
    counted in values from the output end (registration order is forward order in timm and torchvision);
    returns the number of values left to tune, and of all values."""
    parameters = list(backbone.parameters())
    sizes = np.array([parameter.numel() for parameter in parameters])
    to_output = np.cumsum(sizes[::-1])[::-1]  # values from each tensor to the output, itself included
    tuned = to_output <= tune_fraction * sizes.sum()
    for parameter, tune in zip(parameters, tuned, strict=True):
        parameter.requires_grad_(bool(tune))
    return int(sizes[tuned].sum()), int(sizes.sum())


def finetune(index: str | os.PathLike | pd.DataFrame, faces_cache_dir: str | os.PathLike,
             config: FinetuneConfig, out_dir: str | os.PathLike, resume: bool = False) -> Path:
    """Fine-tune on the index's train split, select on its val split; returns `<out_dir>/best`. Under
    torchrun, each process trains on its share of every batch (see `distributed.py`).

    `resume=True` continues the run in `out_dir` from its last/ checkpoint (a finished run returns at once)
    or starts it there if the folder holds none; a run there with other settings or crops is refused."""
    out_dir = Path(out_dir)
    if is_frame_classifier(out_dir / "best") and not resume:
        raise ValueError(f"{out_dir} already holds a fine-tuning run; resume it or choose another folder")
    faces = StageCache.open(faces_cache_dir, "faces")
    if resume and (out_dir / RUN_FILE).exists():
        saved = json.loads((out_dir / RUN_FILE).read_text())
        check_same_run(out_dir, {"config": saved["config"], "faces_key": saved.get("faces_key")},
                       {"config": asdict(config), "faces_key": faces.dir.name},
                       defaults={"config": asdict(FinetuneConfig())})
    device = resolve_device(config.device)
    with distributed(device) as world:
        if world.main:
            out_dir.mkdir(parents=True, exist_ok=True)
        with log_to_file(out_dir / "finetune.log") if world.main else nullcontext():
            return _finetune(index, faces, config, out_dir, resume, world.device(device), world)


def _finetune(index: str | os.PathLike | pd.DataFrame, faces: StageCache, config: FinetuneConfig,
              out_dir: Path, resume: bool, device: torch.device, world: Distributed) -> Path:
    torch.manual_seed(config.seed)
    table = index if isinstance(index, pd.DataFrame) else read_index(index)
    with_fakes = config.fakes == "dataset"  # with "none", no fake video is read, for training or selection
    train = frame_refs(table, faces, "train", config.crops_per_video, fakes=with_fakes)
    val = frame_refs(table, faces, "val", config.crops_per_video, fakes=with_fakes)
    if not (train.label == 0).any():
        raise ValueError("the train split has no real video with face crops: self-blending needs reals")
    model = FrameClassifier.start(create_backbone(config.backbone, weights=config.weights), config.input_size)
    tuned_values, all_values = freeze_early_layers(model.backbone, config.tune_fraction)
    if world.enabled and device.type == "cuda":  # batch statistics over the global batch, as one GPU sees
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    tuned = model.config
    log.info("fine-tuning %s (%s) at %d px on %s, %d of its %d weights: %d train crops (%d real), %d val "
             "crops; fakes=%s; %d loader workers", tuned.backbone, tuned.base_weights, tuned.input_size,
             device, tuned_values, all_values, len(train),
             int((train.label == 0).sum()), len(val), config.fakes, config.num_workers)
    if world.main:
        write_json_atomic(out_dir / RUN_FILE, {
            "config": asdict(config), "faces_key": faces.dir.name, "train_crops": len(train),
            "val_crops": len(val),
            "device": str(device), "processes": world.world_size})
    return fit(EmbedderTask(model, faces, train, val, config, device), config, out_dir, device, world, resume)
