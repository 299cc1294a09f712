"""The designs Megatron is compared with, as temporal heads on the same cached embeddings.

- `lstm` (`LSTMHead`): each stream projected to d_model and read by a (bi)LSTM over its valid frames,
  pooled (masked mean, or the last states), streams concatenated, a linear head: the DFDC-era design.
- `frame` (`FrameHead`, model name `frame-cnn`): no temporal model; a linear classifier scores every frame
  from its concatenated stream features, and the clip's P(fake) is the mean of its frames' (or their
  maximum): the per-frame CNN baseline of FF++ papers, the CNN being the (fine-tuned) image embedder.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .heads import HEADS, MegatronConfig, TemporalHead


def valid_first(frames: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames reordered so each clip's valid ones come first, in order (frame dropout leaves holes), and
    the number of valid frames per clip (at least 1)."""
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    gathered = frames.gather(1, order[..., None].expand(-1, -1, frames.shape[-1]))
    return gathered, valid.sum(1).clamp(min=1)


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of the valid positions; values [B, T, ...], valid [B, T]."""
    weights = valid.reshape(*valid.shape, *([1] * (values.dim() - 2))).to(values.dtype)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class LSTMHead(TemporalHead):
    def __init__(self, config: MegatronConfig):
        super().__init__(config)
        self.project = nn.ModuleDict({name: nn.Linear(self.dims[name], config.d_model)
                                      for name in self.stream_names})
        self.lstms = nn.ModuleDict({name: nn.LSTM(
            config.d_model, config.d_model, num_layers=config.n_layers, batch_first=True,
            bidirectional=config.bidirectional, dropout=config.dropout if config.n_layers > 1 else 0.0)
            for name in self.stream_names})
        fused_dim = self.pooled_size() * len(self.stream_names)
        self.head = nn.Sequential(nn.LayerNorm(fused_dim), nn.Dropout(config.dropout),
                                  nn.Linear(fused_dim, config.num_classes))

    def pooled_size(self) -> int:
        return self.config.d_model * (2 if self.config.bidirectional else 1)

    def forward(self, rgb: torch.Tensor | None = None, depth: torch.Tensor | None = None,
                audio: torch.Tensor | None = None, *, valid: torch.Tensor) -> torch.Tensor:
        inputs = self.stream_inputs(rgb, depth, audio)
        masks = self.stream_masks(inputs, valid)
        pooled = {}
        for name, frames in inputs.items():
            # Silent audio frames are read as zeros; a clip without any sound is replaced after pooling.
            frames, lengths = valid_first(self.project[name](frames), valid)
            packed = pack_padded_sequence(frames, lengths.cpu(), batch_first=True, enforce_sorted=False)
            outputs, (hidden, _) = self.lstms[name](packed)
            if self.config.pooling == "last":  # the final state of each direction of the top layer
                directions = 2 if self.config.bidirectional else 1
                pooled[name] = torch.cat(list(hidden[-directions:]), dim=-1)
            else:
                outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=frames.shape[1])
                present = torch.arange(frames.shape[1], device=valid.device)[None] < lengths[:, None]
                pooled[name] = masked_mean(outputs, present)
        return self.head(torch.cat(list(self.fill_silent(pooled, masks).values()), dim=-1))


class FrameHead(TemporalHead):
    def __init__(self, config: MegatronConfig):
        super().__init__(config)
        features = sum(self.dims[name] for name in self.stream_names)
        self.classifier = nn.Sequential(nn.LayerNorm(features), nn.Dropout(config.dropout),
                                        nn.Linear(features, config.num_classes))

    def pooled_size(self) -> int:
        return 0  # frames are classified one by one (a silent frame's audio features are zeros)

    def frame_logits(self, rgb: torch.Tensor | None = None, depth: torch.Tensor | None = None,
                     audio: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, num_classes] of every frame on its own."""
        return self.classifier(torch.cat(list(self.stream_inputs(rgb, depth, audio).values()), dim=-1))

    def forward(self, rgb: torch.Tensor | None = None, depth: torch.Tensor | None = None,
                audio: torch.Tensor | None = None, *, valid: torch.Tensor) -> torch.Tensor:
        logits = self.frame_logits(rgb, depth, audio)
        if self.config.pooling == "max":
            return logits.masked_fill(~valid[..., None], float("-inf")).amax(1)
        # The mean of the frames' probabilities, as a logit (so training and thresholds work unchanged).
        probability = masked_mean(torch.sigmoid(logits.float()), valid)
        return torch.logit(probability.clamp(1e-6, 1 - 1e-6)).to(logits.dtype)


HEADS.register(LSTMHead, "lstm")
HEADS.register(FrameHead, "frame")
