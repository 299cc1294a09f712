"""Megatron from pixels to verdict: the depth provider, both embedders and the temporal head in one module.

The stages cache what `features` computes (depth maps, then per-frame embeddings) and `megatron train`
trains `head` on that cache. `forward` chains the same computations on tensors, differentiable end to end
(normalisation and the per-crop depth min-max happen in float inside the graph), so gradients reach the
input pixels: for fine-tuning the embedders, attacking the detector, or explaining a verdict. The
face-mesh depth provider runs outside torch, so with it the depth stream is a constant of the pixels, as
the audio stream (when the head has one) always is: it comes in beside the crops, as the embed stage
cached it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..models.heads import TemporalHead
from ..preprocessing.depth import DepthEstimator
from ..preprocessing.embed import Embedder
from ..preprocessing.preprocess import PreprocessConfig


class MegatronModel(nn.Module):
    def __init__(self, depth: DepthEstimator, embedder: Embedder, head: TemporalHead):
        super().__init__()
        self.depth_estimator, self.embedder = depth, embedder
        # Registered as submodules, so parameters(), to(), train() and requires_grad_() reach them.
        self.depth_provider = depth.model if depth.model is not None else nn.Identity()
        self.rgb_embedder = embedder.rgb.model
        self.depth_embedder = embedder.depth.model
        self.head = head

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: str = "cpu"
                 ) -> MegatronModel:
        """The run's temporal head with the feature models of the preprocessing it was trained on."""
        run_dir = Path(run_dir)
        config = PreprocessConfig.from_embed_cache(run_dir)  # train copies preprocess.json into the run
        config.depth.device = config.embed.device = device
        head = TemporalHead.from_pretrained(run_dir / checkpoint, map_location=device)
        return cls(DepthEstimator(config.depth), Embedder(config.embed), head).eval()

    @property
    def streams(self) -> list[str]:
        return self.head.stream_names

    def features(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """crops float [B, T, 3, S, S] in [0, 1] -> {stream: [B, T, D]}: what the embed stage caches."""
        batch, length = crops.shape[:2]
        pixels = crops.flatten(0, 1)
        out = {}
        if "rgb" in self.streams:
            out["rgb"] = self.embedder.embed_pixels("rgb", pixels)
        if "depth" in self.streams:
            maps = self.depth_estimator.depth_maps(pixels).unsqueeze(1).expand(-1, 3, -1, -1)
            out["depth"] = self.embedder.embed_pixels("depth", maps)
        return {name: value.view(batch, length, -1) for name, value in out.items()}

    def head_logits(self, features: dict[str, torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
        """The temporal head on (cached) features -> logits [B, 1]."""
        return self.head(**features, valid=valid)

    def forward(self, crops: torch.Tensor, valid: torch.Tensor, audio: torch.Tensor | None = None
                ) -> torch.Tensor:
        """crops [B, T, 3, S, S] in [0, 1], valid bool [B, T], the audio stream [B, T, D] when the head
        has one -> logits [B, 1]; differentiable in the crops."""
        heard = {"audio": audio} if audio is not None else {}
        return self.head_logits(self.features(crops) | heard, valid)
