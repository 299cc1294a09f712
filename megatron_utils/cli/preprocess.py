"""`megatron preprocess`: faces, depth maps, the optional audio stream and embeddings in one go, each stage
resuming from its cache."""

from __future__ import annotations

import argparse

from .extract import add_face_arguments, face_configs, read_items
from .features import (
    add_depth_arguments,
    add_embed_arguments,
    add_runtime_arguments,
    depth_config,
    embed_config,
)


def run(args: argparse.Namespace) -> int:
    from ..preprocessing.audio import AudioConfig
    from ..preprocessing.preprocess import PreprocessConfig, preprocess

    frames, faces = face_configs(args)
    audio = AudioConfig(encoder=args.audio, weights=args.audio_weights, device=args.device)
    config = PreprocessConfig(frames, faces, depth_config(args, "depth_"), embed_config(args, "embed_"),
                              audio)
    if args.ray is not None:
        from ..preprocessing.cluster import preprocess_on_ray

        result = preprocess_on_ray(read_items(args.inputs), config, force=args.force, cache_root=args.cache,
                                   address=args.ray, actors=args.ray_actors)
    else:
        result = preprocess(read_items(args.inputs), config, force=args.force, cache_root=args.cache,
                            workers=args.workers)
    print(result.summary())
    for stage in ("faces", "depth", "embed"):
        print(f"{stage} cache: {getattr(result, stage).dir}")
    print(f"rgb backbone: {result.embed.config['rgb']['backbone']} ({result.embed.config['rgb']['weights']})")
    print(
        f"depth backbone: {result.embed.config['depth']['backbone']} "
        f"({result.embed.config['depth']['weights']})"
    )
    print(f"depth model: {args.depth_model} ({result.depth.config['weights']})")
    if result.audio is not None:
        print(f"audio cache: {result.audio.dir}")
        print(f"audio encoder: {args.audio} ({result.audio.config['weights']})")
    return 1 if result.failures() else 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("preprocess", help="faces, depth maps and embeddings (stages 1-4)")
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INDEX_OR_PATHS",
        help="an index CSV/Parquet with video_id and path columns, or video/image files",
    )
    add_face_arguments(parser)
    add_depth_arguments(parser, prefix="depth-")
    add_embed_arguments(parser, prefix="embed-")
    add_runtime_arguments(parser)
    parser.add_argument("--audio", default="none", metavar="ENCODER",
                        help="the audio stream's encoder (default none: no audio stream; resemblyzer: the "
                        "pretrained speaker encoder that installs with setup.sh; tiny: random, tests only)")
    parser.add_argument("--audio-weights", help="a local copy of the audio encoder's weights file")
    parser.add_argument("--cache", default=None, help="cache root (default: $MEGATRON_CACHE or ./cache); "
                        "with --ray, a folder every node sees")
    parser.add_argument("--ray", metavar="auto|ADDRESS", help="spread the videos over a Ray cluster (auto: "
                        "the one this machine belongs to; needs `pip install megatron-deepfake[ray]`)")
    parser.add_argument("--ray-actors", type=int, help="workers on the cluster, each loading the models "
                        "once (default: one per GPU, else one per CPU)")
    parser.set_defaults(handler=run)
