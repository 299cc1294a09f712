"""Stage 1: which frames of a video to use, as clips of T frame indices.

Sampling is a pure function of the frame count and `FramesConfig`, so every later stage (and the
`predict` command) agrees on the same frames without storing them. Decoding then touches only the
frames up to the last wanted one and converts only the wanted ones (`video.iter_frames`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .video import VideoInfo, is_image, iter_frames, probe, read_image

SAMPLINGS = ("uniform", "consecutive")


@dataclass
class FramesConfig:
    """How frames are sampled from a video.

    - `uniform`: each clip spreads its T frames evenly over the whole video. Several clips are
      interleaved: clip c is shifted by (c + 0.5)/C of the step, so together the C clips cover the
      video C times more densely and share no frame while the video has at least C x T frames.
    - `consecutive`: each clip is a window of T frames taken every `stride` frames; the C windows
      are spaced evenly from the start to the end of the video.
    """

    frames_per_clip: int = 32
    sampling: str = "uniform"
    clips_per_video: int = 1
    stride: int = 1  # consecutive: step between the frames of one window (1 = truly consecutive)

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if min(self.frames_per_clip, self.clips_per_video, self.stride) < 1:
            raise ValueError(f"frames_per_clip, clips_per_video and stride must be >= 1: {self}")


def sample_indices(frame_count: int, config: FramesConfig) -> list[list[int]]:
    """The frame indices of each clip, ascending within a clip.

    Short videos: a video with fewer frames than one clip needs gives a single clip holding every
    frame it has (uniform: all frames once; consecutive: every `stride`-th frame), shorter than T;
    later stages pad it to T and mark the padding in their `valid` mask. Clips that would repeat an
    earlier clip exactly are left out, so a short video yields fewer than `clips_per_video` clips.
    A still image is a one-frame video: one clip `[[0]]`. No frames: no clips.
    """
    count, length, clips = int(frame_count), config.frames_per_clip, config.clips_per_video
    if count <= 0:
        return []
    if config.sampling == "uniform":
        if count <= length:
            return [list(range(count))]
        step = count / length  # > 1, so the indices of one clip are strictly increasing
        candidates = [[int((t + (c + 0.5) / clips) * step) for t in range(length)] for c in range(clips)]
    else:
        span = (length - 1) * config.stride + 1
        if count <= span:
            return [list(range(0, count, config.stride))]
        starts = np.linspace(0, count - span, clips).round().astype(int)
        candidates = [list(range(int(start), int(start) + span, config.stride)) for start in starts]
    unique: list[list[int]] = []
    for clip in candidates:
        if clip not in unique:
            unique.append(clip)
    return unique


@dataclass
class SampledVideo:
    """A video (or still image, as a one-frame video) with its sampled clips, not yet decoded."""

    path: Path
    info: VideoInfo
    clips: list[list[int]]
    image: np.ndarray | None = None  # a still image is read once, while probing

    @property
    def wanted(self) -> list[int]:
        return sorted({index for clip in self.clips for index in clip})

    def frames(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield `(frame_index, RGB uint8 frame)` for `indices` (default: all sampled frames)."""
        indices = self.wanted if indices is None else sorted(set(indices))
        if self.image is not None:
            if 0 in indices:
                yield 0, self.image
            return
        yield from iter_frames(self.path, indices)


def sample_video(path: str | os.PathLike, config: FramesConfig) -> SampledVideo:
    """Probe a video (or read a still image) and choose its clips; raises `MediaError` on bad input."""
    path = Path(path)
    if is_image(path):
        image = read_image(path)
        info = VideoInfo(str(path), image.shape[1], image.shape[0], 1, 0.0, 0, "image")
        return SampledVideo(path, info, [[0]], image)
    info = probe(path)
    return SampledVideo(path, info, sample_indices(info.frame_count, config))
