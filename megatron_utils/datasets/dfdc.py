"""The DeepFake Detection Challenge (DFDC): folders (`dfdc_train_part_0/`, ...) each holding videos and a
`metadata.json` of the form `{"abc.mp4": {"label": "FAKE" | "REAL", "original": "xyz.mp4" | null,
"split": "train"}}`.

DFDC names no identities, so `target_id` groups a fake with the real video it was made from: a real
video's own name, a fake's `original` (both without suffix). Methods are `original` (real) and `DFDC`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .index import IndexResult, Row, make_row, make_table, media_kind, register_adapter, relative

LAYOUT = "<folder>/metadata.json listing <folder>/*.mp4 as {name: {label: FAKE|REAL, original, split}}"
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
LABELS = {"REAL": "real", "FAKE": "fake"}


def _looks_like_dfdc(root: Path) -> bool:
    return (root / "metadata.json").is_file() or any(root.glob("*/metadata.json"))


def _read_metadata(root: Path, metadata_path: Path, problems: list[str]) -> dict[Path, Row]:
    """Rows for the entries of one metadata.json; malformed files and entries become problems."""
    where = relative(root, metadata_path)
    try:
        entries = json.loads(metadata_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"{where} is not valid JSON ({error}); its videos are listed as unmatched")
        return {}
    if not isinstance(entries, dict):
        problems.append(f"{where}: expected a JSON object {{file name: {{label, original, split}}}}")
        return {}
    rows = {}
    for name, info in entries.items():
        path = metadata_path.parent / name
        label = LABELS.get(str(info.get("label", "")).upper()) if isinstance(info, dict) else None
        if label is None:
            problems.append(f"{where}: entry {name!r} has no label FAKE or REAL")
            continue
        if not path.is_file():
            problems.append(f"{where} lists {name} but the file is missing")
            continue
        if media_kind(path) is None:
            problems.append(f"{where} lists {name}, which is not a video or image file")
            continue
        split = SPLIT_NAMES.get(str(info.get("split") or "").lower(), "")
        if info.get("split") and not split:
            problems.append(f"{where}: entry {name!r} has unknown split {info['split']!r}; left empty")
        original = info.get("original") or ""
        target_id = Path(name).stem if label == "real" else Path(original).stem
        rows[path] = make_row(root, path, label=label, dataset="dfdc", method="original" if label == "real"
                              else "DFDC", target_id=target_id, split=split)
    return rows


@register_adapter("dfdc", detect=_looks_like_dfdc, layout=LAYOUT)
def build_dfdc(root: Path, files: list[Path]) -> IndexResult:
    metadata_files = [path for path in files if path.name == "metadata.json"]
    if not metadata_files:
        raise ValueError(f"{root} holds no metadata.json: expected the DFDC layout {LAYOUT}")
    problems: list[str] = []
    listed: dict[Path, Row] = {}
    for metadata_path in metadata_files:
        listed.update(_read_metadata(root, metadata_path, problems))
    unmatched = [relative(root, path) for path in files
                 if path not in listed and path.name != "metadata.json"]
    notes = [f"read {len(metadata_files)} metadata.json file(s)"]
    return IndexResult(make_table(listed.values()), unmatched, problems, notes)
