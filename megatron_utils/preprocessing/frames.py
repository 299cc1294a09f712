"""Stage 1: which frames of a video to use, as clips of T frame indices.

Sampling is a pure function of the frame count and `FramesConfig`, so every later stage (and the
`predict` command) agrees on the same frames without storing them. Decoding then touches only the
frames up to the last wanted one and converts only the wanted ones (`video.iter_frames`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .video import Encoded, MediaError, Source, VideoInfo, is_image, iter_frames, probe, read_image

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


# A file, its bytes, or decoded RGB uint8 frames ([H, W, 3] for a photo, [N, H, W, 3] for a video).
Media = Source | bytes | np.ndarray


def media_source(media: Media) -> str:
    """What kind of media was given: "file", "bytes" or "frames"."""
    if isinstance(media, np.ndarray):
        return "frames"
    return "bytes" if isinstance(media, bytes | bytearray | memoryview | Encoded) else "file"


def media_name(media: Media, name: str | None = None) -> str:
    """How messages and results name the media: the path, the name given to an upload or to frames, or
    "<bytes>" / "<frames>"; `name` is not used for a path, which names itself."""
    if isinstance(media, Encoded):
        return media.name
    if media_source(media) == "file":
        return str(media)
    return name or f"<{media_source(media)}>"


def normalized(media: Media, name: str | None = None) -> Path | Encoded | np.ndarray:
    """The media as a path, an `Encoded` upload, or checked frames [N, H, W, 3]."""
    if isinstance(media, np.ndarray):
        return decoded_frames(media, media_name(media, name))
    if isinstance(media, bytes | bytearray | memoryview):
        return Encoded(bytes(media), media_name(media, name))
    return media if isinstance(media, Encoded) else Path(media)


def decoded_frames(frames: np.ndarray, name: str) -> np.ndarray:
    """Check an array of decoded frames and return it as [N, H, W, 3] (a still image is one frame)."""
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3 or 0 in frames.shape:
        raise MediaError(name, f"expected RGB uint8 frames [H, W, 3] or [N, H, W, 3], got an array of shape "
                               f"{list(frames.shape)} and dtype {frames.dtype}")
    return frames[None] if frames.ndim == 3 else frames


@dataclass
class SampledVideo:
    """A video (or still image, as a one-frame video) with its sampled clips; a file or bytes are decoded
    only when `frames` is called."""

    source: Path | Encoded | None  # None when the frames came decoded
    info: VideoInfo  # info.path names the media in messages and results
    clips: list[list[int]]
    decoded: np.ndarray | None = None  # frames already in memory [N, H, W, 3]: a still image, or an array

    @property
    def name(self) -> str:
        return self.info.path

    @property
    def wanted(self) -> list[int]:
        return sorted({index for clip in self.clips for index in clip})

    def frames(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield `(frame_index, RGB uint8 frame)` for `indices` (default: all sampled frames)."""
        indices = self.wanted if indices is None else sorted(set(indices))
        if self.decoded is not None:
            yield from ((index, self.decoded[index]) for index in indices if index < len(self.decoded))
            return
        yield from iter_frames(self.source, indices)


def sample_video(media: Media, config: FramesConfig, name: str | None = None) -> SampledVideo:
    """Probe a video (or read a still image) and choose its clips; raises `MediaError` on bad input.

    `media` is a path, its bytes (or an `Encoded` upload), or decoded frames; `name` names bytes or frames
    in messages and results."""
    source = normalized(media, name)
    if isinstance(source, np.ndarray):
        still = media.ndim == 3
        info = VideoInfo(media_name(media, name), source.shape[2], source.shape[1], len(source), 0.0, 0,
                         "image" if still else "frames")
        return SampledVideo(None, info, [[0]] if still else sample_indices(len(source), config), source)
    if is_image(source):
        image = read_image(source)
        info = VideoInfo(str(source), image.shape[1], image.shape[0], 1, 0.0, 0, "image")
        return SampledVideo(source, info, [[0]], image[None])
    info = probe(source)
    return SampledVideo(source, info, sample_indices(info.frame_count, config))
