"""On-disk stage caches: content-addressed folders, atomic entries and an append-only manifest.

Every stage owns one `StageCache`. Its folder is `<root>/<stage>/<key>/`, where the key hashes the
stage's full configuration (including upstream keys), so changing anything that alters the output
lands in a fresh folder instead of mixing results. Entries are safetensors files written to a
temporary name and renamed, so a killed process never leaves a half-written entry behind. The
manifest is JSON lines, appended and fsync'ed; the last record of an item wins and a torn last line
(from a kill mid-write) is ignored.

Many writers, on many machines sharing the folder, may fill one cache at once: each appends to its own
manifest file (`manifests/<host>.<pid>.jsonl`, merged by time on read), temporary names carry the host,
the process and a random token, and only temporaries of dead processes on this host are swept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

OK = "ok"
# The preprocessing recipe, written by the embed stage beside its cache and copied into every checkpoint.
PREPROCESS_FILE = "preprocess.json"
FAILED = "failed"
HOST = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()) or "host"
# .<entry name>.<host>.<pid>.<token>.tmp<suffix>, as atomic_path names them
TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def cache_root() -> Path:
    """The cache folder: `$MEGATRON_CACHE`, else `cache/` in the current directory."""
    return Path(os.environ.get("MEGATRON_CACHE", "cache")).expanduser()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hash of a JSON-able object (dataclasses included) that is stable across runs."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_fingerprint(path: str | os.PathLike) -> str:
    """Size and modification time: cheap, and enough to notice that a source file changed."""
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def writer_id() -> str:
    """This process on this machine, as named in temporaries and manifest files."""
    return f"{HOST}.{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{writer_id()}.{uuid.uuid4().hex[:8]}.tmp{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def safe_name(item_id: str) -> str:
    """A filesystem-safe, collision-free file stem for an item id such as `ffpp/Deepfakes/000_003`."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._")[-80:]
    return f"{readable}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StageCache:
    """The cache of one pipeline stage under one configuration."""

    def __init__(self, stage: str, config: Any, root: str | os.PathLike | None = None):
        self.stage = stage
        self.config = asdict(config) if is_dataclass(config) and not isinstance(config, type) else config
        self.key = stable_hash(self.config)
        self.root = Path(root if root is not None else cache_root())
        self.dir = self.root / stage / self.key
        self.items_dir = self.dir / "items"
        self.manifest_dir = self.dir / "manifests"
        self.items_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.dir / "config.json"
        if not config_path.exists():
            write_json_atomic(config_path, {"stage": stage, "key": self.key, "config": self.config})
        self.remove_stale_temporaries()
        self._records: dict[str, dict[str, Any]] | None = None

    @classmethod
    def open(cls, folder: str | os.PathLike, stage: str | None = None) -> StageCache:
        """An existing `<root>/<stage>/<key>/` folder, as written by that stage."""
        path = Path(folder).expanduser()
        config_path = path / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{path}: not a stage cache folder (no config.json)")
        saved = json.loads(config_path.read_text())
        if stage is not None and saved.get("stage") != stage:
            raise ValueError(f"{path}: is a {saved.get('stage')!r} cache, expected {stage!r}")
        cache = cls(saved["stage"], saved["config"], root=path.parent.parent)
        if cache.dir.resolve() != path.resolve():
            raise ValueError(f"{path}: its config.json hashes to key {cache.key}, not to the folder's name")
        return cache

    def upstream(self, stage: str, config_field: str | None = None) -> StageCache | None:
        """The cache of an upstream `stage` this one was made from: its key is recorded in this cache's
        config under `config_field` (default: the stage's name). None where the config names none."""
        key = self.config.get(config_field or stage)
        if key is None:
            return None
        return StageCache.open(self.root / stage / str(key), stage)

    @property
    def manifest_path(self) -> Path:
        """The manifest file this process appends to."""
        return self.manifest_dir / f"{writer_id()}.jsonl"

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by killed writers on this machine (their process no longer exists).
        Another machine's temporaries are never touched: its process ids mean nothing here."""
        removed = 0
        for tmp in self.items_dir.glob(".*.tmp*"):
            match = TEMPORARY.match(tmp.name)
            if match and match["host"] == HOST and not _process_alive(int(match["pid"])):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def __repr__(self) -> str:
        return f"StageCache({self.stage!r}, key={self.key!r}, dir={str(self.dir)!r})"

    def entry_path(self, item_id: str) -> Path:
        return self.items_dir / f"{safe_name(item_id)}.safetensors"

    # Manifest -----------------------------------------------------------------------------------
    def records(self) -> dict[str, dict[str, Any]]:
        """The latest manifest record of every item."""
        if self._records is None:
            records = []
            for path in sorted(self.manifest_dir.glob("*.jsonl")):
                for line in path.read_text().splitlines():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a torn last line from a killed run
            records.sort(key=lambda record: record.get("time", 0.0))  # stable: a file's own order stays
            self._records = {record["item"]: record for record in records}
        return self._records

    def record(self, item_id: str, status: str, error: str | None = None, **info: Any) -> dict[str, Any]:
        record = {"item": item_id, "status": status, "error": error, "time": time.time(), **info}
        line = json.dumps(record, default=str)
        self.manifest_dir.mkdir(exist_ok=True)
        with open(self.manifest_path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records()[item_id] = record
        return record

    def status(self, item_id: str, fingerprint: str | None = None) -> str | None:
        """`ok` or `failed` if the item is done (for this source fingerprint), else None."""
        record = self.records().get(item_id)
        if record is None or (fingerprint is not None and record.get("fingerprint") != fingerprint):
            return None
        if record["status"] == OK and not self.entry_path(item_id).exists():
            return None
        return record["status"]

    def is_done(self, item_id: str, fingerprint: str | None = None) -> bool:
        return self.status(item_id, fingerprint) is not None

    # Entries ------------------------------------------------------------------------------------
    def write(self, item_id: str, tensors: dict[str, np.ndarray], metadata: dict[str, Any] | None = None,
              **record_info: Any) -> None:
        """Write an entry atomically, then record it as done in the manifest."""
        contiguous = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
        with atomic_path(self.entry_path(item_id)) as tmp:
            save_file(contiguous, str(tmp), metadata={"meta": json.dumps(metadata or {}, default=str)})
        self.record(item_id, OK, **record_info)

    @contextlib.contextmanager
    def entry(self, item_id: str) -> Iterator[Any]:
        """An entry's safetensors file, open for reading whole tensors or slices of them."""
        from safetensors import safe_open

        path = self.entry_path(item_id)
        if not path.exists():
            raise FileNotFoundError(f"{self.stage} cache has no entry for {item_id!r} (expected {path})")
        with safe_open(str(path), framework="numpy") as handle:
            yield handle

    def read(self, item_id: str, names: Sequence[str] | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """An entry's tensors (only `names`, without reading the others, when given) and its metadata."""
        with self.entry(item_id) as handle:
            metadata = json.loads((handle.metadata() or {}).get("meta", "{}"))
            stored = set(handle.keys())
            wanted = stored if names is None else [name for name in names if name in stored]
            return {name: handle.get_tensor(name) for name in wanted}, metadata

    def done_items(self) -> list[str]:
        return [item for item, record in self.records().items() if self.status(item) == OK]

    def failures(self) -> dict[str, str]:
        return {item: r.get("error") or "" for item, r in self.records().items() if r["status"] == FAILED}

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file())


def cache_sizes(root: str | os.PathLike | None = None) -> dict[str, int]:
    """Bytes used by each `<stage>/<key>` folder under the cache root."""
    base = Path(root if root is not None else cache_root())
    sizes: dict[str, int] = {}
    for config in sorted(base.glob("*/*/config.json")):
        folder = config.parent
        sizes[f"{folder.parent.name}/{folder.name}"] = sum(
            p.stat().st_size for p in folder.rglob("*") if p.is_file()
        )
    return sizes


def copy_cache(folder: str | os.PathLike, root: str | os.PathLike) -> StageCache:
    """Copy the stage cache `folder` (`<root>/<stage>/<key>/`) under another cache `root`, e.g. from the
    local disk to Google Drive when a stage is done, and return the copy.

    Entries go first, each to a temporary name renamed when complete; the manifests follow, so the copy
    lists only items whose entries have arrived. A copy cut short lists fewer items, never a broken one,
    and calling again finishes it: entries already there with the same size and modification second are
    skipped.
    """
    source = StageCache.open(folder)
    target = StageCache(source.stage, source.config, root)
    entries = [p for p in sorted(source.items_dir.glob("*.safetensors")) if not p.name.startswith(".")]
    for path in tqdm(entries, desc=f"copy {source.stage}/{source.key}", unit="entry", disable=not entries):
        copied = target.items_dir / path.name
        mine, theirs = path.stat(), copied.stat() if copied.exists() else None
        if theirs and (theirs.st_size, int(theirs.st_mtime)) == (mine.st_size, int(mine.st_mtime)):
            continue
        with atomic_path(copied) as tmp:
            shutil.copy2(path, tmp)
    target.manifest_dir.mkdir(exist_ok=True)
    for manifest in sorted(source.manifest_dir.glob("*.jsonl")):
        with atomic_path(target.manifest_dir / manifest.name) as tmp:
            shutil.copy2(manifest, tmp)
    return target


@dataclass
class StageReport:
    """What one run of a stage did; `failures` maps item ids to their error messages."""

    stage: str
    cache_dir: str
    done: int = 0
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    units: int = 0  # frames, crops or clips processed, for throughput figures

    def summary(self) -> str:
        rate = f", {self.units / self.seconds:.1f} units/s" if self.seconds and self.units else ""
        text = (f"{self.stage}: {self.done} done, {self.skipped} already cached, {len(self.failures)} failed "
                f"in {self.seconds:.1f}s{rate} -> {self.cache_dir}")
        return text + "".join(f"\n  failed {item}: {error}" for item, error in sorted(self.failures.items()))
