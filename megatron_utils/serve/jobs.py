"""Jobs: one upload scored by the shared `Detector`, in a bounded pool of worker threads.

Each job owns a folder named by its generated id (never by anything the client sent) in the store folder,
and a row in its `JobStore`, so jobs outlive the process: a service restarted on the same store (after a
stop, a crash or SIGKILL) queues again the jobs that were waiting or running and serves those that had
finished. Its upload is deleted once scored; its results (the annotated video or image, the timeline plot
and, with `explain`, the attribution plot and heat maps) are kept for `result_ttl_s` after it finished,
then a sweeper deletes the folder and the job. The queue is bounded: a submission beyond `queue_size`
waiting jobs is refused with a Retry-After estimate, never silently dropped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import shutil
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from ..core.memory import trim_heap
from ..inference.results import Prediction
from ..models.backbones import folder_fingerprint
from ..visualization.annotate import annotate_image, annotate_video, plot_timeline
from .config import ServeConfig
from .store import DONE, FAILED, JOB_ID, QUEUED, RUNNING, Job, JobStore, fault

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a job interrupted this often (it may be what crashes the service) fails instead
# An absolute POSIX path (two or more parts), not preceded by a word: "1/2" and "and/or" are left alone.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s/'\"`:,;()\[\]{}<>]+/)+([^\s/'\"`:,;()\[\]{}<>]*)")


class Predictor(Protocol):
    """What the service needs of a `Detector`: its decision, the weights it holds, and `predict`."""

    threshold: float
    checkpoint: Path
    preprocessing: Any
    depth: Any
    embedder: Any
    audio: Any

    def predict(self, media: Any, name: str | None = None, progress: Any = None,
                explain: Path | None = None) -> Prediction: ...


def redact(text: str) -> str:
    """`text` with every absolute path shortened to its last part: what clients see never names a place on
    the server's disk (errors from deep in the pipeline, the model card)."""
    return ABSOLUTE_PATH.sub(lambda match: match.group(1) or "/", text)


def public_weights(predictor: Predictor) -> dict[str, dict[str, str]]:
    """The weights in use, each by name and sha256 fingerprint, as /v1/model and every result show them (the
    predictor's own `weights` describe local files by their server paths)."""
    checkpoint = Path(predictor.checkpoint)
    encoders = {"depth_model": (predictor.preprocessing.depth.model, predictor.depth.fingerprint),
                "rgb_backbone": (predictor.embedder.rgb.name, predictor.embedder.rgb.fingerprint),
                "depth_backbone": (predictor.embedder.depth.name, predictor.embedder.depth.fingerprint)}
    if predictor.audio is not None:
        encoders["audio_encoder"] = (predictor.audio.encoder.name, predictor.audio.encoder.fingerprint)
    named = {key: {"name": redact(name), "fingerprint": fingerprint}
             for key, (name, fingerprint) in encoders.items()}
    return {"checkpoint": {"name": f"{checkpoint.resolve().parent.name}/{checkpoint.name}",
                           "fingerprint": folder_fingerprint(checkpoint)}} | named


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class StoreFull(Exception):
    def __init__(self, used: int, cap: int, retry_after: int):
        super().__init__(f"the job store is full ({used:,} of {cap:,} bytes, all of it unfinished jobs); "
                         f"retry in {retry_after} s")
        self.retry_after = retry_after


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a job's file deleted meanwhile
                total += os.stat(os.path.join(root, name)).st_size
    return total


class JobManager:
    """The job table (kept in a `JobStore`), the bounded queue, the workers sharing one predictor, and the
    result sweeper. Built on a store that already holds jobs, it resumes them (see `recover`)."""

    def __init__(self, predictor: Predictor, config: ServeConfig, folder: Path):
        self.predictor = predictor
        self.config = config
        self.folder = folder
        self.weights = public_weights(predictor)
        self.store = JobStore(folder)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.waiting = 0
        self.seconds_per_job = 5.0  # running mean, for Retry-After
        self.stopping = threading.Event()
        self.recover()
        self.threads = [threading.Thread(target=self.work, name=f"megatron-worker-{n}", daemon=True)
                        for n in range(config.workers)]
        self.threads.append(threading.Thread(target=self.sweep, name="megatron-sweeper", daemon=True))
        for thread in self.threads:
            thread.start()

    def recover(self) -> None:
        """Resume the store's jobs: queued ones wait again in their order, and running ones (the service
        stopped under them) are queued again from scratch, or fail once interrupted `MAX_ATTEMPTS` times.
        Leftovers of the interruption go: half-written outputs, scored uploads, folders without a job."""
        for job in self.store.load():
            if job.status == RUNNING and job.attempts >= MAX_ATTEMPTS:
                error = f"{job.filename}: the service stopped while scoring it {job.attempts} times"
                job = replace(job, status=FAILED, step=FAILED, finished=time.time(), error=error)
                self.store.finish(job)
            elif job.status == RUNNING:
                job = replace(job, status=QUEUED, step=QUEUED, started=None)
                self.store.requeue(job)
            self.jobs[job.id] = job
            if job.status == QUEUED:
                for path in job.folder.iterdir() if job.folder.is_dir() else ():
                    if path != job.media_path:
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
                self.waiting += 1
                self.queue.put(job)
            elif job.media_path is not None:
                job.media_path.unlink(missing_ok=True)
        for folder in self.folder.iterdir():
            if JOB_ID.match(folder.name) and folder.name not in self.jobs:  # killed mid-upload
                shutil.rmtree(folder, ignore_errors=True)
        if self.waiting:
            log.info("resuming %d job(s) from %s", self.waiting, self.folder)

    # Submission ------------------------------------------------------------------------------------------
    def new_job(self) -> Job:
        """A job with a fresh generated id and its own folder, not yet queued (the upload goes there)."""
        job_id = uuid.uuid4().hex
        folder = self.folder / job_id
        folder.mkdir(parents=True)
        return Job(job_id, folder)

    def check_capacity(self) -> None:
        """Room in the queue, and in the store: over `max_store_bytes`, finished jobs go early, oldest first.
        The store may exceed the cap by the uploads in flight."""
        with self.lock:
            if self.waiting >= self.config.queue_size:
                raise QueueFull(self.retry_after())
            finished = sorted((job for job in self.jobs.values() if job.finished is not None),
                              key=lambda job: job.finished)
        # the jobs' folders (uploads and results); the database is small and bounded by its checkpoints
        used = sum(folder_bytes(path) for path in self.folder.iterdir() if path.is_dir())
        cap = self.config.max_store_bytes
        evicted = []
        while used >= cap and finished:
            job = finished.pop(0)
            used -= folder_bytes(job.folder)
            evicted.append(job)
        if evicted:
            log.info("store over %s bytes: deleting %d finished job(s) before their time", cap, len(evicted))
            self.remove(evicted)
        if used >= cap:
            raise StoreFull(used, cap, self.retry_after())

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.waiting >= self.config.queue_size:
                raise QueueFull(self.retry_after())
            self.store.add(job)  # stored before it is acknowledged: a 202 is never lost
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
        """Score queued jobs. A job's new state is committed to the store before the job table shows it
        (its `Job` is replaced whole), so nothing is reported that a crash could take back."""
        while True:
            job = self.queue.get()
            if job is None or self.stopping.is_set():  # stopping: queued jobs stay queued in the store
                return
            with self.lock:
                self.waiting -= 1
            job = replace(job, status=RUNNING, started=time.time(), attempts=job.attempts + 1)
            self.store.start(job)
            self.jobs[job.id] = job
            try:
                result, error, files = self.run(job)
            except Exception as failure:  # noqa: BLE001 - a worker outlives any one job
                log.exception("job %s (%s) failed", job.id, job.filename)
                result, files = None, {}
                error = redact(f"{job.filename}: internal error ({type(failure).__name__}: {failure})")
            status = DONE if result is not None else FAILED
            job = replace(job, status=status, step=status, finished=time.time(), result=result, error=error,
                          files=files)
            self.store.finish(job)
            self.jobs[job.id] = job
            self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (job.finished - job.started)
            if job.media_path is not None:
                job.media_path.unlink(missing_ok=True)  # results are kept, uploads are not
            trim_heap()  # a job's frames and activations are freed; give their pages back

    def run(self, job: Job) -> tuple[dict[str, Any] | None, str | None, dict[str, Path]]:
        """Score one job: (its result, or None and the reason it failed; its files by public name)."""
        def progress(step: str) -> None:
            job.step = step
            fault(step)

        explain = job.folder / "explanation" if self.config.explain else None
        prediction = self.predictor.predict(job.media_path, progress=progress, explain=explain)
        if not prediction.ok:
            return None, redact((prediction.error or "failed").replace(str(job.media_path), job.filename)), {}
        job.step = "annotate"
        files = {}
        explanation = prediction.explanation
        heatmaps = None if explanation is None else explain / explanation.heatmaps
        if self.config.annotate:
            if prediction.media == "video":
                files["annotated.mp4"] = annotate_video(prediction, job.folder / "annotated.mp4",
                                                        heatmaps=heatmaps)
            else:
                files["annotated.png"] = annotate_image(prediction, job.folder / "annotated.png",
                                                        heatmaps=heatmaps)
        prediction.path = job.filename  # after annotation, which reads the upload by this path
        prediction.weights = self.weights  # names and fingerprints: no server path in the result
        if self.config.annotate and prediction.media == "video":
            files["timeline.png"] = plot_timeline(prediction, job.folder / "timeline.png")
        if explanation is not None:  # served under fixed public names; no server path in the result
            files["attribution.png"] = explain / explanation.plot
            images = {}
            for rank, frame in enumerate(explanation.deciding_frames, 1):
                images[str(frame)] = f"heatmap-{rank}.png"
                files[images[str(frame)]] = explain / explanation.images[str(frame)]
            prediction.explanation = replace(explanation, folder="", images=images, heatmaps="",
                                             plot="attribution.png")
        return prediction.to_dict(), None, files

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
        self.remove(old)
        return [job.id for job in old]

    def remove(self, jobs: list[Job]) -> None:
        with self.lock:
            for job in jobs:
                self.jobs.pop(job.id, None)
        self.store.delete([job.id for job in jobs])  # first the rows: a folder without a row is swept anyway
        for job in jobs:
            self.discard(job)

    def close(self) -> None:
        self.stopping.set()
        for _ in range(self.config.workers):
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout=30)
        if not any(thread.is_alive() for thread in self.threads):  # else a late job still writes to it
            self.store.close()
