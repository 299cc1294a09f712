"""The optional audio stream: what was heard around each sampled frame, as one vector per face crop.

The audio track is decoded with PyAV (mono, the encoder's sample rate) and turned into a mel spectrogram
with librosa once per video; each face crop then gets the window of spectrogram frames centred on its
video frame (1.6 s for the speaker encoder), embedded by a registered audio encoder (`models/audio.py`).

A stream feature is the embedding followed by one presence channel: 1 where the frame has sound, and an
all-zero row where it has none (no audio track, a frame past the track's end, or a window quieter than
`silence_dbfs`: many stock videos carry a silent track), so the temporal heads mask the stream there and a
silent video still gets a score. The `audio` stage cache holds these rows per
crop in the faces entry's order; the embed stage lays them out by clip beside the RGB and depth features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..core.cache import StageCache, StageReport, file_fingerprint
from ..core.extras import extra_imports
from ..core.precision import resolve_device
from ..models.audio import AudioEncoder, MelConfig, create_audio_encoder
from .batching import done_upstream, run_batched_stage
from .faces import read_faces
from .video import Source, decode_audio

NO_AUDIO = "none"


@dataclass
class AudioConfig:
    encoder: str = NO_AUDIO  # "none": no audio stream; else a registered audio encoder, e.g. "resemblyzer"
    weights: str | None = None  # local weights file instead of the encoder's packaged weights
    silence_dbfs: float = -60.0  # a window quieter than this (RMS, dB full scale) counts as no sound
    batch_size: int = 64
    device: str = "auto"

    @property
    def enabled(self) -> bool:
        return self.encoder != NO_AUDIO


def rms(samples: np.ndarray) -> float:
    """Root mean square of float samples in [-1, 1] (0 for none); 10 ** (dBFS / 20) compares to it."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0


def mel_windows(samples: np.ndarray | None, times: np.ndarray, mel: MelConfig, silence_dbfs: float = -60.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Mel windows float32 [N, window_frames, n_mels] centred on `times` (seconds), and `present` bool [N]:
    whether each time falls inside the track and its window is louder than `silence_dbfs`; windows without
    sound are all zero."""
    times = np.asarray(times, np.float64)
    windows = np.zeros((len(times), mel.window_frames, mel.n_mels), np.float32)
    if samples is None or len(samples) < mel.n_fft:
        return windows, np.zeros(len(times), bool)
    span = mel.window_frames * mel.hop_length // 2  # samples each side of a window's centre
    middles = np.round(times * mel.sample_rate).astype(np.int64)
    loudness = np.array([rms(samples[max(0, m - span):m + span]) if 0 <= m < len(samples) else 0.0
                         for m in middles])
    present = loudness > 10 ** (silence_dbfs / 20)
    level = rms(samples)
    if 0 < level < 10 ** (mel.target_dbfs / 20):  # quiet speech is brought up to the training loudness
        samples = samples * (10 ** (mel.target_dbfs / 20) / level)
    with extra_imports("audio"):
        import librosa
    spectrogram = librosa.feature.melspectrogram(y=samples, sr=mel.sample_rate, n_fft=mel.n_fft,
                                                 hop_length=mel.hop_length, n_mels=mel.n_mels).T
    half = mel.window_frames // 2
    padded = np.pad(spectrogram, ((half, mel.window_frames - half), (0, 0)))
    centres = np.clip(np.round(times * mel.sample_rate / mel.hop_length).astype(np.int64), 0,
                      len(spectrogram))
    for row, centre in enumerate(centres):
        windows[row] = padded[centre:centre + mel.window_frames]
    return windows * present[:, None, None], present


def with_presence(embeddings: np.ndarray, present: np.ndarray) -> np.ndarray:
    """[N, D] embeddings and [N] presence -> [N, D + 1] stream features (all zero where absent)."""
    present = present.astype(np.float32)[:, None]
    return np.concatenate([embeddings * present, present], axis=1).astype(np.float32)


class AudioEmbedder:
    """A video's audio in, one stream feature per requested time out: (source, times [N]) -> [N, D + 1]."""

    def __init__(self, config: AudioConfig, encoder: AudioEncoder | None = None):
        if not config.enabled:
            raise ValueError("AudioConfig.encoder is 'none': there is no audio stream to embed")
        self.config = config
        self.device = resolve_device(config.device)
        self.encoder = encoder or create_audio_encoder(config.encoder, config.weights)
        self.encoder.model.to(self.device)

    @property
    def weights(self) -> str:
        return f"{self.encoder.name}: {self.encoder.weights}"

    @property
    def num_features(self) -> int:
        return self.encoder.num_features + 1  # the presence channel

    def identity(self) -> dict[str, object]:
        """Everything that changes the features: the encoder, its weights (by content) and its inputs."""
        encoder = self.encoder
        return {"encoder": encoder.name, "weights": encoder.fingerprint, "mel": asdict(encoder.mel),
                "silence_dbfs": self.config.silence_dbfs}

    @torch.inference_mode()
    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """[N, window_frames, n_mels] -> [N, D]; all-zero windows (no sound: `mel_windows` zeroes them) are
        not run through the encoder and get zero rows, so silent videos (all of FF++) cost nothing."""
        out = np.zeros((len(windows), self.encoder.num_features), np.float32)
        heard = np.flatnonzero(windows.reshape(len(windows), -1).any(axis=1))
        step = self.config.batch_size
        for start in range(0, len(heard), step):
            rows = heard[start:start + step]
            batch = torch.from_numpy(windows[rows]).to(self.device)
            out[rows] = self.encoder.model(batch).float().cpu().numpy()
        return out

    def __call__(self, source: Source | None, times: np.ndarray) -> np.ndarray:
        """Stream features of `source`'s sound at `times` (seconds); None: no sound (all-zero rows)."""
        samples = decode_audio(source, self.encoder.mel.sample_rate) if source is not None else None
        windows, present = mel_windows(samples, times, self.encoder.mel, self.config.silence_dbfs)
        return with_presence(self.embed_windows(windows), present)


def compute_audio(faces_cache: StageCache, config: AudioConfig, force: bool = False,
                  cache_root: str | os.PathLike | None = None, item_ids: Sequence[str] | None = None,
                  embedder: AudioEmbedder | None = None) -> tuple[StageCache, StageReport]:
    """Audio stream features for every face entry (or only `item_ids`) into the `audio` cache: `audio`
    float16 [N, D + 1] and `frame_index` [N], row for row with the faces entry's crops. A video without
    an audio track gets all-zero rows; one whose track cannot be decoded is a recorded failure."""
    embedder = embedder or AudioEmbedder(config)
    cache = StageCache("audio", {"faces": faces_cache.key, **embedder.identity()}, root=cache_root)
    items = done_upstream(faces_cache, item_ids)
    records = faces_cache.records()
    mel = embedder.encoder.mel

    def fingerprint(item_id: str) -> str:
        path = faces_cache.entry_path(item_id)
        return file_fingerprint(path) if path.exists() else "missing"

    def load(item_id: str) -> tuple[tuple[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        tensors, metadata = read_faces(faces_cache, item_id, ["frame_index"])  # not the crops
        frame_index = tensors["frame_index"].astype(np.int32)
        fps = float(metadata.get("fps") or 0)
        samples = decode_audio(records[item_id]["path"], mel.sample_rate) if fps > 0 else None
        windows, present = mel_windows(samples, frame_index / max(fps, 1e-9), mel, config.silence_dbfs)
        return (windows,), (frame_index, present)

    def save(context: tuple[np.ndarray, np.ndarray], outputs: tuple[np.ndarray, ...]
             ) -> dict[str, np.ndarray]:
        frame_index, present = context
        features = with_presence(outputs[0], present).astype(np.float16)
        return {"audio": features, "frame_index": frame_index}

    def infer(windows: np.ndarray) -> tuple[np.ndarray]:
        return (embedder.embed_windows(windows),)

    report = run_batched_stage(cache, items, fingerprint, load, infer, save, config.batch_size, force,
                               weights=embedder.weights)
    return cache, report
