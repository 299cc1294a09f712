"""Celeb-DF v2: `Celeb-real/id0_0000.mp4`, `YouTube-real/00000.mp4`, `Celeb-synthesis/id0_id1_0000.mp4`
(target video of celebrity id0 with the face of id1), and `List_of_testing_videos.txt` whose lines
`1 YouTube-real/00170.mp4` name the test videos (1 = real, 0 = fake).

Listed videos are the test split, the rest train. With `val_fraction` > 0 a val split is carved out of
train by identity, deterministically: a video goes to val when all its identities are val identities, to
train when none is, and keeps an empty split when it mixes both (so val and train share no identity).
YouTube-real videos have no identity id; each is its own group. Methods are the folder names.
"""

from __future__ import annotations

from pathlib import Path

from ..preprocessing.video import is_video
from .index import (
    IndexResult,
    Row,
    hash_fraction,
    make_row,
    make_table,
    register_adapter,
    relative,
    shared_identities,
)

REAL_FOLDERS = ("Celeb-real", "YouTube-real")
FAKE_FOLDER = "Celeb-synthesis"
TEST_LIST = "List_of_testing_videos.txt"
LAYOUT = f"Celeb-real/*.mp4, YouTube-real/*.mp4, Celeb-synthesis/*.mp4 and {TEST_LIST}"


def _looks_like_celebdf(root: Path) -> bool:
    return any((root / name).exists() for name in (*REAL_FOLDERS, FAKE_FOLDER, TEST_LIST))


def _parse_file(root: Path, path: Path) -> Row | None:
    parts = path.relative_to(root).parts
    if len(parts) != 2 or not is_video(path):
        return None
    folder, ids = parts[0], path.stem.split("_")
    if folder == "YouTube-real" and len(ids) == 1:
        return make_row(root, path, label="real", dataset="celebdf", method=folder)
    if folder == "Celeb-real" and len(ids) == 2 and all(ids):
        return make_row(root, path, label="real", dataset="celebdf", method=folder, target_id=ids[0])
    if folder == FAKE_FOLDER and len(ids) == 3 and all(ids):
        return make_row(root, path, label="fake", dataset="celebdf", method=folder, target_id=ids[0],
                        source_id=ids[1])
    return None


def _read_test_list(root: Path, problems: list[str]) -> dict[str, str]:
    """Relative path -> label of every valid line of the test list."""
    listed = {}
    for number, line in enumerate((root / TEST_LIST).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[0] not in ("0", "1"):
            problems.append(f"{TEST_LIST} line {number}: expected '<1 real | 0 fake> <folder>/<name>.mp4', "
                            f"got {line!r}")
            continue
        listed[fields[1]] = "real" if fields[0] == "1" else "fake"
    return listed


def _groups(row: Row) -> list[str]:
    return [i for i in (row["target_id"], row["source_id"]) if i] or [row["video_id"]]


@register_adapter("celebdf", detect=_looks_like_celebdf, layout=LAYOUT)
def build_celebdf(root: Path, files: list[Path], val_fraction: float = 0.0) -> IndexResult:
    if not _looks_like_celebdf(root):
        raise ValueError(f"{root} has none of {', '.join((*REAL_FOLDERS, FAKE_FOLDER, TEST_LIST))}: "
                         f"expected the Celeb-DF v2 layout {LAYOUT}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    problems = [f"{root} has no {name}: expected the Celeb-DF v2 layout {LAYOUT}"
                for name in (*REAL_FOLDERS, FAKE_FOLDER, TEST_LIST) if not (root / name).exists()]
    rows: list[Row] = []
    unmatched = []
    for path in files:
        row = _parse_file(root, path)
        if row is not None:
            rows.append(row)
        elif path != root / TEST_LIST:
            unmatched.append(relative(root, path))

    notes = []
    if (root / TEST_LIST).is_file():
        test_list = _read_test_list(root, problems)
        by_name = {relative(root, Path(row["path"])): row for row in rows}
        for name, label in test_list.items():
            row = by_name.get(name)
            if row is None:
                problems.append(f"{TEST_LIST} lists {name}, which is missing or not a Celeb-DF video")
                continue
            if row["label"] != label:
                problems.append(f"{TEST_LIST} labels {name} {label}, but its folder says {row['label']}")
            row["split"] = "test"
        train_rows = [row for row in rows if row["split"] != "test"]
        val_ids = {i for row in train_rows for i in _groups(row) if hash_fraction(i) < val_fraction}
        mixed = 0
        for row in train_rows:
            in_val = [i in val_ids for i in _groups(row)]
            row["split"] = "val" if all(in_val) else "train" if not any(in_val) else ""
            mixed += row["split"] == ""
        if mixed:
            notes.append(f"{mixed} fakes mix a val and a train identity; their split is left empty")
    else:
        notes.append(f"no {TEST_LIST}: every split is left empty")

    table = make_table(rows)
    shared = shared_identities(table)
    if shared:
        examples = ", ".join(list(shared)[:10])
        notes.append(f"{len(shared)} identities appear in more than one split: {examples}")
    return IndexResult(table, unmatched, problems, notes)
