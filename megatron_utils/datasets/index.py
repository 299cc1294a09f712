"""One index table for every supported dataset: the adapter registry and the table's I/O.

An adapter turns a dataset folder into rows of the index table (columns in `COLUMNS`, described in
docs/ARCHITECTURE.md). Adapters register themselves with `@register_adapter`, the way timm registers
models, and `build_index(root)` picks one by name or by recognising the folder layout. Every file under
the root either becomes a row or is reported in `IndexResult.unmatched`; nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core.cache import atomic_path
from ..core.registry import Registry
from ..preprocessing.video import is_image, is_video

logger = logging.getLogger(__name__)

COLUMNS = ["video_id", "path", "label", "dataset", "method", "compression", "target_id", "source_id",
           "split", "media"]
SPLITS = ("train", "val", "test")
LABELS = ("real", "fake")

Row = dict[str, str]


@dataclass
class IndexResult:
    """The index table plus what did not fit: files no rule matched, problems, and informative notes."""

    table: pd.DataFrame
    unmatched: list[str] = field(default_factory=list)  # paths relative to the dataset root
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. where the splits came from


BuildFn = Callable[..., IndexResult]


@dataclass(frozen=True)
class Adapter:
    name: str
    build: BuildFn  # build(root, files, **options) -> IndexResult
    detect: Callable[[Path], bool]  # True if a folder looks like this dataset
    layout: str  # the expected layout, quoted in error messages

    @property
    def options(self) -> list[str]:
        return list(inspect.signature(self.build).parameters)[2:]


ADAPTERS: Registry[Adapter] = Registry("dataset")


def register_adapter(name: str, detect: Callable[[Path], bool], layout: str) -> Callable[[BuildFn], BuildFn]:
    """Register `build(root, files, **options)` as the adapter `name`."""

    def decorator(build: BuildFn) -> BuildFn:
        ADAPTERS.register(Adapter(name, build, detect, layout), name)
        return build

    return decorator


# Helpers shared by adapters ------------------------------------------------------------------------
def media_kind(path: Path) -> str | None:
    if is_video(path):
        return "video"
    if is_image(path):
        return "image"
    return None


def make_row(root: Path, path: Path, *, label: str, dataset: str, method: str, compression: str = "",
             target_id: str = "", source_id: str = "", split: str = "") -> Row:
    media = media_kind(path)
    if media is None:
        raise ValueError(f"{path}: not a video or image file")
    return {"video_id": path.relative_to(root).with_suffix("").as_posix(), "path": str(path),
            "label": label, "dataset": dataset, "method": method, "compression": compression,
            "target_id": target_id, "source_id": source_id, "split": split, "media": media}


def make_table(rows: Iterable[Row]) -> pd.DataFrame:
    table = pd.DataFrame(list(rows), columns=COLUMNS, dtype=str)
    return table.sort_values("video_id", ignore_index=True)


def relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def hash_fraction(text: str) -> float:
    """A deterministic number in [0, 1) for `text`, to carve splits that are the same on every run."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 16**8


def shared_identities(table: pd.DataFrame) -> dict[str, list[str]]:
    """Identities (target or source ids) that appear in more than one split, with those splits."""
    assigned = table[table["split"] != ""]
    splits_of: dict[str, set[str]] = {}
    for column in ("target_id", "source_id"):
        for identity, split in zip(assigned[column], assigned["split"], strict=True):
            if identity:
                splits_of.setdefault(identity, set()).add(split)
    return {identity: sorted(splits) for identity, splits in sorted(splits_of.items()) if len(splits) > 1}


def scan_files(root: Path, ignore: Iterable[Path] = ()) -> list[Path]:
    """Every file under `root` (sorted), except hidden ones (a name starting with '.') and `ignore`."""
    ignored = {Path(p).expanduser().resolve() for p in ignore}
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in names:
            path = Path(folder) / name
            if not name.startswith(".") and path not in ignored:
                files.append(path)
    return sorted(files)


# Entry points -------------------------------------------------------------------------------------------
def detect_dataset(root: str | os.PathLike) -> str:
    """The name of the one registered adapter whose layout `root` matches."""
    root = Path(root)
    matches = [adapter.name for adapter in ADAPTERS.values() if adapter.detect(root)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{root} matches several dataset layouts ({', '.join(matches)}): name the dataset")
    expected = "\n".join(f"  {adapter.name}: {adapter.layout}" for adapter in ADAPTERS.values())
    raise ValueError(f"{root} matches no known dataset layout; expected one of:\n{expected}")


def build_index(root: str | os.PathLike, dataset: str = "auto", ignore: Iterable[str | os.PathLike] = (),
                **options) -> IndexResult:
    """Index the dataset in `root`. `dataset` is an adapter name or "auto" (recognise the layout);
    `ignore` lists files to leave out (such as a previously written index); other keyword options go
    to the adapter (for example `splits_dir` for ffpp, `val_fraction` for celebdf)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder")
    if dataset == "auto":
        dataset = detect_dataset(root)
    adapter = ADAPTERS.entry(dataset)
    unknown = sorted(set(options) - set(adapter.options))
    if unknown:
        raise ValueError(f"option(s) {', '.join(unknown)} do not apply to dataset {dataset!r} "
                         f"(its options: {', '.join(adapter.options) or 'none'})")
    result = adapter.build(root, scan_files(root, ignore), **options)
    duplicated = result.table.loc[result.table["video_id"].duplicated(), "video_id"]
    result.problems += [f"video_id {video_id} is used by more than one file (same name, other suffix)"
                        for video_id in sorted(set(duplicated))]
    logger.info("indexed %s as %s: %d rows, %d unmatched files, %d problems", root, dataset,
                len(result.table), len(result.unmatched), len(result.problems))
    return result


def write_index(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the table as CSV or Parquet (chosen by the suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: an index file must end in .csv or .parquet")
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)
    return path


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    """Read an index written by `write_index`; empty fields stay empty strings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index file {path} does not exist")
    if path.suffix.lower() == ".parquet":
        table = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        raise ValueError(f"{path}: an index file must end in .csv or .parquet")
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{path} is not an index table: it lacks the column(s) {', '.join(missing)}")
    bad_labels = set(table["label"]) - set(LABELS)
    if bad_labels:
        raise ValueError(f"{path}: labels must be 'real' or 'fake', found {sorted(map(str, bad_labels))}")
    return table[COLUMNS].fillna("").astype(str)


def summarize(table: pd.DataFrame) -> str:
    """Counts by label and method (rows) and split (columns), as a readable text table."""
    if table.empty:
        return "empty index: no videos"
    media = table["media"].value_counts()
    header = (f"{len(table)} items ({', '.join(f'{n} {kind}s' for kind, n in media.items())}) "
              f"from {', '.join(sorted(set(table['dataset'])))}")
    splits = table["split"].replace("", "(none)").rename("split")
    counts = pd.crosstab([table["label"], table["method"]], splits, margins=True, margins_name="total")
    columns = [c for c in (*SPLITS, "(none)", "total") if c in counts.columns]
    lines = [header, counts[columns].to_string()]
    unassigned = table.loc[table["split"] == "", "method"].value_counts()
    if len(unassigned):
        detail = ", ".join(f"{method} {n}" for method, n in sorted(unassigned.items()))
        lines.append(f"{unassigned.sum()} items have no split ({detail}): they are outside train/val/test")
    return "\n".join(lines)
