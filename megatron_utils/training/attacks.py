"""Adversarial evaluation through the whole pixel path of `MegatronModel` (face crops -> depth provider ->
both embedders -> temporal head), with torchattacks: white-box FGSM and PGD (L-infinity) and the
black-box Square attack with a query budget.

    megatron evaluate runs/NAME --attack fgsm pgd square --eps 1 2 4 8      # eps in 1/255 units

Each video's clips are rebuilt from the faces cache exactly as the embed stage laid them out, attacked
with the video's true label (the attack pushes the score away from it), and scored; the video score is
the mean of its clips', as in `evaluate`. Square, as torchattacks implements it, keeps a perturbed clip
only where it flips the verdict within its query budget; elsewhere the clip stays clean. torchattacks
attacks image classifiers, so `ClipAsImage` shows it a clip [T, 3, S, S] as one image [3, T x S, S] and
the detector's logit z as the two logits (0, z).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.cache import StageCache, atomic_path
from ..core.extras import extra_imports
from ..core.registry import Registry
from ..inference.pixel_path import MegatronModel
from ..models.checkpoint import load_decision
from ..preprocessing.embed import to_clips
from ..preprocessing.faces import read_faces
from ..visualization.plots import plot_robustness
from .evaluate import binary_metrics

log = logging.getLogger(__name__)


@dataclass
class AttackConfig:
    steps: int = 10  # PGD iterations
    step_size: float | None = None  # PGD step, in pixel units of [0, 1] (default: eps / 4)
    queries: int = 200  # Square: model evaluations per clip
    seed: int = 0


ATTACKS: Registry[Callable[..., object]] = Registry("attack")


def _torchattacks():
    with extra_imports("attacks"):
        import torchattacks
    return torchattacks


@ATTACKS.register
def fgsm(model: nn.Module, eps: float, config: AttackConfig):
    return _torchattacks().FGSM(model, eps=eps)


@ATTACKS.register
def pgd(model: nn.Module, eps: float, config: AttackConfig):
    return _torchattacks().PGD(model, eps=eps, alpha=config.step_size or eps / 4, steps=config.steps,
                            random_start=True)


@ATTACKS.register
def square(model: nn.Module, eps: float, config: AttackConfig):
    return _torchattacks().Square(model, norm="Linf", eps=eps, n_queries=config.queries, seed=config.seed)


def list_attacks() -> list[str]:
    return sorted(ATTACKS)


ADVERSARIAL_TRAINING = ("none", "fgsm-rs")


def two_class(logit: torch.Tensor) -> torch.Tensor:
    """A binary detector's logit z [B] or [B, 1] as the two-class logits (0, z) torchattacks expects."""
    logit = logit.reshape(-1, 1)
    return torch.cat([torch.zeros_like(logit), logit], dim=1)


class FrameLogits(nn.Module):
    """A frame classifier (pixels [B, 3, S, S] in [0, 1] -> logit [B]) as a two-class classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return two_class(self.model(pixels))


def fgsm_rs(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Adversarial training images: FGSM from a uniform random start with a step of 1.25 eps ("fast is
    better than free", Wong, Rice and Kolter 2020; torchattacks' FFGSM), computed in the model's training
    mode, within `eps` of `pixels` and in [0, 1]."""
    attacker = _torchattacks().FFGSM(FrameLogits(model), eps=eps, alpha=1.25 * eps)
    attacker.set_model_training_mode(model_training=model.training)
    return attacker(pixels, labels.long()).detach()


class ClipAsImage(nn.Module):
    """One clip [T, 3, S, S] as torchattacks' image [3, T*S, S] (any batch of copies of it, as query
    attacks make); the logit z as logits (0, z)."""

    def __init__(self, model: MegatronModel, valid: torch.Tensor, audio: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.valid = valid  # [T]: the clip's valid frames
        self.audio = audio  # [T, D]: its audio stream (not attacked: the attacker changes pixels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, size = images.shape
        crops = images.view(batch, 3, height // size, size, size).transpose(1, 2)
        audio = self.audio.expand(batch, -1, -1) if self.audio is not None else None
        return two_class(self.model(crops, self.valid.expand(batch, -1), audio))


def attack_clips(model: MegatronModel, crops: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor,
                 attack: str, eps: float, config: AttackConfig | None = None,
                 audio: torch.Tensor | None = None) -> torch.Tensor:
    """Adversarial copies of `crops` [B, T, 3, S, S] in [0, 1] (labels: 1 = fake), within `eps` in
    L-infinity and in [0, 1]; eps 0 returns the crops unchanged. `audio` [B, T, D]: the clips' audio stream
    when the head has one."""
    if eps == 0:
        return crops
    build = ATTACKS.entry(attack)
    _, frames, _, size, _ = crops.shape
    adversarial = []
    heard = audio if audio is not None else [None] * len(crops)
    for clip, clip_valid, clip_audio, label in zip(crops, valid, heard, labels, strict=True):
        # One clip per attack: query attacks (Square) score subsets of the batch, and each clip has its own
        # valid frames. In eval mode: torchattacks restores the mode it found, and a new Module trains.
        attacker = build(ClipAsImage(model, clip_valid, clip_audio).eval(), eps, config or AttackConfig())
        image = clip.transpose(0, 1).reshape(1, 3, frames * size, size)
        adversarial.append(attacker(image, label.long().view(1)).view(3, frames, size, size).transpose(0, 1))
    return torch.stack(adversarial).detach()


def video_clips(faces: StageCache, embed: StageCache, video_id: str
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(crops float [C, T, 3, S, S] in [0, 1], valid [C, T], audio stream [C, T, D] or None) of a video: its
    face crops laid out into clips by the embed stage's own `to_clips`, so clip c here is row c of its embed
    entry, whose audio stream (when it has one) comes along."""
    detected, _ = read_faces(faces, video_id)
    crops = detected["crops"]
    clips = to_clips({"crops": crops.reshape(len(crops), -1)}, detected["clip_index"],
                     detected["frame_index"], int(embed.config["frames_per_clip"]), detected.get("track"))
    pixels = torch.from_numpy(clips["crops"].reshape(*clips["valid"].shape, *crops.shape[1:]))
    audio = embed.read(video_id, ["audio"])[0].get("audio")
    return (pixels.permute(0, 1, 4, 2, 3).float() / 255, torch.from_numpy(clips["valid"]),
            torch.from_numpy(audio).float() if audio is not None else None)


def adversarial_table(run_dir: str | os.PathLike, attacks: list[str], eps_255: list[float],
                      split: str = "test", out_dir: str | os.PathLike | None = None,
                      config: AttackConfig | None = None, checkpoint: str = "best", device: str = "cpu",
                      max_videos: int | None = None) -> pd.DataFrame:
    """Clean and robust video AUC (with interval), balanced accuracy and mean P(true class) of the run on
    its split, per attack and eps (in 1/255); writes adversarial.csv, each video's P(fake) per setting in
    adversarial_scores.csv, and adversarial.png."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "eval" / "adversarial"
    config = config or AttackConfig()
    for name in attacks:
        ATTACKS.entry(name)  # an unknown name fails before any work
    model = MegatronModel.from_run(run_dir, checkpoint, device).requires_grad_(False)
    threshold = load_decision(run_dir / checkpoint).threshold
    embed = StageCache.open(json.loads((run_dir / "config.json").read_text())["data"]["embed_cache"], "embed")
    faces = embed.upstream("faces")
    table = pd.read_csv(run_dir / "index.csv")
    table = table[(table["split"] == split) & table["video_id"].isin(set(embed.done_items()))]
    if max_videos:  # half real, half fake, so the AUC stays defined on a quick subset
        table = table.groupby("label", group_keys=False).head(max(1, max_videos // 2))
    if table.empty:
        raise ValueError(f"{run_dir} has no embedded {split!r} videos to attack")
    labels = (table["label"] == "fake").to_numpy(np.int64)
    settings = [("none", 0.0)] + [(name, eps) for name in attacks for eps in eps_255 if eps > 0]
    scores = {setting: [] for setting in settings}
    for video_id, label in tqdm(zip(table["video_id"], labels, strict=True), total=len(table),
                                desc="adversarial", unit="video"):
        crops, valid, audio = video_clips(faces, embed, video_id)
        crops, valid = crops.to(device), valid.to(device)
        audio = audio.to(device) if audio is not None else None
        target = torch.full((len(crops),), int(label), device=device)
        for attack, eps in settings:
            attacked = attack_clips(model, crops, valid, target, attack, eps / 255, config, audio)
            with torch.no_grad():
                fake_logits = model(attacked, valid, audio)[:, 0]
            scores[(attack, eps)].append(float(model.head.probability(fake_logits).mean()))
    rows = []
    for (attack, eps), probs in scores.items():
        probs = np.asarray(probs)
        metrics = binary_metrics(labels, probs, threshold)
        rows.append({"attack": attack, "eps": eps, "videos": len(probs), "auc": metrics["auc"],
                     "auc_low": metrics["auc_low"], "auc_high": metrics["auc_high"],
                     "balanced_accuracy": metrics["balanced_accuracy"],
                     "p_true_class": float(np.mean(np.where(labels == 1, probs, 1 - probs)))})
    result = pd.DataFrame(rows)
    videos = {"video_id": table["video_id"].to_numpy(), "label": table["label"].to_numpy()}
    per_video = pd.concat([pd.DataFrame({**videos, "attack": attack, "eps": eps, "probability": probs})
                           for (attack, eps), probs in scores.items()], ignore_index=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "adversarial.csv") as tmp:
        result.to_csv(tmp, index=False)
    with atomic_path(out_dir / "adversarial_scores.csv") as tmp:
        per_video.to_csv(tmp, index=False)
    plot_robustness(result, out_dir / "adversarial.png", kind="attack", level="eps",
                    title="Detection under adversarial attacks (eps in 1/255)")
    log.info("adversarial evaluation of %s on %d %s videos: %s", run_dir, len(table), split, out_dir)
    return result
