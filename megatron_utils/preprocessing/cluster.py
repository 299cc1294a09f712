"""`megatron preprocess INDEX --ray auto|ADDRESS`: the same stages, caches, keys and manifests as
`preprocess`, with the videos spread over a Ray cluster.

Videos go out in shards to a pool of Ray actors. Each actor loads the depth model and both embedders once
(with a GPU of its own where the cluster has them) and runs the whole chain on every shard it is handed,
writing into the cache root, which every node must see (a shared file system). The caches take many
writers at once (see `core/cache.py`). An actor that dies (a lost node, a killed process) is restarted and
its shard retried; the entries it had finished stay done. Finally the driver runs `preprocess` over the
whole list: every item is found done, so it only checks, writes preprocess.json and returns the result a
single-process run returns.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..core.extras import extra_imports
from .faces import resolve_face_config
from .preprocess import LoadedModels, PreprocessConfig, PreprocessResult, item_pairs, preprocess

log = logging.getLogger(__name__)


def _worker_class(gpus: float):
    with extra_imports("ray"):
        import ray

    @ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=-1, max_task_retries=3)
    class PreprocessWorker:
        """One actor: the models of one preprocessing config, loaded once, and the chain run on shards."""

        def __init__(self, config: dict, cache_root: str | None, force: bool):
            self.config = PreprocessConfig.from_dict(config)
            self.cache_root, self.force = cache_root, force
            self.models = LoadedModels.load(self.config)

        def run(self, pairs: list[tuple[str, str]]) -> tuple[int, dict[str, str]]:
            """(videos done, the failed ones with their reasons) of one shard."""
            result = preprocess(pairs, self.config, self.force, self.cache_root, 0, self.models)
            return len(pairs), result.failures()

    return PreprocessWorker


def preprocess_on_ray(items: pd.DataFrame | Iterable[tuple[str, str | os.PathLike]],
                      config: PreprocessConfig | None = None, force: bool = False,
                      cache_root: str | os.PathLike | None = None,
                      address: str | None = "auto", actors: int | None = None, shard_size: int | None = None,
                      gpus_per_actor: float | None = None) -> PreprocessResult:
    """Preprocess on the Ray cluster at `address` ("auto": the one this machine belongs to; None: a local
    one started here, or the one already initialised). `actors`: default one per GPU, else one per CPU."""
    with extra_imports("ray"):
        import ray
        from ray.util import ActorPool

    config = config or PreprocessConfig()
    pairs = item_pairs(items)
    root = str(Path(cache_root).resolve()) if cache_root is not None else None
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0) if gpus_per_actor is None else gpus_per_actor
    per_actor = 1.0 if gpus and gpus_per_actor is None else float(gpus_per_actor or 0)
    actors = actors or max(1, int(gpus) if per_actor else int(resources.get("CPU", 1)))
    # "auto" means the GPU where the actors get one, decided here (not on each node), so every actor and the
    # driver's final pass use one detector and one faces cache key.
    config = replace(config, faces=resolve_face_config(config.faces, "cuda" if per_actor else "cpu"))
    shard_size = shard_size or max(1, math.ceil(len(pairs) / (4 * actors)))
    shards = [pairs[start:start + shard_size] for start in range(0, len(pairs), shard_size)]
    log.info("preprocessing %d videos on Ray (%s): %d actors, %d shards of up to %d videos, cache %s",
             len(pairs), address or "local", actors, len(shards), shard_size, root)
    worker = _worker_class(per_actor)
    pool = ActorPool([worker.remote(config.to_dict(), root, force) for _ in range(actors)])
    failures: dict[str, str] = {}
    with tqdm(total=len(pairs), desc="preprocess (ray)", unit="video") as progress:
        for done, failed in pool.map_unordered(lambda actor, shard: actor.run.remote(shard), shards):
            failures.update(failed)
            progress.update(done)
    if failures:
        log.warning("%d of %d videos failed on the cluster (listed in the run's report)", len(failures),
                    len(pairs))
    # Every item is done now: this pass only checks the caches and writes preprocess.json.
    return preprocess(pairs, config, False, root, workers=0)
