"""Stage 3: a relative depth map for every face crop (Depth Anything V2 by default).

Crops from many videos share fixed-size batches; resizing and normalisation run as tensor ops on the
model's device. Each map is min-max normalised per crop (Depth Anything predicts relative inverse
depth, so near is bright), rounded to DEPTH_BITS = 11 bits and stored as one 16-bit PNG per map beside the
faces entry's `frame_index`. 8 bits would band smooth depth into terraces whose edges the depth embedder
sees (its embeddings move by ~13%, most of the change between neighbouring frames); 11 bits move them as
little as the float16 maps stored before (~0.5%) at a seventh of the size (bench/bench_cache_size.py).
`DepthEstimator` returns maps on the same grid, so what `predict` computes equals what was cached.
Offline, `facemesh` renders the depth of MediaPipe's 3D face mesh fitted to each crop: real geometry
from a real network, where Depth Anything's weights cannot be had.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.cache import StageCache, StageReport, file_fingerprint
from ..core.image_codec import ImageCodec, decode_images, encode_images
from ..core.precision import autocast, resolve_device, resolve_dtype
from ..models.backbones import DEFAULT_DEPTH_MODEL, load_depth_model, prepare_pixels
from .batching import done_upstream, run_batched_stage, to_unit_tensor
from .faces import read_faces

FACEMESH = "facemesh"  # the offline provider: depth rendered from MediaPipe's 468-point 3D face mesh
DEPTH_BITS = 11  # the precision maps are stored (and returned) at: see the module docstring
DEPTH_LEVELS = 2**DEPTH_BITS - 1
DEPTH_CODEC = ImageCodec("PNG", "uint16", 1, (("compress_level", 6),))


@dataclass
class DepthConfig:
    # hub id, local save_pretrained folder, "facemesh" (offline face geometry) or random-init:<architecture>
    model: str = DEFAULT_DEPTH_MODEL
    input_size: int | None = None  # side fed to the model; None: the model's own image processor size
    output_size: int = 224  # side of the stored depth maps
    batch_size: int = 16
    dtype: str = "auto"  # auto: bfloat16/float16 on GPU, float32 on CPU
    device: str = "auto"

    def __post_init__(self) -> None:
        if min(self.output_size, self.batch_size, self.input_size or 1) < 1:
            raise ValueError(f"input_size, output_size and batch_size must be >= 1: {self}")


class DepthEstimator:
    """Face crops in, depth maps out: uint8 [N, S, S, 3] -> float32 [N, output_size, output_size] in
    [0, 1] on the stored grid (multiples of 1 / DEPTH_LEVELS), near bright. `depth_maps` is the same
    computation on tensors before that rounding, differentiable for network providers, so the pixel path
    of `MegatronModel` matches the cached path to half a grid step."""

    def __init__(self, config: DepthConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if config.model == FACEMESH:
            from .facemesh import FaceMeshDepth  # only offline runs need the TFLite runtime

            self.model, self.facemesh = None, FaceMeshDepth(config.output_size)
            self.input_size, self.data_config = config.output_size, None
            self.weights, self.fingerprint = self.facemesh.weights, self.facemesh.fingerprint
            return
        loaded = load_depth_model(config.model)
        self.input_size = config.input_size or loaded.data_config.input_size
        if self.input_size % loaded.patch_size:
            below = self.input_size // loaded.patch_size * loaded.patch_size
            raise ValueError(f"depth input_size must be a multiple of the model's patch size "
                             f"{loaded.patch_size} (e.g. {below or loaded.patch_size} or "
                             f"{below + loaded.patch_size}), got {self.input_size}")
        self.model, self.facemesh = loaded.model.to(self.device), None
        self.data_config = loaded.data_config
        self.weights = loaded.weights
        self.fingerprint = loaded.fingerprint

    def identity(self) -> dict[str, object]:
        """Everything that changes the maps: the weights by content (not by name or path), sizes and
        dtype. Batch size and device do not, beyond float rounding."""
        return {"weights": self.fingerprint, "input_size": self.input_size,
                "output_size": self.config.output_size, "dtype": str(self.dtype).removeprefix("torch."),
                "storage": {"bits": DEPTH_BITS, **DEPTH_CODEC.identity()}}

    def depth_maps(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> [N, S, S] float32 in [0, 1], each map min-max normalised.
        The face-mesh provider runs outside torch, so no gradient flows through it."""
        size = self.config.output_size
        if self.facemesh is not None:
            crops = pixels.detach().permute(0, 2, 3, 1).mul(255).round().byte().cpu().numpy()
            return torch.from_numpy(self.facemesh(crops)).to(pixels.device)
        data = self.data_config
        inputs = prepare_pixels(pixels, self.input_size, data.mean, data.std, data.interpolation)
        with autocast(self.device, self.dtype):
            depth = self.model(pixel_values=inputs).predicted_depth
        depth = F.interpolate(depth.float().unsqueeze(1), size=(size, size), mode="bilinear",
                              align_corners=False).flatten(1)
        low, high = depth.aminmax(dim=1, keepdim=True)
        depth = (depth - low) / (high - low).clamp_min(torch.finfo(depth.dtype).tiny)  # flat map: all zeros
        return depth.view(-1, size, size)

    @torch.inference_mode()
    def predict_batch(self, crops: np.ndarray) -> np.ndarray:
        maps = self.depth_maps(to_unit_tensor(crops, self.device))
        return maps.mul(DEPTH_LEVELS).round_().div_(DEPTH_LEVELS).cpu().numpy()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.config.output_size, self.config.output_size), np.float32)
        step = self.config.batch_size
        return np.concatenate([self.predict_batch(crops[i:i + step]) for i in range(0, len(crops), step)])


def compute_depth(faces_cache: StageCache, depth_cfg: DepthConfig, force: bool = False,
                  cache_root: str | os.PathLike | None = None, item_ids: Sequence[str] | None = None,
                  estimator: DepthEstimator | None = None) -> tuple[StageCache, StageReport]:
    """Depth maps for every face entry of `faces_cache` (or only `item_ids`) into the `depth` cache, with
    `estimator` when a caller keeps one loaded (it must be built from `depth_cfg`).

    Items already done for the same faces entry are skipped (all redone with `force`); a faces entry
    that is missing, corrupt or empty becomes a recorded failure of that item only.
    """
    estimator = estimator or DepthEstimator(depth_cfg)
    cache = StageCache("depth", {"faces": faces_cache.key, **estimator.identity()}, root=cache_root)
    items = done_upstream(faces_cache, item_ids)

    def fingerprint(item_id: str) -> str:
        path = faces_cache.entry_path(item_id)
        return file_fingerprint(path) if path.exists() else "missing"

    def load(item_id: str) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        tensors, _ = read_faces(faces_cache, item_id, ["crops", "frame_index"])
        crops = tensors["crops"]
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8 or len(crops) == 0:
            raise ValueError(f"faces entry {item_id!r} has crops {crops.dtype} {list(crops.shape)}, "
                             f"expected uint8 [N>0, S, S, 3]")
        return (crops,), tensors["frame_index"].astype(np.int32)

    def save(frame_index: np.ndarray, outputs: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
        return {**encode_depth(outputs[0]), "frame_index": frame_index}

    def infer(crops: np.ndarray) -> tuple[np.ndarray]:
        return (estimator.predict_batch(crops),)

    report = run_batched_stage(cache, items, fingerprint, load, infer, save, depth_cfg.batch_size, force,
                               weights=estimator.weights)
    return cache, report


def encode_depth(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Maps float [N, S, S] in [0, 1] -> the stored stack `depth_bytes`, `depth_offsets`: DEPTH_BITS-bit
    levels in 16-bit PNGs (exact for maps that `DepthEstimator` returns)."""
    levels = np.rint(np.clip(maps, 0.0, 1.0) * DEPTH_LEVELS).astype(np.uint16)
    return encode_images("depth", levels, DEPTH_CODEC)


def read_depth(cache: StageCache, item_id: str) -> dict[str, np.ndarray]:
    """A depth entry: `depth` float32 [N, S, S] in [0, 1] and `frame_index` int32 [N]; the one way to
    read a depth cache. A map that cannot be decoded raises ValueError naming the item."""
    tensors, _ = cache.read(item_id)
    where = f"depth entry {item_id!r} ({cache.entry_path(item_id)})"
    levels = decode_images("depth", tensors, DEPTH_CODEC, where)
    return {"depth": levels.astype(np.float32) / DEPTH_LEVELS, "frame_index": tensors["frame_index"]}
