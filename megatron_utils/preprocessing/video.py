"""Video and image I/O through PyAV: probing, selective decoding and H.264 writing.

Readers take a path or the file's bytes (`Encoded`), so a service can score an upload without writing it to
disk. Every reader raises `MediaError`, which names the file (or the name given to the bytes) and the
reason, so callers can record a clean failure for one bad input and move on with the batch.
"""

from __future__ import annotations

import bisect
import functools
import io
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..core.cache import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
# The FFmpeg demuxer each suffix names. A file so named is read only as that format, never probed into
# another (an HLS playlist or concat list inside a ".mp4" would have FFmpeg read other files), and FFmpeg
# may open only local files (no network protocol, whatever a container references).
DEMUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "matroska",
            ".avi": "avi", ".mpg": "mpeg", ".mpeg": "mpeg", ".wmv": "asf", ".flv": "flv", ".gif": "gif"}
CLOSED = {"protocol_whitelist": "file"}


@dataclass(frozen=True)
class Encoded:
    """An encoded video or image held in memory (an upload), with the name that messages and results use."""

    data: bytes = field(repr=False)
    name: str = "<bytes>"

    def __str__(self) -> str:
        return self.name

    @property
    def is_image(self) -> bool:
        """Whether the bytes hold a still image (PIL reads one frame) rather than a video; an animated
        GIF is a video, as it is when read from a file."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.open()) as image:
                return getattr(image, "n_frames", 1) == 1
        except (UnidentifiedImageError, OSError):
            return False

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)


Source = str | os.PathLike | Encoded  # a file on disk or its bytes


class MediaError(RuntimeError):
    """A video or image that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image(path: Source) -> bool:
    return path.is_image if isinstance(path, Encoded) else Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # as displayed, after rotation
    height: int
    frame_count: int  # from the container, or estimated from duration x fps when it has none
    fps: float
    rotation: int  # degrees counter-clockwise that the player applies
    codec: str

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps if self.fps else 0.0


def _check_file(path: Path | Encoded) -> None:
    if isinstance(path, Encoded):
        if not path.data:
            raise MediaError(path, "no data (0 bytes)")
        return
    if not path.exists():
        raise MediaError(path, "file does not exist")
    if path.is_dir():
        raise MediaError(path, "is a directory, not a file")
    if path.stat().st_size == 0:
        raise MediaError(path, "file is empty (0 bytes)")


def _as_source(source: Source) -> Path | Encoded:
    return source if isinstance(source, Encoded) else Path(source)


def _open(path: Path | Encoded) -> av.container.InputContainer:
    _check_file(path)
    demuxer = DEMUXERS.get(Path(path.name if isinstance(path, Encoded) else path).suffix.lower())
    try:
        container = av.open(path.open() if isinstance(path, Encoded) else str(path), format=demuxer,
                            container_options=CLOSED)
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise MediaError(path, f"not a readable video ({error.__class__.__name__}: {error})") from error
    if not container.streams.video:
        container.close()
        raise MediaError(path, "contains no video stream")
    if container.streams.video[0].codec_context is None:  # a codec FFmpeg has no decoder for
        container.close()
        raise MediaError(path, "its video codec is unknown (no decoder for it), or its header is corrupt")
    return container


def _rotation_of(stream: av.video.stream.VideoStream, first_frame: av.VideoFrame | None) -> int:
    if first_frame is not None and getattr(first_frame, "rotation", 0):
        return int(first_frame.rotation) % 360
    return int(float(stream.metadata.get("rotate", 0))) % 360 if stream.metadata.get("rotate") else 0


def _apply_rotation(image: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate counter-clockwise by `rotation` degrees, as a player honouring the display matrix does."""
    quarter_turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image


def probe(path: Source) -> VideoInfo:
    """Read a video's geometry, length and rotation, decoding at most its first frame."""
    path = _as_source(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as error:
            raise MediaError(path, f"cannot decode the first frame ({error})") from error
        if first is None:
            raise MediaError(path, "video stream holds no decodable frame")
        frames = stream.frames
        if not frames and fps:
            seconds = float(stream.duration * stream.time_base) if stream.duration else (
                container.duration / av.time_base if container.duration else 0.0)
            frames = max(1, round(seconds * fps))
        rotation = _rotation_of(stream, first)
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(str(path), width, height, int(frames or 1), fps, rotation, stream.codec_context.name)


def decode_audio(path: Source, sample_rate: int) -> np.ndarray | None:
    """The first audio track as mono float32 samples at `sample_rate`, aligned so sample 0 is the video's
    first frame (a track that starts later is led in with silence); None when there is no audio track."""
    path = _as_source(path)
    if is_image(path):
        return None
    with _open(path) as container:
        if not container.streams.audio:
            return None
        audio, video = container.streams.audio[0], container.streams.video[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks, first_time = [], None
        try:
            for frame in container.decode(audio):
                first_time = frame.time if first_time is None else first_time
                chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        except av.error.FFmpegError as error:
            raise MediaError(path, f"cannot decode the audio track ({error})") from error
        video_start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    lead = round(((first_time or 0.0) - video_start) * sample_rate)
    return np.pad(samples, (lead, 0)) if lead > 0 else samples[-lead:]


SEEK_SAVING = 0.7  # seek only when that decodes under 70% of the frames that decoding from the start would


class _Unseekable(Exception):
    """The stream's timestamps do not support exact seeking; decode it from the start instead."""


def decode_spans(keyframes: Sequence[int], wanted: Sequence[int]) -> list[tuple[int, int]]:
    """(first frame decoded, last wanted frame) of each run of decoding that reaches the sorted `wanted`
    frame indices in a stream whose decoding can start at the sorted `keyframes` (frame 0 among them).
    Each wanted frame is reached from the keyframe at or before it; when that keyframe lies within what the
    previous run decodes anyway, the run goes on instead of seeking."""
    spans: list[tuple[int, int]] = []
    for index in wanted:
        keyframe = keyframes[bisect.bisect_right(keyframes, index) - 1]
        if spans and keyframe <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], index)
        else:
            spans.append((keyframe, index))
    return spans


def _frame_timestamps(path: Path | Encoded) -> tuple[list[int], list[int]] | None:
    """Every frame's presentation timestamp in display order and the keyframes' frame indices, read from
    the packets without decoding; None when seeking by timestamp could not be exact."""
    timestamps: list[int] = []
    keyframe_timestamps: set[int] = set()
    with _open(path) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                if packet.pts is None:
                    return None
                timestamps.append(packet.pts)
                if packet.is_keyframe:
                    keyframe_timestamps.add(packet.pts)
        except av.error.FFmpegError:
            pass  # a truncated file: index what was read
        declared = stream.frames
    timestamps.sort()
    keyframes = [index for index, pts in enumerate(timestamps) if pts in keyframe_timestamps]
    if (not keyframes or keyframes[0] != 0 or len(set(timestamps)) != len(timestamps)
            or (declared and declared != len(timestamps))):
        return None
    return timestamps, keyframes


def seek_plan(path: Source, wanted: Sequence[int], always: bool = False
              ) -> tuple[list[int], list[tuple[int, int]]] | None:
    """(every frame's timestamp, the `decode_spans` of the sorted `wanted` frames) when seeking saves
    decoding (or `always`, where the stream allows it), else None: decode from the start."""
    if not always and len(wanted) >= SEEK_SAVING * (max(wanted) + 1):
        return None  # dense: it decodes at least the wanted frames, so skip reading the packets
    path = _as_source(path)
    index = _frame_timestamps(path)
    if index is None:
        return None
    timestamps, keyframes = index
    spans = decode_spans(keyframes, [frame for frame in wanted if frame < len(timestamps)])
    decoded = sum(last - first + 1 for first, last in spans)
    return (timestamps, spans) if spans and (always or decoded < SEEK_SAVING * (wanted[-1] + 1)) else None


def _decode_spans(path: Path | Encoded, timestamps: list[int], spans: list[tuple[int, int]],
                  wanted: set[int]) -> Iterator[tuple[int, np.ndarray]]:
    frame_of = {pts: index for index, pts in enumerate(timestamps)}
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rotation = None
        for first, last in spans:
            container.seek(timestamps[first], stream=stream, backward=True, any_frame=False)
            landed = False
            for frame in container.decode(stream):
                index = frame_of.get(frame.pts)
                if index is None or (not landed and index > first):
                    raise _Unseekable(f"frame at pts {frame.pts} after seeking to frame {first}")
                landed = True
                if rotation is None:
                    rotation = _rotation_of(stream, frame)
                if index >= first and index in wanted:
                    yield index, _apply_rotation(frame.to_ndarray(format="rgb24"), rotation)
                if index >= last:
                    break


def _decode_from_start(path: Path | Encoded, wanted: list[int] | None) -> Iterator[tuple[int, np.ndarray]]:
    wanted_set = None if wanted is None else set(wanted)
    last = None if wanted is None else wanted[-1]
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rotation = None
        for index, frame in enumerate(container.decode(stream)):
            if rotation is None:
                rotation = _rotation_of(stream, frame)
            if wanted_set is None or index in wanted_set:
                yield index, _apply_rotation(frame.to_ndarray(format="rgb24"), rotation)
            if last is not None and index >= last:
                break


def iter_frames(path: Source, indices: Iterable[int] | None = None, seek: bool | None = None
                ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(index, RGB uint8 frame)` in increasing order, converting only the wanted frames.

    Only what the wanted frames need is decoded: from the keyframe before each of them (`seek`: None seeks
    when that decodes markedly fewer frames than decoding from the start, True always where the stream
    allows it, False never), and never past the last one. Frames are rotated as a player would show them.
    A stream that breaks off part-way (a truncated file) ends the iteration early; callers compare what
    they got with what they asked for.
    """
    path = _as_source(path)
    wanted = None if indices is None else sorted(set(int(i) for i in indices))
    if wanted is not None and not wanted:
        return
    try:
        plan = None if wanted is None or seek is False else seek_plan(path, wanted, always=bool(seek))
        if plan is not None:
            yielded = -1
            try:
                for index, frame in _decode_spans(path, *plan, set(wanted)):
                    yielded = index
                    yield index, frame
                return
            except _Unseekable as reason:
                log.info("%s: decoding from the start instead of seeking (%s)", path, reason)
                wanted = [index for index in wanted if index > yielded]
        yield from _decode_from_start(path, wanted)
    except av.error.FFmpegError:
        return  # truncated or corrupt tail: keep what was decoded


def read_frames(path: Source, indices: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """Decode the given frame indices; returns the indices found and an array [N, H, W, 3]."""
    got = list(iter_frames(path, indices))
    if not got:
        raise MediaError(path, "no frame could be decoded")
    return [i for i, _ in got], np.stack([f for _, f in got])


def read_image(path: Source) -> np.ndarray:
    """Read a still image as RGB uint8 [H, W, 3] (alpha dropped, greyscale expanded)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = _as_source(path)
    _check_file(path)
    try:
        with Image.open(path.open() if isinstance(path, Encoded) else path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(path, f"not a readable image ({error})") from error


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 25.0, crf: int = 23,
              preset: str = "medium", gop: int | None = None, audio: np.ndarray | None = None,
              sample_rate: int = 16000) -> Path:
    """Encode RGB uint8 frames as H.264 (yuv420p) MP4, atomically. crf 23 is FF++'s c23 quality. `audio`:
    mono float samples in [-1, 1] at `sample_rate`, muxed as an AAC track starting with the first frame."""
    path = Path(path)
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        stream = sound = None
        try:
            for frame in frames:
                if stream is None:
                    height, width = frame.shape[:2]
                    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height = width - width % 2, height - height % 2
                    stream.pix_fmt = "yuv420p"
                    options = {"crf": str(crf), "preset": preset}
                    if gop is not None:
                        options["g"] = str(gop)
                    stream.options = options
                    if audio is not None and len(audio):  # every stream exists before the first packet
                        sound = container.add_stream("aac", rate=sample_rate, layout="mono")
                even = np.ascontiguousarray(frame[: stream.height, : stream.width])
                container.mux(stream.encode(av.VideoFrame.from_ndarray(even, format="rgb24")))
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            container.mux(stream.encode(None))
            if sound is not None:
                _mux_aac(container, sound, np.asarray(audio, np.float32), sample_rate)
        finally:
            container.close()
    return path


def _mux_aac(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream,
             samples: np.ndarray, sample_rate: int) -> None:
    chunk = stream.codec_context.frame_size or 1024
    for start in range(0, len(samples), chunk):
        frame = av.AudioFrame.from_ndarray(np.clip(samples[None, start:start + chunk], -1, 1), format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = sample_rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


@functools.lru_cache(maxsize=64)
def _intra_h264(width: int, height: int, qp: int) -> tuple[av.CodecContext, av.CodecContext]:
    """An all-intra, zero-latency, constant-quantiser x264 encoder and its decoder, kept open per process (not
    shared between threads): opening one costs ~15 ms, an image through an open one ~2 ms. Every frame is a
    keyframe at a fixed quantiser (no rate control carrying over), so an image's round trip never depends on
    the images before it."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.options = {"qp": str(qp), "preset": "veryfast", "tune": "zerolatency", "threads": "1",
                       "g": "1"}
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1  # one packet in, its frame out (frame threading delays the output)
    return encoder, decoder


def h264_roundtrip(image: np.ndarray, qp: int) -> np.ndarray:
    """An RGB uint8 image encoded as one H.264 intra frame at quantiser `qp` (yuv420p, like FF++'s videos,
    whose c23 and c40 are x264 crf 23 and 40) and decoded back: the blocking, ringing and chroma loss that
    video compression leaves on a face."""
    height, width = image.shape[:2]
    even = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    encoder, decoder = _intra_h264(even.shape[1], even.shape[0], int(qp))
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(even), format="rgb24").reformat(format="yuv420p")
    decoded = [out for packet in encoder.encode(frame) for out in decoder.decode(packet)]
    if len(decoded) != 1:
        _intra_h264.cache_clear()  # never keep a pair in a broken state
        raise RuntimeError(f"H.264 round trip gave {len(decoded)} frames for one")
    return decoded[0].to_ndarray(format="rgb24")[:height, :width]
