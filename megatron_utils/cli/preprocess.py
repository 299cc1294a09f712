"""`megatron preprocess`: faces, depth maps, the optional audio stream and embeddings in one go, each stage
resuming from its cache. Every setting is a flag of its section (`--faces-crop-size`, `--embed-rgb-weights`),
starting from the recipe's value."""

from __future__ import annotations

import argparse

from .extract import read_items
from .options import STAGES, add_recipe_option, add_stage_options, preprocess_config


def run(args: argparse.Namespace) -> int:
    from ..preprocessing.preprocess import preprocess

    config = preprocess_config(args, args.options)
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
    for stream in ("rgb", "depth"):
        print(f"{stream} backbone: {result.embed.config[stream]['backbone']} "
              f"({result.embed.config[stream]['weights']})")
    print(f"depth model: {config.depth.model} ({result.depth.config['weights']})")
    if result.audio is not None:
        print(f"audio cache: {result.audio.dir}")
        print(f"audio encoder: {config.audio.encoder} ({result.audio.config['weights']})")
    return 1 if result.failures() else 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("preprocess", help="faces, depth maps and embeddings (stages 1-4)")
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INDEX_OR_PATHS",
        help="an index CSV/Parquet with video_id and path columns, or video/image files",
    )
    add_recipe_option(parser)
    parser.add_argument("--workers", type=int, default=None, help="face-extraction processes (default: all "
                        "CPU cores)")
    parser.add_argument("--force", action="store_true", help="recompute items already in the caches")
    parser.add_argument("--cache", default=None, help="cache root (default: $MEGATRON_CACHE or ./cache); "
                        "with --ray, a folder every node sees")
    parser.add_argument("--ray", metavar="auto|ADDRESS", help="spread the videos over a Ray cluster (auto: "
                        "the one this machine belongs to; needs `pip install megatron-deepfake[ray]`)")
    parser.add_argument("--ray-actors", type=int, help="workers on the cluster, each loading the models "
                        "once (default: one per GPU, else one per CPU)")
    # T is the frames stage's: the embed stage's frames_per_clip always follows it.
    parser.set_defaults(handler=run, options=add_stage_options(parser, STAGES,
                                                               skip={"embed": ("frames_per_clip",)}))
