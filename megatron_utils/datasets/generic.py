"""Any folder of `real/` and `fake/` videos or images (searched recursively), optionally under split
parents: `ROOT/train/real/...`, `ROOT/val/fake/...`, `ROOT/test/...`. Without a split parent the split is
empty. The method is the first subfolder below `real/` or `fake/` (`fake/Deepfakes/x.mp4` -> `Deepfakes`),
else `original` for real and `fake` for fake items.
"""

from __future__ import annotations

from pathlib import Path

from .index import (
    LABELS,
    SPLITS,
    IndexResult,
    Row,
    make_row,
    make_table,
    media_kind,
    register_adapter,
    relative,
)

LAYOUT = "real/ and fake/ folders of videos or images, optionally under train/, val/ and test/"


def _label_folders(root: Path) -> list[Path]:
    parents = [root] + [root / split for split in SPLITS]
    return [parent / label for parent in parents for label in LABELS if (parent / label).is_dir()]


def _looks_like_generic(root: Path) -> bool:
    return bool(_label_folders(root))


def _parse_file(root: Path, path: Path) -> Row | None:
    parts = path.relative_to(root).parts
    split = parts[0] if parts[0] in SPLITS else ""
    label_at = 1 if split else 0
    if len(parts) < label_at + 2 or parts[label_at] not in LABELS or media_kind(path) is None:
        return None
    label = parts[label_at]
    nested = len(parts) > label_at + 2
    method = parts[label_at + 1] if nested else ("original" if label == "real" else "fake")
    return make_row(root, path, label=label, dataset="generic", method=method, split=split)


@register_adapter("generic", detect=_looks_like_generic, layout=LAYOUT)
def build_generic(root: Path, files: list[Path]) -> IndexResult:
    folders = _label_folders(root)
    if not folders:
        raise ValueError(f"{root} has no real/ or fake/ folder: expected the generic layout {LAYOUT}")
    present = {folder.name for folder in folders}
    problems = [f"{root} has no {label}/ folder (expected both real/ and fake/)"
                for label in LABELS if label not in present]
    rows, unmatched = [], []
    for path in files:
        row = _parse_file(root, path)
        if row is None:
            unmatched.append(relative(root, path))
        else:
            rows.append(row)
    return IndexResult(make_table(rows), unmatched, problems)
