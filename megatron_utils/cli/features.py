"""`megatron depth`, `megatron embed`, `megatron cache sizes` and `megatron cache copy`: the feature stages,
cache usage, and copying a finished stage cache to another root (e.g. Google Drive)."""

from __future__ import annotations

import argparse
import json

from ..core.cache import StageCache, StageReport, cache_sizes, copy_cache
from .options import add_recipe_option, add_stage_options, stage_config


def _finish(cache: StageCache, report: StageReport) -> int:
    print(report.summary())
    print(f"config: {json.dumps(cache.config, sort_keys=True)}")
    return 1 if report.failures else 0


def _depth(args: argparse.Namespace) -> int:
    from ..preprocessing.depth import compute_depth

    faces = StageCache.open(args.faces_cache, "faces")
    cache, report = compute_depth(faces, stage_config(args, args.options, "depth"), force=args.force,
                                  cache_root=faces.root)
    weights = {record.get("weights") for record in cache.records().values()} - {None}
    print(f"depth weights: {', '.join(sorted(weights)) or 'none used (nothing to do)'}")
    return _finish(cache, report)


def _embed(args: argparse.Namespace) -> int:
    from ..preprocessing.embed import compute_embeddings

    faces = StageCache.open(args.faces_cache, "faces")
    depth = StageCache.open(args.depth_cache, "depth")
    cache, report = compute_embeddings(faces, depth, stage_config(args, args.options, "embed"),
                                       force=args.force, cache_root=faces.root)
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


def register(commands: argparse._SubParsersAction) -> None:
    depth = commands.add_parser("depth", help="depth map of every face crop (stage 3)")
    depth.add_argument("--faces-cache", required=True, metavar="DIR", help="a faces stage cache folder")
    add_recipe_option(depth)
    depth.add_argument("--force", action="store_true", help="recompute items already in the cache")
    depth.set_defaults(handler=_depth, options=add_stage_options(depth, ("depth",)))

    embed = commands.add_parser("embed", help="RGB and depth embeddings of every face crop (stage 4)")
    embed.add_argument("--faces-cache", required=True, metavar="DIR", help="a faces stage cache folder")
    embed.add_argument("--depth-cache", required=True, metavar="DIR", help="the depth cache of those faces")
    add_recipe_option(embed)
    embed.add_argument("--force", action="store_true", help="recompute items already in the cache")
    embed.set_defaults(handler=_embed, options=add_stage_options(embed, ("embed",)))

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
