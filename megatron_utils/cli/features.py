"""`megatron depth`, `megatron embed`, `megatron cache sizes` and `megatron cache copy`: the feature stages,
cache usage, and copying a finished stage cache to another root (e.g. Google Drive)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..core.cache import StageCache, StageReport, cache_sizes, copy_cache
from ..models.backbones import AUTO, DEFAULT_DEPTH_MODEL, list_backbones

if TYPE_CHECKING:
    from ..preprocessing.depth import DepthConfig
    from ..preprocessing.embed import EmbedConfig


def _finish(cache: StageCache, report: StageReport) -> int:
    print(report.summary())
    print(f"config: {json.dumps(cache.config, sort_keys=True)}")
    return 1 if report.failures else 0


def depth_config(args: argparse.Namespace, prefix: str = "") -> DepthConfig:
    from ..preprocessing.depth import DepthConfig

    option = lambda name: getattr(args, prefix + name)  # noqa: E731
    return DepthConfig(model=args.depth_model, input_size=option("input_size"),
                       output_size=args.output_size, batch_size=option("batch_size"), dtype=args.dtype,
                       device=args.device)


def embed_config(args: argparse.Namespace, prefix: str = "") -> EmbedConfig:
    from ..preprocessing.embed import EmbedConfig

    option = lambda name: getattr(args, prefix + name)  # noqa: E731
    return EmbedConfig(rgb_backbone=args.rgb_backbone, depth_backbone=args.depth_backbone,
                       rgb_weights=args.rgb_weights, depth_weights=args.depth_weights,
                       input_size=option("input_size"), batch_size=option("batch_size"),
                       frames_per_clip=getattr(args, "frames_per_clip", None) or args.frames,
                       dtype=args.dtype, device=args.device)


def _depth(args: argparse.Namespace) -> int:
    from ..preprocessing.depth import compute_depth

    faces = StageCache.open(args.faces_cache, "faces")
    cache, report = compute_depth(faces, depth_config(args), force=args.force,
                                  cache_root=faces.root)
    weights = {record.get("weights") for record in cache.records().values()} - {None}
    print(f"depth weights: {', '.join(sorted(weights)) or 'none used (nothing to do)'}")
    return _finish(cache, report)


def _embed(args: argparse.Namespace) -> int:
    from ..preprocessing.embed import compute_embeddings

    faces = StageCache.open(args.faces_cache, "faces")
    depth = StageCache.open(args.depth_cache, "depth")
    cache, report = compute_embeddings(faces, depth, embed_config(args), force=args.force,
                                       cache_root=faces.root)
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


def _copy(args: argparse.Namespace) -> int:
    copied = copy_cache(args.folder, args.to)
    print(f"{copied.stage}: {len(copied.done_items())} entries in {copied.dir} "
          f"({copied.size_bytes() / 2**20:.1f} MiB)")
    return 0


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--force", action="store_true", help="recompute items already in the cache")


def add_depth_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Depth options; `prefix` ("depth-") keeps them apart from the embedding ones in one parser."""
    parser.add_argument("--depth-model", default=DEFAULT_DEPTH_MODEL, metavar="ID_OR_PATH",
                        help="hub id, local save_pretrained folder, or random-init:depth-anything-v2-small "
                             "(RANDOM weights, for tests and speed measurements only)")
    parser.add_argument(f"--{prefix}input-size", type=int, help="side fed to the depth model, a multiple "
                        "of 14 (default: the model's image processor)")
    parser.add_argument("--output-size", type=int, default=224, help="side of the stored depth maps")
    parser.add_argument(f"--{prefix}batch-size", type=int, default=16, help="crops per depth batch")


def add_embed_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    choices = [AUTO, *list_backbones()]
    parser.add_argument("--rgb-backbone", default=AUTO, choices=choices)
    parser.add_argument("--depth-backbone", default=AUTO, choices=choices)
    parser.add_argument("--rgb-weights", metavar="PATH", help="local weights file/folder, RGB backbone")
    parser.add_argument("--depth-weights", metavar="PATH", help="local weights file/folder, depth backbone")
    parser.add_argument(f"--{prefix}input-size", type=int,
                        help="backbone input side (default: each backbone's own)")
    parser.add_argument(f"--{prefix}batch-size", type=int, default=64, help="crops per embedding batch")


def register(commands: argparse._SubParsersAction) -> None:
    depth = commands.add_parser("depth", help="depth map of every face crop (stage 3)")
    depth.add_argument("--faces-cache", required=True, metavar="DIR", help="a faces stage cache folder")
    add_depth_arguments(depth)
    add_runtime_arguments(depth)
    depth.set_defaults(handler=_depth)

    embed = commands.add_parser("embed", help="RGB and depth embeddings of every face crop (stage 4)")
    embed.add_argument("--faces-cache", required=True, metavar="DIR", help="a faces stage cache folder")
    embed.add_argument("--depth-cache", required=True, metavar="DIR", help="the depth cache of those faces")
    add_embed_arguments(embed)
    embed.add_argument("--frames-per-clip", type=int, default=32, help="T, as in the frames stage")
    add_runtime_arguments(embed)
    embed.set_defaults(handler=_embed)

    cache = commands.add_parser("cache", help="inspect the stage caches")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="CACHE_COMMAND")
    sizes = cache_commands.add_parser("sizes", help="disk used by each stage/key folder")
    sizes.add_argument("--root", help="cache root (default: $MEGATRON_CACHE or ./cache)")
    sizes.set_defaults(handler=_sizes)
    copy = cache_commands.add_parser("copy", help="copy a finished stage cache folder under another root, "
                                     "resumably (entries first, then the manifests)")
    copy.add_argument("folder", metavar="DIR", help="a stage cache folder <root>/<stage>/<key>")
    copy.add_argument("--to", required=True, metavar="ROOT", help="the cache root to copy it under")
    copy.set_defaults(handler=_copy)
