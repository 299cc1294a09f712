"""Jobs: one upload scored by the shared `Detector`, in a bounded pool of worker threads.

Each job owns a folder named by its generated id (never by anything the client sent). Its upload is deleted
once scored; its results (result.json, the annotated video or image, the timeline plot and, with
`explain`, the attribution plot and heat maps) are kept for
`result_ttl_s` after it finished, then a sweeper deletes the folder and the job. The queue is bounded: a
submission beyond `queue_size` waiting jobs is refused with a Retry-After estimate, never silently dropped.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..core.cache import write_json_atomic
from ..core.memory import trim_heap
from ..inference.results import Prediction
from ..visualization.annotate import annotate_image, annotate_video, plot_timeline
from .config import ServeConfig
from .uploads import UploadInfo

log = logging.getLogger(__name__)

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
RESULT_FILE = "result.json"


class Predictor(Protocol):
    threshold: float
    weights: dict[str, str]

    def predict(self, media: Any, name: str | None = None, progress: Any = None,
                explain: Path | None = None) -> Prediction: ...


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


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
    result: dict[str, Any] | None = None
    error: str | None = None
    files: dict[str, Path] = field(default_factory=dict)  # public name -> file in the job's folder

    def to_dict(self) -> dict[str, Any]:
        stage, share = STAGES[self.step]
        return {
            "id": self.id, "status": self.status, "stage": stage, "progress": share,
            "filename": self.filename, "created": self.created, "started": self.started,
            "finished": self.finished, "upload": self.upload.to_dict() if self.upload else None,
            "result": self.result, "error": self.error,
            "files": {name: f"/v1/predictions/{self.id}/files/{name}" for name in self.files},
        }


class JobManager:
    """The job table, the bounded queue, the workers sharing one predictor, and the result sweeper."""

    def __init__(self, predictor: Predictor, config: ServeConfig, work_dir: Path):
        self.predictor = predictor
        self.config = config
        self.work_dir = work_dir
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.waiting = 0
        self.seconds_per_job = 5.0  # running mean, for Retry-After
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.work, name=f"megatron-worker-{n}", daemon=True)
                        for n in range(config.workers)]
        self.threads.append(threading.Thread(target=self.sweep, name="megatron-sweeper", daemon=True))
        for thread in self.threads:
            thread.start()

    # Submission ------------------------------------------------------------------------------------------
    def new_job(self) -> Job:
        """A job with a fresh generated id and its own folder, not yet queued (the upload goes there)."""
        job_id = uuid.uuid4().hex
        folder = self.work_dir / job_id
        folder.mkdir(parents=True)
        return Job(job_id, folder)

    def check_capacity(self) -> None:
        with self.lock:
            if self.waiting >= self.config.queue_size:
                raise QueueFull(self.retry_after())

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.waiting >= self.config.queue_size:
                raise QueueFull(self.retry_after())
            self.waiting += 1
            self.jobs[job.id] = job
        self.queue.put(job)

    def discard(self, job: Job) -> None:
        shutil.rmtree(job.folder, ignore_errors=True)

    def retry_after(self) -> int:
        return max(1, math.ceil(self.seconds_per_job * (self.waiting + 1) / self.config.workers))

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id) if JOB_ID.match(job_id) else None

    def counts(self) -> dict[str, int]:
        with self.lock:
            statuses = [job.status for job in self.jobs.values()]
        return {status: statuses.count(status) for status in (QUEUED, RUNNING, DONE, FAILED)}

    # Work ----------------------------------------------------------------------------------------------
    def work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            with self.lock:
                self.waiting -= 1
            job.status, job.started = RUNNING, time.time()
            try:
                self.run(job)
            except Exception as error:  # noqa: BLE001 - a worker outlives any one job
                log.exception("job %s (%s) failed", job.id, job.filename)
                job.error = f"{job.filename}: internal error ({type(error).__name__}: {error})"
            job.status = DONE if job.result is not None else FAILED
            job.step, job.finished = job.status, time.time()
            self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (job.finished - job.started)
            if job.media_path is not None:
                job.media_path.unlink(missing_ok=True)  # results are kept, uploads are not
            trim_heap()  # a job's frames and activations are freed; give their pages back

    def run(self, job: Job) -> None:
        def progress(step: str) -> None:
            job.step = step

        explain = job.folder / "explanation" if self.config.explain else None
        prediction = self.predictor.predict(job.media_path, progress=progress, explain=explain)
        if not prediction.ok:
            job.error = (prediction.error or "failed").replace(str(job.media_path), job.filename)
            return
        job.step = "annotate"
        explanation = prediction.explanation
        heatmaps = None if explanation is None else explain / explanation.heatmaps
        if self.config.annotate:
            if prediction.media == "video":
                job.files["annotated.mp4"] = annotate_video(prediction, job.folder / "annotated.mp4",
                                                            heatmaps=heatmaps)
            else:
                job.files["annotated.png"] = annotate_image(prediction, job.folder / "annotated.png",
                                                            heatmaps=heatmaps)
        prediction.path = job.filename  # after annotation, which reads the upload by this path
        if self.config.annotate and prediction.media == "video":
            job.files["timeline.png"] = plot_timeline(prediction, job.folder / "timeline.png")
        if explanation is not None:  # served under fixed public names; no server path in the result
            job.files["attribution.png"] = explain / explanation.plot
            images = {}
            for rank, frame in enumerate(explanation.deciding_frames, 1):
                images[str(frame)] = f"heatmap-{rank}.png"
                job.files[images[str(frame)]] = explain / explanation.images[str(frame)]
            prediction.explanation = replace(explanation, folder="", images=images, heatmaps="",
                                             plot="attribution.png")
        job.result = prediction.to_dict()
        write_json_atomic(job.folder / RESULT_FILE, job.to_dict())

    # Lifetime ------------------------------------------------------------------------------------------
    def sweep(self) -> None:
        interval = min(self.config.result_ttl_s / 2, 30.0)
        while not self.stopping.wait(interval):
            self.expire()

    def expire(self, now: float | None = None) -> list[str]:
        """Delete finished jobs older than the results' lifetime; returns their ids."""
        now = time.time() if now is None else now
        with self.lock:
            old = [job for job in self.jobs.values()
                   if job.finished is not None and now - job.finished > self.config.result_ttl_s]
            for job in old:
                del self.jobs[job.id]
        for job in old:
            self.discard(job)
        return [job.id for job in old]

    def close(self) -> None:
        self.stopping.set()
        for _ in range(self.config.workers):
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout=30)
