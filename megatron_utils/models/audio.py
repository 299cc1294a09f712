"""Audio encoders (a registry like the image backbones'): mel-spectrogram windows in, one vector out.

`resemblyzer` is the pretrained GE2E speaker encoder (Wan et al., ICASSP 2018) that the `resemblyzer`
wheel ships (`pretrained.pt`, a plain state dict read with `weights_only=True`): a 3-layer LSTM over
40-band mel frames of 16 kHz audio, whose last state gives an L2-normalised 256-d voice embedding. Its
embeddings tell voices apart, which is what "real video, someone else's voice" changes. `tiny` has random
weights and exists for tests only; building it logs a warning, and the weights string says so.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.cache import sha256_file
from ..core.registry import Registry
from .hub import WeightsUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MelConfig:
    """How an encoder's inputs are made: mel power spectrogram frames (not log), as it was trained on."""

    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 40
    window_frames: int = 160  # one input: 1.6 s of frames, centred on the video frame it describes
    target_dbfs: float = -30.0  # quieter tracks are amplified to this loudness first


@dataclass
class AudioEncoder:
    name: str
    model: nn.Module  # eval mode: mel windows [B, window_frames, n_mels] -> embeddings [B, num_features]
    mel: MelConfig
    num_features: int
    weights: str  # where the weights came from, in words
    fingerprint: str  # sha256 of the weights file, or "random-init"


class SpeakerLSTM(nn.Module):
    """GE2E's encoder: stacked LSTM, the top layer's last state through a linear layer and ReLU, L2-normed."""

    def __init__(self, n_mels: int = 40, hidden: int = 256, layers: int = 3, dim: int = 256):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, dim)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        return F.normalize(F.relu(self.linear(hidden[-1])), dim=1)


AUDIO_ENCODERS: Registry[Callable[[str | os.PathLike | None], AudioEncoder]] = Registry("audio encoder")
list_audio_encoders = AUDIO_ENCODERS.names


def packaged_resemblyzer_weights() -> Path:
    """`pretrained.pt` inside the installed resemblyzer wheel, found without importing the package (its
    import pulls in webrtcvad and an old scipy module path that Megatron does not need)."""
    spec = importlib.util.find_spec("resemblyzer")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / "pretrained.pt").is_file():
            return Path(folder) / "pretrained.pt"
    raise WeightsUnavailableError(
        "the resemblyzer speaker encoder's weights are not installed: run `pip install --no-deps "
        "resemblyzer==0.1.4` (scripts/setup.sh does), or pass a local copy of pretrained.pt as the weights")


@AUDIO_ENCODERS.named("resemblyzer")
def resemblyzer(weights: str | os.PathLike | None = None) -> AudioEncoder:
    file = Path(weights).expanduser() if weights else packaged_resemblyzer_weights()
    if not file.is_file():
        raise WeightsUnavailableError(f"{file}: audio encoder weights file does not exist")
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)  # tensors only: nothing unpickled
    state = checkpoint.get("model_state", checkpoint)
    model = SpeakerLSTM()
    model.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})
    return AudioEncoder("resemblyzer", model, MelConfig(), 256,
                        f"GE2E speaker encoder, resemblyzer 0.1.4 weights ({file.name})",
                        f"sha256:{sha256_file(file)}")


@AUDIO_ENCODERS.named("tiny")
def tiny(weights: str | os.PathLike | None = None) -> AudioEncoder:
    if weights is not None:
        raise ValueError("the tiny audio encoder has random weights only (it exists for tests)")
    with torch.random.fork_rng():  # the same random network in every process, so caches agree
        torch.manual_seed(0)
        model = SpeakerLSTM(hidden=16, layers=1, dim=16)
    return AudioEncoder("tiny", model, MelConfig(), 16,
                        "random-init (tests only)", "random-init")


def create_audio_encoder(name: str, weights: str | os.PathLike | None = None) -> AudioEncoder:
    """A registered audio encoder in eval mode, without gradients; `weights`: a local weights file."""
    encoder = AUDIO_ENCODERS.entry(name)(weights)
    if encoder.fingerprint == "random-init":
        logger.warning("audio encoder %s built with RANDOM weights: its features are not meaningful", name)
    encoder.model.eval().requires_grad_(False)
    logger.info("audio encoder %s (%d-d features): %s", name, encoder.num_features, encoder.weights)
    return encoder
