"""The Megatron temporal head: an RGB stream and a depth stream of per-frame embeddings, each a pre-norm
transformer encoder, meeting in bidirectional cross-attention (RGB queries attend to depth, depth queries
to RGB), pooled per stream and concatenated into a binary head (one logit: fake).

Every temporal head (this one and the baselines of `baselines.py`: an LSTM and a per-frame classifier) is a
`TemporalHead`: one `MegatronConfig`, whose `architecture` names the class in the `HEADS` registry, the
same forward signature and the same folder (the hub mixin's: config.json + model.safetensors, `hub.py`),
so training, evaluation and prediction take any of them unchanged; `TemporalHead.from_pretrained` builds
the architecture a folder's config.json names.

Ablations share this code: `streams="rgb"` or `"depth"` keeps one stream (no cross-attention), and
`fusion="concat"` keeps both streams but only concatenates their pooled vectors (late fusion).

An optional audio stream (`audio_dim` > 0, set when the embed cache holds one) joins the others: its frames
are the audio encoder's embedding plus a presence channel (`preprocessing/audio.py`), frames without sound
are masked, and a clip without any takes a learned "no audio" vector in place of its pooled audio, so a
silent video still gets a score. In cross-attention each stream attends to all the others.
A single image is a clip of length one. Padded frames (valid == False) never change the output: they are
masked as attention keys and left out of mean pooling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ..core.registry import Registry
from .hub import HubModule


@dataclass
class MegatronConfig:
    rgb_dim: int = 384  # per-frame embedding sizes of the two streams; each is projected to d_model
    depth_dim: int = 384
    audio_dim: int = 0  # the audio stream's feature size (embedding + presence channel); 0: no audio stream
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 2  # self-attention encoder layers per stream
    n_cross_layers: int = 1  # bidirectional cross-attention blocks (fusion="cross_attention")
    ff_dim: int = 512
    dropout: float = 0.1
    positional: str = "learned"  # "learned" | "sinusoidal"
    max_len: int = 64  # longest clip (frames) the positional encoding covers
    pooling: str = "cls"  # megatron: "cls" | "mean"; lstm: "mean" | "last"; frame: "mean" | "max"
    share_encoders: bool = False  # both streams use the same encoder layers (projections stay separate)
    fusion: str = "cross_attention"  # "cross_attention" | "concat"
    streams: str = "both"  # "both" | "rgb" | "depth"
    num_classes: int = 1  # one logit: P(fake) = sigmoid(logit)
    bidirectional: bool = True  # lstm: read the clip both ways
    architecture: str = "megatron"  # named in config.json, so a loader knows which class to build

    def __post_init__(self) -> None:
        poolings = POOLINGS.get(self.architecture, ("cls", "mean"))
        choices = {"positional": ("learned", "sinusoidal"), "pooling": poolings,
                   "fusion": ("cross_attention", "concat"), "streams": ("both", "rgb", "depth")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"MegatronConfig.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MegatronConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown MegatronConfig fields: {sorted(unknown)}")
        return cls(**values)


POOLINGS = {"megatron": ("cls", "mean"), "lstm": ("mean", "last"), "frame": ("mean", "max")}

# Named sizes, timm-style. Embedding sizes come from the embed cache, so they are not part of a name.
MODEL_CONFIGS: Registry[dict] = Registry("model")
MODEL_CONFIGS.update({
    "megatron-tiny": dict(d_model=64, n_heads=2, n_layers=1, n_cross_layers=1, ff_dim=128),
    "megatron-small": dict(d_model=128, n_heads=4, n_layers=2, n_cross_layers=1, ff_dim=256),
    "megatron-base": dict(d_model=256, n_heads=4, n_layers=2, n_cross_layers=1, ff_dim=512),
    "megatron-large": dict(d_model=384, n_heads=6, n_layers=4, n_cross_layers=2, ff_dim=1024),
    # The DFDC-era design: an image network's per-frame features, a bidirectional LSTM over time.
    "lstm": dict(architecture="lstm", d_model=128, n_layers=1, pooling="mean"),
    # No temporal model: a linear classifier per frame, the clip's score the mean of its frames' (the
    # ResNet/Xception frame-classifier baseline of FF++ papers, on the cached embeddings).
    "frame-cnn": dict(architecture="frame", pooling="mean"),
})
DEFAULT_MODEL = "megatron-base"
list_models = MODEL_CONFIGS.names


def model_config(name: str = DEFAULT_MODEL, **overrides) -> MegatronConfig:
    """The named configuration with `overrides` (e.g. rgb_dim, streams) applied."""
    return MegatronConfig(**{**MODEL_CONFIGS.entry(name), **overrides})


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class StreamEmbedding(nn.Module):
    """Projects per-frame embeddings to d_model, prepends a CLS token (pooling="cls") and adds positions."""

    def __init__(self, in_dim: int, config: MegatronConfig):
        super().__init__()
        self.use_cls = config.pooling == "cls"
        self.max_len = config.max_len
        self.project = nn.Linear(in_dim, config.d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.d_model)) if self.use_cls else None
        length = config.max_len + 1  # room for the CLS token
        if config.positional == "learned":
            self.position = nn.Parameter(torch.randn(1, length, config.d_model) * 0.02)
        else:
            self.register_buffer("position", sinusoidal_table(length, config.d_model)[None], persistent=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, frames: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if frames.shape[1] > self.max_len:
            raise ValueError(f"clip has {frames.shape[1]} frames, more than max_len={self.max_len}")
        tokens = self.project(frames)
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
            valid = torch.cat([valid.new_ones(len(valid), 1), valid], dim=1)
        return self.dropout(tokens + self.position[:, : tokens.shape[1]]), valid


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention with a residual connection, then a pre-norm feed-forward block."""

    def __init__(self, config: MegatronConfig):
        super().__init__()
        self.norm_query = nn.LayerNorm(config.d_model)
        self.norm_context = nn.LayerNorm(config.d_model)
        self.attention = nn.MultiheadAttention(config.d_model, config.n_heads, dropout=config.dropout,
                                               batch_first=True)
        self.norm_ff = nn.LayerNorm(config.d_model)
        self.feed_forward = nn.Sequential(
            nn.Linear(config.d_model, config.ff_dim), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.ff_dim, config.d_model), nn.Dropout(config.dropout),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, query: torch.Tensor, context: torch.Tensor, context_valid: torch.Tensor
                ) -> torch.Tensor:
        context = self.norm_context(context)
        attended, _ = self.attention(self.norm_query(query), context, context,
                                     key_padding_mask=~context_valid, need_weights=False)
        query = query + self.dropout(attended)
        return query + self.feed_forward(self.norm_ff(query))


def encoder(config: MegatronConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(config.d_model, config.n_heads, config.ff_dim, config.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    # No nested-tensor fast path: it returns padded positions as zeros only in eval mode.
    return nn.TransformerEncoder(layer, config.n_layers, norm=nn.LayerNorm(config.d_model),
                                 enable_nested_tensor=False)


class TemporalHead(nn.Module, HubModule):
    """What every temporal head shares: its config, the streams it reads, the hub mixin's folder.

    forward(rgb [B, T, rgb_dim] | None, depth [B, T, depth_dim] | None, *, valid bool [B, T]) -> logits
    [B, num_classes]; padded frames (valid False) never change the output."""

    config_class = MegatronConfig
    card_template = "temporal_head_card.md"

    def __init__(self, config: MegatronConfig):
        super().__init__()
        self.config = config
        self.stream_names = ["rgb", "depth"] if config.streams == "both" else [config.streams]
        self.stream_names += ["audio"] if config.audio_dim else []
        self.dims = {"rgb": config.rgb_dim, "depth": config.depth_dim, "audio": config.audio_dim}
        if config.audio_dim and self.pooled_size():
            self.no_audio = nn.Parameter(torch.zeros(self.pooled_size()))
        # Platt scaling of the fake logit (scale, shift), fitted on validation when an epoch is scored, so a
        # probability means what it says; training's loss sees the raw logits.
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))

    def probability(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Calibrated P(fake) from the fake logits (`forward(...)[:, 0]`), float32."""
        scale, shift = self.calibration.to(fake_logits.device)
        return torch.sigmoid(fake_logits.float() * scale + shift)

    def pooled_size(self) -> int:
        """The size of one stream's pooled vector (0: the head pools no streams)."""
        return self.config.d_model

    def stream_inputs(self, rgb: torch.Tensor | None, depth: torch.Tensor | None,
                      audio: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        inputs = {"rgb": rgb, "depth": depth, "audio": audio}
        for name in self.stream_names:
            if inputs[name] is None:
                raise ValueError(f"the {name} stream is on (streams={self.config.streams!r}, audio_dim="
                                 f"{self.config.audio_dim}) but got None")
        return {name: inputs[name] for name in self.stream_names}

    def stream_masks(self, inputs: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each stream's valid frames: the clip's, and for audio only those with sound."""
        masks = {name: valid for name in inputs}
        if "audio" in inputs:
            masks["audio"] = valid & (inputs["audio"][..., -1] > 0.5)
        return masks

    def fill_silent(self, pooled: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
        """The learned "no audio" vector in place of the pooled audio of clips without any sound."""
        if "audio" in pooled:
            heard = masks["audio"].any(dim=1, keepdim=True)
            silent = self.no_audio.to(pooled["audio"])
            pooled = {**pooled, "audio": torch.where(heard, pooled["audio"], silent)}
        return pooled

    @classmethod
    def build(cls, config: MegatronConfig) -> TemporalHead:
        """The architecture `config` names; loading through a subclass insists on that subclass."""
        architecture = HEADS.entry(config.architecture)
        if not issubclass(architecture, cls):
            raise ValueError(f"the config names a {config.architecture!r} temporal head, not a "
                             f"{cls.__name__}")
        return architecture(config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class MegatronHead(TemporalHead):
    def __init__(self, config: MegatronConfig):
        super().__init__(config)
        dims = self.dims
        self.embeddings = nn.ModuleDict({name: StreamEmbedding(dims[name], config)
                                         for name in self.stream_names})
        shared = encoder(config) if config.share_encoders else None
        self.encoders = nn.ModuleDict({name: shared or encoder(config) for name in self.stream_names})
        self.cross_layers = nn.ModuleList()
        if len(self.stream_names) > 1 and config.fusion == "cross_attention":
            self.cross_layers = nn.ModuleList(
                nn.ModuleDict({name: CrossAttentionBlock(config) for name in self.stream_names})
                for _ in range(config.n_cross_layers)
            )
        fused_dim = config.d_model * len(self.stream_names)
        self.head = nn.Sequential(nn.LayerNorm(fused_dim), nn.Dropout(config.dropout),
                                  nn.Linear(fused_dim, config.num_classes))

    def pool(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            return tokens[:, 0]
        weights = valid.unsqueeze(-1).to(tokens.dtype)
        return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, rgb: torch.Tensor | None = None, depth: torch.Tensor | None = None,
                audio: torch.Tensor | None = None, *, valid: torch.Tensor) -> torch.Tensor:
        """rgb [B, T, rgb_dim], depth [B, T, depth_dim], audio [B, T, audio_dim] (None where the stream
        is off), valid bool [B, T] (False: padding; every clip needs one valid frame) -> logits
        [B, num_classes]."""
        inputs = self.stream_inputs(rgb, depth, audio)
        frames = self.stream_masks(inputs, valid)
        tokens, masks = {}, {}
        for name in self.stream_names:
            embedded, masks[name] = self.embeddings[name](inputs[name], frames[name])
            own = masks[name].clone()
            own[~own.any(dim=1), 0] = True  # a clip without sound reads one token; its pooling is replaced
            tokens[name] = self.encoders[name](embedded, src_key_padding_mask=~own)
        for block in self.cross_layers:
            # Every stream reads the others' states from before this block, so none goes first.
            tokens = {name: block[name](tokens[name], *self.context(tokens, masks, name)) for name in tokens}
        pooled = self.fill_silent({name: self.pool(tokens[name], masks[name]) for name in self.stream_names},
                                  frames)
        return self.head(torch.cat(list(pooled.values()), dim=-1))

    @staticmethod
    def context(tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], query: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The other streams' tokens, side by side, and their masks: what stream `query` attends to."""
        others = [name for name in tokens if name != query]
        mask = torch.cat([masks[name] for name in others], dim=1)
        mask[~mask.any(dim=1), 0] = True  # only a silent audio stream to read: its first (all-zero) frame
        return torch.cat([tokens[name] for name in others], dim=1), mask


# Temporal-head architectures by the name a checkpoint's config.json gives.
HEADS: Registry[type[TemporalHead]] = Registry("temporal head architecture")
HEADS.register(MegatronHead, "megatron")
