"""What a service serves and what it refuses: one dataclass, filled by `megatron serve` or by hand."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "MEGATRON_API_KEY"
STORE_NAME = "serve-store"  # the default store, inside the run's folder


@dataclass
class ServeConfig:
    run: str | os.PathLike  # run folder, checkpoint folder or hub repo id, as for `megatron predict`
    checkpoint: str | None = None  # checkpoint folder inside the run (default: best/)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # jobs scored at once; they share one loaded model
    queue_size: int = 16  # jobs waiting beyond those; more get 429 with Retry-After
    max_upload_bytes: int = 200 * 2**20
    max_duration_s: float = 600.0  # as the file's header declares it
    max_side: int = 4096  # pixels, width or height
    min_side: int = 32
    result_ttl_s: float = 3600.0  # a finished job's files are deleted this long after it finished
    # the job store: its database, uploads and results, resumed by a service restarted on it; default: the
    # run's folder / serve-store, so a plain restart loses nothing either
    store: str | os.PathLike | None = None
    max_store_bytes: int = 10 * 2**30  # beyond it the oldest results go early, then uploads get 503
    api_key: str | None = None  # required on /v1/* when set (header X-API-Key); default: $MEGATRON_API_KEY
    insecure: bool = False  # allow a non-loopback address without an API key
    annotate: bool = True  # write the annotated video or image of every job
    explain: bool = False  # explain every verdict: frame attributions and Grad-CAM heat maps (slower)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        for name in ("workers", "queue_size", "max_upload_bytes", "max_store_bytes", "max_side", "min_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_duration_s <= 0 or self.result_ttl_s <= 0:
            raise ValueError("max_duration_s and result_ttl_s must be positive")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} exceeds max_side {self.max_side}")

    @property
    def checkpoint_path(self) -> str | os.PathLike:
        return Path(self.run) / self.checkpoint if self.checkpoint else self.run

    @property
    def store_folder(self) -> Path:
        """`store`, or serve-store/ in the run's folder (beside a checkpoint folder given as the run, never
        inside it: a checkpoint folder is what gets published)."""
        from ..models.checkpoint import is_checkpoint

        if self.store is not None:
            return Path(self.store)
        run = Path(self.checkpoint_path)
        if not run.is_dir():
            raise ValueError(f"{self.run} is not a local folder to keep the job store in; give --store DIR")
        return (run.parent if is_checkpoint(run) else run) / STORE_NAME

    def check_exposure(self) -> None:
        """Refuse to listen beyond this machine without an API key, unless told `insecure`."""
        if self.api_key or self.insecure or is_loopback(self.host):
            return
        raise ValueError(f"refusing to serve on {self.host} without an API key: anyone who can reach it "
                         f"could use the model; set ${API_KEY_ENV} or give --api-key-file, bind 127.0.0.1, "
                         f"or pass --insecure")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
