"""Fuzzing the service's uploads: `fuzz(http, files, uploads, seed)` sends mutants of real videos and images
(bit flips, truncations, spliced headers, wrong extensions, huge declared sizes, nested containers) and
tallies every answer. What must hold: no 5xx, every refusal a 4xx with a reason, every accepted job
finished, no server path in any answer, and (`leftovers`) no file of a refused upload or a scored one left
in the store. Seeded: the same seed sends the same bytes.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.extras import extra_imports
from .store import JOB_ID

with extra_imports("serve"):
    import httpx

EXTENSIONS = [".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif", ".jpg", ".png", ".webp", ".txt", ".exe", ""]
SIZE_FIELDS = [b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x01", b"\x00\x00\x00\x00"]
MAX_RETRIES = 50  # 429/503 answers retried per upload, after their Retry-After


def bit_flips(data: bytes, rng: np.random.Generator, _: list[bytes]) -> tuple[bytes, str]:
    out = bytearray(data)
    span = min(len(out), 4096) if rng.random() < 0.5 else len(out)  # headers half the time
    for position in rng.integers(0, span, int(rng.integers(1, 65))):
        out[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(out), "upload"


def truncation(data: bytes, rng: np.random.Generator, _: list[bytes]) -> tuple[bytes, str]:
    return data[: int(rng.integers(1, len(data)))], "upload"


def spliced_header(data: bytes, rng: np.random.Generator, others: list[bytes]) -> tuple[bytes, str]:
    """One file's first bytes on another's body."""
    other = others[int(rng.integers(len(others)))]
    head = int(rng.integers(4, min(4096, len(other))))
    return other[:head] + data[int(rng.integers(0, min(4096, len(data)))):], "upload"


def wrong_extension(data: bytes, rng: np.random.Generator, _: list[bytes]) -> tuple[bytes, str]:
    return data, "upload" + EXTENSIONS[int(rng.integers(len(EXTENSIONS)))]


def huge_declared_size(data: bytes, rng: np.random.Generator, _: list[bytes]) -> tuple[bytes, str]:
    """A size, length or dimension field (MP4 box sizes, PNG and JPEG dimensions, RIFF and EBML lengths)
    set to an extreme: patched where a known field is, else at a random aligned offset."""
    out = bytearray(data)
    fields = [m.start() - 4 for m in re.finditer(rb"moov|mdat|trak|stsz|stco|IHDR|RIFF|LIST", data[:65536])]
    fields += [m.start() + 3 for m in re.finditer(rb"\xff\xc0|\xff\xc2", data[:65536])]  # JPEG height, width
    for _ in range(int(rng.integers(1, 4))):
        at = fields[int(rng.integers(len(fields)))] if fields and rng.random() < 0.8 else \
            int(rng.integers(0, max(1, min(len(out), 4096) - 4))) // 4 * 4
        at = max(0, min(at, len(out) - 4))
        out[at:at + 4] = SIZE_FIELDS[int(rng.integers(len(SIZE_FIELDS)))]
    return bytes(out), "upload"


def nested_container(data: bytes, rng: np.random.Generator, others: list[bytes]) -> tuple[bytes, str]:
    """A file inside another: zipped, appended to one, or set into the middle of one."""
    other = others[int(rng.integers(len(others)))]
    choice = int(rng.integers(3))
    if choice == 0:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("clip.mp4", data)
        return buffer.getvalue(), "upload.mp4"
    if choice == 1:
        return other + data, "upload"
    middle = int(rng.integers(0, len(other)))
    return other[:middle] + data + other[middle:], "upload"


MUTATIONS = {"bit flips": bit_flips, "truncation": truncation, "spliced header": spliced_header,
             "wrong extension": wrong_extension, "huge declared size": huge_declared_size,
             "nested container": nested_container}


@dataclass
class FuzzReport:
    uploads: int
    seed: int
    outcomes: dict[str, int] = field(default_factory=dict)  # "202 done", "202 failed", "415", ...
    by_mutation: dict[str, dict[str, int]] = field(default_factory=dict)
    retried: int = 0  # 429/503 answers (queue or store full), retried after their Retry-After
    server_errors: list[str] = field(default_factory=list)  # 5xx, broken connections, unfinished jobs
    unexplained: list[str] = field(default_factory=list)  # refusals without a reason
    leaks: list[str] = field(default_factory=list)  # answers naming a server path
    accepted: list[str] = field(default_factory=list)  # job ids
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fuzz(http: httpx.Client, files: list[Path], uploads: int, seed: int = 0, secrets: tuple[str, ...] = (),
         job_timeout: float = 300.0) -> FuzzReport:
    """Send `uploads` mutants of `files` through `http` (base URL and any key set), one at a time, then wait
    for every accepted job. `secrets` are strings (server paths) no answer may contain."""
    rng = np.random.default_rng(seed)
    originals = [Path(path).read_bytes() for path in files]
    report, outcomes = FuzzReport(uploads, seed), Counter()
    by_mutation: dict[str, Counter] = {name: Counter() for name in MUTATIONS}
    pending: dict[str, str] = {}  # job id -> mutation
    started = time.perf_counter()

    def check(response: httpx.Response, what: str) -> None:
        report.leaks += [f"{what}: {secret}" for secret in secrets if secret in response.text]

    def send(data: bytes, name: str, what: str) -> httpx.Response | None:
        """The answer to the upload, after retrying a full queue or store as a client should."""
        upload = {"file": (name, data, "application/octet-stream")}
        for _ in range(MAX_RETRIES):
            try:
                response = http.post("/v1/predictions", files=upload)
            except httpx.HTTPError as error:
                report.server_errors.append(f"{what}: {type(error).__name__}: {error}")
                return None
            check(response, what)
            if response.status_code not in (429, 503):
                return response
            report.retried += 1
            time.sleep(float(response.headers.get("retry-after", 1)))
        report.server_errors.append(f"{what}: still {response.status_code} after {MAX_RETRIES} tries")
        return None

    for number in range(uploads):
        mutation = list(MUTATIONS)[number % len(MUTATIONS)]
        data, name = MUTATIONS[mutation](originals[int(rng.integers(len(originals)))], rng, originals)
        what = f"upload {number} ({mutation})"
        response = send(data, name, what)
        if response is None:
            continue
        status = response.status_code
        if status == 202:
            pending[response.json()["id"]] = mutation
            continue
        if status >= 500:
            report.server_errors.append(f"{what}: {status} {response.text[:200]}")
        elif not (response.headers.get("content-type", "").startswith("application/json")
                  and response.json().get("detail")):
            report.unexplained.append(f"{what}: {status} {response.text[:200]}")
        outcomes[str(status)] += 1
        by_mutation[mutation][str(status)] += 1

    deadline = time.monotonic() + job_timeout
    for job_id, mutation in pending.items():
        while True:
            response = http.get(f"/v1/predictions/{job_id}")
            check(response, f"job {job_id}")
            status = response.json().get("status") if response.status_code == 200 else None
            if status in ("done", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if status not in ("done", "failed"):
            report.server_errors.append(f"job {job_id} ({mutation}): {status or response.status_code} "
                                        f"after {job_timeout} s")
            continue
        if status == "failed" and not response.json().get("error"):
            report.unexplained.append(f"job {job_id} ({mutation}): failed without a reason")
        outcomes[f"202 {status}"] += 1
        by_mutation[mutation][f"202 {status}"] += 1
    report.accepted = list(pending)
    report.outcomes = dict(sorted(outcomes.items()))
    report.by_mutation = {name: dict(sorted(counts.items())) for name, counts in by_mutation.items()}
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def leftovers(store: Path, accepted: list[str]) -> list[str]:
    """Files in `store` that should not be there once every job ended: folders of refused uploads, and
    uploads of finished jobs (only results stay)."""
    found = [f"{path.name}/ (no accepted job)" for path in store.iterdir()
             if path.is_dir() and JOB_ID.match(path.name) and path.name not in set(accepted)]
    return found + [str(path.relative_to(store)) for path in store.glob("*/upload*")]
