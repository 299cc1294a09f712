"""How big the faces and depth caches get per FF++ c23 video, and what each storage candidate costs.

The faces stage runs at the FF++ recipe's settings (`megatron_utils/recipes/ffpp-c23.yaml`: 32 frames,
224 px crops) on real FF++ c23 videos of `../shared/data/realfakes-dev/` (read where they are, never
copied: research-only), as many of each method (Deepfakes, Face2Face, FaceSwap, real) as `--videos`
allows. Per video and candidate: bytes, encode and decode ms per frame (one image at a time, one
thread), and whether the round trip is exact.

- crops: PNG at compression levels 1, 6 and 9, lossless WebP at efforts (method) 0, 1, 2 and 4 (Pillow),
  zstd on the raw pixels at levels 3 and 19 where `zstandard` is importable;
- depth: the FF++ recipe's Depth Anything V2 cannot be downloaded here, so the maps are the offline
  provider's (`preprocessing/facemesh.py`: MediaPipe's face mesh fitted to each crop and rendered, a real
  smooth depth of the face on a zero background; Depth Anything also fills the background, so its maps
  will compress less). Raw float16 (the old format), 8 bits in an 8-bit PNG and 10, 11, 12 or 16 bits in
  a 16-bit PNG, with the change each makes to the depth embeddings (the offline MobileNetV2 depth
  backbone) against float32 maps: relative L2 per frame. Yardsticks: the same network under bfloat16
  autocast (what a GPU computes), and the change between neighbouring frames of a video.

Then the stages' own entries (the chosen formats, landmarks and boxes included) as stored on disk, and the
cost of reading one crop alone (fine-tuning's DataLoader) against the old raw row read.

    python bench/bench_cache_size.py [--videos 12]
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import REPO, print_table, write_results
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from megatron_utils.preprocessing.batching import to_unit_tensor
from megatron_utils.preprocessing.depth import DEPTH_BITS, DepthConfig, DepthEstimator, compute_depth
from megatron_utils.preprocessing.embed import EmbedConfig, Embedder
from megatron_utils.preprocessing.faces import extract_faces, read_face_row, read_faces
from megatron_utils.recipes import load_recipe

log = logging.getLogger("bench_cache_size")
DEFAULT_DATA = REPO.parent / "shared" / "data" / "realfakes-dev"
METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "real")
DEPTH_BITS_TRIED = (8, 10, 11, 12, 16)
MB = 1e6

Encode = Callable[[np.ndarray], bytes]
Decode = Callable[[bytes], np.ndarray]


def pillow(format: str, **options: object) -> tuple[Encode, Decode]:
    def encode(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format, **options)
        return buffer.getvalue()

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image)

    return encode, decode


def crop_candidates() -> dict[str, tuple[Encode, Decode]]:
    candidates = {f"PNG level {level}": pillow("PNG", compress_level=level) for level in (1, 6, 9)}
    candidates |= {f"WebP lossless effort {method}": pillow("WEBP", lossless=True, method=method,
                                                            quality=quality)
                   for method, quality in ((0, 0), (1, 20), (2, 25), (4, 75))}  # libwebp's -z 0, 1, 2, 6
    try:
        import zstandard
    except ImportError:
        log.warning("zstandard is not installed: zstd is left out (pip install zstandard to include it)")
        return candidates
    for level in (3, 19):
        compressor, decompressor = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
        candidates[f"zstd level {level}"] = (
            lambda image, c=compressor: c.compress(image.tobytes()),
            lambda data, d=decompressor: np.frombuffer(d.decompress(data), np.uint8).reshape(224, 224, 3))
    return candidates


def measure(images: np.ndarray, encode: Encode, decode: Decode) -> dict[str, object]:
    tic = time.perf_counter()
    files = [encode(image) for image in images]
    encode_s = time.perf_counter() - tic
    tic = time.perf_counter()
    decoded = [decode(data) for data in files]
    decode_s = time.perf_counter() - tic
    exact = all(np.array_equal(out, image) for out, image in zip(decoded, images, strict=True))
    return {"MB": sum(map(len, files)) / MB, "encode ms/frame": 1e3 * encode_s / len(images),
            "decode ms/frame": 1e3 * decode_s / len(images), "exact": exact}


def relative_change(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.linalg.norm(features - reference, axis=1) / np.linalg.norm(reference, axis=1)


def depth_rows(maps: np.ndarray, embed: Callable[..., np.ndarray]) -> dict[str, dict[str, object]]:
    """Size and embedding change of each depth storage candidate for one video's float32 maps."""
    reference = embed(maps)
    rows = {"float16 raw (old)": {"MB": maps.astype(np.float16).nbytes / MB,
                                  "embedding change": relative_change(embed(maps.astype(np.float16)),
                                                                      reference)}}
    for bits in DEPTH_BITS_TRIED:
        top = 2**bits - 1
        levels = np.rint(maps * top).astype(np.uint8 if bits == 8 else np.uint16)
        row = measure(levels, *pillow("PNG", compress_level=6))
        row["embedding change"] = relative_change(embed(levels.astype(np.float32) / top), reference)
        rows[f"{bits} bits, {8 if bits == 8 else 16}-bit PNG"] = row
    rows["yardstick: bfloat16 autocast"] = {"embedding change": relative_change(embed(maps, bf16=True),
                                                                                reference)}
    rows["yardstick: neighbouring frames"] = {"embedding change": relative_change(reference[1:],
                                                                                  reference[:-1])}
    return rows


def row_read_ms(cache, video_id: str, crops: np.ndarray, landmarks: np.ndarray) -> dict[str, float]:
    """ms to read one crop and its landmarks alone: the stored WebP entry against the old raw layout."""
    rows = range(len(crops))
    tic = time.perf_counter()
    for row in rows:
        read_face_row(cache, video_id, ("crops", "landmarks"), row)
    stored = 1e3 * (time.perf_counter() - tic) / len(crops)
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "raw.safetensors")
        save_file({"crops": crops, "landmarks": landmarks}, path)
        tic = time.perf_counter()
        for row in rows:
            with safe_open(path, framework="numpy") as handle:
                {name: handle.get_slice(name)[row:row + 1][0] for name in ("crops", "landmarks")}
        raw = 1e3 * (time.perf_counter() - tic) / len(crops)
    return {"row read ms (stored)": stored, "row read ms (raw, old)": raw}


def pick_videos(data: Path, count: int) -> list[Path]:
    """Up to `count` FF++ c23 videos, taken in turn from each method."""
    groups = [sorted((data / "videos").glob(f"ffpp_c23__*__{method}__*.mp4")) for method in METHODS]
    picked = [group[i] for i in range(max(map(len, groups))) for group in groups if i < len(group)]
    if not picked:
        raise FileNotFoundError(f"no ffpp_c23__* videos under {data / 'videos'}")
    return picked[:count]


def summarise(per_video: list[dict[str, dict[str, object]]]) -> list[dict[str, object]]:
    summary = []
    for name in per_video[0]:
        rows = [video[name] for video in per_video]
        out: dict[str, object] = {"candidate": name}
        if "MB" in rows[0]:
            sizes = [row["MB"] for row in rows]
            out |= {"MB/video mean": float(np.mean(sizes)), "MB/video max": float(np.max(sizes))}
        for key in ("encode ms/frame", "decode ms/frame"):
            if key in rows[0]:
                out[key] = float(np.median([row[key] for row in rows]))
        if "exact" in rows[0]:
            out["exact"] = all(row["exact"] for row in rows)
        if "embedding change" in rows[0]:
            changes = np.concatenate([row["embedding change"] for row in rows])
            out |= {"emb. change median": float(np.median(changes)), "emb. change max": float(changes.max())}
        summary.append(out)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=REPO / "cache" / "bench" / "cache-size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # codecs run on one thread too; the stages' pools parallelise over videos

    recipe = load_recipe("ffpp-c23").preprocess
    videos = pick_videos(args.data, args.videos)
    items = [(path.stem.split("__", 1)[1], str(path)) for path in videos]
    faces, report = extract_faces(items, recipe.frames, recipe.faces, cache_root=args.work, workers=2)
    log.info(report.summary())
    estimator = DepthEstimator(DepthConfig(model="facemesh", output_size=recipe.depth.output_size))
    depth, depth_report = compute_depth(faces, estimator.config, cache_root=args.work, estimator=estimator)
    log.info(depth_report.summary())
    embedder = Embedder(EmbedConfig(rgb_backbone="tiny_random", depth_backbone="mobilenetv2_offline",
                                    input_size=recipe.embed.input_size, device="cpu"))

    def embed(maps: np.ndarray, bf16: bool = False) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            pixels = to_unit_tensor(maps.astype(np.float32), torch.device("cpu"))
            return embedder.embed_pixels("depth", pixels).float().numpy()

    candidates = crop_candidates()
    per_video, crop_results, depth_results = [], [], []
    for video_id in tqdm(faces.done_items(), desc="candidates", unit="video"):
        entry, _ = read_faces(faces, video_id, ["crops", "landmarks"])
        crops = entry["crops"]
        crop_results.append({name: measure(crops, *codec) for name, codec in candidates.items()})
        with torch.inference_mode():
            maps = estimator.depth_maps(to_unit_tensor(crops, torch.device("cpu"))).numpy()
        depth_results.append(depth_rows(maps, embed))
        faces_mb = faces.entry_path(video_id).stat().st_size / MB
        depth_mb = depth.entry_path(video_id).stat().st_size / MB
        per_video.append({"video": video_id, "crops": len(entry["crops"]),
                          "crops raw MB": crops.nbytes / MB,
                          "depth float16 MB (old)": maps.astype(np.float16).nbytes / MB,
                          "faces entry MB": faces_mb, "depth entry MB": depth_mb,
                          "faces + depth MB": faces_mb + depth_mb,
                          **row_read_ms(faces, video_id, crops, entry["landmarks"])})
    failed = {**faces.failures(), **depth.failures()}
    print_table(per_video, f"Per video: the stages' entries on disk (WebP crops, {DEPTH_BITS}-bit PNG depth)")
    crops_summary, depth_summary = summarise(crop_results), summarise(depth_results)
    raw = float(np.mean([video["crops raw MB"] for video in per_video]))
    for row in crops_summary:
        row["of raw"] = row["MB/video mean"] / raw
    print_table(crops_summary, f"Crop storage, {len(per_video)} videos, 224 px (raw {raw:.2f} MB/video)")
    print_table(depth_summary, "Depth storage (face-mesh depth, 224 px) and the change it makes to the depth "
                               "embeddings (relative L2 against float32 maps)")
    totals = [video["faces + depth MB"] for video in per_video]
    old = [video["crops raw MB"] + video["depth float16 MB (old)"] for video in per_video]
    print(f"\nfaces + depth entries: {np.mean(totals):.2f} MB/video mean, {np.max(totals):.2f} max "
          f"(old format: {np.mean(old):.2f})")
    if failed:
        print(f"failed: {failed}")
    write_results("cache_size", {"videos": per_video, "crops": crops_summary, "depth": depth_summary,
                                 "failed": failed, "faces_cache": str(faces.dir),
                                 "depth_cache": str(depth.dir)})


if __name__ == "__main__":
    main()
