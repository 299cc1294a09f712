"""FaceForensics++ (and its DeepFakeDetection part) in the layout its download script writes.

    original_sequences/youtube/<c>/videos/000.mp4                 real, method `original`
    original_sequences/actors/<c>/videos/01__kitchen_pan.mp4      real, method `DeepFakeDetection_original`
    manipulated_sequences/<Method>/<c>/videos/000_003.mp4         fake: target 000, source face 003
    manipulated_sequences/DeepFakeDetection/<c>/videos/01_02__outside_talking_still_laughing__YVGY8LOK.mp4

`<c>` is `raw` (or `c0`, read as `raw`), `c23` or `c40`. Method folders other than the official ones
are accepted as methods too (the embedded mini dataset has its own). Ids never contain `_`; a name's
part after `__` is the DeepFakeDetection scene. Originals get their own id as `target_id`.

Splits follow the FF++ pair lists (`[a, b]`: originals a and b and fakes a_b and b_a belong to that
split): from the `splits_dir` option, else `ROOT/splits/` when present, else the official lists in
`ffpp_splits/`. DeepFakeDetection has no official split, so its videos keep an empty split.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..preprocessing.video import is_video
from .index import (
    SPLITS,
    IndexResult,
    Row,
    make_row,
    make_table,
    register_adapter,
    relative,
    shared_identities,
)

OFFICIAL_SPLITS_DIR = Path(__file__).parent / "ffpp_splits"
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection")
COMPRESSIONS = {"raw": "raw", "c0": "raw", "c23": "c23", "c40": "c40"}
ORIGINAL_METHODS = {"youtube": "original", "actors": "DeepFakeDetection_original"}
NO_OFFICIAL_SPLIT = ("DeepFakeDetection_original", "DeepFakeDetection")
LAYOUT = ("original_sequences/{youtube,actors}/<raw|c0|c23|c40>/videos/*.mp4 and "
          "manipulated_sequences/<Method>/<raw|c0|c23|c40>/videos/*.mp4")


def read_split_pairs(folder: str | Path) -> dict[str, list[tuple[str, str]]]:
    """The `[a, b]` pairs of `train.json`, `val.json` and `test.json` in `folder`."""
    folder = Path(folder)
    missing = [f"{split}.json" for split in SPLITS if not (folder / f"{split}.json").is_file()]
    if missing:
        raise FileNotFoundError(f"split folder {folder} lacks {', '.join(missing)} "
                                "(expected train.json, val.json and test.json of FF++ [a, b] id pairs)")
    pairs = {}
    for split in SPLITS:
        path = folder / f"{split}.json"
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(entries, list) or not all(
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(i, str) for i in pair)
                for pair in entries):
            raise ValueError(f"{path}: expected a JSON list of [a, b] id pairs (strings)")
        pairs[split] = [(a, b) for a, b in entries]
    return pairs


def split_of_ids(pairs: dict[str, list[tuple[str, str]]]) -> tuple[dict[str, str], list[str]]:
    """Map every id to its split; an id listed in two splits is a problem (and keeps the first)."""
    split_of: dict[str, str] = {}
    problems = []
    for split, split_pairs in pairs.items():
        for identity in (i for pair in split_pairs for i in pair):
            if split_of.setdefault(identity, split) != split:
                problems.append(f"id {identity} is listed in both {split_of[identity]} and {split} splits")
    return split_of, problems


def parse_name(stem: str) -> tuple[list[str], str] | None:
    """`000` -> (['000'], ''), `01_02__scene__CODE` -> (['01', '02'], 'scene__CODE'); None if malformed."""
    head, separator, scene = stem.partition("__")
    ids = head.split("_")
    if not all(ids) or (separator and not scene):
        return None
    return ids, scene


def _looks_like_ffpp(root: Path) -> bool:
    return (root / "original_sequences").is_dir() or (root / "manipulated_sequences").is_dir()


def _parse_file(root: Path, path: Path) -> Row | None:
    """The row for a video in the FF++ layout, None if the file fits no rule."""
    parts = path.relative_to(root).parts
    if len(parts) != 5 or parts[2] not in COMPRESSIONS or parts[3] != "videos" or not is_video(path):
        return None
    parsed = parse_name(path.stem)
    if parsed is None:
        return None
    ids, _ = parsed
    compression = COMPRESSIONS[parts[2]]
    if parts[0] == "original_sequences" and parts[1] in ORIGINAL_METHODS and len(ids) == 1:
        return make_row(root, path, label="real", dataset="ffpp", method=ORIGINAL_METHODS[parts[1]],
                        compression=compression, target_id=ids[0])
    if parts[0] == "manipulated_sequences" and len(ids) == 2:
        return make_row(root, path, label="fake", dataset="ffpp", method=parts[1], compression=compression,
                        target_id=ids[0], source_id=ids[1])
    return None


def _assign_split(row: Row, split_of: dict[str, str]) -> str | None:
    """Set the row's split from the pair lists; return a problem message if it cannot be assigned."""
    where = f"{row['method']}/{Path(row['video_id']).name}"
    if row["label"] == "real":
        split = split_of.get(row["target_id"])
        if split is None:
            return f"{where}: id {row['target_id']} is in no split list"
    else:
        target_split, source_split = split_of.get(row["target_id"]), split_of.get(row["source_id"])
        if target_split is None or source_split is None:
            absent = [i for i in (row["target_id"], row["source_id"]) if i not in split_of]
            return f"{where}: id {', '.join(absent)} is in no split list"
        if target_split != source_split:
            return (f"{where}: target {row['target_id']} is in {target_split} but source "
                    f"{row['source_id']} is in {source_split}; split left empty")
        split = target_split
    row["split"] = split
    return None


@register_adapter("ffpp", detect=_looks_like_ffpp, layout=LAYOUT)
def build_ffpp(root: Path, files: list[Path], splits_dir: str | Path | None = None) -> IndexResult:
    if not _looks_like_ffpp(root):
        raise ValueError(f"{root} has neither original_sequences/ nor manipulated_sequences/: "
                         f"expected the FaceForensics++ layout {LAYOUT}")
    problems = [f"{root} has no {folder}/ folder: expected the FaceForensics++ layout {LAYOUT}"
                for folder in ("original_sequences", "manipulated_sequences") if not (root / folder).is_dir()]
    root_splits = root / "splits"
    if splits_dir is None:
        splits_dir = root_splits if root_splits.is_dir() else OFFICIAL_SPLITS_DIR
    uses_root_splits = Path(splits_dir).resolve() == root_splits
    split_files = {root_splits / f"{split}.json" for split in SPLITS} if uses_root_splits else set()
    split_of, split_problems = split_of_ids(read_split_pairs(splits_dir))
    problems += split_problems
    notes = [f"splits from {Path(splits_dir).resolve()}"]

    rows, unmatched = [], []
    for path in files:
        row = _parse_file(root, path)
        if row is not None:
            rows.append(row)
        elif path not in split_files:
            unmatched.append(relative(root, path))

    methods_with_videos = {row["method"] for row in rows if row["label"] == "fake"}
    for folder in sorted(p for p in (root / "manipulated_sequences").glob("*") if p.is_dir()):
        if folder.name not in methods_with_videos:
            problems.append(f"manipulated_sequences/{folder.name}/ holds no videos: expected "
                            f"manipulated_sequences/{folder.name}/<raw|c0|c23|c40>/videos/*.mp4")
    for row in rows:
        if row["method"] in NO_OFFICIAL_SPLIT:
            continue
        problem = _assign_split(row, split_of)
        if problem:
            problems.append(problem)
    for method in NO_OFFICIAL_SPLIT:
        count = sum(row["method"] == method for row in rows)
        if count:
            notes.append(f"{method}: {count} videos have no official split; their split is left empty")

    table = make_table(rows)
    problems += [f"identity {identity} appears in splits {', '.join(splits)}"
                 for identity, splits in shared_identities(table).items()]
    return IndexResult(table, unmatched, problems, notes)
