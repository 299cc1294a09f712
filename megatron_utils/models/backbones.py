"""Image backbones (a timm-style registry) and the depth-model loader.

Every loader returns the network in eval mode together with what produced it: `weights` says in
words which weights were loaded (logged, and printed by the CLI) and `fingerprint` identifies them
exactly, so stage caches keyed on it never mix outputs of different weights.

Hub weights are used when the Hugging Face hub can be reached or already sit in the local hub cache.
Offline (`HF_HUB_OFFLINE=1`, or the hub unreachable), only the local cache is consulted, so nothing
waits on network retries. The `auto` backbone then falls back, with a warning, to the ImageNet
MobileNetV2 whose real torchvision weights ship inside a registry package (`assets.py`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import timm
import torch
import torchvision
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..core.assets import ASSETS, describe, fetch
from ..core.cache import sha256_file
from ..core.registry import Registry

logger = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
RANDOM_INIT_PREFIX = "random-init:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
FINETUNED_MARKER = "finetune.json"  # written by `megatron finetune` beside its model.safetensors
WEIGHTS_NAME = "model.safetensors"


class WeightsUnavailableError(FileNotFoundError):
    """Weights that cannot be found locally or fetched; the message says what to do instead."""


@dataclass(frozen=True)
class DataConfig:
    """How images must be prepared for a network: resized to `input_size` square, then normalised."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    interpolation: str = "bicubic"


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


# Hub access ---------------------------------------------------------------------------------------
def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` read now (the hub library reads it only once, at import)."""
    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return flag.upper() in {"1", "ON", "YES", "TRUE"} or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


@functools.cache
def _hub_answers() -> bool:
    url = urlparse(huggingface_hub.constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=3):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """Whether to ask the hub at all; a quick probe avoids the hub client's long retry loop."""
    return not hub_offline() and _hub_answers()


def hub_download(repo_id: str, filename: str | None = None) -> Path:
    """A file of a hub repository (or, without `filename`, its JSON and safetensors files as a
    folder), downloaded or taken from the local hub cache when offline."""
    local_only = not hub_reachable()
    try:
        if filename is not None:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, local_files_only=local_only))
        return Path(huggingface_hub.snapshot_download(
            repo_id, local_files_only=local_only, allow_patterns=["*.json", "*.safetensors"]))
    except (OSError, ValueError, HfHubHTTPError) as error:
        where = "the hub is offline or unreachable" if local_only else "the hub download failed"
        raise WeightsUnavailableError(
            f"cannot load {repo_id!r}: {where} and it is not in the local hub cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}). On a machine with internet, save it with "
            f"save_pretrained (or download the weights file) and pass that local path instead. "
            f"[{type(error).__name__}: {error}]"
        ) from error


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
    the default weights. `auto`: `repvit_m0_9` when its weights are at hand, else `mobilenetv2_offline`
    with a warning; the returned `Backbone.name` says which one was built."""
    if name == AUTO and weights is not None and (Path(weights) / FINETUNED_MARKER).is_file():
        pass  # a fine-tuned checkpoint names its own architecture
    elif name == AUTO:
        try:
            return create_backbone("repvit_m0_9", pretrained, weights)
        except WeightsUnavailableError as error:
            if weights is not None:
                raise  # a local file the user named is broken: never swap it for other weights
            logger.warning("backbone auto: RepViT weights unavailable (%s). Using mobilenetv2_offline "
                           "(torchvision ImageNet MobileNetV2, packaged weights) instead.", error)
            return create_backbone("mobilenetv2_offline", pretrained)
    if weights is not None and (Path(weights) / FINETUNED_MARKER).is_file():
        backbone = _finetuned_backbone(name, Path(weights))
    elif name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join([AUTO, *list_backbones()])}")
    else:
        backbone = BACKBONES[name](pretrained=pretrained, weights=weights)
    if backbone.fingerprint == "random-init":
        logger.warning("%s built with RANDOM weights: its features are not meaningful", backbone.name)
    backbone.model.eval().requires_grad_(False)
    logger.info("backbone %s (%d-d features): %s", backbone.name, backbone.num_features, backbone.weights)
    return backbone


def _finetuned_backbone(name: str, folder: Path) -> Backbone:
    """A backbone fine-tuned by `megatron finetune`: its architecture built bare, then its weights loaded."""
    info, state, _ = load_finetuned_state(folder)
    if name not in (AUTO, info["backbone"]):
        raise ValueError(f"{folder} holds a fine-tuned {info['backbone']}, not a {name}")
    backbone = BACKBONES.entry(info["backbone"])(pretrained=False)
    backbone.model.load_state_dict(state)
    file = folder / "model.safetensors"
    return replace(backbone, data_config=replace(backbone.data_config, input_size=info["input_size"]),
                   weights=f"fine-tuned by megatron finetune (from {info['base_weights']})",
                   fingerprint=f"sha256:{sha256_file(file)}")


def load_finetuned_state(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(finetune.json, backbone state, head state) of a fine-tuned checkpoint folder."""
    info = json.loads((folder / FINETUNED_MARKER).read_text())
    state = load_file(str(folder / WEIGHTS_NAME))
    split = {part: {k.removeprefix(f"{part}."): v for k, v in state.items() if k.startswith(f"{part}.")}
             for part in ("backbone", "head")}
    return info, split["backbone"], split["head"]


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
