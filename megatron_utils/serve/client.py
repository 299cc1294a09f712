"""A small client of the service's API, and the loopback load test built on it.

    client = Client("http://127.0.0.1:8000", api_key=None)
    job = client.score("clip.mp4")          # upload, then wait for the verdict
    print(job["result"]["verdict"])
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..core.extras import extra_imports

with extra_imports("serve"):
    import httpx

FINAL = {"done", "failed"}
# Debian's Chromium, headless, on a machine with no outside network (for browser tests of the page)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(run: str | os.PathLike, *options: str, log: str | os.PathLike = os.devnull,
            timeout: float = 120.0, env: dict[str, str] | None = None
            ) -> Iterator[tuple[str, subprocess.Popen]]:
    """`megatron serve --run RUN OPTIONS` in its own process on a free loopback port, with `env` added to
    this process's environment, from the moment it answers /healthz until the block ends: yields (base URL,
    process)."""
    port = free_port()
    command = [sys.executable, "-m", "megatron_utils", "serve", "--run", str(run), "--port", str(port),
               *options]
    with open(log, "a") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"megatron serve exited with {process.returncode}; its output: {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"megatron serve did not answer within {timeout} s; its output: {log}")
            time.sleep(0.5)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


class Refused(Exception):
    def __init__(self, status: int, detail: str, retry_after: float | None):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.retry_after = status, detail, retry_after


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def submit(self, path: str | os.PathLike) -> dict[str, Any]:
        """Upload one file (streamed from disk); the new job, or `Refused` with the service's reason."""
        path = Path(path)
        with open(path, "rb") as handle:
            response = self.http.post("/v1/predictions", files={"file": (path.name, handle)})
        if response.status_code != 202:
            retry = response.headers.get("Retry-After")
            raise Refused(response.status_code, response.json().get("detail", response.text),
                          float(retry) if retry else None)
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/predictions/{job_id}")
        response.raise_for_status()
        return response.json()

    def wait(self, job_id: str, timeout: float = 600.0, poll: float = 0.2) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in FINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout} s (status {job['status']})")
            time.sleep(poll)

    def score(self, path: str | os.PathLike, retries: int = 100) -> dict[str, Any]:
        """Upload and wait; a full queue (429) or a starting service (503) is retried after Retry-After."""
        for _ in range(retries):
            try:
                return self.wait(self.submit(path)["id"])
            except Refused as refused:
                if refused.status not in (429, 503):
                    raise
                time.sleep(refused.retry_after or 1.0)
        raise TimeoutError(f"{path}: still refused after {retries} tries")

    def close(self) -> None:
        self.http.close()


@dataclass
class LoadReport:
    uploads: int
    concurrency: int
    done: int = 0
    failed: int = 0  # jobs that ended "failed"
    errors: list[str] = field(default_factory=list)  # requests that raised or got an unexpected status
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count, over every submission
    unique_ids: int = 0
    seconds: float = 0.0
    latency_p50_s: float = 0.0  # from the first submission to the final status, retries included
    latency_p95_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_test(base_url: str, files: list[Path], uploads: int = 60, concurrency: int = 8,
              api_key: str | None = None) -> LoadReport:
    """Upload `uploads` files (cycling through `files`) from `concurrency` threads, each waiting for its
    job; 429 and 503 are retried as a well-behaved client does."""
    report = LoadReport(uploads, concurrency)
    statuses: Counter[int] = Counter()
    clients = [Client(base_url, api_key) for _ in range(concurrency)]

    def one(number: int) -> tuple[str | None, str | None, float]:
        client, path = clients[number % concurrency], files[number % len(files)]
        started = time.perf_counter()
        while True:
            try:
                job = client.submit(path)
                statuses[202] += 1
                final = client.wait(job["id"])
                return final["id"], final["status"], time.perf_counter() - started
            except Refused as refused:
                statuses[refused.status] += 1
                if refused.status not in (429, 503):
                    return None, f"{path.name}: {refused}", time.perf_counter() - started
                time.sleep(refused.retry_after or 1.0)
            except httpx.HTTPError as error:
                return None, f"{path.name}: {type(error).__name__}: {error}", time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(tqdm(pool.map(one, range(uploads)), total=uploads, desc="load test", unit="upload"))
    report.seconds = round(time.perf_counter() - started, 2)
    for client in clients:
        client.close()
    ids = [job_id for job_id, _, _ in outcomes if job_id]
    report.unique_ids = len(set(ids))
    report.done = sum(status == "done" for _, status, _ in outcomes)
    report.failed = sum(status == "failed" for _, status, _ in outcomes)
    report.errors = [status for job_id, status, _ in outcomes if job_id is None and status]
    report.statuses = dict(sorted(statuses.items()))
    latencies = [seconds for job_id, _, seconds in outcomes if job_id]
    if latencies:
        report.latency_p50_s, report.latency_p95_s = (round(float(np.percentile(latencies, q)), 3)
                                                      for q in (50, 95))
    return report
