"""Image backbones (a timm-style registry) and the depth-model loader.

Every loader returns the network in eval mode together with what produced it: `weights` says in
words which weights were loaded (logged, and printed by the CLI) and `fingerprint` identifies them
exactly, so stage caches keyed on it never mix outputs of different weights.

Hub weights come through `hub.py` (offline-aware). Offline, the `auto` backbone falls back, with a
warning, to the ImageNet MobileNetV2 whose real torchvision weights ship inside a registry package
(`assets.py`).

A backbone fine-tuned by `megatron finetune` is a `FrameClassifier` (the backbone plus a linear real/fake
head) saved through the hub mixin (`hub.HubModule`); `create_backbone` given its folder as
`weights` returns the tuned backbone.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torchvision
from huggingface_hub import ModelCard
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..core.assets import ASSETS, describe, fetch
from ..core.cache import sha256_file
from ..core.registry import Registry
from .hub import CONFIG_NAME, WEIGHTS_NAME, HubModule, WeightsUnavailableError, hub_download

logger = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
RANDOM_INIT_PREFIX = "random-init:"
WEIGHT_FILES = (WEIGHTS_NAME, "pytorch_model.bin")
FRAME_CLASSIFIER = "megatron-frame-classifier"  # the model_type in a fine-tuned embedder's config.json


@dataclass(frozen=True)
class DataConfig:
    """How images must be prepared for a network: resized to `input_size` square, then normalised."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    interpolation: str = "bicubic"


def prepare_pixels(pixels: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bicubic") -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] to the network's input: resized to `size` and normalised. Differentiable,
    so gradients reach the input pixels."""
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode=interpolation, align_corners=False,
                               antialias=True).clamp(0.0, 1.0)  # bicubic overshoots; PIL clamps too
    mean_t = torch.tensor(mean, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


@dataclass
class Backbone:
    name: str
    model: nn.Module  # eval mode: normalised images [B, 3, H, W] -> pooled features [B, num_features]
    data_config: DataConfig
    num_features: int
    weights: str  # where the weights came from, in words (no machine path: it goes into model cards)
    fingerprint: str  # exact identity of the weights: sha256 of the file, or "random-init"


@dataclass
class DepthModel:
    model: nn.Module  # eval mode: pixel_values [B, 3, H, W] -> output.predicted_depth [B, H, W]
    data_config: DataConfig  # from the model's own image processor
    patch_size: int  # input sizes must be multiples of it
    weights: str
    fingerprint: str


def weights_file(path: str | os.PathLike) -> Path:
    """A weights file, or the first of `model.safetensors`, `pytorch_model.bin` inside a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise WeightsUnavailableError(f"{path}: folder holds none of {', '.join(WEIGHT_FILES)}")
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: weights file does not exist")
    return path


def folder_fingerprint(folder: Path) -> str:
    """sha256 over a saved model's config and weight files."""
    digest = hashlib.sha256()
    weights = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"})
    if not weights:
        raise WeightsUnavailableError(f"{folder}: no .safetensors or .bin weights in this folder")
    for path in [folder / "config.json", *weights] if (folder / "config.json").exists() else weights:
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return f"sha256:{digest.hexdigest()}"


# Backbone registry --------------------------------------------------------------------------------
# Each entry: fn(pretrained: bool, weights: path | None) -> Backbone, registered under its function name.
BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")
register_backbone = BACKBONES.register
list_backbones = BACKBONES.names


def create_backbone(name: str, pretrained: bool = True, weights: str | os.PathLike | None = None) -> Backbone:
    """Build a registered backbone in eval mode. `weights`: a local file or folder to load instead of
    the default weights, or the folder of a fine-tuned `FrameClassifier` (its backbone is returned). `auto`:
    `repvit_m0_9` when its weights are at hand, else `mobilenetv2_offline` with a warning; the returned
    `Backbone.name` says which one was built."""
    finetuned = weights is not None and is_frame_classifier(weights)
    if name == AUTO and not finetuned:  # a fine-tuned embedder names its own architecture
        try:
            return create_backbone("repvit_m0_9", pretrained, weights)
        except WeightsUnavailableError as error:
            if weights is not None:
                raise  # a local file the user named is broken: never swap it for other weights
            logger.warning("backbone auto: RepViT weights unavailable (%s). Using mobilenetv2_offline "
                           "(torchvision ImageNet MobileNetV2, packaged weights) instead.", error)
            return create_backbone("mobilenetv2_offline", pretrained)
    if finetuned:
        backbone = FrameClassifier.from_pretrained(weights).embedder(Path(weights))
        if name not in (AUTO, backbone.name):
            raise ValueError(f"{weights} holds a fine-tuned {backbone.name}, not a {name}")
    elif name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join([AUTO, *list_backbones()])}")
    else:
        backbone = BACKBONES[name](pretrained=pretrained, weights=weights)
    if backbone.fingerprint == "random-init":
        logger.warning("%s built with RANDOM weights: its features are not meaningful", backbone.name)
    backbone.model.eval().requires_grad_(False)
    logger.info("backbone %s (%d-d features): %s", backbone.name, backbone.num_features, backbone.weights)
    return backbone


def _timm_backbone(name: str, timm_name: str, file: Path | None, weights: str, fingerprint: str,
                   input_size: int | None = None) -> Backbone:
    """A timm model without its classifier (`num_classes=0` returns pooled features)."""
    overlay = {"file": str(file)} if file is not None else None
    model = timm.create_model(timm_name, pretrained=file is not None, num_classes=0,
                              pretrained_cfg_overlay=overlay)
    data = timm.data.resolve_data_config(model=model)
    config = DataConfig(tuple(data["mean"]), tuple(data["std"]), input_size or data["input_size"][-1],
                        data["interpolation"])
    return Backbone(name, model, config, model.num_features, weights, fingerprint)


@register_backbone
def repvit_m0_9(pretrained: bool = True, weights: str | os.PathLike | None = None) -> Backbone:
    """RepViT-M0.9 distilled on ImageNet-1k (timm `repvit_m0_9.dist_450e_in1k`); 384-d features."""
    timm_name = "repvit_m0_9.dist_450e_in1k"
    if weights is not None:
        file = weights_file(weights)
        source = f"local file {file.name}"
    elif pretrained:
        file = hub_download(f"timm/{timm_name}", "model.safetensors")
        source = f"hub timm/{timm_name}"
    else:
        return _timm_backbone("repvit_m0_9", timm_name, None, "random-init", "random-init")
    return _timm_backbone("repvit_m0_9", timm_name, file, source, f"sha256:{sha256_file(file)}")


@register_backbone
def tiny_random(pretrained: bool = True, weights: str | os.PathLike | None = None) -> Backbone:
    """A tiny timm network (`test_byobnet`) at 64 px with random weights, for fast tests only.
    `pretrained` is ignored: there are no pretrained weights worth having."""
    if weights is not None:
        file = weights_file(weights)
        return _timm_backbone("tiny_random", "test_byobnet", file, f"local file {file.name}",
                              f"sha256:{sha256_file(file)}", input_size=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random network every time, so cached results stay comparable
        return _timm_backbone("tiny_random", "test_byobnet", None, "random-init (test model)",
                              "random-init:seed0", input_size=64)


@register_backbone
def mobilenetv2_offline(pretrained: bool = True, weights: str | os.PathLike | None = None) -> Backbone:
    """torchvision MobileNetV2 with its ImageNet weights (`mobilenet_v2-b0353104.pth`, shipped in a
    registry package); the classifier is dropped, leaving the 1280-d pooled features."""
    model = torchvision.models.mobilenet_v2()
    if weights is not None:
        file = weights_file(weights)
        source, fingerprint = f"local file {file.name}", f"sha256:{sha256_file(file)}"
    elif pretrained:
        file = Path(fetch("mobilenet_v2_imagenet"))  # sha256-verified by fetch
        source = f"torchvision ImageNet weights, {describe('mobilenet_v2_imagenet')}"
        fingerprint = f"sha256:{ASSETS['mobilenet_v2_imagenet'].sha256}"
    else:
        file, source, fingerprint = None, "random-init", "random-init"
    if file is not None:
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    model.classifier = nn.Identity()
    config = DataConfig(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 224, "bilinear")
    return Backbone("mobilenetv2_offline", model, config, model.last_channel, source, fingerprint)


# Fine-tuned embedders ----------------------------------------------------------------------------------
@dataclass
class FrameClassifierConfig:
    backbone: str  # the registered backbone: the architecture
    input_size: int  # side of the images fed to the backbone
    base_weights: str  # the weights fine-tuning started from, in words (no machine path)
    base_fingerprint: str  # and by content
    model_type: str = FRAME_CLASSIFIER  # tells this folder from other saved models


def is_frame_classifier(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding a saved `FrameClassifier`."""
    return (Path(path) / CONFIG_NAME).is_file() and \
        (HubModule.read_config(path) or {}).get("model_type") == FRAME_CLASSIFIER


class FrameClassifier(nn.Module, HubModule):
    """A registered image backbone plus a linear real/fake head: pixels [N, 3, H, W] in [0, 1] -> logits
    [N]. What `megatron finetune` trains; the embed stage uses its backbone (`embedder`)."""

    config_class = FrameClassifierConfig
    card_template = "frame_classifier_card.md"

    def __init__(self, config: FrameClassifierConfig, start_from: Backbone | None = None):
        """`start_from`: the backbone with the weights to fine-tune; without it the architecture is built
        bare, for saved weights to be loaded into."""
        super().__init__()
        self.config = config
        backbone = start_from or BACKBONES.entry(config.backbone)(pretrained=False)
        self.data_config = replace(backbone.data_config, input_size=config.input_size)
        self.num_features = backbone.num_features
        self.backbone = backbone.model.requires_grad_(True)
        self.head = nn.Linear(backbone.num_features, 1)

    @classmethod
    def start(cls, backbone: Backbone, input_size: int | None = None) -> FrameClassifier:
        """A classifier to fine-tune from `backbone`'s weights, with a new head."""
        return cls(FrameClassifierConfig(backbone.name, input_size or backbone.data_config.input_size,
                                         backbone.weights, backbone.fingerprint), backbone)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        data = self.data_config
        return self.backbone(prepare_pixels(pixels, data.input_size, data.mean, data.std, data.interpolation))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))[:, 0]

    def embedder(self, folder: Path) -> Backbone:
        """The tuned backbone, as the embed stage uses it; `folder` is where it was loaded from."""
        return Backbone(self.config.backbone, self.backbone, self.data_config, self.num_features,
                        f"fine-tuned by megatron finetune (from {self.config.base_weights})",
                        f"sha256:{sha256_file(folder / WEIGHTS_NAME)}")

    def generate_model_card(self, selected: dict | None = None) -> ModelCard:  # type: ignore[override]
        """The card; `selected`: the validation row the checkpoint was chosen on."""
        return super().generate_model_card(selected=selected)


# Depth models -------------------------------------------------------------------------------------
def depth_anything_v2_small_config():
    """The architecture of `depth-anything/Depth-Anything-V2-Small-hf`: DINOv2-S/14 + DPT head."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                            image_size=518, out_indices=[3, 6, 9, 12], apply_layernorm=True,
                            reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=384,
                               reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[48, 96, 192, 384],
                               fusion_hidden_size=64, head_hidden_size=32, depth_estimation_type="relative")


def depth_anything_tiny_config():
    """A tiny Depth Anything (4-layer, 32-wide DINOv2, 56 px) for tests and CI runs of the pipeline."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                            patch_size=14, image_size=56, out_indices=[1, 2, 3, 4], apply_layernorm=True,
                            reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=32,
                               neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)


RANDOM_INIT_DEPTH: Registry[Callable] = Registry("random-init depth architecture")
RANDOM_INIT_DEPTH.register(depth_anything_v2_small_config, "depth-anything-v2-small")
RANDOM_INIT_DEPTH.register(depth_anything_tiny_config, "depth-anything-tiny")


def locate_depth_model(model: str) -> tuple[Path, str]:
    """The local folder holding a depth model given as a hub id or a `save_pretrained` folder (downloaded
    or taken from the hub cache), and where it came from in words. Raises WeightsUnavailableError."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path, f"local folder {path.name}"
    if path.exists() or model.startswith((".", "/", "~")):
        raise WeightsUnavailableError(f"{model}: not a folder saved with save_pretrained (config.json, "
                                      f"model.safetensors, preprocessor_config.json)")
    try:
        folder = hub_download(model)
    except WeightsUnavailableError as error:
        raise WeightsUnavailableError(
            f"{error} Or choose `{RANDOM_INIT_PREFIX}depth-anything-v2-small` explicitly for RANDOM "
            f"weights (meaningless depth maps; tests and speed measurements only).") from error
    return folder, f"hub {model}"


def load_depth_model(model: str) -> DepthModel:
    """A depth model from a hub id, a local folder saved with `save_pretrained` (model and image
    processor), or `random-init:<architecture>` (real architecture, random weights: only for tests
    and speed measurements, announced with a warning)."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    if model.startswith(RANDOM_INIT_PREFIX):
        return _random_depth_model(model[len(RANDOM_INIT_PREFIX):])
    folder, source = locate_depth_model(model)
    fingerprint = folder_fingerprint(folder)
    net = AutoModelForDepthEstimation.from_pretrained(folder)
    try:
        processor = AutoImageProcessor.from_pretrained(folder)
    except OSError as error:
        raise WeightsUnavailableError(f"{folder}: no image processor config (preprocessor_config.json); "
                                      f"save the model's image processor there too") from error
    size = processor.size
    data = DataConfig(tuple(processor.image_mean), tuple(processor.image_std),
                      int(size.get("height") or size.get("shortest_edge")))
    logger.info("depth model: %s (%s)", source, folder)
    return DepthModel(net.eval().requires_grad_(False), data, int(net.config.patch_size), source, fingerprint)


def _random_depth_model(name: str) -> DepthModel:
    from transformers import DepthAnythingForDepthEstimation

    architecture = RANDOM_INIT_DEPTH.entry(name)
    logger.warning("#" * 100)
    logger.warning("depth model %s%s has RANDOM weights: its depth maps are NOT meaningful. Use it only "
                   "for tests and speed measurements.", RANDOM_INIT_PREFIX, name)
    logger.warning("#" * 100)
    config = architecture()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random network every time, so cached results stay comparable
        net = DepthAnythingForDepthEstimation(config)
    data = DataConfig(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, config.backbone_config.image_size)
    return DepthModel(net.eval().requires_grad_(False), data, config.patch_size,
                      f"{RANDOM_INIT_PREFIX}{name} (RANDOM weights)", f"{RANDOM_INIT_PREFIX}{name}:seed0")
