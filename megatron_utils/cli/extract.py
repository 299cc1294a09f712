"""`megatron extract`: sample frames and crop faces of videos or images into the `faces` stage cache."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..preprocessing.faces import AUTO, FaceConfig, extract_faces, list_detectors
from ..preprocessing.frames import SAMPLINGS, FramesConfig

INDEX_SUFFIXES = {".csv", ".parquet"}


def add_face_arguments(parser: argparse.ArgumentParser) -> None:
    """Frame sampling and face options, shared by `megatron extract` and `megatron preprocess`."""
    defaults_frames, defaults_faces = FramesConfig(), FaceConfig()
    parser.add_argument("--frames", type=int, default=defaults_frames.frames_per_clip, help="frames per clip")
    parser.add_argument("--sampling", choices=SAMPLINGS, default=defaults_frames.sampling)
    parser.add_argument("--clips", type=int, default=defaults_frames.clips_per_video, help="clips per video")
    parser.add_argument("--stride", type=int, default=defaults_frames.stride,
                        help="consecutive sampling: step between frames of a clip")
    parser.add_argument("--detector", choices=[AUTO, *list_detectors()], default=defaults_faces.detector,
                        help="auto: batched MTCNN on the GPU where CUDA is, dlib_hog without")
    parser.add_argument("--face-device", default=defaults_faces.device,
                        help="where a batch detector (mtcnn) runs: auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--fallback", choices=[*list_detectors(), "none"], default=defaults_faces.fallback,
                        help="detector tried where the first finds nothing ('none' to disable)")
    parser.add_argument("--upsample", type=int, default=defaults_faces.upsample, help="dlib upsampling")
    parser.add_argument("--margin", type=float, default=defaults_faces.margin)
    parser.add_argument("--crop-size", type=int, default=defaults_faces.crop_size)
    parser.add_argument("--min-faces", type=int, default=defaults_faces.min_faces)
    parser.add_argument("--track", choices=["largest", "all"], default=defaults_faces.track)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")


def face_configs(args: argparse.Namespace) -> tuple[FramesConfig, FaceConfig]:
    frames_config = FramesConfig(frames_per_clip=args.frames, sampling=args.sampling,
                                 clips_per_video=args.clips, stride=args.stride)
    fallback = None if args.fallback == "none" else args.fallback
    face_config = FaceConfig(detector=args.detector, fallback=fallback, upsample=args.upsample,
                             margin=args.margin, crop_size=args.crop_size,
                             min_faces=args.min_faces, track=args.track, device=args.face_device)
    return frames_config, face_config


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("extract", help="detect, track and crop faces into the faces cache")
    parser.add_argument("inputs", nargs="+", metavar="INDEX_OR_PATHS",
                        help="an index CSV/Parquet with video_id and path columns, or video/image files")
    add_face_arguments(parser)
    parser.add_argument("--force", action="store_true", help="redo items already in the cache")
    parser.add_argument("--cache", default=None, help="cache root (default: $MEGATRON_CACHE or ./cache)")
    parser.set_defaults(handler=run)


def read_items(inputs: list[str]) -> list[tuple[str, str]]:
    """(video_id, path) pairs from index files (video_id, path columns) and media paths (id = stem)."""
    items: list[tuple[str, str]] = []
    for text in inputs:
        path = Path(text)
        if path.suffix.lower() in INDEX_SUFFIXES:
            if not path.exists():
                raise FileNotFoundError(f"index {path} does not exist")
            parquet = path.suffix.lower() == ".parquet"
            index = pd.read_parquet(path) if parquet else pd.read_csv(path, dtype=str, keep_default_na=False)
            missing = {"video_id", "path"} - set(index.columns)
            if missing:
                raise ValueError(f"index {path} lacks columns {sorted(missing)}")
            items += zip(index["video_id"].astype(str), index["path"].astype(str), strict=True)
        else:
            items.append((path.stem, str(path.resolve())))
    return items


def run(args: argparse.Namespace) -> int:
    frames_config, face_config = face_configs(args)
    cache, report = extract_faces(read_items(args.inputs), frames_config, face_config, force=args.force,
                                  cache_root=args.cache, workers=args.workers)
    print(report.summary())
    print(f"cache: {cache.dir}")
    return 1 if report.failures else 0
