"""Download FaceForensics++ with the user's own copy of the official script, resume it, and verify it.

The FF++ authors send their download script (`faceforensics_download_v4.py`) after a request form, so
the project cannot ship it. `download_ffpp` runs that script once per dataset part:

    python SCRIPT OUT -d <part> -c <raw|c23|c40> -t videos [--server EU|EU2|CA]

with the originals first and then every chosen method, streaming its output. Before each part it checks
what is already on disk: a part verified complete is skipped, an incomplete one is run again (the script
itself skips files that exist, so zero-byte files and the temporary files of an interrupted download are
removed first). At the end every part is verified against the official split lists: missing, extra and
zero-byte files. DeepFakeDetection has no published file list, so its parts count as complete only after
a run of the script that exited 0 (recorded in OUT/.megatron_ffpp_download.json) left all the files it
listed present and non-empty.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core.cache import write_json_atomic
from .ffpp import COMPRESSIONS, FFPP_METHODS, OFFICIAL_SPLITS_DIR, read_split_pairs

logger = logging.getLogger(__name__)

PART_FOLDERS = {"original": "original_sequences/youtube",
                "DeepFakeDetection_original": "original_sequences/actors",
                **{method: f"manipulated_sequences/{method}" for method in FFPP_METHODS}}
DEFAULT_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
SERVERS = ("EU", "EU2", "CA")
STATE_FILE = ".megatron_ffpp_download.json"
SHOWN = 10  # file names listed per problem in the summary


@dataclass
class DownloadConfig:
    script: Path  # the user's faceforensics_download_v4.py
    out: Path
    compression: str = "c23"  # raw (or c0), c23 or c40
    methods: tuple[str, ...] = DEFAULT_METHODS
    server: str | None = None  # EU, EU2 or CA; None keeps the script's default
    accept_tos: bool = False  # answer the script's terms-of-use prompt: the user has agreed to the FF++ terms

    def parts(self) -> list[str]:
        """The script's dataset names to fetch: originals first, DFD actors when DFD fakes are asked for."""
        unknown = [m for m in self.methods if m not in PART_FOLDERS or m == "original"]
        if unknown:
            choices = ", ".join(p for p in PART_FOLDERS if p != "original")
            raise ValueError(f"unknown FF++ method(s) {', '.join(unknown)}; choose from {choices}")
        originals = ["original"]
        if "DeepFakeDetection" in self.methods:
            originals.append("DeepFakeDetection_original")
        return list(dict.fromkeys([*originals, *self.methods]))

    def folder_compression(self) -> str:
        return folder_compression(self.compression)


@dataclass
class PartCheck:
    """What one part's folder holds compared with what it should hold (None: no list to compare with)."""

    part: str
    folder: Path
    expected: int | None
    present: int
    missing: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # zero-byte files
    extra: list[str] = field(default_factory=list)  # files no list names (reported, not an error)

    @property
    def complete(self) -> bool:
        return self.expected is not None and not self.missing and not self.empty

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        if self.expected is None:
            return "unverified: no complete run of the script recorded"
        return "incomplete"


@dataclass
class DownloadReport:
    checks: list[PartCheck]
    skipped: list[str] = field(default_factory=list)  # parts already complete before this run
    returncodes: dict[str, int] = field(default_factory=dict)  # exit status of each script run

    @property
    def complete(self) -> bool:
        return all(check.complete for check in self.checks)

    def run_of(self, part: str) -> str:
        if part in self.skipped:
            return "skipped: already complete"
        if part in self.returncodes:
            return f"script exit {self.returncodes[part]}"
        return "not run"

    def summary(self) -> str:
        table = pd.DataFrame([{"part": check.part,
                               "expected": "?" if check.expected is None else check.expected,
                               "present": check.present, "missing": len(check.missing),
                               "zero-byte": len(check.empty), "extra": len(check.extra),
                               "status": check.status, "this run": self.run_of(check.part)}
                              for check in self.checks])
        lines = [table.to_string(index=False)]
        for check in self.checks:
            for kind, names in (("missing", check.missing), ("zero-byte", check.empty),
                                ("extra", check.extra)):
                if names:
                    more = f" ... and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
                    lines.append(f"{check.part}: {len(names)} {kind} in {check.folder}: "
                                 f"{', '.join(names[:SHOWN])}{more}")
        lines.append("download complete" if self.complete else "download INCOMPLETE: run the command again")
        return "\n".join(lines)


def folder_compression(compression: str) -> str:
    """The script's and the folders' name for a compression: `c0` is called `raw`."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose raw (c0), c23 or c40")
    return COMPRESSIONS[compression]


def official_file_names(part: str) -> list[str] | None:
    """The videos a part should hold according to the official FF++ splits; None for DeepFakeDetection."""
    if part in ("DeepFakeDetection", "DeepFakeDetection_original"):
        return None
    pairs = [pair for split_pairs in read_split_pairs(OFFICIAL_SPLITS_DIR).values() for pair in split_pairs]
    if part == "original":
        return sorted(f"{identity}.mp4" for pair in pairs for identity in pair)
    return sorted(f"{a}_{b}.mp4" for pair in pairs for a, b in (pair, pair[::-1]))


def _state_key(part: str, compression: str) -> str:
    return f"{part}/{compression}"


def _load_state(out: Path) -> dict[str, dict]:
    path = out / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def part_folder(out: Path, part: str, compression: str) -> Path:
    return out / PART_FOLDERS[part] / compression / "videos"


def verify_part(out: str | Path, part: str, compression: str) -> PartCheck:
    """Compare one part's folder (`compression` as on disk: raw, c23 or c40) with its file list."""
    out = Path(out)
    folder = part_folder(out, part, compression)
    files = {path.name: path for path in folder.iterdir() if path.is_file()} if folder.is_dir() else {}
    expected = official_file_names(part)
    if expected is None:  # DeepFakeDetection: the list the script had when it last finished without error
        expected = _load_state(out).get(_state_key(part, compression), {}).get("files")
    if expected is None:
        empty = sorted(name for name, path in files.items() if path.stat().st_size == 0)
        return PartCheck(part, folder, None, len(files), empty=empty)
    wanted = set(expected)
    return PartCheck(part, folder, len(wanted), len(wanted & set(files)),
                     missing=sorted(wanted - set(files)),
                     empty=sorted(name for name in wanted & set(files) if files[name].stat().st_size == 0),
                     extra=sorted(set(files) - wanted))


def verify_download(out: str | Path, parts: list[str], compression: str) -> list[PartCheck]:
    return [verify_part(out, part, folder_compression(compression)) for part in parts]


def _remove_partial_files(check: PartCheck) -> None:
    """The script skips any file that exists, so zero-byte videos and the `tmpXXXXXXXX` files of an
    interrupted download must go before a re-run can fetch them again."""
    leftovers = [name for name in check.extra if name.startswith("tmp") and "." not in name]
    for name in [*check.empty, *leftovers]:
        logger.info("removing partial download %s", check.folder / name)
        (check.folder / name).unlink()


def run_script(config: DownloadConfig, part: str) -> int:
    """One run of the user's script for one part, its output streamed to this process's terminal."""
    command = [sys.executable, str(config.script), str(config.out), "-d", part,
               "-c", config.folder_compression(), "-t", "videos"]
    if config.server:
        command += ["--server", config.server]
    logger.info("running %s", shlex.join(command))
    # The script asks to confirm its terms of use; without accept_tos the user answers on stdin, which a
    # notebook does not have (the script would die on end of input).
    if not config.accept_tos and not sys.stdin.isatty():
        raise ValueError(f"{config.script} asks you to confirm the FaceForensics++ terms of use, and "
                         "there is no terminal to answer it: read them (the script prints where) and, if you "
                         "agree, set accept_tos (ACCEPT_FFPP_TOS = True in the notebook, --accept-tos on the "
                         "command line)")
    completed = subprocess.run(command, input="\n" if config.accept_tos else None, text=True, check=False)
    return completed.returncode


def download_ffpp(config: DownloadConfig) -> DownloadReport:
    """Fetch every part not yet complete, then verify them all."""
    script = Path(config.script)
    if not script.is_file():
        raise FileNotFoundError(f"download script {script} does not exist (the FaceForensics++ authors send "
                                "it after their request form: https://github.com/ondyari/FaceForensics)")
    if config.server is not None and config.server not in SERVERS:
        raise ValueError(f"unknown server {config.server!r}; choose from {', '.join(SERVERS)}")
    out = Path(config.out)
    compression = config.folder_compression()
    parts = config.parts()
    report = DownloadReport(checks=[])
    for part in parts:
        check = verify_part(out, part, compression)
        if check.complete:
            logger.info("%s (%s) already complete: %d videos in %s", part, compression, check.present,
                        check.folder)
            report.skipped.append(part)
            continue
        _remove_partial_files(check)
        returncode = run_script(config, part)
        report.returncodes[part] = returncode
        if returncode != 0:
            logger.warning("the download script exited with status %d for %s", returncode, part)
        if official_file_names(part) is None:
            state = _load_state(out)
            folder = part_folder(out, part, compression)
            finished = returncode == 0 and folder.is_dir()
            files = sorted(path.name for path in folder.glob("*.mp4")) if finished else None
            state[_state_key(part, compression)] = {"returncode": returncode, "files": files}
            write_json_atomic(out / STATE_FILE, state)
    report.checks = verify_download(out, parts, compression)
    return report
