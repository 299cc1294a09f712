"""`build_mini`: the mini FF++-style dataset, from real faces to a split, manifested folder of H.264 videos.

Steps: find faces in the preset's sources and plan the clips; render, track and encode every original
(with its sound as AAC: the source video's voice, else the identity's synthetic one); split identities
and pair clips; manipulate the chosen pairs with every method (and the preset's audio-visual families);
write the FF++ split
files, `mini_manifest.json` and `contact_sheet.png`. Every video is written atomically and recorded in a
StageCache under `DIR/.mini/` (landmarks of originals, changed-region boxes of fakes), so a second build
with the same preset and seed reuses what is finished and `force` starts over.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ...core.assets import ASSETS, fetch_many
from ...core.cache import FAILED, OK, StageCache, file_fingerprint, stable_hash, write_json_atomic
from ...preprocessing.video import MediaError, write_mp4
from .contact_sheet import MAX_ROWS, SheetRow, write_contact_sheet
from .landmarks import FaceNotFound, FaceTracker, landmark_box, yaw_ratio
from .manipulations import AUDIO_METHODS, METHODS, SELF_METHODS, Clip
from .presets import get_preset
from .sources import (
    AUDIO_RATE,
    SOURCES,
    ClipSpec,
    discover_clips,
    own_voice,
    render_audio,
    render_clip,
    split_groups,
)
from .splits import SPLITS, FakeSpec, plan_splits

log = logging.getLogger(__name__)

# Bumped when rendering or manipulation code changes the videos. 2: boxes from the faces stage's dlib_boxes;
# 3: audio tracks.
BUILD_VERSION = 3
ORIGINALS_DIR = Path("original_sequences/youtube/c23/videos")
MANIFEST = "mini_manifest.json"
CONTACT_SHEET = "contact_sheet.png"
WORK_DIR = ".mini"


def original_path(out: Path, clip_id: str) -> Path:
    return out / ORIGINALS_DIR / f"{clip_id}.mp4"


def fake_path(out: Path, method: str, name: str) -> Path:
    return out / "manipulated_sequences" / method / "c23" / "videos" / f"{name}.mp4"


@dataclass
class MiniReport:
    preset: str
    seed: int
    out: Path
    counts: dict[str, dict[str, int]]  # split -> {"original": n, method: n}
    skipped: dict[str, str]  # source asset or clip id -> reason
    built: int
    reused: int
    removed: int  # stale videos from an earlier build with other settings
    seconds: float
    manifest: Path
    splits: dict[str, Path] = field(default_factory=dict)
    contact_sheet: Path | None = None

    def summary(self) -> str:
        lines = [f"mini {self.preset} (seed {self.seed}) -> {self.out}: {self.built} videos built, "
                 f"{self.reused} reused, {self.removed} stale removed in {self.seconds:.1f}s"]
        for split, counts in self.counts.items():
            lines.append(f"  {split}: " + ", ".join(f"{m} {n}" for m, n in counts.items()))
        lines += [f"  skipped {name}: {reason}" for name, reason in sorted(self.skipped.items())]
        return "\n".join(lines)


# Workers ---------------------------------------------------------------------------------------------
_TRACKER: FaceTracker | None = None


def _tracker() -> FaceTracker:
    global _TRACKER
    if _TRACKER is None:
        _TRACKER = FaceTracker()
    return _TRACKER


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core


def _make_original(spec: ClipSpec, path: Path, crf: int) -> dict[str, np.ndarray]:
    frames = render_clip(spec)
    landmarks, detected = _tracker().track(frames)
    write_mp4(path, frames, fps=spec.fps, crf=crf, audio=render_audio(spec), sample_rate=AUDIO_RATE)
    return {"landmarks": landmarks, "detected": detected}


def _make_fake(fake: FakeSpec, target: ClipSpec, target_landmarks: np.ndarray, source: ClipSpec,
               source_landmarks: np.ndarray, path: Path, crf: int, seed: int) -> dict[str, np.ndarray]:
    if fake.method in AUDIO_METHODS:  # the target's frames, the source's voice
        frames = render_clip(target)
        write_mp4(path, frames, fps=target.fps, crf=crf, audio=render_audio(source), sample_rate=AUDIO_RATE)
        return {"changed_box": np.zeros((len(frames), 4), np.float32)}
    target_clip = Clip(render_clip(target), target_landmarks)
    source_clip = target_clip if source == target else Clip(render_clip(source), source_landmarks)
    rng = np.random.default_rng(int(stable_hash([seed, fake.method, fake.name], 8), 16))
    frames, boxes = METHODS[fake.method](target_clip, source_clip, rng)
    write_mp4(path, frames, fps=target.fps, crf=crf, audio=render_audio(target), sample_rate=AUDIO_RATE)
    return {"changed_box": boxes}


def _call(task: tuple[Callable[..., Any], tuple]) -> tuple[dict[str, np.ndarray] | None, str | None]:
    function, args = task
    try:
        return function(*args), None
    except (FaceNotFound, MediaError, RuntimeError, ValueError, OSError) as error:
        return None, f"{error.__class__.__name__}: {error}"


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool shared by both stages (workers load the landmark model once), or None for serial."""
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        yield pool


def _run(tasks: dict[str, tuple[Callable[..., Any], tuple]], pool: ProcessPoolExecutor | None, desc: str,
         ) -> Iterator[tuple[str, dict[str, np.ndarray] | None, str | None]]:
    """Run tasks (item -> (function, args)), yielding (item, result, error) as they finish."""
    if pool is None or len(tasks) <= 1:
        for item, task in tqdm(tasks.items(), desc=desc, unit="video"):
            yield item, *_call(task)
        return
    futures = {pool.submit(_call, task): item for item, task in tasks.items()}
    for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="video"):
        yield futures[future], *future.result()


# Build -----------------------------------------------------------------------------------------------
def _is_reusable(cache: StageCache, item: str, key: str, video: Path) -> bool:
    record = cache.records().get(item)
    return (cache.status(item, fingerprint=key) == OK and video.exists()
            and record.get("video") == file_fingerprint(video))


def _clear(out: Path) -> None:
    for folder in (WORK_DIR, "original_sequences", "manipulated_sequences", "splits"):
        shutil.rmtree(out / folder, ignore_errors=True)
    for name in (MANIFEST, CONTACT_SHEET):
        (out / name).unlink(missing_ok=True)


def _remove_stale(out: Path, expected: set[Path]) -> int:
    stale = [p for pattern in (f"{ORIGINALS_DIR}/*.mp4", "manipulated_sequences/*/c23/videos/*.mp4")
             for p in out.glob(pattern) if p not in expected]
    for path in stale:
        path.unlink()
    return len(stale)


def _build_originals(cache: StageCache, clips: list[ClipSpec], out: Path, crf: int,
                     pool: ProcessPoolExecutor | None, skipped: dict[str, str],
                     ) -> tuple[dict[str, ClipSpec], int, int]:
    """Render, track and encode every original not already done; returns the usable clips by id."""
    tasks, reused, built = {}, 0, 0
    for spec in clips:
        item = f"original/{spec.clip_id}"
        if _is_reusable(cache, item, spec.key(), original_path(out, spec.clip_id)):
            reused += 1
        elif cache.status(item, fingerprint=spec.key()) != FAILED:
            tasks[item] = (_make_original, (spec, original_path(out, spec.clip_id), crf))
    by_item = {f"original/{spec.clip_id}": spec for spec in clips}
    for item, tensors, error in _run(tasks, pool, "mini originals"):
        spec = by_item[item]
        if error:
            cache.record(item, FAILED, error, fingerprint=spec.key())
        else:
            video = original_path(out, spec.clip_id)
            cache.write(item, tensors, fingerprint=spec.key(), video=file_fingerprint(video))
            built += 1
    usable = {}
    for item, spec in by_item.items():
        if cache.status(item, fingerprint=spec.key()) == OK:
            usable[spec.clip_id] = spec
        else:
            skipped[spec.clip_id] = f"{spec.asset}: {cache.records()[item]['error']}"
    return usable, built, reused


def _build_fakes(cache: StageCache, fakes: list[FakeSpec], specs: dict[str, ClipSpec],
                 landmarks: dict[str, np.ndarray], out: Path, crf: int, seed: int,
                 pool: ProcessPoolExecutor | None, skipped: dict[str, str],
                 ) -> tuple[list[FakeSpec], int, int]:
    """Manipulate and encode every fake not already done; returns the fakes that exist."""
    tasks, keys, reused, built = {}, {}, 0, 0
    for fake in fakes:
        item = f"{fake.method}/{fake.name}"
        target, source = specs[fake.target], specs[fake.source]
        keys[item] = stable_hash([asdict(fake), target.key(), source.key(), seed])
        path = fake_path(out, fake.method, fake.name)
        if _is_reusable(cache, item, keys[item], path):
            reused += 1
        elif cache.status(item, fingerprint=keys[item]) != FAILED:
            tasks[item] = (_make_fake, (fake, target, landmarks[target.clip_id], source,
                                        landmarks[source.clip_id], path, crf, seed))
    for item, tensors, error in _run(tasks, pool, "mini fakes"):
        if error:
            cache.record(item, FAILED, error, fingerprint=keys[item])
            continue
        method, name = item.split("/")
        video = fake_path(out, method, name)
        cache.write(item, tensors, fingerprint=keys[item], video=file_fingerprint(video))
        built += 1
    done = []
    for fake in fakes:
        item = f"{fake.method}/{fake.name}"
        if cache.status(item, fingerprint=keys[item]) == OK:
            done.append(fake)
        else:
            skipped[item] = cache.records()[item]["error"]
    return done, built, reused


def build_mini(preset: str, out: Path, seed: int = 0, force: bool = False) -> MiniReport:
    """Build (or finish, or reuse) the mini dataset `preset` in `out`; see the module docstring."""
    started = time.perf_counter()
    config = get_preset(preset)
    out = Path(out)
    if force:
        _clear(out)
    sources = {asset: ASSETS[asset].sha256 for asset in config.sources}
    cache = StageCache("mini", {"version": BUILD_VERSION, "preset": asdict(config), "seed": seed,
                                "sources": sources}, root=out / WORK_DIR)
    log.info("mini %s (seed %d): sources %s; landmarks %s", preset, seed, ", ".join(config.sources),
             ASSETS["dlib_landmarks_68"].member)

    fetch_many([*config.sources, "dlib_landmarks_68"])  # downloads in parallel, before the CPU work
    clips, skipped = discover_clips(config, seed)
    log.info("mini %s: %d clips planned in %.1fs", preset, len(clips), time.perf_counter() - started)
    with _pool(config.workers) as pool:
        specs, built, reused = _build_originals(cache, clips, out, config.crf, pool, skipped)
        landmarks = {clip_id: cache.read(f"original/{clip_id}")[0]["landmarks"] for clip_id in specs}
        yaw = {clip_id: yaw_ratio(points) for clip_id, points in landmarks.items()}
        pairs, fakes = plan_splits({c: s.identity for c, s in specs.items()}, yaw, config.split_fractions,
                                   config.manipulated_fractions, [*METHODS, *config.audio_methods],
                                   SELF_METHODS, seed, split_groups(list(specs.values())))
        fakes, built_fakes, reused_fakes = _build_fakes(cache, fakes, specs, landmarks, out, config.crf, seed,
                                                        pool, skipped)
    built, reused = built + built_fakes, reused + reused_fakes
    expected = {original_path(out, c) for c in specs} | {fake_path(out, f.method, f.name) for f in fakes}
    removed = _remove_stale(out, expected)

    # Split files, manifest, contact sheet
    split_of = {clip: split for split in SPLITS for pair in pairs[split] for clip in pair}
    split_paths = {}
    for split in SPLITS:
        split_paths[split] = out / "splits" / f"{split}.json"
        write_json_atomic(split_paths[split], [list(pair) for pair in pairs[split]])
    counts = {split: {"original": sum(s == split for s in split_of.values()),
                      **{m: sum(f.split == split and f.method == m for f in fakes)
                         for m in [*METHODS, *config.audio_methods]}}
              for split in SPLITS}
    sheet = out / CONTACT_SHEET
    if built or removed or not sheet.exists():
        _write_sheet(sheet, out, fakes, specs, landmarks)
    seconds = time.perf_counter() - started
    manifest = {
        "preset": preset, "preset_config": asdict(config), "seed": seed, "build_version": BUILD_VERSION,
        "sources": [{"asset": asset, "identity": SOURCES[asset].identity, "sha256": sha256,
                     "distribution": ASSETS[asset].distribution, "member": ASSETS[asset].member,
                     "clips": [c for c, s in specs.items() if s.asset == asset],
                     "skipped": skipped.get(asset)}
                    for asset, sha256 in sources.items()],
        "landmark_model": {"asset": "dlib_landmarks_68", "sha256": ASSETS["dlib_landmarks_68"].sha256},
        "originals": [{**asdict(s), "split": split_of[c], "voice": "synthetic" if own_voice(s) is None
                       else "its own"} for c, s in specs.items()],
        "fakes": [{**asdict(f), "name": f.name} for f in fakes],
        "skipped": dict(sorted(skipped.items())),
        "counts": counts,
        # The only part that changes between two builds of the same preset and seed:
        "build": {"seconds": round(seconds, 2), "built": built, "reused": reused, "removed": removed},
    }
    write_json_atomic(out / MANIFEST, manifest)
    return MiniReport(preset, seed, out, counts, skipped, built, reused, removed, seconds, out / MANIFEST,
                      split_paths, sheet)


def _write_sheet(path: Path, out: Path, fakes: list[FakeSpec], specs: dict[str, ClipSpec],
                 landmarks: dict[str, np.ndarray]) -> None:
    targets = sorted({f.target for f in fakes}, key=lambda t: (SPLITS.index(next(
        f.split for f in fakes if f.target == t)), t))
    if len(targets) > MAX_ROWS:
        targets = [targets[int(i)] for i in np.linspace(0, len(targets) - 1, MAX_ROWS).round()]
    rows = []
    for target in targets:
        middle = specs[target].n_frames // 2
        videos: list[Path | None] = [original_path(out, target)]
        sources = []
        for method in METHODS:
            fake = next((f for f in fakes if f.method == method and f.target == target), None)
            videos.append(None if fake is None else fake_path(out, method, fake.name))
            if fake is not None and fake.source != target:
                sources.append(fake.source)
        label = f"{target}\n<- {sources[0]}" if sources else target
        rows.append(SheetRow(label, landmark_box(landmarks[target][middle]), middle, videos))
    write_contact_sheet(path, ["original", *METHODS], rows)
