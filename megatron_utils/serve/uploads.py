"""Receiving an upload and deciding whether to score it.

`receive_upload` streams the one file of a multipart request to disk in chunks and stops at the size limit,
so an upload never sits in memory. `inspect_upload` then decides by the content, never by the client's file
name or content type: puremagic names the type from its magic bytes, PIL or PyAV read the header (size,
declared duration) before anything is decoded, and one frame is decoded to prove the file is readable. Every
refusal is an `UploadRejected` with the HTTP status and a reason a person can act on.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
from PIL import Image, UnidentifiedImageError

from ..core.extras import extra_imports

with extra_imports("serve"):
    import puremagic
    from python_multipart.multipart import MultipartParser, parse_options_header

from ..preprocessing.video import CLOSED, DEMUXERS, MediaError, probe
from .config import ServeConfig

# Sniffed extension -> stored suffix; the suffix tells the pipeline an image from a video.
IMAGE_TYPES = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png", ".webp": ".webp", ".bmp": ".bmp",
               ".tif": ".tif", ".tiff": ".tif", ".ppm": ".ppm"}
VIDEO_TYPES = {".mp4": ".mp4", ".m4v": ".mp4", ".mov": ".mov", ".3gp": ".mp4", ".mkv": ".mkv",
               ".webm": ".webm", ".avi": ".avi", ".gif": ".gif", ".mpg": ".mpg", ".mpeg": ".mpg",
               ".flv": ".flv"}
# Stored image suffix -> the one PIL reader allowed to open it (as a video's demuxer is pinned).
PIL_FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".ppm": "PPM"}
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file
MAX_FILENAME = 255
CHUNK = 1 << 16


class UploadRejected(Exception):
    """An upload refused with an HTTP status (400, 413, 415 or 422) and the reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class UploadInfo:
    kind: str  # "video" or "image"
    format: str  # e.g. "mp4" (sniffed) or "JPEG"
    width: int
    height: int
    bytes: int
    duration_s: float | None = None  # videos: as the header declares it
    fps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_filename(name: str) -> str:
    """The client's file name, kept only for display: a plain name, or the upload is refused."""
    if not name:
        return "upload"
    if len(name) > MAX_FILENAME:
        raise UploadRejected(400, f"file name longer than {MAX_FILENAME} characters")
    if "/" in name or "\\" in name or name in {".", ".."} or any(
            unicodedata.category(char).startswith("C") for char in name):
        raise UploadRejected(400, f"file name {name!r} is not a plain name (path separators, '..' or control "
                                  f"characters); stored names are generated, send the bare file name")
    return name


async def receive_upload(headers: dict[str, str], body: AsyncIterator[bytes], target: Path,
                         max_bytes: int) -> tuple[str, int]:
    """Write the one file part (field `file`) of a multipart/form-data body to `target`, chunk by chunk.

    Returns (the client's file name, bytes written). Refuses a declared or actual size over `max_bytes`
    (413) before or while reading, and anything but exactly one file part (400)."""
    content_type, options = parse_options_header(headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "none"
        raise UploadRejected(415, f"expected a multipart/form-data upload with the file in field 'file', got "
                                  f"content type {shown}")
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadRejected(400, "multipart/form-data without a boundary")
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise UploadRejected(400, f"bad Content-Length {declared!r}")
        if int(declared) > max_bytes + MULTIPART_SLACK:
            raise UploadRejected(413, f"upload of {int(declared):,} bytes exceeds the limit of "
                                      f"{max_bytes:,} bytes")

    state: dict[str, Any] = {"files": 0, "written": 0, "name": None, "header": b"", "value": b"",
                             "headers": {}, "out": None, "error": None, "ended": False}

    def fail(error: UploadRejected) -> None:
        state["error"] = state["error"] or error

    def on_part_begin() -> None:
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header"].lower()] = state["value"]
        state["header"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        field, filename = disposition.get(b"name"), disposition.get(b"filename")
        if filename is None:
            return  # a plain form field: ignored
        if field != b"file":
            shown = (field or b"").decode("utf-8", errors="replace")
            fail(UploadRejected(400, f"unexpected file field {shown!r}; send the file in field 'file'"))
            return
        state["files"] += 1
        if state["files"] > 1:
            fail(UploadRejected(400, "more than one file in the upload; send one file per request"))
            return
        try:
            state["name"] = check_filename(filename.decode("utf-8", errors="replace"))
        except UploadRejected as error:
            fail(error)
            return
        state["out"] = open(target, "wb")  # noqa: SIM115 - closed in on_part_end or below

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["out"] is None or state["error"]:
            return
        state["written"] += end - start
        if state["written"] > max_bytes:
            fail(UploadRejected(413, f"upload exceeds the limit of {max_bytes:,} bytes"))
            return
        state["out"].write(data[start:end])

    def on_part_end() -> None:
        if state["out"] is not None:
            state["out"].close()
            state["out"] = None

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end, "on_end": on_end})
    try:
        async for chunk in body:
            try:
                parser.write(chunk)
            except Exception as error:  # python-multipart raises several types for a malformed body
                raise UploadRejected(400, f"malformed multipart body ({error})") from error
            if state["error"]:
                raise state["error"]
        parser.finalize()
    finally:
        if state["out"] is not None:
            state["out"].close()
    if state["error"]:
        raise state["error"]
    if not state["ended"]:
        raise UploadRejected(400, "the multipart body ended early (no closing boundary)")
    if state["files"] == 0:
        raise UploadRejected(400, "no file in the upload; send it in the multipart field 'file'")
    if state["written"] == 0:
        raise UploadRejected(400, "the uploaded file is empty (0 bytes)")
    return state["name"], state["written"]


def sniff(path: Path) -> tuple[str, str]:
    """(kind, stored suffix) from the content's magic bytes, or 415 naming what it looks like. Only the most
    confident matches count: a WAV file also matches AVI's generic RIFF signature, less confidently."""
    try:
        matches = puremagic.magic_file(str(path))
    except puremagic.PureError:
        matches = []
    for match in (m for m in matches if m.confidence == matches[0].confidence):
        extension = match.extension.lower()
        if extension in IMAGE_TYPES:
            return "image", IMAGE_TYPES[extension]
        if extension in VIDEO_TYPES:
            return "video", VIDEO_TYPES[extension]
    looks = next((m.mime_type or m.extension for m in matches if m.mime_type or m.extension), None)
    raise UploadRejected(415, "not a video or image this service reads" + (f" (it looks like {looks})"
                              if looks else "") + "; send MP4, MOV, MKV, WebM, AVI, GIF, JPEG, PNG, WebP, "
                              "BMP or TIFF")


def check_geometry(width: int, height: int, config: ServeConfig, what: str) -> None:
    if max(width, height) > config.max_side:
        raise UploadRejected(413, f"{what} of {width}x{height} pixels exceeds the limit of {config.max_side} "
                                  f"pixels per side")
    if min(width, height) < config.min_side:
        raise UploadRejected(422, f"{what} of {width}x{height} pixels is below {config.min_side} pixels per "
                                  f"side: too small to hold a face")


def inspect_image(path: Path, size: int, config: ServeConfig) -> UploadInfo:
    try:
        with Image.open(path, formats=[PIL_FORMATS[path.suffix]]) as image:
            check_geometry(image.width, image.height, config, "image")
            image.load()  # the header alone can hide a truncated or corrupt body
            return UploadInfo("image", image.format, image.width, image.height, size)
    except Image.DecompressionBombError as error:
        raise UploadRejected(413, f"image too large to decode safely ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UploadRejected(422, f"the image cannot be decoded: truncated or corrupt ({error})") from error


def inspect_video(path: Path, size: int, config: ServeConfig) -> UploadInfo:
    """Read with the demuxer the sniffed type names (the stored suffix), local files only: content that
    FFmpeg would otherwise probe into another format is refused, not read as that format."""
    demuxer = DEMUXERS[path.suffix]
    try:
        container = av.open(str(path), format=demuxer, container_options=CLOSED)
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__  # its str() names the stored path
        raise UploadRejected(422, f"the video cannot be read as the {demuxer} its content starts like: "
                                  f"truncated or corrupt, or another format disguised ({reason})") from error
    with container:
        if not container.streams.video:
            raise UploadRejected(415, "the file has no video stream (audio only?)")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # found by the fuzz: a codec FFmpeg has no decoder for
            raise UploadRejected(422, "the video cannot be decoded: its codec is unknown (no decoder for "
                                      "it), or its header is corrupt")
        in_stream = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
        duration = max(container.duration / av.time_base if container.duration else 0.0, in_stream)
        if duration > config.max_duration_s:
            raise UploadRejected(413, f"video of {duration:,.0f} s (as its header declares) exceeds the "
                                      f"limit of {config.max_duration_s:,.0f} s")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height:
            check_geometry(width, height, config, "video")
        fps = float(stream.average_rate or stream.guessed_rate or 0) or None
    try:
        info = probe(path)  # decodes the first frame
    except MediaError as error:
        raise UploadRejected(422, f"the video cannot be decoded: {error.reason}") from error
    check_geometry(info.width, info.height, config, "video")
    return UploadInfo("video", path.suffix[1:], info.width, info.height, size, round(duration, 3) or None,
                      fps)


def inspect_upload(path: Path, config: ServeConfig) -> tuple[UploadInfo, Path]:
    """Check a received upload by its content; returns its info and its path renamed to the sniffed suffix
    (the pipeline tells images from videos by suffix)."""
    size = path.stat().st_size
    typed = path
    try:
        kind, suffix = sniff(path)
        typed = path.with_suffix(suffix)
        os.replace(path, typed)
        info = (inspect_image if kind == "image" else inspect_video)(typed, size, config)
    except UploadRejected as error:
        raise UploadRejected(error.status, error.reason.replace(str(typed), "the upload")) from error
    return info, typed
