"""The FastAPI app: `create_app(config)`, served by uvicorn (`megatron serve`), OpenAPI docs at /docs.

    GET  /                                  the page (static/index.html)
    GET  /healthz                           liveness and queue counts, no key needed
    GET  /v1/model                          model card, threshold, preprocessing, weights, limits
    POST /v1/predictions                    multipart upload (field `file`) -> 202 with the job's id
    GET  /v1/predictions/{id}               status, progress, and the result when done
    GET  /v1/predictions/{id}/files/{name}  annotated.mp4 / annotated.png / timeline.png, and with
                                            --explain attribution.png / heatmap-1.png ...

With an API key set, every /v1/ route needs the header `X-API-Key`. Refusals are JSON `{"detail": reason}`:
400 malformed, 401 key, 404 unknown or expired job, 413 over a size/duration/resolution limit, 415 not a
video or image, 422 unreadable, 429 queue full, and 503 not ready or the job store full (both with
Retry-After).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.extras import extra_imports

with extra_imports("serve"):
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from fastapi.security import APIKeyHeader
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

from ..models.checkpoint import CARD_FILE
from .config import ServeConfig
from .jobs import JobManager, Predictor, QueueFull, StoreFull, redact
from .uploads import UploadRejected, inspect_upload, receive_upload

log = logging.getLogger(__name__)

STATIC = resources.files("megatron_utils.serve") / "static"
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "a video (MP4, MOV, MKV, WebM, AVI, GIF) or an image"}}}}}}}


class Refused(Exception):
    def __init__(self, status: int, reason: str, retry_after: int | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after = status, reason, retry_after


def load_predictor(config: ServeConfig) -> Predictor:
    from ..inference.predict import Detector

    return Detector.from_pretrained(config.checkpoint_path, config.device)


def as_json(config: Any) -> Any:
    return json.loads(json.dumps(asdict(config), default=str))


def model_description(manager: JobManager) -> dict[str, Any]:
    """What /v1/model returns: enough to know which weights decide and how media is preprocessed; weights by
    name and fingerprint, and no server path anywhere (the card names the training index by its path)."""
    predictor, config = manager.predictor, manager.config
    card = Path(predictor.checkpoint) / CARD_FILE
    model = getattr(predictor, "model", None)
    description = {
        "threshold": predictor.threshold,
        "weights": manager.weights,
        "model": as_json(model.config) if model is not None else None,
        "preprocessing": as_json(predictor.preprocessing),
        "model_card": card.read_text() if card.is_file() else None,
        "limits": {"max_upload_bytes": config.max_upload_bytes, "max_duration_s": config.max_duration_s,
                   "max_side": config.max_side, "min_side": config.min_side, "workers": config.workers,
                   "queue_size": config.queue_size, "result_ttl_s": config.result_ttl_s,
                   "max_store_bytes": config.max_store_bytes},
    }
    return json.loads(redact(json.dumps(description)))


def create_app(config: ServeConfig, predictor: Predictor | None = None) -> FastAPI:
    """The app; the model is loaded once at startup (or `predictor` is used) and shared by the workers.
    While it runs, `app.state.jobs` is its `JobManager`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = config.store_folder
        store.mkdir(parents=True, exist_ok=True)
        loaded = predictor or await run_in_threadpool(load_predictor, config)
        app.state.jobs = JobManager(loaded, config, store)
        app.state.model = model_description(app.state.jobs)
        log.info("serving with %s; jobs in %s", "; ".join(f"{k}: {v}" for k, v in loaded.weights.items()),
                 store)
        try:
            yield
        finally:
            app.state.jobs.close()
            del app.state.jobs

    app = FastAPI(title="Megatron deepfake detector", version="1", lifespan=lifespan,
                  description="Upload a video or image; get the verdict, per-face timelines and an annotated "
                              "copy. See /v1/model for the weights and the limits.")
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

    def jobs() -> JobManager:
        manager = getattr(app.state, "jobs", None)
        if manager is None:
            raise Refused(503, "the service is starting or stopping", retry_after=5)
        return manager

    def authorised(key: str | None = Depends(key_header)) -> None:
        if config.api_key and not (key and secrets.compare_digest(key.encode(), config.api_key.encode())):
            raise Refused(401, "missing or wrong API key (header X-API-Key)")

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        return JSONResponse({"detail": error.reason}, status_code=error.status, headers=headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        manager = jobs()
        return {"status": "ok", "jobs": manager.counts(), "workers": config.workers,
                "queue_size": config.queue_size, "api_key_required": bool(config.api_key)}

    @app.get("/v1/model", dependencies=[Depends(authorised)])
    def model() -> dict[str, Any]:
        jobs()
        return app.state.model

    @app.post("/v1/predictions", status_code=202, dependencies=[Depends(authorised)],
              openapi_extra=UPLOAD_BODY)
    async def create_prediction(request: Request) -> JSONResponse:
        manager = jobs()
        try:
            manager.check_capacity()  # before reading a byte of the upload
        except QueueFull as error:
            raise Refused(429, str(error), retry_after=error.retry_after) from error
        except StoreFull as error:
            raise Refused(503, str(error), retry_after=error.retry_after) from error
        job = manager.new_job()
        try:
            job.filename, _ = await receive_upload(dict(request.headers), request.stream(),
                                                   job.folder / "upload.part", config.max_upload_bytes)
            job.upload, job.media_path = await run_in_threadpool(inspect_upload, job.folder / "upload.part",
                                                                 config)
            manager.submit(job)
        except UploadRejected as error:
            manager.discard(job)
            raise Refused(error.status, error.reason) from error
        except QueueFull as error:
            manager.discard(job)
            raise Refused(429, str(error), retry_after=error.retry_after) from error
        except BaseException:
            manager.discard(job)
            raise
        return JSONResponse(job.to_dict(), status_code=202,
                            headers={"Location": f"/v1/predictions/{job.id}"})

    def find(job_id: str) -> Any:
        job = jobs().get(job_id)
        if job is None:
            raise Refused(404, f"no job {job_id!r}: unknown, or its results expired")
        return job

    @app.get("/v1/predictions/{job_id}", dependencies=[Depends(authorised)])
    def get_prediction(job_id: str) -> dict[str, Any]:
        return find(job_id).to_dict()

    @app.get("/v1/predictions/{job_id}/files/{name}", dependencies=[Depends(authorised)])
    def get_file(job_id: str, name: str) -> FileResponse:
        job = find(job_id)
        path = job.files.get(name)  # a fixed set of generated names: nothing from the client reaches a path
        if path is None or not path.is_file():
            raise Refused(404, f"job {job_id} has no file {name!r}; it has {sorted(job.files)}")
        return FileResponse(path, filename=f"{Path(job.filename).stem}-{name}")

    return app
