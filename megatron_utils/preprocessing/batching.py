"""Batched model inference over stage-cache items, shared by the depth and embedding stages.

Crops from many items (videos) are streamed through fixed-size batches, so a batch may span several
videos and the accelerator always sees full batches; each item's outputs are handed back as soon as
all of its crops are done, and written as one atomic cache entry.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.cache import FAILED, OK, StageCache, StageReport
from ..models.backbones import prepare_pixels


def to_unit_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """Images [N, H, W, 3] or single-channel maps [N, H, W] (repeated to 3 channels) to float32
    [N, 3, H, W] in [0, 1]: uint8 is divided by 255, float maps (depth) are taken as they are."""
    batch = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(device)
    batch = batch.unsqueeze(-1).expand(*batch.shape, 3) if batch.ndim == 3 else batch
    batch = batch.permute(0, 3, 1, 2).float()
    return batch / 255.0 if images.dtype == np.uint8 else batch


def images_to_tensor(images: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float],
                     device: torch.device, interpolation: str = "bicubic") -> torch.Tensor:
    """uint8 images [N, H, W, 3] (or maps [N, H, W]) to a normalised float32 batch [N, 3, size, size],
    resized on `device` instead of per image with PIL."""
    return prepare_pixels(to_unit_tensor(images, device), size, mean, std, interpolation)


def stream_batches(
    items: Iterable[tuple[str, tuple[np.ndarray, ...], Any]],
    infer: Callable[..., tuple[np.ndarray, ...]],
    batch_size: int,
) -> Iterator[tuple[str, Any, tuple[np.ndarray, ...], float]]:
    """Run `infer` over fixed-size batches drawn from consecutive items.

    `items` yields `(item_id, inputs, context)`, where every input array has one row per crop (at
    least one). `infer(*batch_inputs)` returns arrays with one row per crop. Yields
    `(item_id, context, outputs, seconds)` in input order once all of an item's crops are done;
    `seconds` is the item's share of the inference time (each batch's time split evenly per crop).
    """
    waiting: deque[tuple[str, int, Any]] = deque()  # items whose crops are queued or being run
    queued: list[tuple[np.ndarray, ...]] = []  # inputs not yet run
    results: list[tuple[np.ndarray, ...]] = []  # outputs (and per-crop seconds) not yet handed back
    n_queued = n_results = 0

    def run(count: int) -> None:
        nonlocal queued, n_queued, n_results
        stacked = [np.concatenate(parts) for parts in zip(*queued, strict=True)]
        for start in range(0, count, batch_size):
            batch = tuple(array[start:start + min(batch_size, count - start)] for array in stacked)
            tic = time.perf_counter()
            outputs = infer(*batch)
            per_crop = np.full(len(batch[0]), (time.perf_counter() - tic) / len(batch[0]))
            results.append((*outputs, per_crop))
        queued = [tuple(array[count:] for array in stacked)] if count < n_queued else []
        n_queued -= count
        n_results += count

    def finished() -> Iterator[tuple[str, Any, tuple[np.ndarray, ...], float]]:
        nonlocal results, n_results
        if not waiting or waiting[0][1] > n_results:
            return
        stacked = [np.concatenate(parts) for parts in zip(*results, strict=True)]
        offset = 0
        while waiting and waiting[0][1] <= n_results - offset:
            item_id, count, context = waiting.popleft()
            outputs = tuple(array[offset:offset + count] for array in stacked)
            offset += count
            yield item_id, context, outputs[:-1], float(outputs[-1].sum())
        results = [tuple(array[offset:] for array in stacked)] if offset < n_results else []
        n_results -= offset

    for item_id, inputs, context in items:
        waiting.append((item_id, len(inputs[0]), context))
        queued.append(inputs)
        n_queued += len(inputs[0])
        if n_queued >= batch_size:
            run(n_queued - n_queued % batch_size)
            yield from finished()
    if n_queued:
        run(n_queued)
    yield from finished()


def done_upstream(upstream: StageCache, item_ids: Sequence[str] | None = None) -> list[str]:
    """The items (all, or those of `item_ids`) that the upstream stage finished successfully."""
    records = upstream.records()
    wanted = records if item_ids is None else item_ids
    return [item for item in wanted if item in records and records[item]["status"] == OK]


def run_batched_stage(
    cache: StageCache,
    item_ids: Sequence[str],
    fingerprint: Callable[[str], str],
    load: Callable[[str], tuple[tuple[np.ndarray, ...], Any]],
    infer: Callable[..., tuple[np.ndarray, ...]],
    save: Callable[[Any, tuple[np.ndarray, ...]], dict[str, np.ndarray]],
    batch_size: int,
    force: bool = False,
    **record_info: object,
) -> StageReport:
    """The loop every model stage shares: skip items already done for the same upstream entry
    (`fingerprint`), record a failure for any item whose inputs cannot be loaded, stream the rest
    through `infer` in batches across items, and write each item's `save(context, outputs)` entry
(its manifest record carries `record_info`, e.g. which weights produced it).

    Failures recorded by an earlier run for the same upstream entry are reported again (not retried,
    unless `force`), so a report always lists every item of this stage that has no entry.
    """
    start = time.perf_counter()
    report = StageReport(cache.stage, str(cache.dir))
    progress = tqdm(total=len(item_ids), desc=cache.stage, unit="item")

    def pending() -> Iterator[tuple[str, tuple[np.ndarray, ...], Any]]:
        for item_id in item_ids:
            item_fingerprint = fingerprint(item_id)
            status = None if force else cache.status(item_id, item_fingerprint)
            if status is not None:
                if status == OK:
                    report.skipped += 1
                else:
                    report.failures[item_id] = cache.records()[item_id].get("error") or ""
                progress.update()
                continue
            try:
                inputs, context = load(item_id)
            except Exception as error:  # one bad item never stops the batch
                message = f"{type(error).__name__}: {error}"
                cache.record(item_id, FAILED, error=message, fingerprint=item_fingerprint)
                report.failures[item_id] = message
                progress.update()
                continue
            yield item_id, inputs, (context, item_fingerprint)

    for item_id, (context, item_fingerprint), outputs, seconds in stream_batches(pending(), infer,
                                                                                   batch_size):
        crops = len(outputs[0])
        cache.write(item_id, save(context, outputs), fingerprint=item_fingerprint, seconds=round(seconds, 4),
                    crops=crops, **record_info)
        report.done += 1
        report.units += crops
        progress.update()
    progress.close()
    report.seconds = time.perf_counter() - start
    return report
