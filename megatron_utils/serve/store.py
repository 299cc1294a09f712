"""The durable job table: `JobStore`, one SQLite database (`jobs.sqlite`) beside the jobs' folders.

Every change of a job's status is one committed transaction, so a service killed at any instant (SIGKILL,
power loss) restarts on the same store with each job either queued, running (it was interrupted: it is
queued again) or finished with its whole result. A result and its `done` status land in one transaction:
never a `done` job without its result, nor a result of a job still listed as running.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .uploads import UploadInfo

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
STAGES = {  # step -> (what the page shows, share of the work done when it starts)
    QUEUED: ("waiting for a worker", 0.0),
    "preprocess": ("decoding frames and finding faces", 0.05),
    "forward": ("depth maps, embeddings and the verdict", 0.4),
    "explain": ("explaining the verdict: which frames, and where in the face", 0.6),
    "annotate": ("drawing the annotated copy and the timeline", 0.85),
    DONE: ("done", 1.0),
    FAILED: ("failed", 1.0),
}
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
DB_FILE = "jobs.sqlite"
LOCK_FILE = "jobs.lock"
FAULT_ENV = "MEGATRON_SERVE_FAULT"  # crash tests only: "kill:POINT" or "hang:POINT", see `fault`
SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, created REAL NOT NULL, status TEXT NOT NULL,
    upload TEXT, media TEXT, started REAL, finished REAL, attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT, error TEXT, files TEXT NOT NULL DEFAULT '{}')"""


def fault(point: str) -> None:
    """The crash tests' hook, a no-op unless $MEGATRON_SERVE_FAULT names `point`: "kill:POINT" SIGKILLs this
    process there (as a crash would), "hang:POINT" stalls the calling worker there for good."""
    action, _, where = os.environ.get(FAULT_ENV, "").partition(":")
    if where != point:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "hang":
        threading.Event().wait()


@dataclass
class Job:
    id: str
    folder: Path
    filename: str = "upload"  # the client's name, for display only
    created: float = field(default_factory=time.time)
    status: str = QUEUED
    step: str = QUEUED
    upload: UploadInfo | None = None
    media_path: Path | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = 0  # workers that started it: more than one after the service was interrupted
    result: dict[str, Any] | None = None
    error: str | None = None
    files: dict[str, Path] = field(default_factory=dict)  # public name -> file in the job's folder

    def to_dict(self) -> dict[str, Any]:
        stage, share = STAGES[self.step]
        return {
            "id": self.id, "status": self.status, "stage": stage, "progress": share,
            "filename": self.filename, "created": self.created, "started": self.started,
            "finished": self.finished, "attempts": self.attempts,
            "upload": self.upload.to_dict() if self.upload else None,
            "result": self.result, "error": self.error,
            "files": {name: f"/v1/predictions/{self.id}/files/{name}" for name in self.files},
        }


class JobStore:
    """Jobs in `folder / jobs.sqlite`; each job's files in `folder / <id>/`, stored relative to it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = threading.Lock()  # one connection, shared by the request and worker threads
        # One service per store: a second would run the first one's jobs again. The OS drops the lock
        # with the process, however it ends.
        self.owner = open(folder / LOCK_FILE, "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self.owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self.owner.close()
            raise ValueError(f"{folder}: the job store is in use by another megatron serve") from error
        try:
            self.db = sqlite3.connect(folder / DB_FILE, check_same_thread=False)
            # WAL: readers never wait on a writer; FULL: a commit survives power loss, not just a crash
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            with self.db:
                self.db.execute(SCHEMA)
        except sqlite3.DatabaseError as error:
            self.owner.close()
            raise ValueError(f"{folder / DB_FILE}: not a usable job store ({error})") from error

    def load(self) -> list[Job]:
        """Every stored job, oldest first."""
        with self.lock:
            rows = self.db.execute("SELECT id, filename, created, status, upload, media, started, finished, "
                                   "attempts, result, error, files FROM jobs ORDER BY created").fetchall()
        jobs = []
        for (job_id, filename, created, status, upload, media, started, finished, attempts, result, error,
             files) in rows:
            folder = self.folder / job_id
            jobs.append(Job(job_id, folder, filename, created, status, status if status in STAGES else QUEUED,
                            UploadInfo(**json.loads(upload)) if upload else None,
                            folder / media if media else None, started, finished, attempts,
                            json.loads(result) if result else None, error,
                            {name: folder / file for name, file in json.loads(files).items()}))
        return jobs

    def add(self, job: Job) -> None:
        upload = json.dumps(job.upload.to_dict()) if job.upload else None
        media = job.media_path.name if job.media_path else None
        with self.lock, self.db:
            self.db.execute("INSERT INTO jobs (id, filename, created, status, upload, media) VALUES "
                            "(?, ?, ?, ?, ?, ?)",
                            (job.id, job.filename, job.created, job.status, upload, media))

    def start(self, job: Job) -> None:
        with self.lock, self.db:
            self.db.execute("UPDATE jobs SET status = ?, started = ?, attempts = ? WHERE id = ?",
                            (job.status, job.started, job.attempts, job.id))

    def requeue(self, job: Job) -> None:
        with self.lock, self.db:
            self.db.execute("UPDATE jobs SET status = ?, started = NULL WHERE id = ?", (job.status, job.id))

    def finish(self, job: Job) -> None:
        """The job's outcome, its result and its files' names, in one transaction."""
        values = (job.status, job.finished, json.dumps(job.result) if job.result is not None else None,
                  job.error, json.dumps({name: path.relative_to(job.folder).as_posix()
                                         for name, path in job.files.items()}), job.id)
        with self.lock, self.db:
            self.db.execute("UPDATE jobs SET status = ?, finished = ?, result = ?, error = ?, files = ? "
                            "WHERE id = ?", values)
            fault("result-write")  # mid-transaction: the update is written but not committed

    def delete(self, job_ids: list[str]) -> None:
        with self.lock, self.db:
            self.db.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in job_ids])

    def close(self) -> None:
        with self.lock:
            self.db.close()
            self.owner.close()
