"""`megatron depth`, `megatron embed` and `megatron cache sizes`: the feature stages and cache usage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..backbones import AUTO, DEFAULT_DEPTH_MODEL, list_backbones
from ..cache import StageCache, StageReport, cache_sizes


def open_stage_cache(folder: str, stage: str) -> StageCache:
    """An existing `<root>/<stage>/<key>/` folder, as written by that stage."""
    path = Path(folder).expanduser()
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path}: not a stage cache folder (no config.json)")
    saved = json.loads(config_path.read_text())
    if saved.get("stage") != stage:
        raise ValueError(f"{path}: is a {saved.get('stage')!r} cache, expected {stage!r}")
    return StageCache(stage, saved["config"], root=path.parent.parent)


def _finish(cache: StageCache, report: StageReport) -> int:
    print(report.summary())
    print(f"config: {json.dumps(cache.config, sort_keys=True)}")
    return 1 if report.failures else 0


def _depth(args: argparse.Namespace) -> int:
    from ..depth import DepthConfig, compute_depth

    faces = open_stage_cache(args.faces_cache, "faces")
    config = DepthConfig(model=args.model, input_size=args.input_size, output_size=args.output_size,
                         batch_size=args.batch_size, dtype=args.dtype, device=args.device)
    cache, report = compute_depth(faces, config, force=args.force, cache_root=faces.dir.parent.parent)
    weights = {record.get("weights") for record in cache.records().values()} - {None}
    print(f"depth weights: {', '.join(sorted(weights)) or 'none used (nothing to do)'}")
    return _finish(cache, report)


def _embed(args: argparse.Namespace) -> int:
    from ..embed import EmbedConfig, compute_embeddings

    faces = open_stage_cache(args.faces_cache, "faces")
    depth = open_stage_cache(args.depth_cache, "depth")
    config = EmbedConfig(rgb_backbone=args.rgb_backbone, depth_backbone=args.depth_backbone,
                         rgb_weights=args.rgb_weights, depth_weights=args.depth_weights,
                         input_size=args.input_size, batch_size=args.batch_size,
                         frames_per_clip=args.frames_per_clip, dtype=args.dtype, device=args.device)
    cache, report = compute_embeddings(faces, depth, config, force=args.force,
                                       cache_root=faces.dir.parent.parent)
    for stream in ("rgb", "depth"):
        print(f"{stream} backbone: {cache.config[stream]['backbone']} ({cache.config[stream]['weights']})")
    return _finish(cache, report)


def _sizes(args: argparse.Namespace) -> int:
    sizes = cache_sizes(args.root)
    width = max([len("stage/key"), *map(len, sizes)])
    print(f"{'stage/key':<{width}}  {'MiB':>10}")
    for name, size in sizes.items():
        print(f"{name:<{width}}  {size / 2**20:>10.1f}")
    print(f"{'total':<{width}}  {sum(sizes.values()) / 2**20:>10.1f}")
    return 0


def _add_runtime(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--batch-size", type=int, default=batch_size, help="crops per batch, across videos")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--force", action="store_true", help="recompute items already in the cache")


def register(commands: argparse._SubParsersAction) -> None:
    depth = commands.add_parser("depth", help="depth map of every face crop (stage 3)")
    depth.add_argument("--faces-cache", required=True, metavar="DIR", help="a faces stage cache folder")
    depth.add_argument("--model", default=DEFAULT_DEPTH_MODEL, metavar="ID_OR_PATH",
                       help="hub id, local save_pretrained folder, or random-init:depth-anything-v2-small "
                            "(RANDOM weights, for tests and speed measurements only)")
    depth.add_argument("--input-size", type=int, help="side fed to the model, a multiple of 14 "
                                                      "(default: the model's image processor)")
    depth.add_argument("--output-size", type=int, default=224, help="side of the stored depth maps")
    _add_runtime(depth, batch_size=16)
    depth.set_defaults(handler=_depth)

    embed = commands.add_parser("embed", help="RGB and depth embeddings of every face crop (stage 4)")
    embed.add_argument("--faces-cache", required=True, metavar="DIR", help="a faces stage cache folder")
    embed.add_argument("--depth-cache", required=True, metavar="DIR", help="the depth cache of those faces")
    choices = [AUTO, *list_backbones()]
    embed.add_argument("--rgb-backbone", default=AUTO, choices=choices)
    embed.add_argument("--depth-backbone", default=AUTO, choices=choices)
    embed.add_argument("--rgb-weights", metavar="PATH", help="local weights file/folder, RGB backbone")
    embed.add_argument("--depth-weights", metavar="PATH", help="local weights file/folder, depth backbone")
    embed.add_argument("--input-size", type=int, help="backbone input side (default: each backbone's own)")
    embed.add_argument("--frames-per-clip", type=int, default=32, help="T, as in the frames stage")
    _add_runtime(embed, batch_size=64)
    embed.set_defaults(handler=_embed)

    cache = commands.add_parser("cache", help="inspect the stage caches")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="CACHE_COMMAND")
    sizes = cache_commands.add_parser("sizes", help="disk used by each stage/key folder")
    sizes.add_argument("--root", help="cache root (default: $MEGATRON_CACHE or ./cache)")
    sizes.set_defaults(handler=_sizes)
