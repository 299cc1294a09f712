"""`megatron serve`: a web service and page that score uploaded videos and images with a trained run.

- `config.py`  `ServeConfig`: the run, the address, the worker pool and every limit.
- `uploads.py` receiving an upload (streamed to disk, never held in memory) and checking it by its content.
- `store.py`   the durable job table: SQLite beside the jobs' folders, resumed after a restart or crash.
- `jobs.py`    the bounded worker pool that shares one loaded `Detector`, recovery, lifetime and disk cap.
- `app.py`     the FastAPI app: JSON API, job files, the page.
- `client.py`  a small client for the API and the loopback load test.
- `fuzz.py`    seeded mutants of real media sent as uploads, and the invariants they must keep.
"""

from .config import ServeConfig

__all__ = ["ServeConfig"]
